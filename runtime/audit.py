"""Hash chains over the decision trail: an edited, deleted or slipped-in record shows.

Each chain (decisions, reviews) seals every record as it is written, in the same transaction:

    field_hashes[f] = sha256(f + US + Postgres' own text of column f)     one per recorded field
    record_hash     = sha256(prev_hash + canonical JSON of field_hashes)  prev_hash: the record before

The text of each column is taken from Postgres (``jsonb::text``, the IEEE bytes of a double, the
UTC time to the microsecond), so sealing and checking read the same bytes whatever the client.
``loan_desk_chain_heads`` holds each chain's last id and hash under a row lock, which orders the
writers and lets ``verify`` notice a deleted tail.  ``verify`` walks a chain in id order and
names each record that differs and how: a field changed (which), a record before it missing, a
record not sealed, or the head not matching the last record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from psycopg import sql

from runtime import db
from runtime.settings import Settings

GENESIS = b"\0" * 32
_F8 = "encode(float8send({0}), 'hex')"
_TS = "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"


@dataclass(frozen=True)
class Chain:
    name: str
    table: str
    fields: dict[str, str]  # field → SQL text expression of it

    def select_list(self) -> sql.Composed:
        return sql.SQL(", ").join(sql.SQL(expr) for expr in self.fields.values())


def _texts(fields: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, kind in fields.items():
        col = f'"{name}"'
        out[name] = {"f8": _F8, "ts": _TS, "text": "{0}::text"}[kind].format(col)
    return out


DECISIONS = Chain(
    "decisions",
    "loan_desk_decisions",
    _texts(
        {
            "decided_at": "ts",
            "username": "text",
            "channel": "text",
            "client": "text",
            "batch_id": "text",
            "inputs": "text",
            "features": "text",
            "probability": "f8",
            "threshold": "f8",
            "band": "text",
            "outcome": "text",
            "reasons": "text",
            "refer_reasons": "text",
            "contributions": "text",
            "model_version": "text",
            "policy_version": "text",
            "challenger": "text",
            "latency_ms": "f8",
        }
    ),
)
REVIEWS = Chain(
    "reviews",
    "loan_desk_reviews",
    _texts(
        {
            "decision_id": "text",
            "reviewed_at": "ts",
            "reviewer": "text",
            "outcome": "text",
            "reason_code": "text",
            "note": "text",
        }
    ),
)
CHAINS = {c.name: c for c in (DECISIONS, REVIEWS)}


def field_hashes(chain: Chain, texts) -> dict[str, str]:
    out = {}
    for name, text in zip(chain.fields, texts, strict=True):
        data = name.encode() + b"\x1f" + (b"\x00null" if text is None else text.encode("utf-8"))
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def seal(prev: bytes, hashes: dict[str, str]) -> bytes:
    canonical = json.dumps(hashes, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(bytes(prev) + canonical).digest()


def _lock_head(conn, chain: Chain):
    """The chain's head row, locked until the transaction ends (None before the chain's first record)."""
    return conn.execute(
        "SELECT last_hash FROM loan_desk_chain_heads WHERE chain = %s FOR UPDATE", [chain.name]
    ).fetchone()


def _insert_query(chain: Chain, columns: list[str]) -> sql.Composed:
    """INSERT of one record, returning its id and Postgres' text of every sealed field."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id, {}").format(
        sql.Identifier(chain.table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        chain.select_list(),
    )


def insert_sealed(conn, chain: Chain, columns: list[str], values: list) -> int:
    """Insert one record and seal it onto its chain; the caller's transaction must be open.
    Returns the new id.  Writers of one chain queue on its head row (a few ms at most)."""
    head = _lock_head(conn, chain)
    if head is None:
        conn.execute(
            "INSERT INTO loan_desk_chain_heads (chain, last_id, last_hash, records) VALUES (%s, 0, %s, 0) "
            "ON CONFLICT (chain) DO NOTHING",
            [chain.name, GENESIS],
        )
        head = _lock_head(conn, chain)
    prev = bytes(head[0])
    query = _insert_query(chain, columns)
    row = conn.execute(query, values).fetchone()
    new_id, texts = row[0], row[1:]
    hashes = field_hashes(chain, texts)
    record = seal(prev, hashes)
    conn.execute(
        sql.SQL(
            "WITH s AS (UPDATE {} SET prev_hash = %s, record_hash = %s, field_hashes = %s WHERE id = %s) "
            "UPDATE loan_desk_chain_heads SET last_id = %s, last_hash = %s, records = records + 1 WHERE chain = %s"
        ).format(sql.Identifier(chain.table)),
        [prev, record, json.dumps(hashes), new_id, new_id, record, chain.name],
    )
    return new_id


def insert_sealed_many(conn, chain: Chain, columns: list[str], rows: list[list]) -> list[int]:
    """``insert_sealed`` for many records in one go (the caller's transaction must be open): the
    chain's head is locked once, the inserts and the seals are sent as pipelined batches, and
    the records are sealed in id order onto the chain.  Returns the new ids, in ``rows``' order."""
    if not rows:
        return []
    head = _lock_head(conn, chain)
    if head is None:
        first = insert_sealed(conn, chain, columns, rows[0])  # creates the head; the rest follow it
        return [first, *insert_sealed_many(conn, chain, columns, rows[1:])]
    prev = bytes(head[0])
    query = _insert_query(chain, columns)
    with conn.cursor() as cur:
        cur.executemany(query, rows, returning=True)
        returned = []
        while True:
            returned.append(cur.fetchone())
            if not cur.nextset():
                break
        seals = []
        for row in returned:  # ids rise in this order: the head's lock keeps other writers out
            hashes = field_hashes(chain, row[1:])
            record = seal(prev, hashes)
            seals.append([prev, record, json.dumps(hashes), row[0]])
            prev = record
        cur.executemany(
            sql.SQL("UPDATE {} SET prev_hash = %s, record_hash = %s, field_hashes = %s WHERE id = %s").format(
                sql.Identifier(chain.table)
            ),
            seals,
        )
    conn.execute(
        "UPDATE loan_desk_chain_heads SET last_id = %s, last_hash = %s, records = records + %s WHERE chain = %s",
        [returned[-1][0], prev, len(returned), chain.name],
    )
    return [row[0] for row in returned]


@dataclass
class Verification:
    chain: str
    sealed: int
    before_chain: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(settings: Settings, chain: Chain, limit_problems: int = 50) -> Verification:
    """Walk one chain in id order and recompute every seal."""
    problems: list[str] = []
    sealed = before = 0
    expected_prev = GENESIS
    last_id = None
    started = False
    query = sql.SQL("SELECT id, prev_hash, record_hash, field_hashes, {} FROM {} ORDER BY id").format(
        chain.select_list(), sql.Identifier(chain.table)
    )
    with db.connect(settings, job=True) as conn:
        with conn.transaction(), conn.cursor(name=f"verify_{chain.name}") as cur:
            cur.itersize = 5000
            cur.execute(query)
            for row in cur:
                rid, prev, stored, stored_fields = row[0], row[1], row[2], row[3]
                if stored is None:
                    if started:
                        problems.append(f"{chain.name} record {rid}: not sealed (written outside Loan Desk?)")
                    else:
                        before += 1
                    continue
                started = True
                sealed += 1
                hashes = field_hashes(chain, row[4:])
                changed = [f for f, h in hashes.items() if (stored_fields or {}).get(f) != h]
                if changed:
                    problems.append(f"{chain.name} record {rid}: {', '.join(changed)} differ from what was recorded")
                if bytes(prev) != expected_prev:
                    where = f"after record {last_id}" if last_id is not None else "at the start of the chain"
                    problems.append(
                        f"{chain.name} record {rid}: the record before it ({where}) is missing or was altered — "
                        "its link does not match"
                    )
                if seal(bytes(prev), stored_fields or {}) != bytes(stored):
                    problems.append(f"{chain.name} record {rid}: its seal does not match its field hashes")
                expected_prev = bytes(stored)
                last_id = rid
                if len(problems) >= limit_problems:
                    problems.append("… stopped after the first problems")
                    break
        head = conn.execute(
            "SELECT last_id, last_hash, records FROM loan_desk_chain_heads WHERE chain = %s", [chain.name]
        ).fetchone()
    if len(problems) < limit_problems:
        if head is None and sealed:
            problems.append(f"{chain.name}: the chain's head is missing")
        elif head is not None and (head[0] != (last_id or 0) or bytes(head[1]) != expected_prev or head[2] != sealed):
            problems.append(
                f"{chain.name}: the chain's head names record {head[0]} ({head[2]} records) but the last sealed "
                f"record is {last_id} ({sealed} records): the newest records were deleted or the head was altered"
            )
    return Verification(chain.name, sealed, before, problems)
