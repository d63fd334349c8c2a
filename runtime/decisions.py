"""The decision trail in Postgres: every credit decision, who made it and with what.

``record_decision`` writes one sealed record (runtime/audit.py) per decision: when, who, through
which channel (app, api, cli, batch) and client, the inputs, every feature with its event
timestamp, the probability, cut-off and refer band, the outcome, the principal reasons and why it
was referred, the contributions, the model and policy versions, the challenger's shadow score
and the latency.  A referral is recorded as ``pending`` until an underwriter reviews it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runtime import audit, db
from runtime.settings import Settings

CHANNELS = ("app", "api", "cli", "batch")


def _json_value(v):
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _record_values(decision, username: str, channel: str, client: str | None, batch_id: int | None) -> dict:
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
    return {
        "decided_at": datetime.now(UTC),
        "username": username,
        "channel": channel,
        "client": client,
        "batch_id": batch_id,
        "inputs": Jsonb(decision.application.as_dict()),
        "features": Jsonb(features),
        "probability": decision.probability,
        "threshold": decision.cutoff,
        "band": Jsonb(list(decision.band)) if decision.band else None,
        "outcome": decision.outcome,
        "reasons": Jsonb([r.as_dict() for r in decision.reasons]),
        "refer_reasons": Jsonb(list(decision.refer_reasons)),
        "contributions": Jsonb(
            {**decision.contributions, "_base": decision.base_value} if decision.contributions else None
        ),
        "model_version": decision.model_version,
        "policy_version": decision.policy_version,
        "challenger": Jsonb(decision.challenger) if decision.challenger else None,
        "latency_ms": decision.latency_ms,
        "status": "pending" if decision.outcome == "refer" else "final",
    }


def record_decision(
    settings: Settings,
    username: str,
    decision,
    channel: str = "app",
    client: str | None = None,
    batch_id: int | None = None,
    conn=None,
) -> int:
    """Write one model.inference.Decision as a sealed record; returns its id.  With ``conn``,
    inside the caller's transaction (a batch records all its rows or none)."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}")
    values = _record_values(decision, username, channel, client, batch_id)
    if conn is not None:
        return audit.insert_sealed(conn, audit.DECISIONS, list(values), list(values.values()))
    with db.connection(settings) as c, c.transaction():
        return audit.insert_sealed(c, audit.DECISIONS, list(values), list(values.values()))


def record_decisions(
    conn, username: str, decisions: list, channel: str = "batch", batch_id: int | None = None
) -> list[int]:
    """``record_decision`` for many decisions in the caller's transaction (``conn``), sealed in
    one pipelined pass; returns their ids in order."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}")
    rows = [_record_values(d, username, channel, None, batch_id) for d in decisions]
    if not rows:
        return []
    return audit.insert_sealed_many(conn, audit.DECISIONS, list(rows[0]), [list(r.values()) for r in rows])


def recent_decisions(settings: Settings, username: str, limit: int = 20) -> list[dict]:
    """The user's latest decisions, newest first, with the review's verdict where there is one."""
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(
            "SELECT d.id, d.decided_at, d.applicant, (d.inputs->>'zipcode')::bigint AS zipcode, "
            "(d.inputs->>'loan_amnt')::double precision AS loan_amnt, d.inputs->>'loan_intent' AS loan_intent, "
            "d.probability, d.outcome, d.status, r.outcome AS review_outcome, d.model_version "
            "FROM loan_desk_decisions d LEFT JOIN loan_desk_reviews r ON r.decision_id = d.id "
            "WHERE d.username = %s ORDER BY d.decided_at DESC, d.id DESC LIMIT %s",
            [username, limit],
        ).fetchall()


RECORD_COLUMNS = (
    "id, decided_at, username, channel, client, batch_id, inputs, features, probability, outcome, threshold, "
    "band, reasons, refer_reasons, contributions, model_version, policy_version, challenger, latency_ms, status"
)


def decision_by_id(settings: Settings, decision_id: int, username: str | None = None) -> dict | None:
    """One recorded decision, or None; with ``username``, only if that user made it.  Includes
    ``review`` (the underwriter's verdict, or None)."""
    query = f"SELECT {RECORD_COLUMNS} FROM loan_desk_decisions WHERE id = %s"
    params: list = [decision_id]
    if username is not None:
        query += " AND username = %s"
        params.append(username)
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(query, params).fetchone()
        if row is not None:
            row["review"] = cur.execute(
                "SELECT id, reviewed_at, reviewer, outcome, reason_code, note FROM loan_desk_reviews "
                "WHERE decision_id = %s",
                [decision_id],
            ).fetchone()
        return row
