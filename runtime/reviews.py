"""The review of referred decisions: the queue, and an underwriter's verdict as a sealed record.

A referral is recorded with status ``pending`` (runtime/decisions.py).  ``submit_review`` writes
the underwriter's verdict (approve or decline, a reason code from ``REASONS``, a note) onto the
reviews hash chain and sets the decision to ``final`` in one transaction.  It refuses, whatever
the caller:

* a reviewer who is not an underwriter or an admin (the role is read from loan_desk_users);
* maker-checker: the user who submitted the application (the decision's ``username``);
* a decision that is not a referral, or that is not there;
* a second verdict: the decision's row is locked while the first is written, so of two reviews
  submitted at once exactly one wins; the other is told who decided, how and when (the UNIQUE
  decision_id of loan_desk_reviews backs this up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

from runtime import audit, db
from runtime.settings import Settings

REVIEWER_ROLES = ("underwriter", "admin")
MAX_NOTE = 2000

# Reason codes an underwriter may give.  The decline codes of the model's principal reasons
# (model/reasons.py CATALOGUE) are here under the same codes and words (tests/test_reviews.py
# checks that they stay in step), beside reasons only a person can establish.
REASONS: dict[str, dict[str, str]] = {
    "approve": {
        "INCOME_VERIFIED": "Income verified with documents",
        "DOCS_PROVIDED": "Documents provided resolve the referral",
        "CREDIT_FILE_REVIEWED": "Credit file obtained and reviewed manually",
        "COMPENSATING": "Compensating factors (savings, collateral or a co-signer)",
        "DATA_CORRECTED": "Application data corrected on review",
        "WITHIN_POLICY": "Within policy on a closer reading of the file",
    },
    "decline": {
        "LTI": "Loan amount is high relative to income",
        "INC": "Income is low for the amount of credit requested",
        "AMT": "Loan amount requested is high",
        "EMP": "Length of employment is short",
        "MISS": "Missed payments on credit obligations",
        "DEBT": "Amount owed on credit obligations is high",
        "INQ": "Number of recent credit inquiries",
        "BKR": "Bankruptcy on the credit file",
        "RATE": "Interest rate of the requested loan is high",
        "HOME": "Housing status",
        "PURP": "Purpose of the loan",
        "INCOME_UNVERIFIED": "Income could not be verified",
        "DOCS_MISSING": "Requested documents were not provided",
        "NO_CREDIT_FILE": "Insufficient credit history",
        "IDENTITY": "Identity could not be verified",
    },
}


class ReviewError(ValueError):
    """A review that is refused; ``str(err)`` is one sentence for the reviewer."""


class MakerChecker(ReviewError):
    """The reviewer submitted the application: someone else must finalize it."""


class AlreadyReviewed(ReviewError):
    """Another review won; ``review`` is its row (reviewer, outcome, reviewed_at, ...)."""

    def __init__(self, decision_id: int, review: dict):
        self.review = review
        at = review["reviewed_at"]
        super().__init__(
            f"Decision #{decision_id} was already decided by {review['reviewer']} "
            f"({review['outcome']}, {REASONS[review['outcome']].get(review['reason_code'], review['reason_code'])}) "
            f"at {at:%Y-%m-%d %H:%M:%S} UTC; your review was not recorded."
        )


@dataclass(frozen=True)
class Review:
    id: int
    decision_id: int
    reviewer: str
    outcome: str
    reason_code: str
    note: str
    reviewed_at: datetime


def reason_text(outcome: str, code: str) -> str:
    return REASONS.get(outcome, {}).get(code, code)


def _existing(cur, decision_id: int) -> dict | None:
    return cur.execute(
        "SELECT id, reviewer, outcome, reason_code, note, reviewed_at FROM loan_desk_reviews WHERE decision_id = %s",
        [decision_id],
    ).fetchone()


def may_review(decision: dict, reviewer: str, role: str) -> str | None:
    """Why ``reviewer`` may not finalize this decision (one sentence), or None when they may.
    The pages ask first; ``submit_review`` asks again inside its transaction."""
    if role not in REVIEWER_ROLES:
        return f"Only an underwriter or an admin may finalize a referral; {reviewer} is {role or 'not a user'}."
    if decision.get("outcome") != "refer":
        return f"Decision #{decision['id']} is a {decision.get('outcome')}, not a referral: there is nothing to review."
    if decision.get("username") == reviewer:
        return (
            f"You submitted the application of decision #{decision['id']}: another underwriter must finalize it "
            "(maker-checker)."
        )
    return None


def submit_review(
    settings: Settings, decision_id: int, reviewer: str, outcome: str, reason_code: str, note: str = ""
) -> Review:
    """Finalize a referral.  Raises ReviewError (MakerChecker, AlreadyReviewed) with one sentence."""
    if outcome not in REASONS:
        raise ReviewError(f"The outcome must be approve or decline, not {str(outcome)[:40]!r}.")
    if reason_code not in REASONS[outcome]:
        raise ReviewError(f"{str(reason_code)[:40]!r} is not a reason code for {outcome}; choose one from the list.")
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ReviewError(f"The note is {len(note):,} characters long; at most {MAX_NOTE:,}.")
    with db.connection(settings) as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        user = cur.execute("SELECT role FROM loan_desk_users WHERE name = %s", [reviewer]).fetchone()
        decision = cur.execute(
            "SELECT id, username, outcome, status FROM loan_desk_decisions WHERE id = %s FOR UPDATE", [decision_id]
        ).fetchone()
        if decision is None:
            raise ReviewError(f"There is no decision #{decision_id}.")
        if why := may_review(decision, reviewer, user["role"] if user else ""):
            raise MakerChecker(why) if decision["username"] == reviewer else ReviewError(why)
        # The row lock above orders concurrent reviews: the second sees the first's commit here.
        if (done := _existing(cur, decision_id)) is not None:
            raise AlreadyReviewed(decision_id, done)
        if decision["status"] != "pending":
            raise ReviewError(f"Decision #{decision_id} is not waiting for a review.")
        values = {
            "decision_id": decision_id,
            "reviewed_at": datetime.now(UTC),
            "reviewer": reviewer,
            "outcome": outcome,
            "reason_code": reason_code,
            "note": note,
        }
        try:
            with conn.transaction():
                review_id = audit.insert_sealed(conn, audit.REVIEWS, list(values), list(values.values()))
        except psycopg.errors.UniqueViolation:
            done = _existing(cur, decision_id)
            raise AlreadyReviewed(decision_id, done) from None
        conn.execute("UPDATE loan_desk_decisions SET status = 'final' WHERE id = %s", [decision_id])
    return Review(review_id, decision_id, reviewer, outcome, reason_code, note, values["reviewed_at"])


QUEUE_COLUMNS = (
    "d.id, d.decided_at, d.username, d.channel, d.applicant, (d.inputs->>'loan_amnt')::double precision AS loan_amnt, "
    "d.inputs->>'loan_intent' AS loan_intent, (d.inputs->>'person_income')::double precision AS person_income, "
    "d.probability, d.threshold, d.band, d.reasons, d.refer_reasons, d.model_version, d.policy_version"
)


def pending_count(settings: Settings) -> int:
    with db.connection(settings) as conn:
        return conn.execute("SELECT count(*) FROM loan_desk_decisions WHERE status = 'pending'").fetchone()[0]


def review_queue(settings: Settings, limit: int = 25, after: tuple[datetime, int] | None = None) -> list[dict]:
    """Referrals waiting for a verdict, oldest first; ``after`` is the (decided_at, id) of the
    last row of the previous page (keyset paging on the partial index of pending decisions)."""
    query = f"SELECT {QUEUE_COLUMNS} FROM loan_desk_decisions d WHERE d.status = 'pending'"
    params: list = []
    if after is not None:
        query += " AND (d.decided_at, d.id) > (%s, %s)"
        params += list(after)
    query += " ORDER BY d.decided_at, d.id LIMIT %s"
    params.append(limit)
    with db.connection(settings) as conn:
        return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def pending_decision(settings: Settings, decision_id: int) -> dict | None:
    """One decision as the queue shows it (pending or not), with its review if there is one."""
    with db.connection(settings) as conn:
        cur = conn.cursor(row_factory=dict_row)
        row = cur.execute(
            f"SELECT {QUEUE_COLUMNS}, d.outcome, d.status FROM loan_desk_decisions d WHERE d.id = %s", [decision_id]
        ).fetchone()
        if row is not None:
            row["review"] = _existing(cur, decision_id)
        return row
