"""Materialization runs, as recorded by feast_ext.materialize, and its one-at-a-time lock.

A run's row says 'running' only while its process holds the advisory lock.  A run whose
process is gone (killed, or its connection to Postgres lost) shows as 'interrupted', with
the progress it had recorded; the next run marks it so in the table and completes its work.
An error that could not be written when it happened (Postgres went away) is kept in a file
under the data folder and written by the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

from psycopg import sql
from psycopg.rows import dict_row

from runtime import db
from runtime.explore import VIEWS
from runtime.settings import Settings, home

INTERRUPTED = (
    "the process ended before the run finished (killed, or its connection was lost); the next run completes it"
)

# One materialization at a time across every session and process: a Postgres advisory lock.
LOCK_KEY = 0x4C4F414E  # "LOAN"


_LOCK_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1) AS held"
)


def _lock_params() -> list[int]:
    return [(LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF]


_STEP = re.compile(r"\[(\d+)/(\d+)\]")
_ROWS = re.compile(r"([\d,]+) rows written")


def progress_fraction(progress: str | None, expected: dict[str, int]) -> float | None:
    """How far a run is, 0..1, from its progress line ("[1/2] credit_history: 20,000 rows written") and
    the entities expected per view; below 1 until the line says "done".  None for a line that does
    not say (a clean-up step, a message of another engine): the caller keeps what it showed."""
    if not progress:
        return 0.0
    if progress == "done":
        return 1.0
    step = _STEP.search(progress)
    if not step:
        return None
    i, n = int(step[1]), max(int(step[2]), 1)
    part = 0.0
    rows = _ROWS.search(progress)
    view = next((name for name in expected if name in progress), None)
    if rows and view and expected.get(view):
        part = min(int(rows[1].replace(",", "")) / expected[view], 0.99)
    return min(((i - 1) + part) / n, 0.99)


def materialize_runs(settings: Settings, limit: int = 20) -> list[dict]:
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "WITH lock AS (" + _LOCK_HELD + ") "
            "SELECT id, requested_by, started_at, finished_at, mode, window_start, window_end, rows, seconds, "
            "CASE WHEN status = 'running' AND NOT (SELECT held FROM lock) THEN 'interrupted' ELSE status END "
            "AS status, progress, CASE WHEN status = 'running' AND NOT (SELECT held FROM lock) "
            "THEN coalesce(error, %s) ELSE error END AS error "
            "FROM loan_desk_materialize_runs ORDER BY id DESC LIMIT %s",
            [*_lock_params(), INTERRUPTED, limit],
        ).fetchall()


def run_windows(settings: Settings, runs: list[dict]) -> dict[int, tuple]:
    """Per succeeded run id: the window (start, end] it brought to the online store.

    A full run's window is its own (window_start, window_end]; an incremental run's starts at
    the end of the successful run before it (None before any: everything up to its end)."""
    done = sorted((r for r in runs if r["status"] == "succeeded"), key=lambda r: r["id"])
    if not done:
        return {}
    with db.connection(settings) as conn:
        prev_end = conn.execute(
            "SELECT max(window_end) FROM loan_desk_materialize_runs WHERE status = 'succeeded' AND id < %s",
            [done[0]["id"]],
        ).fetchone()[0]
    windows = {}
    for r in done:
        windows[r["id"]] = (r["window_start"] if r["mode"] == "full" else prev_end, r["window_end"])
        prev_end = r["window_end"]
    return windows


def entities_in_window(settings: Settings, start, end) -> int:
    """Entities of every view with a row in (start, end], counted on the offline tables as they are
    now: what a run of that window wrote to the online store (an entity with several rows counts
    once, the online store keeps its latest)."""
    counts = sql.SQL(" + ").join(
        sql.SQL(
            "(SELECT count(DISTINCT t.{e}) FROM {t} AS t WHERE (%(s)s::timestamptz IS NULL "
            "OR t.event_timestamp > %(s)s) AND t.event_timestamp <= %(e)s)"
        ).format(e=sql.Identifier(v.entity), t=sql.Identifier(v.table))
        for v in VIEWS.values()
    )
    with db.connection(settings) as conn:
        return conn.execute(sql.SQL("SELECT {}").format(counts), {"s": start, "e": end}).fetchone()[0]


def run_changes(settings: Settings, runs: list[dict]) -> dict[int, int]:
    """Per succeeded run id: the entities its window brought to the online store (the job itself
    records only the online key total afterwards)."""
    return {i: entities_in_window(settings, s, e) for i, (s, e) in run_windows(settings, runs).items()}


def run_after(settings: Settings, after_id: int, requested_by: str) -> dict | None:
    """The first run ``requested_by`` started after run ``after_id`` (as materialize_runs shows it)."""
    with db.connection(settings) as conn:
        found = conn.execute(
            "SELECT min(id) FROM loan_desk_materialize_runs WHERE id > %s AND requested_by = %s",
            [after_id, requested_by],
        ).fetchone()[0]
    if found is None:
        return None
    return next((r for r in materialize_runs(settings, limit=100) if r["id"] == found), None)


def last_run_id(settings: Settings) -> int:
    with db.connection(settings) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM loan_desk_materialize_runs").fetchone()[0]


def materialize_lock_held(settings: Settings) -> bool:
    """True while some session or process holds materialize's advisory lock."""
    with db.connection(settings) as conn:
        return conn.execute(_LOCK_HELD, _lock_params()).fetchone()[0]


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


# --- for the run that holds the lock (feast_ext.materialize) ---------------------------------
def _unrecorded_path():
    return home() / "unrecorded-run-errors.jsonl"


def remember_unrecorded(run_id: int, error: str, seconds: float) -> None:
    """Keep an error that could not be written to Postgres, for the next run to record."""
    path = _unrecorded_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": run_id, "error": error[:2000], "seconds": seconds}) + "\n")


def settle_earlier_runs(conn) -> int:
    """Write the errors kept by earlier runs, and mark runs whose process is gone as interrupted.

    Only the holder of the lock calls this, so no other run can be in progress."""
    path = _unrecorded_path()
    settled = 0
    with contextlib.suppress(FileNotFoundError):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            settled += conn.execute(
                "UPDATE loan_desk_materialize_runs SET status = 'failed', finished_at = coalesce(finished_at, now()), "
                "seconds = %s, error = %s WHERE id = %s AND status = 'running'",
                [rec.get("seconds"), f"{rec.get('error')} (recorded by the next run)", rec.get("id")],
            ).rowcount
        os.unlink(path)
    settled += conn.execute(
        "UPDATE loan_desk_materialize_runs SET status = 'interrupted', finished_at = coalesce(finished_at, now()), "
        "error = coalesce(error, %s) WHERE status = 'running'",
        [INTERRUPTED],
    ).rowcount
    return settled
