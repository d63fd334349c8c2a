"""The decision trail in Postgres: every credit decision, who made it and with what.

``record_decision`` writes who decided, when, the inputs, the features used, the
probability, the decision and the model version.
"""

from __future__ import annotations

from datetime import datetime

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runtime import db
from runtime.settings import Settings


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
    with db.connection(settings) as conn:
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
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT id, decided_at, inputs->>'dob_ssn' AS applicant, (inputs->>'zipcode')::bigint AS zipcode, "
            "(inputs->>'loan_amnt')::double precision AS loan_amnt, inputs->>'loan_intent' AS loan_intent, "
            "probability, decision, model_version FROM loan_desk_decisions WHERE username = %s "
            "ORDER BY decided_at DESC, id DESC LIMIT %s",
            [username, limit],
        ).fetchall()


def decision_by_id(settings: Settings, decision_id: int, username: str | None = None) -> dict | None:
    """One recorded decision, or None; with ``username``, only if that user made it."""
    query = (
        "SELECT id, decided_at, username, inputs, features, probability, decision, threshold, model_version, "
        "latency_ms FROM loan_desk_decisions WHERE id = %s"
    )
    params: list = [decision_id]
    if username is not None:
        query += " AND username = %s"
        params.append(username)
    with db.connection(settings) as conn:
        return conn.cursor(row_factory=dict_row).execute(query, params).fetchone()
