"""The decision trail's hash chain: `loan-desk audit verify` finds an edited or deleted record."""

from __future__ import annotations

import pytest

from model.inference import DecisionService
from runtime import audit, decisions
from tests.conftest import run_cli


@pytest.fixture()
def trail(backbone, app, pg):
    """Five fresh sealed decisions; the test may tamper with them (it deletes what it made)."""
    s = backbone["settings"]
    svc = DecisionService(settings=s)
    ids = [
        decisions.record_decision(s, "audit-test", svc.decide({**app, "loan_amnt": 2000 + 1000 * i})) for i in range(5)
    ]
    yield s, ids
    pg.execute("DELETE FROM loan_desk_decisions WHERE username = 'audit-test'")
    # Re-seal the head onto the last record that remains, so later tests start from a clean chain.
    last = pg.execute(
        "SELECT id, record_hash, (SELECT count(*) FROM loan_desk_decisions WHERE record_hash IS NOT NULL) "
        "FROM loan_desk_decisions WHERE record_hash IS NOT NULL ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if last:
        pg.execute(
            "UPDATE loan_desk_chain_heads SET last_id = %s, last_hash = %s, records = %s WHERE chain = 'decisions'",
            list(last),
        )
    else:
        pg.execute("DELETE FROM loan_desk_chain_heads WHERE chain = 'decisions'")


def _problems(s):
    return audit.verify(s, audit.DECISIONS).problems


def test_an_untouched_trail_verifies(trail):
    s, ids = trail
    # Only this test's records are checked for tampering here; other tests may have left records too.
    assert not [p for p in _problems(s) if any(f"record {i}:" in p for i in ids)]
    row = decisions.decision_by_id(s, ids[0])
    assert row["policy_version"] and row["outcome"] in ("approve", "refer", "decline")


def test_an_edited_record_is_named_with_the_field(trail, pg):
    s, ids = trail
    pg.execute(
        "UPDATE loan_desk_decisions SET probability = probability / 2, outcome = 'approve' WHERE id = %s", [ids[2]]
    )
    problems = _problems(s)
    assert any(f"record {ids[2]}: probability, outcome differ from what was recorded" in p for p in problems)


def test_a_deleted_record_and_a_deleted_tail_are_found(trail, pg):
    s, ids = trail
    pg.execute("DELETE FROM loan_desk_decisions WHERE id = %s", [ids[1]])
    problems = _problems(s)
    assert any(f"record {ids[2]}: the record before it (after record {ids[0]}) is missing" in p for p in problems)
    pg.execute("DELETE FROM loan_desk_decisions WHERE id = %s", [ids[4]])
    assert any("the newest records were deleted or the head was altered" in p for p in _problems(s))


def test_audit_verify_cli_exits_nonzero_and_names_the_record(trail, pg):
    s, ids = trail
    ok = run_cli("loan-desk", "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "decisions:" in ok.stdout and "intact" in ok.stdout
    pg.execute("UPDATE loan_desk_decisions SET reasons = '[]' WHERE id = %s", [ids[3]])
    bad = run_cli("loan-desk", "audit", "verify")
    assert bad.returncode == 1
    assert f"record {ids[3]}: reasons differ" in bad.stdout
