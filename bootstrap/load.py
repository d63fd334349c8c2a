"""Load applicant data into Postgres: seeded synthetic data, or the tutorial's files.

A load replaces all three tables in one transaction (COPY into fresh tables, then indexes
and statistics), so a failed load leaves the previous data as it was.  Loading the same
source twice is a no-op: a fingerprint of what was asked is kept in ``loan_desk_dataset``.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
INDEXES = {
    "zipcode_features": [("zipcode_features_pit", ["zipcode", "event_timestamp DESC", "created_timestamp DESC"])],
    "credit_history": [
        ("credit_history_pit", ["dob_ssn", "event_timestamp DESC", "created_timestamp DESC"]),
        ("credit_history_ts", ["event_timestamp"]),
    ],
    "loans": [("loans_ts", ["event_timestamp"]), ("loans_dob_ssn", ["dob_ssn"])],
}
PRIMARY_KEYS = {"loans": "loan_id"}
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

    def fingerprint(self) -> dict:
        if self.source == "synthetic":
            key = {"source": "synthetic", "applicants": self.applicants, "seed": self.seed}
            # Without an explicit date the data is dated on its load day and kept after that.
            return key | ({"as_of": self.as_of.isoformat()} if self.as_of else {})
        return {"source": "tutorial", "data_dir": str(Path(self.data_dir).resolve()), "seed": self.seed}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- reading what is there --------------------------------------------------------------
def current_dataset(conn: psycopg.Connection) -> dict | None:
    row = conn.execute("SELECT to_regclass('public.loan_desk_dataset') IS NOT NULL").fetchone()
    if not row[0]:
        return None
    row = conn.execute("SELECT info FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1").fetchone()
    return row[0] if row else None


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


# --- writing --------------------------------------------------------------------------------
def _copy_frame(cur: psycopg.Cursor, table: str, frame: pd.DataFrame, progress: Callable[[int], None]) -> None:
    cols = [c for c, _ in TABLES[table]]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols))
    )
    table_ = pa.Table.from_pandas(frame[cols], preserve_index=False)
    opts = pacsv.WriteOptions(include_header=False)
    with cur.copy(stmt) as copy:
        for start in range(0, len(frame), CHUNK_ROWS):
            part = table_.slice(start, CHUNK_ROWS)
            buf = io.BytesIO()
            pacsv.write_csv(part, buf, opts)  # Arrow's C++ writer: ISO timestamps, fast
            copy.write(buf.getbuffer())
            progress(part.num_rows)


def write_dataset(conn: psycopg.Connection, data: synthetic.Dataset, info: dict) -> dict[str, int]:
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

    counts = {}
    with conn.transaction(), conn.cursor() as cur:
        for table, frame in frames.items():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t), sql.SQL("" if c in NULLABLE else " NOT NULL"))
                for c, t in TABLES[table]
            )
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), columns))
            _copy_frame(cur, table, frame, progress)
            if table in PRIMARY_KEYS:
                cur.execute(
                    sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                        sql.Identifier(table), sql.Identifier(PRIMARY_KEYS[table])
                    )
                )
            for name, cols in INDEXES[table]:
                parts = [sql.SQL(" ").join([sql.Identifier(c.split()[0]), *map(sql.SQL, c.split()[1:])]) for c in cols]
                cur.execute(
                    sql.SQL("CREATE INDEX {} ON {} ({})").format(
                        sql.Identifier(name), sql.Identifier(table), sql.SQL(", ").join(parts)
                    )
                )
            cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
            counts[table] = len(frame)
        cur.execute(
            "CREATE TABLE IF NOT EXISTS loan_desk_dataset ("
            " loaded_at timestamptz NOT NULL DEFAULT now(), info jsonb NOT NULL)"
        )
        cur.execute("DELETE FROM loan_desk_dataset")
        full = {**info, "rows": counts, "loaded_at": datetime.now(UTC).isoformat()}
        cur.execute("INSERT INTO loan_desk_dataset (info) VALUES (%s)", [json.dumps(full)])
    return counts


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
    wanted = req.fingerprint()
    with db.connect(settings, job=True, autocommit=False) as conn:
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
        counts = write_dataset(conn, data, {**wanted, "notes": notes})
        copy_s = time.perf_counter() - t1
    rows = sum(counts.values())
    what = "replaced " + _describe(have) + " with" if have else "loaded"
    msg = (
        f"{what} {_describe({**wanted, 'rows': counts})}: {rows:,} rows in {gen_s + copy_s:.1f} s "
        f"(prepare {gen_s:.1f} s, COPY+index {copy_s:.1f} s, {rows / copy_s:,.0f} rows/s)"
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
