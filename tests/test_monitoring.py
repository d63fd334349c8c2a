"""Monitoring measures over a constructed decision trail, in a database of this module's own.

Every decision is a real sealed record (runtime.decisions.record_decision) of a
model.inference.Decision built here, so the expected counts, ratios and drift are known.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tests.conftest import NAMES, claim_database, drop_database

MON_DB = f"{NAMES.db}_mon"
CUTOFF, BAND = 0.3, (0.25, 0.35)


def _psi_by_hand(expected, actual) -> float:
    e = np.maximum(np.asarray(expected, float) / np.sum(expected), 1e-4)
    a = np.maximum(np.asarray(actual, float) / np.sum(actual), 1e-4)
    return float(sum((ai - ei) * np.log(ai / ei) for ai, ei in zip(a, e, strict=True)))


def test_psi_of_a_known_shift():
    from model.monitoring import psi, psi_status

    # Half and half against a quarter and three quarters: 0.25*ln 2 + 0.25*ln 1.5.
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5), rel=1e-12)
    assert psi([5, 5], [50, 50]) == 0.0  # counts are normalised
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0  # an empty bucket on both sides adds nothing
    assert psi_status(0.05) == "stable" and psi_status(0.2) == "watch" and psi_status(0.3) == "shifted"
    with pytest.raises(ValueError):
        psi([1.0], [0.5, 0.5])


def test_reference_shares_of_tied_deciles():
    from model.monitoring import reference_shares
    from model.train import _distribution

    features = ["hard_pulls", "credit_card_due"]
    from model.features import FEATURES, INDEX

    rng = np.random.default_rng(3)
    X = np.full((10_000, len(FEATURES)), np.nan, dtype=np.float32)
    X[:, INDEX["hard_pulls"]] = rng.choice([0, 1, 2, 5], size=10_000, p=[0.6, 0.2, 0.15, 0.05])
    X[:2_000, INDEX["credit_card_due"]] = rng.normal(2000, 500, 2_000)
    dist = _distribution(X, features)
    # Tied deciles: buckets [<0, [0,1), [1,2), >=2] with their true shares, not 10% each.
    assert dist["hard_pulls"]["deciles"] == [0.0, 1.0, 2.0]
    shares = reference_shares(dist["hard_pulls"])
    assert shares[0] == 0.0 and shares[1] == 0.0
    assert shares[2] == pytest.approx(0.6, abs=0.02) and shares[4] == pytest.approx(0.2, abs=0.02)
    assert sum(shares) == pytest.approx(1.0)
    cc = reference_shares(dist["credit_card_due"])
    assert cc[0] == pytest.approx(0.8)  # missing share first
    assert sum(cc[1:]) == pytest.approx(0.2)
    # A bundle from before the shares: only nine distinct deciles give a reference.
    assert reference_shares({"deciles": list(range(9)), "missing": 0.0})[1:] == pytest.approx([0.1] * 10)
    assert reference_shares({"deciles": [0.0, 1.0], "missing": 0.0}) is None


# --- a constructed trail ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mon(settings):
    """A database of this module's own, migrated, with a small loans table."""
    from runtime import db
    from runtime.migrations import migrate

    claim_database(settings, MON_DB, fresh=True)
    s = dataclasses.replace(settings, pgdatabase=MON_DB)
    migrate(s)
    with db.connect(s) as conn:
        conn.execute(
            "CREATE TABLE loans (loan_id bigint PRIMARY KEY, dob_ssn text NOT NULL, loan_intent text NOT NULL, "
            "loan_amnt bigint NOT NULL, loan_status integer NOT NULL, event_timestamp timestamptz NOT NULL)"
        )
        conn.commit()
    yield s
    drop_database(settings, MON_DB)


def _decision(
    *,
    age: int,
    state: str | None,
    probability: float | None,
    credit: dict | None,
    credit_age_days: float = 10,
    stale: bool = False,
    dob_ssn: str = "19800101_0001",
    amount: float = 9000.0,
    intent: str = "MEDICAL",
    read: bool = True,
):
    from model.features import CREDIT_FEATURES
    from model.inference import Application, Decision, FeatureValue

    now = datetime.now(UTC)
    feats = []
    if read:
        ts = now - timedelta(days=credit_age_days) if credit is not None else None
        for name in CREDIT_FEATURES:
            value = (credit or {}).get(name)
            status = "stale" if stale else ("ok" if value is not None else "missing")
            feats.append(FeatureValue(name, "credit_history", value, ts, status))
        zts = now - timedelta(days=400) if state else None
        feats.append(FeatureValue("state", "zipcode_features", state, zts, "ok" if state else "missing"))
    if probability is None:
        outcome, cutoff, band = "refer", None, None
    else:
        outcome = "approve" if probability < BAND[0] else ("refer" if probability < BAND[1] else "decline")
        cutoff, band = CUTOFF, BAND
    app = Application(dob_ssn, 10001, age, 50_000.0, "RENT", 3.0, intent, amount, 12.0)
    return Decision(
        application=app,
        outcome=outcome,
        probability=probability,
        cutoff=cutoff,
        band=band,
        reasons=[],
        refer_reasons=[] if probability is not None else ["constructed: no data"],
        contributions={},
        base_value=None,
        features=feats,
        model_version="test-model",
        policy_version="test-policy",
    )


TRAIN_CC = (2000.0, 500.0)  # credit_card_due in training: normal(mean, sd)
SHIFT = 700.0


def _reference(rng) -> dict:
    from model.features import FEATURES, INDEX
    from model.train import _distribution

    X = np.full((20_000, len(FEATURES)), np.nan, dtype=np.float32)
    X[:, INDEX["credit_card_due"]] = rng.normal(*TRAIN_CC, 20_000)
    X[:, INDEX["hard_pulls"]] = rng.poisson(1.5, 20_000)
    X[:400] = np.nan  # 2% of the training loans had no credit file
    return _distribution(X, ["credit_card_due", "hard_pulls"])


@pytest.fixture(scope="module")
def trail(mon):
    """The constructed decisions: who, what, and what the measures should find."""
    from runtime import db
    from runtime.decisions import record_decision

    rng = np.random.default_rng(11)
    dist = _reference(rng)
    cc_values, hp_values = [], []
    recorded = []

    def credit():
        cc = float(round(rng.normal(*TRAIN_CC) + SHIFT, 2))
        hp = int(rng.poisson(1.5))
        cc_values.append(cc)
        hp_values.append(hp)
        return {"credit_card_due": cc, "hard_pulls": hp}

    # Age bands: 25–34 approved 60 of 100, 62+ approved 30 of 100, 18–24 only 10 decisions.
    # States: CA 60 of 100 and TX 30 of 100 (the same decisions), WY 10 (too few).
    plan = [(30, "CA", 60, 100), (66, "TX", 30, 100), (20, "WY", 5, 10)]
    for age, state, approved, n in plan:
        for i in range(n):
            p = 0.1 if i < approved else 0.6
            recorded.append(
                record_decision(mon, "t_mon", _decision(age=age, state=state, probability=p, credit=credit()))
            )
    # Data referrals: 3 without a credit file, 2 with a stale one, 1 that read nothing.
    for _ in range(3):
        record_decision(mon, "t_mon", _decision(age=40, state="CA", probability=None, credit=None))
    for _ in range(2):
        record_decision(
            mon, "t_mon", _decision(age=40, state="CA", probability=None, credit={"credit_card_due": 1.0}, stale=True)
        )
    record_decision(mon, "t_mon", _decision(age=40, state=None, probability=None, credit=None, read=False))
    # Outcomes: 20 decisions replay a loan (same applicant, amount and intent), 5 of them defaulted;
    # 4 more decisions of those applicants ask for another amount (no outcome known).
    with db.connect(mon) as conn:
        for i in range(20):
            key = f"19700101_{i:04d}"
            conn.execute(
                "INSERT INTO loans VALUES (%s, %s, 'VENTURE', 12000, %s, now() - interval '200 days')",
                [i + 1, key, 1 if i < 5 else 0],
            )
        conn.commit()
    for i in range(20):
        d = _decision(age=50, state="NY", probability=0.22, credit=credit(), dob_ssn=f"19700101_{i:04d}")
        record_decision(mon, "t_mon", dataclasses.replace(d, application=_app(d, 12000.0, "VENTURE")))
    for i in range(4):
        d = _decision(age=50, state="NY", probability=0.22, credit=credit(), dob_ssn=f"19700101_{i:04d}")
        record_decision(mon, "t_mon", dataclasses.replace(d, application=_app(d, 13000.0, "VENTURE")))
    meta = {"features": ["loan_amnt", "credit_card_due", "hard_pulls"], "training_distribution": dist}
    return {"meta": meta, "dist": dist, "cc": cc_values, "hp": hp_values}


def _app(d, amount, intent):
    return dataclasses.replace(d.application, loan_amnt=amount, loan_intent=intent)


def _today():
    from runtime.monitoring import Period

    today = datetime.now(UTC).date()
    return Period(today - timedelta(days=1), today)


def test_drift_finds_the_known_shift(mon, trail):
    from model.monitoring import feature_drift

    drift = {d.feature: d for d in feature_drift(mon, _today(), trail["meta"])}
    assert set(drift) == {"credit_card_due", "hard_pulls"}  # loan_amnt is not an online feature
    cc, hp = drift["credit_card_due"], drift["hard_pulls"]
    # Every decision that read a credit file counts; 3 without one and 2 stale count as missing.
    assert cc.decisions == len(trail["cc"]) + 5
    edges = np.asarray(trail["dist"]["credit_card_due"]["deciles"])
    counts = np.bincount(np.searchsorted(edges, trail["cc"], side="right"), minlength=len(edges) + 1)
    ref = trail["dist"]["credit_card_due"]
    assert ref["missing"] == pytest.approx(0.02)
    # The PSI is over the values present; the missing share is compared on its own.
    assert cc.psi == pytest.approx(_psi_by_hand(ref["shares"], counts), rel=1e-9)
    assert cc.psi > 0.25 and cc.status == "shifted"
    assert cc.actual_missing == pytest.approx(5 / cc.decisions)
    assert hp.psi < 0.1 and hp.status == "stable"  # drawn from the training distribution


def test_approval_ratios_by_age_band_and_state(mon, trail):
    from model import monitoring as M
    from model.groups import approval_ratios
    from runtime import monitoring as Q

    period = _today()
    rows = {r["group"]: r for r in M.age_band_ratios(Q.approvals_by_age(mon, period))}
    # 25–34: 60/100 is the reference; 62+ 30/100 → 0.5, flagged; 45–61: the 24 replay decisions (0.22 < cut-off).
    assert (rows["25–34"]["n"], rows["25–34"]["approved"], rows["25–34"]["ratio"]) == (100, 60, 1.0)
    assert (rows["62+"]["n"], rows["62+"]["approved"]) == (100, 30)
    assert rows["62+"]["ratio"] == pytest.approx(0.5) and rows["62+"]["flag"] is True
    assert rows["18–24"]["n"] == 10 and rows["18–24"]["ratio"] is None and rows["18–24"]["flag"] is False
    assert "35–44" not in rows  # its decisions were all referred for data: no probability, not scored
    # The same as the array form over the individual decisions.
    ages = ["25–34"] * 100 + ["62+"] * 100 + ["18–24"] * 10
    approved = [True] * 60 + [False] * 40 + [True] * 30 + [False] * 70 + [True] * 5 + [False] * 5
    ref = {r["group"]: r for r in approval_ratios(approved, ages)}
    assert rows["62+"]["ratio_low"] == pytest.approx(ref["62+"]["ratio_low"])
    assert rows["62+"]["ratio_high"] == pytest.approx(ref["62+"]["ratio_high"])
    assert rows["62+"]["ratio_low"] < 0.5 < rows["62+"]["ratio_high"] < 0.8

    states, left_out = M.state_ratios(Q.approvals_by_state(mon, period))
    assert [r["group"] for r in states] == ["TX", "CA"]  # lowest ratio first; WY (10) and NY (24) too few
    assert states[0]["ratio"] == pytest.approx(0.5) and states[0]["flag"] is True
    assert left_out == {"states": 2, "decisions": 34}


def test_outcomes_scores_freshness_and_referrals(mon, trail):
    from runtime import monitoring as Q

    period = _today()
    by = {}
    for r in Q.outcomes_over_time(mon, period, "day"):
        by[r["outcome"]] = by.get(r["outcome"], 0) + r["n"]
    assert by == {"approve": 95 + 24, "decline": 115, "refer": 6}
    hist = Q.score_histogram(mon, period)
    assert sum(h["n"] for h in hist) == 234
    assert {(h["lo"], h["n"]) for h in hist} >= {(0.1, 95), (0.6, 115)}
    assert Q.cutoffs(mon, period)[0]["cutoff"] == CUTOFF
    refs = Q.data_referrals(mon, period)
    assert refs == {"total": 240, "data_refer": 6, "stale": 2, "missing": 3, "reloaded": 1}
    ages = {(a["view"], a["bucket"]): a for a in Q.feature_age(mon, period)}
    assert ages["credit_history", "7–30 days"]["n"] == 234 + 2  # the scored ones and the two stale
    assert ages["credit_history", "7–30 days"]["stale"] == 2
    assert ages["credit_history", Q.NO_ROW]["n"] == 3
    assert ages["zipcode_features", "1 year or more"]["n"] == 239
    med, p90 = Q.feature_age_quantiles(mon, period)["credit_history"]
    assert 9.9 < med <= p90 < 10.1


def test_predicted_against_observed_joins_replayed_loans_only(mon, trail):
    from model.monitoring import calibration_summary
    from runtime import monitoring as Q

    cal = Q.calibration(mon, _today(), test_start=datetime.now(UTC) - timedelta(days=300))
    assert cal["scored"] == 234
    assert cal["matched"] == 20 and cal["in_test"] == 20  # the other amount has no known outcome
    (b,) = cal["bins"]
    assert (b["lo"], b["n"]) == (0.2, 20)
    assert b["predicted"] == pytest.approx(0.22) and b["observed"] == pytest.approx(5 / 20)
    assert calibration_summary(cal)["ece"] == pytest.approx(0.03)
    empty = Q.calibration(mon, Q.Period(datetime(2001, 1, 1).date(), datetime(2001, 1, 2).date()), None)
    assert (empty["scored"], empty["matched"], empty["bins"]) == (0, 0, [])
