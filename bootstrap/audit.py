"""Audit trails in Postgres: every credit decision, and reads of the materialization runs.

``record_decision`` writes who decided, when, the inputs, the features used, the
probability, the decision and the model version.  The materialize page reads the runs that
``bootstrap.feast_ops.materialize`` records and whether its advisory lock is held.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bootstrap.config import Settings
from bootstrap.feast_ops import LOCK_KEY, RUNS_DDL

DECISIONS_DDL = """
CREATE TABLE IF NOT EXISTS loan_desk_decisions (
    id            bigserial PRIMARY KEY,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    username      text NOT NULL,
    inputs        jsonb NOT NULL,
    features      jsonb NOT NULL,
    probability   double precision NOT NULL,
    decision      text NOT NULL,
    threshold     double precision NOT NULL,
    model_version text NOT NULL,
    latency_ms    double precision
);
CREATE INDEX IF NOT EXISTS loan_desk_decisions_user ON loan_desk_decisions (username, decided_at DESC)
"""


def _conn(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(**settings.pg_kwargs(), autocommit=True)


def _json_value(v):
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def record_decision(settings: Settings, username: str, decision) -> int:
    """Write one model.inference.Decision to loan_desk_decisions; returns its id."""
    features = [
        {
            "name": f.name,
            "view": f.view,
            "value": _json_value(f.value),
            "event_timestamp": _json_value(f.event_timestamp),
            "status": f.status,
        }
        for f in decision.features
    ]
    with _conn(settings) as conn:
        conn.execute(DECISIONS_DDL)
        return conn.execute(
            "INSERT INTO loan_desk_decisions (username, inputs, features, probability, decision, threshold, "
            "model_version, latency_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            [
                username,
                Jsonb(decision.application.as_dict()),
                Jsonb(features),
                decision.probability,
                decision.decision,
                decision.threshold,
                decision.model_version,
                decision.latency_ms,
            ],
        ).fetchone()[0]


def recent_decisions(settings: Settings, username: str, limit: int = 20) -> list[dict]:
    """The user's latest decisions, newest first."""
    with _conn(settings) as conn:
        conn.execute(DECISIONS_DDL)
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, decided_at, inputs->>'dob_ssn' AS applicant, (inputs->>'zipcode')::bigint AS zipcode, "
            "(inputs->>'loan_amnt')::double precision AS loan_amnt, inputs->>'loan_intent' AS loan_intent, "
            "probability, decision, model_version FROM loan_desk_decisions WHERE username = %s "
            "ORDER BY decided_at DESC, id DESC LIMIT %s",
            [username, limit],
        ).fetchall()


# --- materialization runs (written by bootstrap.feast_ops.materialize) -----------------------
def materialize_runs(settings: Settings, limit: int = 20) -> list[dict]:
    with _conn(settings) as conn:
        conn.execute(RUNS_DDL)
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, requested_by, started_at, finished_at, mode, window_start, window_end, rows, seconds, "
            "status, progress, error FROM loan_desk_materialize_runs ORDER BY id DESC LIMIT %s",
            [limit],
        ).fetchall()


def materialize_lock_held(settings: Settings) -> bool:
    """True while some session or process holds materialize's advisory lock."""
    with _conn(settings) as conn:
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
            [(LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF],
        ).fetchone()[0]


def active_run(settings: Settings) -> dict | None:
    """The run in progress (the newest 'running' row while the lock is held), else None."""
    if not materialize_lock_held(settings):
        return None
    with _conn(settings) as conn:
        conn.execute(RUNS_DDL)
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, requested_by, started_at, window_end, progress FROM loan_desk_materialize_runs "
            "WHERE status = 'running' ORDER BY id DESC LIMIT 1"
        ).fetchone()
