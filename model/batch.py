"""Batch scoring: a CSV of applications in, one result row per application out, every decision recorded.

    summary = score_csv(settings, open("in.csv", "rb"), open("out.csv", "w", newline=""), username="ana",
                        filename="in.csv")

The input has a header row with the tutorial's field names (any case, spaces around them
ignored): ``dob_ssn`` or ``date_of_birth`` + ``ssn_last4``, ``zipcode``, ``person_income``,
``person_home_ownership``, ``person_emp_length``, ``loan_intent``, ``loan_amnt``,
``loan_int_rate``; ``person_age`` is optional (derived from the date of birth) and other columns
are ignored.  UTF-8 with or without a byte-order mark, any line endings.

The file is read twice, as a stream, never whole: a first pass checks that it is UTF-8 text,
counts its lines (for the progress bar) and takes its SHA-256; the second scores it ``CHUNK``
rows at a time through ``DecisionService.decide_many`` (one pipelined read of the online store
and one prediction pass per chunk).  Each row is validated exactly as the form validates it; a
row that fails gets its per-field messages in the ``error`` column instead of a decision.

Each scored row is recorded as a decision of the batch (channel ``batch``, one
``loan_desk_batches`` id).  A chunk's decisions and the batch's counters are written in one
transaction, so nothing is half-recorded: when the batch stops midway (the online store or
Postgres goes away) the batch row says ``failed``, why, and ``recorded_through`` — the last
input line whose decision was recorded; every scored row up to that line is recorded, none
after it, and the output file holds exactly those rows.

Scoring a file that was already scored (same SHA-256, a batch that is done or failed) is
refused with the earlier batch's id unless ``again=True``: every row would be recorded a
second time, as new decisions.

Output cells that a spreadsheet would run as a formula (starting with ``= + - @``, a tab or a
carriage return) are prefixed with a single quote.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from model.inference import LABELS, ApplicationError, DecisionService
from runtime import db
from runtime.batches import close_batch, count_chunk, earlier_batch, open_batch
from runtime.decisions import record_decisions
from runtime.schema import masked_applicant
from runtime.settings import Settings

CHUNK = 500
MAX_REASONS = 4
REQUIRED = (
    "zipcode",
    "person_income",
    "person_home_ownership",
    "person_emp_length",
    "loan_intent",
    "loan_amnt",
    "loan_int_rate",
)
OPTIONAL = ("person_age",)
IDENTITY = ("dob_ssn", "date_of_birth", "ssn_last4")
COLUMNS = (
    "row",
    "applicant",
    "outcome",
    "probability",
    *(f"reason_{i}" for i in range(1, MAX_REASONS + 1)),
    "refer_reason",
    "model_version",
    "policy_version",
    "decision_id",
    "error",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A cell that a spreadsheet would evaluate: refused in the input (no field of an application starts so).
INPUT_FORMULA_START = ("=", "@", "\t", "\r")
csv.field_size_limit(1 << 20)  # one cell up to 1 MiB; longer is a file error, not a crash


class BatchInputError(ValueError):
    """The file cannot be scored at all (not UTF-8, no header, missing columns); nothing recorded."""


class AlreadyScored(BatchInputError):
    def __init__(self, batch: dict):
        self.batch = batch
        state = (
            "was scored"
            if batch["status"] == "done"
            else f"was partly scored (that batch {batch['status']}; lines up to {batch['recorded_through']} recorded)"
        )
        super().__init__(
            f"this file {state} as batch #{batch['id']} by {batch['username']} on "
            f"{batch['created_at']:%Y-%m-%d %H:%M} UTC; scoring it again records every row again as new "
            "decisions — ask for that explicitly (--again, or tick 'Score it again')"
        )


@dataclass
class FileCheck:
    sha256: str
    lines: int  # physical lines, header included (an upper bound of the rows, for progress)


@dataclass
class BatchSummary:
    batch_id: int | None
    rows: int = 0
    scored: int = 0
    errors: int = 0
    status: str = "running"
    recorded_through: int = 0
    outcomes: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    failure: str | None = None

    def describe(self) -> str:
        out = ", ".join(f"{n:,} {k}" for k, n in sorted(self.outcomes.items()))
        text = (
            f"batch #{self.batch_id}: {self.rows:,} rows, {self.scored:,} scored and recorded"
            + (f" ({out})" if out else "")
            + f", {self.errors:,} with errors; {self.seconds:.1f} s"
        )
        if self.status == "failed":
            text += (
                f" — FAILED: {self.failure}; decisions recorded for lines up to {self.recorded_through} "
                "(the output holds exactly those rows), none after"
            )
        return text


# --- reading ----------------------------------------------------------------------------------
def check_file(source: BinaryIO, block: int = 1 << 20) -> FileCheck:
    """First pass: UTF-8 (a BOM is fine), SHA-256 and line count, reading ``block`` bytes at a time."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, offset, seen = 0, 0, False
    while data := source.read(block):
        seen = True
        digest.update(data)
        try:
            decoder.decode(data)
        except UnicodeDecodeError as exc:
            at = offset + exc.start
            line = lines + data[: exc.start].count(b"\n") + 1
            raise BatchInputError(
                f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {at:,}, line {line:,}); "
                "save it as 'CSV UTF-8'"
            ) from None
        lines += data.count(b"\n")
        offset += len(data)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BatchInputError("the file is not UTF-8 text (it ends in the middle of a character)") from None
    if not seen:
        raise BatchInputError("the file is empty: expected a header row and one application per row")
    return FileCheck(digest.hexdigest(), lines + 1)


def _columns(header: list[str]) -> dict[str, int]:
    """Column name → index; raises BatchInputError naming every missing or repeated column."""
    names = [h.strip().lstrip("\ufeff").strip().lower() for h in header]
    index: dict[str, int] = {}
    repeated = []
    for i, name in enumerate(names):
        if name in index and name in (*REQUIRED, *OPTIONAL, *IDENTITY):
            repeated.append(name)
        index.setdefault(name, i)
    if repeated:
        raise BatchInputError(f"the header names {', '.join(sorted(set(repeated)))} more than once")
    missing = [c for c in REQUIRED if c not in index]
    has_id = "dob_ssn" in index or ("date_of_birth" in index and "ssn_last4" in index)
    if missing or not has_id:
        parts = []
        if missing:
            parts.append(", ".join(missing))
        if not has_id:
            lacking = [c for c in ("date_of_birth", "ssn_last4") if c not in index]
            parts.append(f"the applicant id: dob_ssn, or date_of_birth and ssn_last4 ({' and '.join(lacking)} absent)")
        raise BatchInputError(
            f"the CSV lacks the column{'s' if len(missing) + (not has_id) > 1 else ''} {'; and '.join(parts)} "
            f"(its header: {', '.join(n for n in names if n)[:300] or 'empty'})"
        )
    return {k: i for k, i in index.items() if k in (*REQUIRED, *OPTIONAL, *IDENTITY)}


def _records(text: TextIO) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line of the row in the file, raw application, error or None) per data row; blank lines
    are skipped.  The first item is the header's column map (line 0)."""
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise BatchInputError(f"the header row cannot be read as CSV: {exc}") from None
    while header is not None and not any(c.strip() for c in header):
        header = next(reader, None)
    if header is None:
        raise BatchInputError("the file has no header row: expected the column names on the first line")
    cols = _columns(header)
    width = len(header)
    yield 0, cols, None
    last = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BatchInputError(f"line {last + 1}: the file cannot be read as CSV any further: {exc}") from None
        line, last = last + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        raw = {k: (cells[i] if i < len(cells) else "") for k, i in cols.items()}
        if len(cells) > width and any(c.strip() for c in cells[width:]):
            yield line, raw, f"the row has {len(cells)} cells but the header names {width} columns"
            continue
        formula = [k for k, v in raw.items() if v.lstrip(" ").startswith(INPUT_FORMULA_START)]
        if formula:
            msg = "; ".join(f"{LABELS.get(k, k)} looks like a spreadsheet formula; not accepted" for k in formula)
            yield line, raw, msg
            continue
        yield line, raw, None


def _applicant(raw: dict | None) -> str:
    if not raw:
        return masked_applicant(None)
    key = (raw.get("dob_ssn") or "").strip()
    if not key and raw.get("date_of_birth") and raw.get("ssn_last4"):
        key = f"{str(raw['date_of_birth']).strip().replace('-', '')}_{str(raw['ssn_last4']).strip()}"
    return masked_applicant(key)


def neutralize(cell: object) -> str:
    """A cell a spreadsheet shows as text: a leading ``= + - @`` (or tab, CR) gets a quote before it."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_START) else text


def error_text(err: ApplicationError) -> str:
    """The form's messages, one per field ("Zipcode is required")."""
    return "; ".join(f"{LABELS.get(k, k)} {msg}" for k, msg in err.errors.items())


def _hide(text: str, raw: dict | None) -> str:
    """Never the applicant's date of birth + SSN digits in clear, even when a message repeats them."""
    key = (raw or {}).get("dob_ssn", "").strip()
    return text.replace(key, masked_applicant(key)) if len(key) >= 8 else text


# --- scoring ------------------------------------------------------------------------------------
def _result_row(line: int, raw: dict | None, result, decision_id: int | None) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row["row"] = line
    row["applicant"] = _applicant(raw)
    if isinstance(result, str):
        row["error"] = _hide(result, raw)
        return row
    if isinstance(result, ApplicationError):
        errors = result.errors
        if raw is not None and "date_of_birth" not in raw and "ssn_last4" not in raw:
            # A file of dob_ssn keys: an empty one is "Applicant ID is required", not the form's two fields.
            errors = {k: v for k, v in errors.items() if k not in ("date_of_birth", "ssn_last4")}
            if len(errors) < len(result.errors):
                errors = {"dob_ssn": "is required", **errors}
        row["error"] = _hide(error_text(ApplicationError(errors)), raw)
        return row
    d = result
    row["applicant"] = masked_applicant(d.application.dob_ssn)
    row["outcome"] = d.outcome
    row["probability"] = "" if d.probability is None else f"{d.probability:.6f}"
    for i, r in enumerate(d.reasons[:MAX_REASONS], start=1):
        row[f"reason_{i}"] = f"{r.text}: {r.value}"
    row["refer_reason"] = _hide(" | ".join(d.refer_reasons), raw)
    row["model_version"] = d.model_version or ""
    row["policy_version"] = d.policy_version
    row["decision_id"] = decision_id
    return row


def score_csv(
    settings: Settings,
    source: BinaryIO,
    sink: TextIO,
    *,
    username: str,
    filename: str,
    service: DecisionService | None = None,
    again: bool = False,
    chunk: int = CHUNK,
    progress: Callable[[int, int], None] | None = None,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> BatchSummary:
    """Score the CSV in ``source`` (a seekable binary stream) into ``sink`` (text, opened with
    ``newline=""``).  ``progress(lines read, lines in the file)`` after each chunk; ``on_rows``
    gets each chunk's output rows (the page keeps the first ones to show).  Raises
    BatchInputError (nothing recorded) for a file that cannot be scored at all; a batch that
    stops midway returns with ``status == "failed"``."""
    from runtime.migrations import migrate

    migrate(settings)
    checked = check_file(source)
    if not again and (before := earlier_batch(settings, checked.sha256)) is not None:
        raise AlreadyScored(before)
    source.seek(0)
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    try:
        records = _records(text)
        next(records)  # the header: missing columns raise here, before any batch row exists
        service = service or DecisionService.shared()
        t0 = time.perf_counter()
        summary = BatchSummary(open_batch(settings, username, filename, checked.sha256))
        _run(settings, service, summary, records, sink, username, chunk, checked.lines, progress, on_rows)
        summary.seconds = time.perf_counter() - t0
    finally:
        text.detach()  # leave the caller's stream open
    return summary


def _run(settings, service, summary, records, sink, username, chunk, lines, progress, on_rows) -> None:
    from runtime.errors import explain

    writer = csv.DictWriter(sink, fieldnames=COLUMNS)
    writer.writeheader()
    try:
        while part := _take(records, chunk):
            _score_chunk(settings, service, summary, part, writer, username, on_rows)
            if progress is not None:
                progress(part[-1][0], lines)
        summary.status = "done"
    except Exception as exc:
        summary.status, summary.failure = "failed", explain(exc)[:500]
    try:
        close_batch(settings, summary.batch_id, summary.status, summary.failure)
    except Exception as exc:  # the decisions are recorded; only the batch's status could not be set
        summary.status = "failed"
        summary.failure = (summary.failure or "") + f" (and the batch's status could not be saved: {explain(exc)})"


def _take(records: Iterator, n: int) -> list:
    out = []
    for item in records:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _score_chunk(settings, service, summary: BatchSummary, part: list, writer, username: str, on_rows) -> None:
    """Decide a chunk, record its decisions and the batch's counters in one transaction, then
    write its rows (only rows whose decisions are committed reach the output)."""
    todo = [(line, raw) for line, raw, err in part if err is None]
    results = service.decide_many([raw for _, raw in todo]) if todo else []
    by_line = {line: res for (line, _), res in zip(todo, results, strict=True)}
    decided = [(line, res) for line, res in by_line.items() if not isinstance(res, ApplicationError)]
    counts = Counter(res.outcome for _, res in decided)
    with db.connection(settings) as conn, conn.transaction():
        got = record_decisions(conn, username, [res for _, res in decided], "batch", batch_id=summary.batch_id)
        ids = {line: i for (line, _), i in zip(decided, got, strict=True)}
        scored, errors = len(ids), len(part) - len(ids)
        count_chunk(conn, summary.batch_id, len(part), scored, errors, part[-1][0])
    summary.rows += len(part)
    summary.scored += scored
    summary.errors += errors
    summary.recorded_through = part[-1][0]
    summary.outcomes.update(counts)
    out = [_result_row(line, raw, err if err is not None else by_line[line], ids.get(line)) for line, raw, err in part]
    writer.writerows({k: neutralize(v) for k, v in row.items()} for row in out)
    if on_rows is not None:
        on_rows(out)
