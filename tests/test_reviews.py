"""Review queue, maker-checker, double reviews, decision history, CSV export and replay —
against the session's Postgres and Valkey (tests/conftest.py backbone), no mocks."""

from __future__ import annotations

import csv
import io
import threading
from datetime import UTC, datetime, timedelta

import pytest

from model.inference import DecisionService
from runtime import audit, decisions, history, reviews
from runtime.users import add_user

OFFICER, OFFICER2, UW1, UW2, ADMIN = "rv_officer", "rv_officer2", "rv_uw1", "rv_uw2", "rv_admin"
NO_FILE = "19800101_0001"  # no credit file in the store: referred for missing data


@pytest.fixture(scope="module")
def s(backbone, pg):
    settings = backbone["settings"]
    names = [OFFICER, OFFICER2, UW1, UW2, ADMIN]
    pg.execute("DELETE FROM loan_desk_users WHERE name = ANY(%s)", [names])
    for name, role in zip(names, ("officer", "officer", "underwriter", "underwriter", "admin"), strict=True):
        add_user(settings, name, role, "review-pass-123")
    return settings


@pytest.fixture(scope="module")
def pg(settings):
    import psycopg

    with psycopg.connect(**settings.pg_kwargs(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def service(backbone):
    return DecisionService(settings=backbone["settings"])


def _referral(s, service, app, user: str) -> int:
    raw = {k: v for k, v in app.items() if k != "person_age"}  # the age comes from the date of birth
    d = service.decide({**raw, "dob_ssn": NO_FILE})
    assert d.outcome == "refer" and d.probability is None
    return decisions.record_decision(s, user, d)


def _status(pg, decision_id: int) -> str:
    return pg.execute("SELECT status FROM loan_desk_decisions WHERE id = %s", [decision_id]).fetchone()[0]


def _reviews_of(pg, decision_id: int) -> int:
    return pg.execute("SELECT count(*) FROM loan_desk_reviews WHERE decision_id = %s", [decision_id]).fetchone()[0]


def test_underwriter_role_from_the_cli(s, pg):
    from tests.conftest import run_cli

    pg.execute("DELETE FROM loan_desk_users WHERE name = 'rv_cli_uw'")
    out = run_cli(
        "loan-desk", "users", "add", "rv_cli_uw", "--role", "underwriter", env={"LOAN_DESK_PASSWORD": "x" * 12}
    )
    assert out.returncode == 0, out.stderr
    assert pg.execute("SELECT role FROM loan_desk_users WHERE name = 'rv_cli_uw'").fetchone()[0] == "underwriter"


def test_maker_checker_is_refused_by_the_function(s, service, app, pg):
    did = _referral(s, service, app, ADMIN)
    with pytest.raises(reviews.MakerChecker, match="maker-checker"):
        reviews.submit_review(s, did, ADMIN, "approve", "DOCS_PROVIDED", "my own")
    assert _status(pg, did) == "pending" and _reviews_of(pg, did) == 0
    # An officer may not finalize anything, own or not; nor may anyone review a non-referral.
    with pytest.raises(reviews.ReviewError, match="underwriter or an admin"):
        reviews.submit_review(s, did, OFFICER, "approve", "DOCS_PROVIDED")
    # A decision that is not a referral (the first of a cheap and a costly variant the policy does not refer).
    variants = ({**app, "loan_amnt": 500, "loan_int_rate": 5.0}, {**app, "loan_amnt": 35000, "loan_int_rate": 24.0})
    final = next(d for d in map(service.decide, variants) if d.outcome != "refer")
    approved = decisions.record_decision(s, OFFICER, final)
    with pytest.raises(reviews.ReviewError, match="not a referral"):
        reviews.submit_review(s, approved, UW1, "approve", "DOCS_PROVIDED")
    with pytest.raises(reviews.ReviewError, match="not a reason code"):
        reviews.submit_review(s, did, UW1, "approve", "LTI")
    with pytest.raises(reviews.ReviewError, match="no decision"):
        reviews.submit_review(s, 2**62, UW1, "approve", "DOCS_PROVIDED")
    assert _status(pg, did) == "pending" and _reviews_of(pg, did) == 0
    # Another admin may.
    done = reviews.submit_review(s, did, UW1, "decline", "INCOME_UNVERIFIED", "no pay slips")
    assert done.reviewer == UW1 and _status(pg, did) == "final" and _reviews_of(pg, did) == 1


def test_two_underwriters_at_once_exactly_one_wins(s, service, app, pg):
    for _ in range(3):
        did = _referral(s, service, app, OFFICER)
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def review(who: str, outcome: str, code: str, did=did, barrier=barrier, results=results) -> None:
            barrier.wait()
            try:
                results[who] = reviews.submit_review(s, did, who, outcome, code, f"by {who}")
            except reviews.ReviewError as exc:
                results[who] = exc

        threads = [
            threading.Thread(target=review, args=(UW1, "approve", "INCOME_VERIFIED")),
            threading.Thread(target=review, args=(UW2, "decline", "DOCS_MISSING")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        won = [w for w, r in results.items() if isinstance(r, reviews.Review)]
        lost = [w for w, r in results.items() if isinstance(r, reviews.AlreadyReviewed)]
        assert len(won) == 1 and len(lost) == 1, results
        assert f"already decided by {won[0]}" in str(results[lost[0]])
        assert _reviews_of(pg, did) == 1 and _status(pg, did) == "final"
        row = pg.execute("SELECT reviewer FROM loan_desk_reviews WHERE decision_id = %s", [did]).fetchone()
        assert row[0] == won[0]
    # The same reviewer twice: the second is told.
    with pytest.raises(reviews.AlreadyReviewed, match=f"already decided by {won[0]}"):
        reviews.submit_review(s, did, won[0], "approve", "INCOME_VERIFIED")
    check = audit.verify(s, audit.REVIEWS)
    assert check.ok, check.problems


def test_queue_oldest_first_in_keyset_pages(s, service, app, pg):
    ids = [_referral(s, service, app, OFFICER2) for _ in range(5)]
    seen, after = [], None
    while True:
        page = reviews.review_queue(s, limit=2, after=after)
        if not page:
            break
        seen += [r["id"] for r in page]
        after = (page[-1]["decided_at"], page[-1]["id"])
    assert len(seen) == len(set(seen)) == reviews.pending_count(s)
    times = pg.execute("SELECT id, decided_at FROM loan_desk_decisions WHERE id = ANY(%s)", [seen]).fetchall()
    order = [i for i, _ in sorted(times, key=lambda r: (r[1], r[0]))]
    assert seen == order and set(ids) <= set(seen)
    row = next(r for r in reviews.review_queue(s, limit=1000) if r["id"] == ids[0])
    assert row["refer_reasons"] == ["The applicant has no credit file in the online store"]
    reviews.submit_review(s, ids[0], UW1, "approve", "CREDIT_FILE_REVIEWED")
    assert ids[0] not in [r["id"] for r in reviews.review_queue(s, limit=1000)]


def test_decline_reasons_include_the_catalogue():
    from model.reasons import CATALOGUE

    for entry in CATALOGUE:
        assert reviews.REASONS["decline"][entry.code] == entry.text


# --- history --------------------------------------------------------------------------------------
def test_search_by_applicant_officer_outcome_id_and_dates(s, service, app, pg):
    mine = decisions.record_decision(s, OFFICER2, service.decide(app))
    other = decisions.record_decision(s, OFFICER, service.decide(app))
    outcome = pg.execute("SELECT outcome FROM loan_desk_decisions WHERE id = %s", [mine]).fetchone()[0]
    key = history.applicant_key(datetime.strptime(app["dob_ssn"][:8], "%Y%m%d").date(), app["dob_ssn"][-4:])
    assert key == app["dob_ssn"]

    def ids(c: history.Criteria, viewer=UW1, role="underwriter") -> list[int]:
        return [r["id"] for r in history.search(s, c, viewer, role, limit=500).rows]

    assert {mine, other} <= set(ids(history.Criteria(applicant=key)))
    assert mine in ids(history.Criteria(officer=OFFICER2)) and other not in ids(history.Criteria(officer=OFFICER2))
    assert mine in ids(history.Criteria(outcome=outcome, officer=OFFICER2))
    wrong = next(o for o in history.OUTCOMES if o != outcome)
    assert mine not in ids(history.Criteria(outcome=wrong, officer=OFFICER2))
    assert ids(history.Criteria(decision_id=mine)) == [mine]
    today = datetime.now(UTC).date()
    assert mine in ids(history.Criteria(date_from=today, date_to=today, applicant=key))
    assert ids(history.Criteria(date_to=today - timedelta(days=400), applicant=key)) == []
    assert ids(history.Criteria(applicant="19000101_0000")) == []
    # An officer sees their own decisions only, whatever they ask for.
    assert ids(history.Criteria(decision_id=other), OFFICER2, "officer") == []
    assert ids(history.Criteria(officer=OFFICER), OFFICER2, "officer") == ids(history.Criteria(), OFFICER2, "officer")
    assert set(ids(history.Criteria(applicant=key), OFFICER2, "officer")) == {
        i
        for (i,) in pg.execute(
            "SELECT id FROM loan_desk_decisions WHERE username = %s AND applicant = %s", [OFFICER2, key]
        )
    }


def test_search_pages_cover_every_match_once(s, service, app):
    c = history.Criteria(officer=OFFICER2)
    everything = [r["id"] for r in history.search(s, c, UW1, "underwriter", limit=1000).rows]
    assert len(everything) >= 6
    seen, after = [], None
    while True:
        page = history.search(s, c, UW1, "underwriter", after=after, limit=4)
        seen += [r["id"] for r in page.rows]
        assert page.matches == len(everything)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == everything


def test_search_input_errors_are_one_sentence():
    with pytest.raises(history.SearchError, match="both the date of birth"):
        history.applicant_key(datetime(1990, 1, 2).date(), "")
    with pytest.raises(history.SearchError, match="four digits"):
        history.applicant_key(datetime(1990, 1, 2).date(), "12a4")
    with pytest.raises(history.SearchError, match="ends before it starts"):
        history.Criteria(date_from=datetime(2026, 2, 1).date(), date_to=datetime(2026, 1, 1).date()).check()
    with pytest.raises(history.SearchError, match="outcome"):
        history.Criteria(outcome="maybe").check()


def test_csv_export_neutralizes_formulas_and_masks_the_applicant(s, service, app):
    payloads = ["=cmd|' /C calc'!A0", "+1+2", "-2+3", "@SUM(A1)", "\t=1"]
    for p in payloads:
        decisions.record_decision(s, OFFICER2, service.decide(app), channel="api", client=p)
    data, n, cut = history.export_csv(s, history.Criteria(officer=OFFICER2), UW1, "underwriter")
    text = data.decode("utf-8")
    assert not cut and n >= len(payloads)
    assert app["dob_ssn"] not in text and NO_FILE not in text
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    clients = {r["client"] for r in rows}
    for p in payloads:
        assert "'" + p in clients
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t")), cell
    assert {r["applicant_masked"] for r in rows if r["applicant_masked"]} <= {
        f"{app['dob_ssn'][:4]}****_**{app['dob_ssn'][-2:]}",
        "1980****_**01",
    }
    assert history.neutralize("applicant 19940822_0000 has no file") == "applicant 1994****_**00 has no file"
    assert history.neutralize(-1.5) == -1.5


# --- replay ---------------------------------------------------------------------------------------
def test_replay_reproduces_the_probability_and_rereads_the_features(s, service, app):
    from model import replay

    did = decisions.record_decision(s, OFFICER, service.decide(app))
    record = decisions.decision_by_id(s, did)
    r = replay.rescore(record)
    assert r.recorded == record["probability"] and r.equal and r.difference <= 1e-9
    # A record whose probability was altered does not replay.
    assert not replay.rescore({**record, "probability": record["probability"] + 1e-6}).equal
    checks = replay.reread(s, record)
    assert {c.name for c in checks} == {f["name"] for f in record["features"]}
    assert all(c.same for c in checks), [c for c in checks if not c.same]
    assert any(c.online is not None for c in checks)
    # An online value that differs from the offline store's at that time shows up.
    changed = [dict(f) for f in record["features"]]
    changed[0]["value"] = (changed[0]["value"] or 0) + 1
    differ = [c.name for c in replay.reread(s, {**record, "features": changed}) if not c.same]
    assert differ == [changed[0]["name"]]


def test_replay_of_a_referral_without_a_score_says_why(s, service, app):
    from model import replay

    record = decisions.decision_by_id(s, _referral(s, service, app, OFFICER))
    with pytest.raises(replay.ReplayError, match="no probability"):
        replay.rescore(record)
    checks = replay.reread(s, record)
    assert all(c.offline is None and c.same for c in checks if c.view == "credit_history")


def test_replay_with_an_unknown_model_version_says_so(s, service, app):
    from model import replay

    record = decisions.decision_by_id(s, decisions.record_decision(s, OFFICER, service.decide(app)))
    with pytest.raises(replay.ReplayError, match="cannot be loaded"):
        replay.rescore({**record, "model_version": "nope-1"})
