"""Materialization runs, as recorded by feast_ext.materialize, and its one-at-a-time lock."""

from __future__ import annotations

from psycopg.rows import dict_row

from runtime import db
from runtime.settings import Settings

# One materialization at a time across every session and process: a Postgres advisory lock.
LOCK_KEY = 0x4C4F414E  # "LOAN"


def materialize_runs(settings: Settings, limit: int = 20) -> list[dict]:
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, requested_by, started_at, finished_at, mode, window_start, window_end, rows, seconds, "
            "status, progress, error FROM loan_desk_materialize_runs ORDER BY id DESC LIMIT %s",
            [limit],
        ).fetchall()


def materialize_lock_held(settings: Settings) -> bool:
    """True while some session or process holds materialize's advisory lock."""
    with db.connection(settings) as conn:
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
            [(LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF],
        ).fetchone()[0]


def active_run(settings: Settings) -> dict | None:
    """The run in progress (the newest 'running' row while the lock is held), else None."""
    if not materialize_lock_held(settings):
        return None
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, requested_by, started_at, window_end, progress FROM loan_desk_materialize_runs "
            "WHERE status = 'running' ORDER BY id DESC LIMIT 1"
        ).fetchone()
