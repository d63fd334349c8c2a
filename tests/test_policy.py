"""The credit policy, the monotone model and the principal reasons (issue #10, items 1-3)."""

from __future__ import annotations

import numpy as np
import pytest

from model import features as F
from model.bundles import load_bundle
from model.inference import DecisionService
from model.policy import PolicyError, load_policy, parse_policy, pick_cutoff
from model.train import promotion_verdict
from tests.conftest import age

GOOD = """
version = "t-1"
[cutoff]
method = "fixed"
value = 0.30
[refer]
below = 0.05
above = 0.05
"""


def _write(tmp_path, text: str, name: str = "policy.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the policy file ---------------------------------------------------------------------------------
def test_the_repository_policy_loads_and_describes_itself():
    p = load_policy()
    assert p.method in ("expected_loss", "approval_rate", "fixed") and p.version
    text = "\n".join(p.describe())
    assert p.version in text and "refer band" in text and "knock-out" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cutof = 1\n" + GOOD, "unknown field 'cutof' in the top level"),
        (GOOD.replace('method = "fixed"', 'method = "fixed"\nspeed = 3'), "unknown field 'speed' in [cutoff]"),
        (GOOD.replace('"fixed"\nvalue = 0.30', '"expected_loss"\nloss_given_default = -0.6'), "loss_given_default"),
        (GOOD.replace("below = 0.05", "below = -0.05"), "the approve and decline bands would overlap"),
        (GOOD.replace('version = "t-1"', ""), "version must be"),
        (GOOD + '\n[[knockout]]\nfeature = "shoe_size"\nat_least = 1\nreason = "x"\n', "not one Loan Desk reads"),
        ("version = [", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_gets_one_clear_sentence(text, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_outcomes_follow_the_band_and_knockouts_refer():
    p = parse_policy(GOOD + '\n[[knockout]]\nfeature = "bankruptcies"\nat_least = 1\nreason = "Bankruptcy"\n')
    assert p.classify(0.10, 0.30, {})[0] == "approve"
    assert p.classify(0.26, 0.30, {})[0] == "refer"
    assert p.classify(0.34, 0.30, {})[0] == "refer"
    assert p.classify(0.35, 0.30, {})[0] == "decline"
    outcome, why = p.classify(0.10, 0.30, {"bankruptcies": 2})
    assert outcome == "refer" and why == ["Knock-out rule: Bankruptcy"]
    assert p.classify(0.50, 0.30, {"bankruptcies": 2})[0] == "decline"  # a knock-out never softens a decline


def test_the_expected_loss_cutoff_is_the_break_even_on_the_slice():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.6, 20_000)
    y = (rng.uniform(size=p.size) < p).astype(float)  # calibrated
    amount = np.full(p.size, 10_000.0)
    rate = np.full(p.size, 12.0)
    cut = pick_cutoff("expected_loss", p, y, amount, rate, loss_given_default=0.6)
    # break-even: p * 0.6 = (1 - p) * 0.12  →  p = 0.12 / 0.72 = 0.1667
    assert cut == pytest.approx(0.12 / 0.72, abs=0.02)
    assert pick_cutoff("approval_rate", p, y, amount, rate, approval_rate=0.25) == pytest.approx(
        np.quantile(p, 0.25), abs=0.002
    )


def test_a_refused_policy_change_keeps_the_last_good_policy_deciding(backbone, app, tmp_path):
    path = _write(tmp_path, GOOD)
    svc = DecisionService(settings=backbone["settings"], policy_file=path)
    first = svc.decide(app)
    assert first.policy_version.startswith("t-1@") and first.cutoff == 0.30
    path.write_text(GOOD.replace("below = 0.05", "below = -1"))
    again = svc.decide(app)
    assert again.policy_version == first.policy_version
    assert any("bands would overlap" in w for w in again.warnings)
    path.write_text(GOOD.replace('"t-1"', '"t-2"').replace("0.30", "0.40"))
    assert svc.decide(app).policy_version.startswith("t-2@")


def test_approvals_carry_no_reasons_and_knockouts_refer_with_their_reason(backbone, app, tmp_path):
    everyone = GOOD.replace("value = 0.30", "value = 0.90").replace("0.05", "0.0")
    svc = DecisionService(settings=backbone["settings"], policy_file=_write(tmp_path, everyone, "a.toml"))
    d = svc.decide(app)
    assert d.outcome == "approve" and d.reasons == [] and d.refer_reasons == []
    knock = everyone + '\n[[knockout]]\nfeature = "loan_amnt"\nat_least = 500\nreason = "Every loan is checked"\n'
    svc = DecisionService(settings=backbone["settings"], policy_file=_write(tmp_path, knock, "k.toml"))
    d = svc.decide(app)
    assert d.outcome == "refer" and d.refer_reasons == ["Knock-out rule: Every loan is checked"]
    assert 1 <= len(d.reasons) <= 4  # a referral carries its principal reasons for the underwriter


# --- the model ---------------------------------------------------------------------------------------
def test_the_model_uses_the_input_policy_and_monotone_constraints(backbone):
    meta = backbone["meta"]
    assert "person_age" not in meta["features"] and "avg_wage_zip" not in meta["features"]
    assert not set(F.ZIPCODE_FEATURES) & set(meta["features"])
    assert set(meta["excluded_inputs"]) == set(F.EXCLUDED_BY_POLICY)
    assert meta["monotone_constraints"]["person_income"] == -1 and meta["monotone_constraints"]["loan_amnt"] == 1
    assert meta["rows"]["release"] == sum(meta["rows"][k] for k in ("fit", "validation", "policy", "test"))
    assert "with_age_and_area" in meta["input_policy"] and meta["input_policy"]["with_age_and_area"]["auc"]


SWEEPS = {
    "person_income": np.linspace(4_000, 400_000, 25),
    "loan_amnt": np.linspace(500, 35_000, 25),
    "person_emp_length": np.linspace(0, 40, 21),
    "loan_int_rate": np.linspace(5, 25, 21),
}


@pytest.mark.parametrize("field", SWEEPS)
def test_risk_moves_one_way_with_each_application_input(backbone, app, field):
    svc = DecisionService(settings=backbone["settings"])
    base = {k: v for k, v in app.items() if k != "person_age"}  # age comes from the birth date
    values = SWEEPS[field]
    if field == "person_emp_length":
        values = values[values <= age(app["dob_ssn"]) - 14]
    probs = [svc.decide({**base, field: float(v)}).probability for v in values]
    steps = np.diff(probs) * F.MONOTONE[field]
    assert (steps >= -1e-7).all(), f"{field}: {np.round(probs, 4).tolist()}"
    if field in ("person_income", "loan_amnt"):
        assert probs[0] != probs[-1]  # these always matter; employment length and rate may not for one applicant


@pytest.mark.parametrize("feature", [f for f in F.MONOTONE if f in F.CREDIT_FEATURES or f == "total_debt_due"])
def test_risk_moves_one_way_with_each_credit_input(backbone, feature):
    """Swept on the model's own input rows (the online values are what decide() reads)."""
    b = load_bundle(backbone["meta"]["model_version"], backbone["meta"]["written_to"].rsplit("/bundles/", 1)[0])
    rng = np.random.default_rng(11)
    rows = np.abs(rng.normal(3, 2, size=(40, len(F.FEATURES)))).astype(np.float32)
    rows[:, F.INDEX["person_income"]] = rng.uniform(20_000, 150_000, 40)
    rows[:, F.INDEX["loan_amnt"]] = rng.uniform(1_000, 30_000, 40)
    top = {"hard_pulls": 12, "bankruptcies": 3}.get(feature, 12 if feature.startswith("missed") else 60_000)
    grid = np.linspace(0, top, 13)
    for row in rows:
        x = np.repeat(row[None, :], len(grid), axis=0)
        x[:, F.INDEX[feature]] = grid
        p = b.booster.inplace_predict(x[:, b.columns])
        assert (np.diff(p) * F.MONOTONE[feature] >= -1e-7).all(), f"{feature}: {np.round(p, 4).tolist()}"


def test_a_candidate_worse_than_the_champion_stays_a_challenger():
    policy = load_policy()
    champ = {"metrics": {"auc": 0.74, "calibration_error": 0.02, "min_age_band_ratio": 0.9}}
    same = {"metrics": {"auc": 0.738, "calibration_error": 0.025, "min_age_band_ratio": 0.88}}
    worse = {"metrics": {"auc": 0.70, "calibration_error": 0.02, "min_age_band_ratio": 0.9}}
    assert promotion_verdict(same, champ, policy)[0]
    ok, lines = promotion_verdict(worse, champ, policy)
    assert not ok and any(line.startswith("AUC") and "outside" in line for line in lines)
    assert promotion_verdict(worse, None, policy)[0]
