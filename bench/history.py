"""9. Review queue and decision history at 1M recorded decisions (issue #11: each ≤ 300 ms).

Generates LOAN_DESK_BENCH_HISTORY_ROWS (1,000,000) decisions in a database of its own
(``<bench db>_history``) with COPY: two years of them, 40 officers, 200,000 applicants, 65%
approve, 25% decline, 10% refer (referrals older than 60 days reviewed, the newer ones pending),
records shaped like real ones (inputs, 15 features, reasons).  Then it times the queries the
pages run, through the same functions (runtime.reviews, runtime.history), 50 runs each with
varying parameters: p50 and p99.  The data is kept between runs (regenerated when its size
differs).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

from bench.common import BENCH_DB, BENCH_HOME, BENCH_REDIS, percentiles, record, say

ROWS = int(os.environ.get("LOAN_DESK_BENCH_HISTORY_ROWS", "1000000"))
QUICK = {"rows": 5_000, "runs": 5}
OFFICERS = [f"officer_{i:02d}" for i in range(40)]
TARGET_MS = 300.0
DAYS = 730
FEATURES = (
    ("credit_card_due", "credit_history"),
    ("mortgage_due", "credit_history"),
    ("student_loan_due", "credit_history"),
    ("vehicle_loan_due", "credit_history"),
    ("hard_pulls", "credit_history"),
    ("missed_payments_2y", "credit_history"),
    ("missed_payments_1y", "credit_history"),
    ("missed_payments_6m", "credit_history"),
    ("bankruptcies", "credit_history"),
    ("city", "zipcode_features"),
    ("state", "zipcode_features"),
    ("location_type", "zipcode_features"),
    ("tax_returns_filed", "zipcode_features"),
    ("population", "zipcode_features"),
    ("total_wages", "zipcode_features"),
)
REASON = [{"code": "LTI", "text": "Loan amount is high relative to income", "feature": "loan_pct_income"}]


def _settings(rows: int):
    os.environ["PGDATABASE"] = f"{BENCH_DB}_history" if rows == ROWS else f"{BENCH_DB}_history_{rows}"
    os.environ["REDIS_URL"] = BENCH_REDIS
    os.environ["LOAN_DESK_HOME"] = BENCH_HOME
    os.environ.setdefault("PGHOST", "127.0.0.1")
    from bootstrap.services import ensure_services
    from runtime.settings import Settings

    ensure_services()
    return Settings.from_env()


def _applicants(n: int, rng: random.Random) -> list[str]:
    return [
        f"{rng.randint(1950, 2004)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}_{rng.randint(0, 9999):04d}"
        for _ in range(n)
    ]


def _generate(s, rows: int) -> float:
    """COPY ``rows`` decisions (and the reviews of the older referrals); returns seconds."""
    from runtime import db

    rng = random.Random(11)
    people = _applicants(max(rows // 5, 10), rng)
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / rows
    t0 = time.perf_counter()
    with db.connect(s, job=True, autocommit=False) as conn:
        conn.execute("TRUNCATE loan_desk_reviews, loan_desk_decisions RESTART IDENTITY")
        # Bulk load without the indexes, then build them (what a restore does).
        idx = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'loan_desk_decisions' "
            "AND indexname <> 'loan_desk_decisions_pkey'"
        ).fetchall()
        for name, _ in idx:
            conn.execute(f'DROP INDEX "{name}"')
        cols = (
            "decided_at, username, channel, inputs, features, probability, threshold, band, outcome, reasons, "
            "refer_reasons, model_version, policy_version, latency_ms, status"
        )
        reviewed = []
        with conn.cursor().copy(f"COPY loan_desk_decisions ({cols}) FROM STDIN") as copy:
            buf = io.StringIO()
            for i in range(rows):
                at = start + timedelta(seconds=i * step + rng.random() * step)
                u = rng.random()
                outcome = "approve" if u < 0.65 else "decline" if u < 0.90 else "refer"
                p = rng.uniform(0.01, 0.10) if outcome == "approve" else rng.uniform(0.10, 0.16)
                if outcome == "decline":
                    p = rng.uniform(0.15, 0.9)
                status = "pending" if outcome == "refer" and (now - at).days < 60 else "final"
                if outcome == "refer" and status == "final":
                    reviewed.append((i + 1, at))
                inputs = {
                    "dob_ssn": rng.choice(people),
                    "zipcode": rng.randint(1000, 99999),
                    "person_age": rng.randint(18, 75),
                    "person_income": float(rng.randint(12, 300) * 1000),
                    "person_home_ownership": rng.choice(("RENT", "MORTGAGE", "OWN")),
                    "person_emp_length": float(rng.randint(0, 30)),
                    "loan_intent": rng.choice(("EDUCATION", "MEDICAL", "PERSONAL", "VENTURE")),
                    "loan_amnt": float(rng.randint(1, 70) * 500),
                    "loan_int_rate": round(rng.uniform(5, 25), 2),
                }
                ts = at.isoformat()
                feats = [
                    {"name": n, "view": v, "value": rng.randint(0, 9000), "event_timestamp": ts, "status": "ok"}
                    for n, v in FEATURES
                ]
                buf.write(
                    "\t".join(
                        (
                            ts,
                            rng.choice(OFFICERS),
                            "app",
                            json.dumps(inputs),
                            json.dumps(feats),
                            repr(p),
                            "0.123",
                            "[0.103, 0.153]",
                            outcome,
                            json.dumps(REASON if outcome != "approve" else []),
                            json.dumps(["Probability of default within the refer band"] if outcome == "refer" else []),
                            "bench-model",
                            "bench-policy",
                            "12.5",
                            status,
                        )
                    )
                    + "\n"
                )
                if i % 20000 == 19999:
                    copy.write(buf.getvalue())
                    buf = io.StringIO()
                    if i % 200000 == 199999:
                        say(f"  {i + 1:,} / {rows:,} decisions copied")
            copy.write(buf.getvalue())
        with conn.cursor().copy(
            "COPY loan_desk_reviews (decision_id, reviewed_at, reviewer, outcome, reason_code, note) FROM STDIN"
        ) as copy:
            for did, at in reviewed:
                outcome = "approve" if rng.random() < 0.6 else "decline"
                code = "INCOME_VERIFIED" if outcome == "approve" else "LTI"
                copy.write_row((did, at + timedelta(hours=5), "underwriter_1", outcome, code, "bench"))
        say(f"  building {len(idx)} indexes ...")
        for _, ddl in idx:
            conn.execute(ddl)
        conn.commit()
    with db.connect(s, job=True) as conn:
        conn.execute("VACUUM (ANALYZE) loan_desk_decisions")
        conn.execute("VACUUM (ANALYZE) loan_desk_reviews")
    return time.perf_counter() - t0


def _timed(fn, runs: int) -> dict:
    fn(0)  # one untimed run: the pool's connection and the plan cache
    samples = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i + 1)
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def run(rows: int = ROWS, runs: int = 50) -> None:
    from runtime import db, history, reviews

    s = _settings(rows)
    with db.connect(s) as conn:
        have = conn.execute("SELECT count(*) FROM loan_desk_decisions").fetchone()[0]
    gen_s = None
    if have != rows:
        say(f"generating {rows:,} decisions in {s.pgdatabase} ...")
        gen_s = _generate(s, rows)
        say(f"  done in {gen_s:.1f} s")
    rng = random.Random(5)
    with db.connect(s) as conn:
        sample = conn.execute(
            "SELECT id, applicant, username FROM loan_desk_decisions TABLESAMPLE SYSTEM (1) LIMIT 500"
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM loan_desk_decisions WHERE status = 'pending'").fetchone()[0]
        newest = conn.execute("SELECT max(decided_at) FROM loan_desk_decisions").fetchone()[0]

    def pick(i):
        return sample[(i * 7919) % len(sample)]

    def queue_first(i):
        reviews.review_queue(s, limit=25)
        reviews.pending_count(s)

    deep = reviews.review_queue(s, limit=min(1000, max(pending - 25, 1)))
    deep_after = (deep[-1]["decided_at"], deep[-1]["id"]) if deep else None

    def queue_deep(i):
        reviews.review_queue(s, limit=25, after=deep_after)

    uw = ("bench_uw", "underwriter")

    def search(c, viewer=uw, after=None):
        return history.search(s, c, *viewer, after=after)

    def month(i):
        d = (newest - timedelta(days=30 + (i % 600))).date()
        return d, d + timedelta(days=30)

    cases = [
        ("review queue: first page + pending count", queue_first),
        ("review queue: a page 1,000 referrals deep", queue_deep),
        ("history: everything, first page + count", lambda i: search(history.Criteria())),
        ("history: by applicant (dob + SSN last four)", lambda i: search(history.Criteria(applicant=pick(i)[1]))),
        ("history: by officer", lambda i: search(history.Criteria(officer=pick(i)[2]))),
        ("history: decision id", lambda i: search(history.Criteria(decision_id=pick(i)[0]))),
        (
            "history: outcome refer + one month",
            lambda i: search(history.Criteria(outcome="refer", date_from=month(i)[0], date_to=month(i)[1])),
        ),
        (
            "history: an officer's own declines (officer role)",
            lambda i: search(history.Criteria(outcome="decline"), viewer=(pick(i)[2], "officer")),
        ),
        (
            "history: officer + one month + pending",
            lambda i: search(history.Criteria(officer=pick(i)[2], status="pending", date_from=month(i)[0])),
        ),
    ]
    # Twenty pages deep, by keyset: the cost of the 20th page alone.
    deep_pages = []
    for i in range(3):
        c, after = history.Criteria(officer=pick(i)[2]), None
        for _ in range(19):
            after = history.search(s, c, *uw, after=after, count=False).next_after
        deep_pages.append((c, after))
    cases.append(
        (
            "history: by officer, 20th page (keyset)",
            lambda i: search(*deep_pages[i % 3][:1], after=deep_pages[i % 3][1]),
        )
    )
    cases.append(
        (
            "CSV export: one officer, one month",
            lambda i: history.export_csv(
                s, history.Criteria(officer=pick(i)[2], date_from=month(i)[0], date_to=month(i)[1]), *uw
            ),
        )
    )
    rng.random()
    figures: dict = {"rows": rows, "pending": pending, "runs": runs, "generate_s": gen_s}
    table = [("query", "p50 ms", "p99 ms", f"≤ {TARGET_MS:.0f} ms")]
    for name, fn in cases:
        p = _timed(fn, runs)
        figures[name] = p
        table.append((name, p["p50_ms"], p["p99_ms"], "yes" if p["p99_ms"] <= TARGET_MS else "NO"))
    record(
        "history",
        figures,
        table,
        f"Review queue and decision history at {rows:,} decisions ({pending:,} pending), {runs} runs each",
    )
