"""`loan-desk export --parquet DIR`: the offline tables, from Postgres to Parquet for Spark.

Layout: ``DIR/<table>/event_month=YYYY-MM/part-NNNNN.parquet`` for credit_history,
zipcode_features and loans, and ``DIR/_loan_desk_export.json`` (what was exported, from which
load).  Partitions are hive-style folders of the UTC month of ``event_timestamp``: Spark
discovers them by itself, Feast's Spark source prunes the months outside a query's window
(``date_partition_column``), and a month holds enough rows for files Spark reads efficiently
(daily folders would give a thousand files of a few kilobytes for 1M applicants, and Spark
pays per file and per task). Within a partition the rows are in event-time order, so each
row group's min/max statistics also skip data for timestamp filters. A file holds at most
``ROWS_PER_FILE`` rows.  Timestamps are Parquet timestamps adjusted to UTC (microseconds).

Streaming: each table is read with ``COPY (SELECT ... ORDER BY event_timestamp) TO STDOUT``
through Arrow's streaming CSV reader, block by block; rows come in time order, so one Parquet
file is open at a time and memory stays at a few blocks whatever the table's size.  The three
tables are read in one REPEATABLE READ transaction: one consistent snapshot, even while a
`loan-desk load` replaces the data.

Atomic replace: DIR is a symbolic link to a sibling folder ``DIR.v-<stamp>``.  A new export is
written into ``DIR.tmp-<stamp>``, renamed to ``DIR.v-<stamp>`` once complete, and DIR is
switched to it by renaming a new link over it (one rename(2): a reader opening DIR sees the
previous export or the new one, never part of one); then the previous version is removed.
A failed export removes its temporary folder and leaves DIR as it was.
"""

from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from bootstrap.load import TABLES
from feast_ext.spark import EXPORT_TABLES, MANIFEST, PARTITION_COLUMN
from runtime.files import fsync_dir
from runtime.settings import Settings

ROWS_PER_FILE = 1_000_000
CSV_BLOCK_BYTES = 4 << 20  # Arrow parses about 50,000 rows per block
ARROW_TYPES = {
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "text": pa.string(),
    "double precision": pa.float64(),
    "timestamptz": pa.int64(),  # read as epoch microseconds, then cast (below)
}
TIMESTAMP = pa.timestamp("us", tz="UTC")


class ExportError(RuntimeError):
    """A folder the export cannot use; nothing was changed."""


@dataclass
class TableExport:
    rows: int = 0
    files: int = 0
    partitions: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    target: Path
    version: Path
    tables: dict[str, TableExport]
    seconds: float

    @property
    def message(self) -> str:
        parts = ", ".join(
            f"{name} {t.rows:,} rows in {len(t.partitions)} months ({t.files} files)" for name, t in self.tables.items()
        )
        return f"exported to {self.target}: {parts}; {self.seconds:.1f} s"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the target folder -------------------------------------------------------------------
def _version_glob(target: Path, kind: str) -> list[Path]:
    return [Path(p) for p in glob.glob(f"{glob.escape(str(target))}.{kind}-*")]


def _check_target(target: Path) -> None:
    """DIR may be missing, an empty folder, or the link an earlier export made."""
    if target.is_symlink():
        dest = os.readlink(target)
        if os.sep in dest or not dest.startswith(f"{target.name}.v-"):
            raise ExportError(f"{target} is a link to {dest}, not to an earlier export: choose another folder")
    elif target.exists():
        if not target.is_dir():
            raise ExportError(f"{target} is a file, not a folder: choose a folder for the export")
        if any(target.iterdir()):
            raise ExportError(
                f"{target} is a folder with other files in it: choose a new or empty folder "
                "(the export makes it a link to its newest version)"
            )


def _prepare_parent(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"{parent} is a file, not a folder: choose a folder for the export") from None
    except OSError as exc:
        raise ExportError(f"cannot create {parent}: {exc.strerror or exc}") from None
    if not parent.is_dir():
        raise ExportError(f"{parent} is not a folder: choose a folder for the export")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write in {parent}: permission denied")


# --- reading Postgres ----------------------------------------------------------------------
class _CopyReader(io.RawIOBase):
    """A psycopg COPY TO STDOUT as a readable binary stream (Arrow's CSV reader pulls from it)."""

    def __init__(self, copy):
        self._chunks = iter(copy)
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk).cast("B")
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def _copy_query(table: str) -> sql.Composed:
    cols = []
    for name, kind in TABLES[table]:
        if kind == "timestamptz":
            cols.append(
                sql.SQL("round(extract(epoch FROM {c}) * 1000000)::bigint AS {c}").format(c=sql.Identifier(name))
            )
        else:
            cols.append(sql.Identifier(name))
    cols.append(
        sql.SQL("to_char(event_timestamp AT TIME ZONE 'UTC', 'YYYY-MM') AS {}").format(sql.Identifier(PARTITION_COLUMN))
    )
    return sql.SQL("COPY (SELECT {} FROM {} ORDER BY event_timestamp) TO STDOUT (FORMAT csv)").format(
        sql.SQL(", ").join(cols), sql.Identifier(table)
    )


def _batches(cur, table: str):
    """Record batches of ``table`` in event-time order, timestamps as UTC timestamps."""
    names = [n for n, _ in TABLES[table]] + [PARTITION_COLUMN]
    types = {n: ARROW_TYPES[k] for n, k in TABLES[table]} | {PARTITION_COLUMN: pa.string()}
    stamps = [n for n, k in TABLES[table] if k == "timestamptz"]
    with cur.copy(_copy_query(table)) as copy:
        stream = io.BufferedReader(_CopyReader(copy), buffer_size=1 << 20)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
            ),
        )
        for batch in reader:
            arrays = [
                batch.column(i).cast(TIMESTAMP) if name in stamps else batch.column(i) for i, name in enumerate(names)
            ]
            yield pa.RecordBatch.from_arrays(arrays, names=names)


# --- writing Parquet -----------------------------------------------------------------------
class _PartitionedWriter:
    """Hive-style partitions of one table; one Parquet file open at a time."""

    def __init__(self, root: Path, schema: pa.Schema):
        self.root, self.schema = root, schema
        self.result = TableExport()
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._month: str | None = None
        self._rows_in_file = 0
        self._parts: dict[str, int] = {}

    def _open(self, month: str) -> None:
        self._close()
        folder = self.root / f"{PARTITION_COLUMN}={month}"
        folder.mkdir(parents=True, exist_ok=True)
        n = self._parts.get(month, 0)
        self._parts[month] = n + 1
        if month not in self.result.partitions:
            self.result.partitions.append(month)
        self._path = folder / f"part-{n:05d}.parquet"
        self._writer = pq.ParquetWriter(self._path, self.schema, compression="snappy")
        self._month, self._rows_in_file = month, 0
        self.result.files += 1

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            fd = os.open(self._path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        months = batch.column(PARTITION_COLUMN)
        data = pa.Table.from_batches([batch]).drop_columns([PARTITION_COLUMN])
        for month in pc.unique(months).to_pylist():
            part = data.filter(pc.equal(months, month))
            while part.num_rows:
                if self._month != month or self._rows_in_file >= ROWS_PER_FILE:
                    self._open(month)
                take = min(part.num_rows, ROWS_PER_FILE - self._rows_in_file)
                self._writer.write_table(part.slice(0, take))
                self._rows_in_file += take
                self.result.rows += take
                part = part.slice(take)

    def close(self) -> TableExport:
        self._close()
        return self.result


def _write_table(cur, table: str, root: Path) -> TableExport:
    schema = pa.schema([(n, TIMESTAMP if k == "timestamptz" else ARROW_TYPES[k]) for n, k in TABLES[table]])
    writer = _PartitionedWriter(root / table, schema)
    try:
        for batch in _batches(cur, table):
            writer.write(batch)
    finally:
        result = writer.close()
    if result.rows == 0:  # an empty table still has a readable (empty) folder
        (root / table).mkdir(parents=True, exist_ok=True)
    return result


# --- the export ------------------------------------------------------------------------------
def export_parquet(settings: Settings, target: Path, progress=_say) -> ExportResult:
    """Export the offline tables to ``target`` (see the module's docstring)."""
    from bootstrap.load import current_dataset
    from runtime import db

    target = Path(os.path.abspath(os.fspath(target)))
    if target == Path(target.anchor):
        raise ExportError("the export needs a folder of its own, not the file system's root")
    parent = target.parent
    _prepare_parent(parent)
    _check_target(target)
    lock_path = parent / f".{target.name}.export-lock"
    try:
        lock = open(lock_path, "a")  # noqa: SIM115 (held for the whole export)
    except OSError as exc:
        raise ExportError(f"cannot write in {parent}: {exc.strerror or exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"another export to {target} is running") from None
        _check_target(target)  # again, under the lock
        for stale in _version_glob(target, "tmp") + _version_glob(target, "link"):  # left by a killed export
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        tmp = parent / f"{target.name}.tmp-{stamp}"
        try:
            tmp.mkdir(mode=0o700)  # applicants' data (dob_ssn): readable by this user only, like the database
        except OSError as exc:
            raise ExportError(f"cannot write in {parent}: {exc.strerror or exc}") from None
        t0 = time.perf_counter()
        try:
            tables: dict[str, TableExport] = {}
            with db.connect(settings, job=True, autocommit=False) as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                dataset = current_dataset(conn)
                with conn.cursor() as cur:
                    for table in EXPORT_TABLES:
                        t1 = time.perf_counter()
                        tables[table] = res = _write_table(cur, table, tmp)
                        progress(
                            f"  {table}: {res.rows:,} rows, {len(res.partitions)} months, "
                            f"{res.files} files ({time.perf_counter() - t1:.1f} s)"
                        )
                conn.rollback()  # read only
            manifest = {
                "exported_at": datetime.now(UTC).isoformat(),
                "source": settings.pg_where,
                "dataset": dataset,
                "partition_column": PARTITION_COLUMN,
                "partition_format": "YYYY-MM (UTC month of event_timestamp)",
                "tables": {
                    name: {"rows": t.rows, "files": t.files, "partitions": t.partitions} for name, t in tables.items()
                },
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            fsync_dir(tmp)
            version = parent / f"{target.name}.v-{stamp}"
            os.rename(tmp, version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Switch DIR to the new version in one rename, then drop the earlier versions.
        link = parent / f"{target.name}.link-{stamp}"
        os.symlink(version.name, link)
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # empty (checked above)
        os.replace(link, target)
        fsync_dir(parent)
        for old in _version_glob(target, "v"):
            if old.name != version.name:
                shutil.rmtree(old, ignore_errors=True)
        return ExportResult(target, version, tables, time.perf_counter() - t0)


def read_manifest(target: Path) -> dict | None:
    try:
        return json.loads((Path(target) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
