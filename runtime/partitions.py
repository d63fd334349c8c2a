"""Hash partitions of an offline table: what the catalog says, and which partition a key goes to.

A load (bootstrap/load.py) makes ``credit_history`` a ``PARTITION BY HASH (dob_ssn)`` table with
partitions ``credit_history_p0`` … ``_p<n-1>`` (``FOR VALUES WITH (MODULUS n, REMAINDER i)``).
The point-in-time join and materialization (feast_ext/) read the catalog here to run one query
per partition; nothing assumes a partition count, so data loaded with another setting is read
as it is.  ``route`` asks Postgres itself where keys go (no copy of its hash function here).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from psycopg import sql

# The bound as stored (pg_node_tree): read as text, because pg_get_expr() would lock the partition
# (and wait behind anyone holding it) just to print it.
_BOUND = re.compile(r":strategy h .*?:modulus (\d+) :remainder (\d+)")


@dataclass(frozen=True)
class HashPartitions:
    """A table hash-partitioned on one column: its partitions, ordered by remainder."""

    table: str
    column: str
    column_type: str  # as format_type() prints it, e.g. text
    modulus: int
    names: tuple[str, ...]  # partition i holds the keys whose hash has remainder i

    def __len__(self) -> int:
        return len(self.names)


def hash_partitions(conn, table: str, schema: str = "public") -> HashPartitions | None:
    """``table``'s hash partitions when it is hash-partitioned on one column into partitions of
    one modulus, one per remainder (what a load makes); None for a plain table or any other layout."""
    row = conn.execute(
        "SELECT pt.partstrat, pt.partnatts, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0] "
        "WHERE n.nspname = %s AND c.relname = %s",
        [schema, table],
    ).fetchone()
    if row is None or row[0] != "h" or row[1] != 1 or row[2] is None:
        return None
    parts = conn.execute(
        "SELECT c.relname, c.relpartbound::text, c.relkind FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [f"{schema}.{table}" if schema != "public" else table],
    ).fetchall()
    bounds = {}
    for name, bound, kind in parts:
        m = _BOUND.search(bound or "")
        if not m or kind != "r":
            return None
        bounds[int(m.group(2))] = (int(m.group(1)), name)
    moduli = {mod for mod, _ in bounds.values()}
    if len(moduli) != 1 or sorted(bounds) != list(range(next(iter(moduli)))):
        return None
    modulus = moduli.pop()
    return HashPartitions(table, row[2], row[3], modulus, tuple(bounds[i][1] for i in range(modulus)))


def route(conn, keys: Sequence, column_type: str, modulus: int) -> np.ndarray:
    """The remainder (partition index) of each key under ``PARTITION BY HASH`` with ``modulus``,
    as Postgres routes it: the keys go through a temporary table partitioned the same way.
    ``conn`` must not be in a failed transaction; the temporary tables are gone afterwards."""
    out = np.zeros(len(keys), dtype=np.int32)
    if modulus <= 1 or len(keys) == 0:
        return out
    name = "loan_desk_route"
    ident = sql.Identifier(name)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} (i bigint, k {}) PARTITION BY HASH (k)").format(ident, sql.SQL(column_type))
        )
        for r in range(modulus):
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
                    sql.Identifier(f"{name}_{r}"), ident, sql.Literal(modulus), sql.Literal(r)
                )
            )
        with cur.copy(sql.SQL("COPY {} (i, k) FROM STDIN").format(ident)) as copy:
            for i, k in enumerate(keys):
                copy.write_row((i, k))
        for r in range(modulus):
            idx = [row[0] for row in cur.execute(sql.SQL("SELECT i FROM {}").format(sql.Identifier(f"{name}_{r}")))]
            out[np.asarray(idx, dtype=np.int64)] = r
        cur.execute(sql.SQL("DROP TABLE {}").format(ident))
    return out
