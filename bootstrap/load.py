"""Load applicant data into Postgres: seeded synthetic data, or the tutorial's files.

A load fills staging tables (COPY, indexes, statistics) while readers keep using the live
ones, then swaps them in with a few renames in one short transaction (see "writing" below),
so readers never wait for a COPY and a failed load leaves the previous data as it was.
Loading the same source twice is a no-op: a fingerprint of what was asked is kept in
``loan_desk_dataset``.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from bootstrap import synthetic
from runtime.settings import Settings

TABLES: dict[str, list[tuple[str, str]]] = {
    "zipcode_features": [
        ("zipcode", "bigint"),
        ("city", "text"),
        ("state", "text"),
        ("location_type", "text"),
        ("tax_returns_filed", "bigint"),
        ("population", "bigint"),
        ("total_wages", "bigint"),
        ("event_timestamp", "timestamptz"),
        ("created_timestamp", "timestamptz"),
    ],
    "credit_history": [
        ("dob_ssn", "text"),
        *[(c, "bigint") for c in synthetic.CREDIT_COLUMNS],
        ("event_timestamp", "timestamptz"),
        ("created_timestamp", "timestamptz"),
    ],
    "loans": [
        ("loan_id", "bigint"),
        ("dob_ssn", "text"),
        ("zipcode", "bigint"),
        ("person_age", "bigint"),
        ("person_income", "bigint"),
        ("person_home_ownership", "text"),
        ("person_emp_length", "double precision"),
        ("loan_intent", "text"),
        ("loan_amnt", "bigint"),
        ("loan_int_rate", "double precision"),
        ("loan_status", "integer"),
        ("true_default_prob", "double precision"),
        ("event_timestamp", "timestamptz"),
        ("created_timestamp", "timestamptz"),
    ],
}
NULLABLE = {"true_default_prob"}
# Point-in-time joins look up "latest row at or before T" per entity: these indexes serve them.
# Incremental materialization reads the rows created (or dated) since its last window: the _ts
# and _created indexes serve it (feast_ext/engine.py).
INDEXES = {
    "zipcode_features": [
        ("zipcode_features_pit", ["zipcode", "event_timestamp DESC", "created_timestamp DESC"]),
        ("zipcode_features_ts", ["event_timestamp"]),
        ("zipcode_features_created", ["created_timestamp"]),
    ],
    "credit_history": [
        ("credit_history_pit", ["dob_ssn", "event_timestamp DESC", "created_timestamp DESC"]),
        ("credit_history_ts", ["event_timestamp"]),
        ("credit_history_created", ["created_timestamp"]),
    ],
    "loans": [("loans_ts", ["event_timestamp"]), ("loans_dob_ssn", ["dob_ssn"])],
}
PRIMARY_KEYS = {"loans": "loan_id"}
# Tables hash-partitioned (by this column) when the load's partition count is above 1: partitions
# <table>_p0 .. _p<n-1>, each with its own copy of the table's indexes (<table>_p<i>_<suffix>).
PARTITION_KEYS = {"credit_history": "dob_ssn"}
CHUNK_ROWS = 200_000


class LoadError(RuntimeError):
    """Bad input for a load; nothing stored was changed."""


@dataclass
class LoadRequest:
    source: str = "synthetic"  # synthetic | tutorial
    applicants: int = 30_000
    seed: int = 42
    data_dir: Path | None = None
    as_of: datetime | None = None
    partitions: int | None = None  # hash partitions of credit_history; None: the settings' (1: a plain table)

    def fingerprint(self) -> dict:
        # The layout is part of what is asked: changing LOAN_DESK_PG_PARTITIONS makes the next load reload.
        layout = {"partitions": max(1, self.partitions or 1)}
        if self.source == "synthetic":
            key = {
                "source": "synthetic",
                "applicants": self.applicants,
                "seed": self.seed,
                "generator": synthetic.GENERATOR,
            }
            # Without an explicit date the data is dated on its load day and kept after that.
            return key | ({"as_of": self.as_of.isoformat()} if self.as_of else {}) | layout
        return {"source": "tutorial", "data_dir": str(Path(self.data_dir).resolve()), "seed": self.seed} | layout


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- reading what is there --------------------------------------------------------------
def current_dataset(conn: psycopg.Connection) -> dict | None:
    row = conn.execute("SELECT to_regclass('public.loan_desk_dataset') IS NOT NULL").fetchone()
    if not row[0]:
        return None
    row = conn.execute("SELECT info FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1").fetchone()
    return row[0] if row else None


def has_loans(settings: Settings) -> bool:
    """True when the configured database holds loans (it is never created here)."""
    from runtime import db

    try:
        with db.connect(settings) as conn:
            if not conn.execute("SELECT to_regclass('public.loans') IS NOT NULL").fetchone()[0]:
                return False
            return conn.execute("SELECT EXISTS (SELECT 1 FROM loans)").fetchone()[0]
    except psycopg.OperationalError as exc:
        if f'database "{settings.pgdatabase}" does not exist' in str(exc):
            return False
        raise


# --- the tutorial importer ----------------------------------------------------------------
def read_tutorial(data_dir: Path, seed: int, as_of: datetime | None = None) -> tuple[synthetic.Dataset, list[str]]:
    """The tutorial's parquet files, timestamps moved so its newest loan falls on ``as_of``."""
    data_dir = Path(data_dir)
    notes: list[str] = []
    if not data_dir.is_dir():
        raise LoadError(f"--data-dir {data_dir} is not a folder")
    loan_path, zip_path = data_dir / "loan_table.parquet", data_dir / "zipcode_table.parquet"
    for p in (loan_path, zip_path):
        if not p.is_file():
            raise LoadError(f"{p.name} is missing from {data_dir} (the importer needs it)")
    try:
        loans = pd.read_parquet(loan_path)
        zips = pd.read_parquet(zip_path)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise LoadError(f"could not read the tutorial's parquet files in {data_dir}: {exc}") from None
    need = {c for c, _ in TABLES["loans"]} - {"true_default_prob"}
    missing = need - set(loans.columns)
    if missing:
        raise LoadError(f"loan_table.parquet lacks columns: {', '.join(sorted(missing))}")
    missing = {c for c, _ in TABLES["zipcode_features"]} - set(zips.columns)
    if missing:
        raise LoadError(f"zipcode_table.parquet lacks columns: {', '.join(sorted(missing))}")
    for frame in (loans, zips):
        for col in ("event_timestamp", "created_timestamp"):
            ts = pd.to_datetime(frame[col])
            frame[col] = ts.dt.tz_localize(UTC) if ts.dt.tz is None else ts.dt.tz_convert(UTC)

    as_of = as_of or synthetic.default_as_of()
    shift = pd.Timestamp(as_of) - loans["event_timestamp"].max().ceil("D")
    shift = pd.Timedelta(max(0, shift.days), unit="D")
    notes.append(
        f"moved every timestamp forward by {shift.days} days so the newest loan falls on "
        f"{as_of.date()} (order and point-in-time relations are unchanged)"
    )
    notes.append(_file_order_note(loans))
    credit_path = data_dir / "credit_history.parquet"
    if credit_path.is_file():
        credit = pd.read_parquet(credit_path)
        for col in ("event_timestamp", "created_timestamp"):
            ts = pd.to_datetime(credit[col])
            credit[col] = ts.dt.tz_localize(UTC) if ts.dt.tz is None else ts.dt.tz_convert(UTC)
        notes.append(f"read {len(credit):,} credit history rows from {credit_path.name}")
    else:
        rng = np.random.default_rng(seed)
        applicants = loans["dob_ssn"].drop_duplicates().to_numpy()
        owners = loans.drop_duplicates("dob_ssn").set_index("dob_ssn")["person_home_ownership"]
        credit, _, _ = synthetic.credit_snapshots(
            rng,
            applicants,
            (owners.loc[applicants] == "MORTGAGE").to_numpy(),
            loans["event_timestamp"].max().ceil("D").to_pydatetime(),
        )
        notes.append(
            f"credit_history.parquet is not in {data_dir}: synthesized {len(credit):,} credit "
            f"snapshots for its {len(applicants):,} applicants (seed {seed}); they are independent "
            "of the loans' labels, so they carry no signal about default"
        )
    for frame in (loans, zips, credit):
        frame["event_timestamp"] += shift
        frame["created_timestamp"] += shift
    loans = loans.assign(true_default_prob=np.nan)
    return synthetic.Dataset(loans=loans, credit_history=credit, zipcodes=zips), notes


def _file_order_note(loans: pd.DataFrame) -> str:
    """What the loan table's timestamps are: measured, since a temporal split rests on them."""
    ts = loans["event_timestamp"]
    step = ts.diff().dropna().dt.total_seconds()
    if len(step) and (step < 0).all():
        order = "fall row by row in file order (the first row is the newest)"
    elif len(step) and (step > 0).all():
        order = "rise row by row in file order"
    else:
        order = "do not follow file order"
    even = len(step) > 1 and float(step.abs().std()) < 1.0
    spacing = f", evenly {abs(float(step.mean())) / 60:.1f} minutes apart" if even else ""
    fifth = pd.qcut(ts.rank(method="first"), 5, labels=False)
    ages = loans.groupby(fifth)["person_age"].mean()
    drift = abs(ages.iloc[0] - ages.iloc[-1]) >= 3
    return (
        f"timestamps in loan_table.parquet {order}{spacing}"
        + (
            ": they record the file's row order, not when loans were made"
            if order != "do not follow file order"
            else ""
        )
        + f"; mean age is {ages.iloc[0]:.0f} in the oldest fifth by timestamp and {ages.iloc[-1]:.0f} in the newest"
        + (", so a split by time is also a split by age" if drift else "")
    )


# --- writing --------------------------------------------------------------------------------
# A load never blocks readers for the length of a COPY: it fills staging tables of a new
# generation (``credit_history__staging_<gen>``, indexes and statistics included) in one
# transaction, then -- still in it, under a short lock timeout, retried while a long query
# holds a lock -- renames the live tables to ``<table>__old_<gen>`` and the staging tables to
# the live names, indexes too, and records the dataset row.  Readers wait at most for that
# switch.  The old generation is dropped after the commit.  If anything fails before the
# commit (bad data, a killed backend, Postgres gone), the transaction rolls back: the
# previous data stays live and the staging tables vanish with it.  Old tables whose drop did
# not happen (a crash right after the commit) are dropped by the next load.
STAGING, OLD = "__staging_", "__old_"
LEFTOVER_RE = r"^(" + "|".join(TABLES) + r")__(staging|old)_[0-9a-f]+$"
LOAD_LOCK = 0x4C444C44  # "LDLD": one load at a time per database
SWAP_LOCK_TIMEOUT_S = 0.5  # the longest a reader waits for the switch (per attempt)
SWAP_WAIT_S = 120.0  # how long the switch is retried while a long query holds a table
LOAD_LOCK_WAIT_S = 1800.0  # how long a load waits for another load of the same database
DROP_LOCK_TIMEOUT_S = 10.0  # dropping an old generation waits this long for its last readers


def _pkey(table: str) -> str | None:
    return f"{table}_pkey" if table in PRIMARY_KEYS else None


def _copy_frame(
    cur: psycopg.Cursor, target: str, table: str, frame: pd.DataFrame, progress: Callable[[int], None]
) -> None:
    """COPY ``frame`` into ``target`` (a staging table of ``table``)."""
    cols = [c for c, _ in TABLES[table]]
    _copy_arrow(cur, target, cols, pa.Table.from_pandas(frame[cols], preserve_index=False), progress)


def _copy_arrow(
    cur: psycopg.Cursor, target: str, cols: list[str], rows: pa.Table, progress: Callable[[int], None]
) -> None:
    # FREEZE: the target was created in this transaction, so its rows can be written frozen;
    # otherwise the first reader after the switch sets a hint bit on every row (seconds at 1M),
    # and an anti-wraparound vacuum rewrites every page some day.  Postgres refuses FREEZE on a
    # partitioned table, so a partitioned table's rows are routed here and copied into each
    # partition (see _stage).
    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, FREEZE true)").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, cols))
    )
    opts = pacsv.WriteOptions(include_header=False)
    with cur.copy(stmt) as copy:
        for start in range(0, rows.num_rows, CHUNK_ROWS):
            part = rows.slice(start, CHUNK_ROWS)
            buf = io.BytesIO()
            pacsv.write_csv(part, buf, opts)  # Arrow's C++ writer: ISO timestamps, fast
            copy.write(buf.getbuffer())
            progress(part.num_rows)


def partition_name(table: str, i: int) -> str:
    return f"{table}_p{i}"


def _index_parts(cols: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL(" ").join([sql.Identifier(c.split()[0]), *map(sql.SQL, c.split()[1:])]) for c in cols
    )


def _stage(cur: psycopg.Cursor, table: str, gen: str, frame: pd.DataFrame, progress, partitions: int = 1) -> None:
    """Create ``table``'s staging copy of generation ``gen``, COPY ``frame`` in, index and analyze it.

    Every object of a generation is named ``<live name>__staging_<gen>``; with ``partitions`` > 1
    (tables in PARTITION_KEYS only) the table is ``PARTITION BY HASH`` with partitions
    ``<table>_p<i>``, the frame's rows routed to them by Postgres's own hash (runtime.partitions),
    each partition COPYed with FREEZE and indexed on its own, the indexes attached to the parent's."""
    from runtime.partitions import route

    stage = table + STAGING + gen
    parts = partitions if table in PARTITION_KEYS and partitions > 1 else 1
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t), sql.SQL("" if c in NULLABLE else " NOT NULL"))
        for c, t in TABLES[table]
    )
    by = sql.SQL(" PARTITION BY HASH ({})").format(sql.Identifier(PARTITION_KEYS[table])) if parts > 1 else sql.SQL("")
    cur.execute(sql.SQL("CREATE TABLE {} ({}){}").format(sql.Identifier(stage), columns, by))
    if parts == 1:
        _copy_frame(cur, stage, table, frame, progress)
    else:
        key = PARTITION_KEYS[table]
        key_type = dict(TABLES[table])[key]
        for i in range(parts):
            cur.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
                    sql.Identifier(partition_name(table, i) + STAGING + gen),
                    sql.Identifier(stage),
                    sql.Literal(parts),
                    sql.Literal(i),
                )
            )
        codes, uniques = pd.factorize(frame[key], sort=False)
        where = route(cur.connection, list(uniques), key_type, parts)[codes]
        # One Arrow table in partition order; each partition's rows are a zero-copy slice of it.
        order = np.argsort(where, kind="stable")
        cols = [c for c, _ in TABLES[table]]
        rows = pa.Table.from_pandas(frame[cols], preserve_index=False).take(pa.array(order))
        bounds = np.searchsorted(where[order], np.arange(parts + 1))
        for i in range(parts):
            part = rows.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            _copy_arrow(cur, partition_name(table, i) + STAGING + gen, cols, part, progress)
    if table in PRIMARY_KEYS:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                sql.Identifier(stage), sql.Identifier(_pkey(table) + STAGING + gen), sql.Identifier(PRIMARY_KEYS[table])
            )
        )
    for name, cols in INDEXES[table]:
        index = sql.Identifier(name + STAGING + gen)
        if parts == 1:
            cur.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(index, sql.Identifier(stage), _index_parts(cols)))
            continue
        # Per partition: each partition's own index, attached to the parent's (which has no data).
        cur.execute(sql.SQL("CREATE INDEX {} ON ONLY {} ({})").format(index, sql.Identifier(stage), _index_parts(cols)))
        suffix = name.removeprefix(table)
        for i in range(parts):
            child = sql.Identifier(partition_name(table, i) + suffix + STAGING + gen)
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    child, sql.Identifier(partition_name(table, i) + STAGING + gen), _index_parts(cols)
                )
            )
            cur.execute(sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(index, child))
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(stage)))


def _rename(cur: psycopg.Cursor, kind: str, old: str, new: str) -> None:
    cur.execute(sql.SQL(f"ALTER {kind} {{}} RENAME TO {{}}").format(sql.Identifier(old), sql.Identifier(new)))


def _family(cur: psycopg.Cursor, table: str) -> list[tuple[str, str]]:
    """What a switch renames for ``table``: the table, its partitions, and every index of them
    (a primary key's constraint follows its index), as (TABLE|INDEX, name)."""
    return cur.execute(
        "WITH rels AS (SELECT %(t)s::regclass AS oid UNION ALL "
        "              SELECT inhrelid FROM pg_inherits WHERE inhparent = %(t)s::regclass) "
        "SELECT 'TABLE', c.relname FROM rels JOIN pg_class c ON c.oid = rels.oid "
        "UNION ALL SELECT 'INDEX', ic.relname FROM rels JOIN pg_index i ON i.indrelid = rels.oid "
        "JOIN pg_class ic ON ic.oid = i.indexrelid",
        {"t": f"public.{table}"},
    ).fetchall()


def _switch(conn: psycopg.Connection, gen: str) -> list[str]:
    """Inside the load's transaction: live tables (their partitions and indexes too) become
    ``<name>__old_<gen>``, the staging ones take the live names.  Retried under a short lock
    timeout while a long query holds a table, so readers queue behind the switch for at most
    that timeout.  Returns the old tables to drop after the commit."""
    deadline = time.monotonic() + SWAP_WAIT_S
    attempt = 0
    staged = STAGING + gen
    while True:
        attempt += 1
        try:
            with conn.transaction(), conn.cursor() as cur:  # a savepoint: a lock timeout undoes only this try
                cur.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{SWAP_LOCK_TIMEOUT_S * 1000:.0f}ms"))
                )
                live = [t for t in TABLES if cur.execute("SELECT to_regclass(%s)", [f"public.{t}"]).fetchone()[0]]
                if live:  # a partitioned table's lock covers its partitions
                    cur.execute(
                        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                            sql.SQL(", ").join(map(sql.Identifier, live))
                        )
                    )
                for table in live:
                    for kind, name in _family(cur, table):
                        _rename(cur, kind, name, name + OLD + gen)
                for table in TABLES:
                    for kind, name in _family(cur, table + staged):
                        _rename(cur, kind, name, name.removesuffix(staged))
            return [t + OLD + gen for t in live]
        except psycopg.errors.LockNotAvailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadError(
                    f"could not switch to the new data: a long query kept a lock on the tables for "
                    f"{SWAP_WAIT_S:.0f} s; the previous data is still live (try again when it has finished)"
                ) from None
            pause = min(0.2 * attempt, 2.0, left)
            _say(f"  a query holds the tables; switching again in {pause:.1f} s (attempt {attempt})")
            time.sleep(pause)


def drop_tables(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Drop these (old or leftover) tables, each waiting at most DROP_LOCK_TIMEOUT_S for its last
    readers; returns the ones still there (the next load drops them)."""
    kept = []
    for table in tables:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{DROP_LOCK_TIMEOUT_S * 1000:.0f}ms"))
                )
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        except psycopg.errors.LockNotAvailable:
            kept.append(table)
    return kept


def leftover_tables(conn: psycopg.Connection) -> list[str]:
    """Staging or old generations of the data tables that an interrupted load left behind."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname ~ %s ORDER BY 1",
        [LEFTOVER_RE],
    ).fetchall()
    return [r[0] for r in rows]


def write_dataset(conn: psycopg.Connection, data: synthetic.Dataset, info: dict, partitions: int = 1) -> dict[str, int]:
    """Replace the three data tables with ``data`` (see the comment above); ``conn`` in autocommit.
    ``partitions`` > 1: credit_history hash-partitioned by dob_ssn into that many partitions."""
    frames = {"zipcode_features": data.zipcodes, "credit_history": data.credit_history, "loans": data.loans}
    total = sum(len(f) for f in frames.values())
    done = 0
    last = [0.0]

    def progress(rows: int) -> None:
        nonlocal done
        done += rows
        now = time.monotonic()
        if now - last[0] > 1 or done == total:
            last[0] = now
            _say(f"  copied {done:,} / {total:,} rows ({100 * done / total:.0f}%)")

    gen = secrets.token_hex(4)
    counts = {table: len(frame) for table, frame in frames.items()}
    with conn.transaction():
        with conn.cursor() as cur:
            for table, frame in frames.items():
                _stage(cur, table, gen, frame, progress, partitions)
        old = _switch(conn, gen)
        conn.execute("DELETE FROM loan_desk_dataset")
        full = {**info, "rows": counts, "loaded_at": datetime.now(UTC).isoformat()}
        # Dated at the switch, not at the start of the transaction: a materialization that ran
        # during the COPY read the old data and must count as older than this load.
        conn.execute(
            "INSERT INTO loan_desk_dataset (loaded_at, info) VALUES (clock_timestamp(), %s)", [json.dumps(full)]
        )
    kept = drop_tables(conn, old)
    if kept:
        _say(f"  {', '.join(kept)} still in use: the next load drops it")
    return counts


@contextmanager
def _load_lock(conn: psycopg.Connection):
    """One load at a time per database (session advisory lock on the load's connection)."""
    t0 = time.monotonic()
    said = False
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", [LOAD_LOCK]).fetchone()[0]:
        if time.monotonic() - t0 > LOAD_LOCK_WAIT_S:
            raise LoadError(f"another load of this database has been running for over {LOAD_LOCK_WAIT_S:.0f} s")
        if not said:
            _say("waiting for another load of this database to finish ...")
            said = True
        time.sleep(0.5)
    try:
        yield
    finally:
        if not conn.closed:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", [LOAD_LOCK])
            except psycopg.Error:
                pass  # the connection is gone: so is its lock


def load(settings: Settings, req: LoadRequest, force: bool = False) -> tuple[bool, str]:
    """Load if what is asked differs from what is there. Returns (changed, message)."""
    if req.source not in ("synthetic", "tutorial"):
        raise LoadError(f"unknown --source {req.source!r}: use synthetic or tutorial")
    if req.source == "synthetic" and not (1 <= req.applicants <= 5_000_000):
        raise LoadError("--applicants must be between 1 and 5,000,000")
    if req.source == "tutorial" and req.data_dir is None:
        raise LoadError("--source tutorial needs --data-dir DIR (the folder with loan_table.parquet)")
    from runtime import db
    from runtime.migrations import migrate

    migrate(settings)
    req = replace(req, partitions=max(1, req.partitions or settings.pg_partitions))
    wanted = req.fingerprint()
    with db.connect(settings, job=True) as conn, _load_lock(conn):
        conn.execute("SET application_name = 'loan-desk load'")
        leftovers = leftover_tables(conn)
        if leftovers:
            kept = drop_tables(conn, leftovers)
            _say(f"dropped {len(leftovers) - len(kept)} table(s) an interrupted load left behind")
        have = current_dataset(conn)
        have_key = {k: v for k, v in (have or {}).items() if k in wanted}
        if have_key == wanted and not force:
            return False, f"already loaded: {_describe(have)}; nothing to do"
        t0 = time.perf_counter()
        if req.source == "synthetic":
            _say(f"generating {req.applicants:,} synthetic applicants (seed {req.seed}) ...")
            data, notes = synthetic.generate(req.applicants, req.seed, req.as_of), []
        else:
            data, notes = read_tutorial(req.data_dir, req.seed, req.as_of)
            for n in notes:
                _say(f"  {n}")
        gen_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        counts = write_dataset(conn, data, {**wanted, "notes": notes}, req.partitions)
        copy_s = time.perf_counter() - t1
    rows = sum(counts.values())
    what = "replaced " + _describe(have) + " with" if have else "loaded"
    msg = (
        f"{what} {_describe({**wanted, 'rows': counts})}: {rows:,} rows in {gen_s + copy_s:.1f} s "
        f"(prepare {gen_s:.1f} s, COPY+index {copy_s:.1f} s, {rows / copy_s:,.0f} rows/s)"
        + (f"; credit_history in {req.partitions} hash partitions by dob_ssn" if req.partitions > 1 else "")
    )
    return True, msg


def _describe(info: dict | None) -> str:
    if not info:
        return "nothing"
    rows = info.get("rows", {})
    if info.get("source") == "synthetic":
        what = f"synthetic data ({info.get('applicants'):,} applicants, seed {info.get('seed')})"
    else:
        what = f"the tutorial's data from {info.get('data_dir')}"
    if rows:
        what += (
            f" [{rows.get('loans', 0):,} loans, {rows.get('credit_history', 0):,} credit snapshots, "
            f"{rows.get('zipcode_features', 0):,} zipcode rows]"
        )
    return what
