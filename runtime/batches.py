"""Batches of decisions (loan_desk_batches): one row per scored file, its counters and status.

A batch is opened ``running``; model/batch.py adds each chunk's counters in the transaction
that records the chunk's decisions (``recorded_through``: the last input line recorded), then
closes it ``done`` or ``failed`` with the reason.
"""

from __future__ import annotations

from runtime import db
from runtime.settings import Settings


def earlier_batch(settings: Settings, sha256: str) -> dict | None:
    from psycopg.rows import dict_row

    with db.connection(settings) as conn:
        return (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT id, created_at, username, filename, rows, scored, errors, status, recorded_through "
                "FROM loan_desk_batches WHERE sha256 = %s ORDER BY created_at DESC LIMIT 1",
                [sha256],
            )
            .fetchone()
        )


def batch_by_id(settings: Settings, batch_id: int) -> dict | None:
    from psycopg.rows import dict_row

    with db.connection(settings) as conn:
        return (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT id, created_at, finished_at, username, filename, rows, scored, errors, status, "
                "recorded_through, error, sha256 FROM loan_desk_batches WHERE id = %s",
                [batch_id],
            )
            .fetchone()
        )


def recent_batches(settings: Settings, username: str | None = None, limit: int = 10) -> list[dict]:
    """The latest batches, newest first (``username``: only that user's)."""
    from psycopg.rows import dict_row

    with db.connection(settings) as conn:
        return (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT id, created_at, finished_at, username, filename, rows, scored, errors, status, "
                "recorded_through, error FROM loan_desk_batches WHERE %(u)s::text IS NULL OR username = %(u)s "
                "ORDER BY id DESC LIMIT %(n)s",
                {"u": username, "n": limit},
            )
            .fetchall()
        )


def open_batch(settings: Settings, username: str, filename: str, sha256: str) -> int:
    with db.connection(settings) as conn, conn.transaction():
        return conn.execute(
            "INSERT INTO loan_desk_batches (username, filename, sha256) VALUES (%s, %s, %s) RETURNING id",
            [username, filename[:300], sha256],
        ).fetchone()[0]


def close_batch(settings: Settings, batch_id: int, status: str, error: str | None) -> None:
    with db.connection(settings) as conn, conn.transaction():
        conn.execute(
            "UPDATE loan_desk_batches SET status = %s, error = %s, finished_at = now() WHERE id = %s",
            [status, error, batch_id],
        )


def count_chunk(conn, batch_id: int, rows: int, scored: int, errors: int, through: int) -> None:
    """Add one chunk's counters, inside the transaction that records its decisions."""
    conn.execute(
        "UPDATE loan_desk_batches SET rows = rows + %s, scored = scored + %s, errors = errors + %s, "
        "recorded_through = %s WHERE id = %s",
        [rows, scored, errors, through, batch_id],
    )
