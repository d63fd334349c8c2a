"""Decision history: search the decision trail, page through it, export it as CSV.

Officers see their own decisions only; underwriters and admins see every decision.  Every
filter is served by an index (applicant, user, outcome, time, id), and pages are keyset pages
on (decided_at, id) newest first, so a page costs the same at any depth of a million decisions
(``python -m bench history`` measures it).  The applicant is searched by the key the decision
stores (date of birth and SSN last four) and shown masked (runtime.schema.masked_applicant);
the CSV export never contains the key in clear, and neutralizes cells a spreadsheet would run
as a formula.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from psycopg import sql
from psycopg.rows import dict_row

from runtime import db
from runtime.schema import masked_applicant
from runtime.settings import Settings

OUTCOMES = ("approve", "refer", "decline")
STATUSES = ("pending", "final")
PAGE = 25
COUNT_CAP = 10_000
EXPORT_LIMIT = 100_000
SEE_ALL = ("underwriter", "admin")
_SSN4 = re.compile(r"\d{4}", re.ASCII)


class SearchError(ValueError):
    """A search that cannot run as given; ``str(err)`` is one sentence."""


def applicant_key(born: date | None, ssn_last4: str | None) -> str | None:
    """The stored applicant key for a date of birth and the SSN's last four digits (both or neither)."""
    ssn_last4 = (ssn_last4 or "").strip()
    if born is None and not ssn_last4:
        return None
    if born is None or not ssn_last4:
        raise SearchError("To search by applicant, give both the date of birth and the SSN's last four digits.")
    if not _SSN4.fullmatch(ssn_last4):
        raise SearchError("The SSN's last four must be four digits.")
    return f"{born:%Y%m%d}_{ssn_last4}"


@dataclass(frozen=True)
class Criteria:
    applicant: str | None = None  # the stored key (applicant_key), never shown
    officer: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    outcome: str | None = None
    status: str | None = None
    decision_id: int | None = None

    def check(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise SearchError(f"The outcome must be one of {', '.join(OUTCOMES)}.")
        if self.status is not None and self.status not in STATUSES:
            raise SearchError(f"The status must be one of {', '.join(STATUSES)}.")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise SearchError("The date range ends before it starts.")
        if self.decision_id is not None and not 0 < self.decision_id < 2**63:
            raise SearchError("A decision id is a positive whole number.")


def _where(c: Criteria, viewer: str, role: str) -> tuple[sql.Composed, list]:
    c.check()
    conds: list[sql.Composable] = []
    params: list = []
    officer = c.officer.strip().lower() if c.officer and c.officer.strip() else None
    if role not in SEE_ALL:
        officer = viewer  # officers: their own decisions, whatever they asked for
    if officer is not None:
        conds.append(sql.SQL("d.username = %s"))
        params.append(officer)
    if c.applicant is not None:
        conds.append(sql.SQL("d.applicant = %s"))
        params.append(c.applicant)
    if c.decision_id is not None:
        conds.append(sql.SQL("d.id = %s"))
        params.append(c.decision_id)
    if c.outcome is not None:
        conds.append(sql.SQL("d.outcome = %s"))
        params.append(c.outcome)
    if c.status is not None:
        conds.append(sql.SQL("d.status = %s"))
        params.append(c.status)
    if c.date_from is not None:
        conds.append(sql.SQL("d.decided_at >= %s"))
        params.append(datetime.combine(c.date_from, time.min, UTC))
    if c.date_to is not None:
        conds.append(sql.SQL("d.decided_at < %s"))
        params.append(datetime.combine(c.date_to + timedelta(days=1), time.min, UTC))
    where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")
    return where, params


COLUMNS = sql.SQL(
    "d.id, d.decided_at, d.username, d.channel, d.client, d.applicant, (d.inputs->>'zipcode')::bigint AS zipcode, "
    "(d.inputs->>'loan_amnt')::double precision AS loan_amnt, d.inputs->>'loan_intent' AS loan_intent, "
    "d.probability, d.outcome, d.status, d.model_version, d.policy_version, d.batch_id, "
    "r.outcome AS review_outcome, r.reviewer, r.reason_code AS review_reason"
)


@dataclass
class Page:
    rows: list[dict]
    next_after: tuple[datetime, int] | None  # keyset of the next (older) page, None at the end
    matches: int  # at most COUNT_CAP + 1 (shown as "more than COUNT_CAP")


def search(
    settings: Settings,
    criteria: Criteria,
    viewer: str,
    role: str,
    after: tuple[datetime, int] | None = None,
    limit: int = PAGE,
    count: bool = True,
) -> Page:
    """One page of matching decisions, newest first, after the keyset ``after``."""
    where, params = _where(criteria, viewer, role)
    page_where, page_params = where, list(params)
    if after is not None:
        page_where = sql.SQL("{} AND (d.decided_at, d.id) < (%s, %s)").format(where)
        page_params += list(after)
    query = sql.SQL(
        "SELECT {cols} FROM loan_desk_decisions d LEFT JOIN loan_desk_reviews r ON r.decision_id = d.id "
        "WHERE {where} ORDER BY d.decided_at DESC, d.id DESC LIMIT %s"
    ).format(cols=COLUMNS, where=page_where)
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        rows = cur.execute(query, [*page_params, limit + 1]).fetchall()
        matches = -1
        if count:
            matches = cur.execute(
                sql.SQL("SELECT count(*) AS n FROM (SELECT 1 FROM loan_desk_decisions d WHERE {} LIMIT %s) s").format(
                    where
                ),
                [*params, COUNT_CAP + 1],
            ).fetchone()["n"]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = (rows[-1]["decided_at"], rows[-1]["id"]) if more and rows else None
    return Page(rows, nxt, matches)


def status_text(row: dict) -> str:
    """What became of a decision: the outcome, and for a referral its review or 'pending'."""
    if row["outcome"] != "refer":
        return row["outcome"]
    if row.get("review_outcome"):
        return f"refer → {row['review_outcome']}"
    return "refer (pending)"


# --- CSV ----------------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_KEY_IN_TEXT = re.compile(r"(?<!\d)\d{8}_\d{4}(?!\d)", re.ASCII)


def neutralize(cell: object) -> object:
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP's advice
    for CSV injection); an applicant key inside a text (an older message) is masked; other cells
    are returned as they are."""
    if not isinstance(cell, str):
        return cell
    cell = _KEY_IN_TEXT.sub(lambda m: masked_applicant(m.group(0)), cell)
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


CSV_HEADER = (
    "id",
    "decided_at_utc",
    "officer",
    "channel",
    "client",
    "applicant_masked",
    "zipcode",
    "loan_amount",
    "loan_intent",
    "probability_of_default",
    "outcome",
    "status",
    "review_outcome",
    "reviewer",
    "review_reason",
    "model_version",
    "policy_version",
    "batch_id",
    "principal_reasons",
    "refer_reasons",
)


def export_csv(
    settings: Settings, criteria: Criteria, viewer: str, role: str, limit: int = EXPORT_LIMIT
) -> tuple[bytes, int, bool]:
    """Every decision the criteria match, newest first, as CSV (UTF-8 with a BOM, for
    spreadsheets); returns (bytes, rows, cut: more matched than ``limit``).  The applicant is masked."""
    where, params = _where(criteria, viewer, role)
    query = sql.SQL(
        "SELECT {cols}, d.reasons, d.refer_reasons FROM loan_desk_decisions d "
        "LEFT JOIN loan_desk_reviews r ON r.decision_id = d.id "
        "WHERE {where} ORDER BY d.decided_at DESC, d.id DESC LIMIT %s"
    ).format(cols=COLUMNS, where=where)
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    n = 0
    with db.connection(settings) as conn, conn.transaction():
        with conn.cursor(name="ld_history_export", row_factory=dict_row) as cur:
            cur.itersize = 2000
            cur.execute(query, [*params, limit + 1])
            for r in cur:
                n += 1
                if n > limit:
                    break
                reasons = "; ".join(x.get("text", "") for x in (r["reasons"] or []))
                writer.writerow(
                    [
                        neutralize(v)
                        for v in (
                            r["id"],
                            r["decided_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                            r["username"],
                            r["channel"],
                            r["client"] or "",
                            masked_applicant(r["applicant"]),
                            "" if r["zipcode"] is None else f"{r['zipcode']:05d}",
                            "" if r["loan_amnt"] is None else f"{r['loan_amnt']:.2f}",
                            r["loan_intent"] or "",
                            "" if r["probability"] is None else f"{r['probability']:.6f}",
                            r["outcome"],
                            r["status"],
                            r["review_outcome"] or "",
                            r["reviewer"] or "",
                            r["review_reason"] or "",
                            r["model_version"] or "",
                            r["policy_version"] or "",
                            "" if r["batch_id"] is None else r["batch_id"],
                            reasons,
                            "; ".join(r["refer_reasons"] or []),
                        )
                    ]
                )
    return out.getvalue().encode("utf-8"), min(n, limit), n > limit
