"""Seeded synthetic credit data, any size.

Every applicant has one loan dated within the year before ``as_of`` and a credit file that
changes over time: a snapshot about every 91 days (eight in all, the newest within four weeks
of ``as_of``), driven by a latent risk that drifts from one snapshot to the next.  A
point-in-time join therefore sees a different credit file than "latest".

The label is drawn from a known risk function of the features *as of the loan date*
(``risk_logit``) and its probability is kept (``true_default_prob``), so a trained model can
be compared with the best possible (Bayes) AUC.

Then the future happens: a defaulting loan goes bad 3 weeks to 8 months after it was made
(``default_dates``), and every snapshot dated after that shows it (``damage_after_default``:
more missed payments, higher card dues, more hard pulls, a bankruptcy for a quarter of them a
quarter later).  A model trained on each applicant's *latest* snapshot learns from that
aftermath: it looks better on a validation set built the same way and worse on the file as it
stood at application time -- which is what production sees.

Risk function (log-odds of default):
    b0                                       intercept, set so about 22% of loans default
  + 0.4  * (lti - 0.15)                      lti = loan_amnt / person_income
  + 4.5  * max(lti - 0.20, 0) * (1 + 5 * [person_emp_length < 2]) * (1 + 2 * [RENT])
                                             an interaction: a stretched loan is a much bigger
                                             risk on a short job, and for a renter
  + 0.10 * (loan_int_rate - 11) + 1.0 * [loan_int_rate >= 16]   a pricing tier
  + 0.55 * missed_payments_6m + 0.30 * missed_payments_1y + 0.12 * missed_payments_2y
  + 0.90 * bankruptcies + 0.07 * hard_pulls
  + 0.00004 * (credit_card_due - 2000)
  + home ownership: RENT +0.45, MORTGAGE -0.35, OWN -0.10, OTHER +0.30
  + loan intent: DEBTCONSOLIDATION +0.35, MEDICAL +0.30, HOMEIMPROVEMENT +0.15,
                 PERSONAL 0, EDUCATION -0.10, VENTURE -0.25
  - 0.04 * min(person_emp_length, 15)
  - 0.35 * ln(average wage in the zipcode / 50,000)
Risk rises with the loan-to-income ratio, the rate and every count of trouble, and falls with
the length of employment, whatever the other inputs (monotone), but not additively: a logistic
regression cannot express the interaction or the steps, gradient-boosted trees can.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from runtime.schema import CREDIT_FEATURES

HOME_OWNERSHIP = ("RENT", "MORTGAGE", "OWN", "OTHER")
LOAN_INTENTS = ("EDUCATION", "MEDICAL", "VENTURE", "PERSONAL", "DEBTCONSOLIDATION", "HOMEIMPROVEMENT")
STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
    "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY"
).split()
_CITY_A = "Spring Oak Maple River Lake Cedar Pine Fair Green Clear Red Stone Mill Glen Ash Elm".split()
_CITY_B = "field wood ton ville port dale view burg ford side brook haven".split()

OWNERSHIP_EFFECT = {"RENT": 0.45, "MORTGAGE": -0.35, "OWN": -0.10, "OTHER": 0.30}
INTENT_EFFECT = {
    "DEBTCONSOLIDATION": 0.35,
    "MEDICAL": 0.30,
    "HOMEIMPROVEMENT": 0.15,
    "PERSONAL": 0.0,
    "EDUCATION": -0.10,
    "VENTURE": -0.25,
}
# Bumped whenever the generator's output changes for the same size and seed: data loaded by an
# earlier generator is then replaced instead of kept (bootstrap/load.py's fingerprint).
GENERATOR = 2
TARGET_DEFAULT_RATE = 0.22
SNAPSHOTS = 8
SNAPSHOT_EVERY_DAYS = 91
CREDIT_COLUMNS = CREDIT_FEATURES
# The interaction in risk_logit: loan-to-income above the knee weighs (1 + these) times more for
# a short job and for a renter.
LTI_KNEE = 0.20
STRETCH_SLOPE = 4.5
SHORT_JOB_YEARS = 2
SHORT_JOB_WEIGHT = 5.0
RENTER_WEIGHT = 2.0
HIGH_RATE = 16.0  # a pricing tier: loans priced at or above it carry a step of extra risk
HIGH_RATE_STEP = 1.0


@dataclass
class Dataset:
    loans: pd.DataFrame
    credit_history: pd.DataFrame
    zipcodes: pd.DataFrame


def default_as_of() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_zipcodes(rng: np.random.Generator, count: int, as_of: datetime) -> pd.DataFrame:
    codes = np.sort(rng.choice(np.arange(1001, 99951), size=count, replace=False))
    state = np.array(STATES)[rng.integers(0, len(STATES), count)]
    city_idx = rng.integers(0, len(_CITY_A) * len(_CITY_B), count)
    city = np.array([a + b for a in _CITY_A for b in _CITY_B])[city_idx]
    population = np.clip(rng.lognormal(np.log(9000), 0.9, count), 272, 88503).astype(np.int64)
    returns = np.maximum(250, (population * rng.uniform(0.38, 0.55, count))).astype(np.int64)
    avg_wage = np.clip(rng.lognormal(np.log(52000), 0.35, count), 15000, 400000)
    loc = rng.choice(np.array(["PRIMARY", "PO BOX", "UNIQUE"]), size=count, p=[0.92, 0.05, 0.03])
    frames = []
    # Two yearly snapshots: the statistics of the year before last, then last year's.
    for years_back, drift in ((2, 0.97), (1, 1.0)):
        ts = datetime(as_of.year - years_back, 1, 1, 12, tzinfo=UTC)
        pop = (population * drift).astype(np.int64)
        ret = (returns * drift).astype(np.int64)
        frames.append(
            pd.DataFrame(
                {
                    "zipcode": codes,
                    "city": city,
                    "state": state,
                    "location_type": loc,
                    "tax_returns_filed": ret,
                    "population": pop,
                    "total_wages": (ret * avg_wage * drift).astype(np.int64),
                    "event_timestamp": pd.Timestamp(ts),
                    "created_timestamp": pd.Timestamp(ts),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def unique_dob_ssn(rng: np.random.Generator, dob: np.ndarray) -> np.ndarray:
    """YYYYMMDD_NNNN keys; a clash on both parts moves the SSN digits on until unique."""
    day = pd.to_datetime(dob).strftime("%Y%m%d").to_numpy()
    ssn = rng.integers(0, 10000, len(day))
    while True:
        keys = pd.Series(day) + "_" + pd.Series(ssn).map("{:04d}".format)
        dup = keys.duplicated().to_numpy()
        if not dup.any():
            return keys.to_numpy()
        ssn[dup] = (ssn[dup] + rng.integers(1, 9999, dup.sum())) % 10000


def credit_snapshots(
    rng: np.random.Generator,
    dob_ssn: np.ndarray,
    mortgage_holder: np.ndarray,
    as_of: datetime,
    risk0: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """Eight snapshots per applicant, oldest first.

    Returns the long frame plus the snapshot times (n, SNAPSHOTS) and the columns (each
    (n, SNAPSHOTS)), so callers can read the file as of any date without a join.
    """
    times, cols = credit_arrays(rng, len(dob_ssn), mortgage_holder, as_of, risk0)
    return snapshot_frame(dob_ssn, times, cols), times, cols


def credit_arrays(
    rng: np.random.Generator,
    n: int,
    mortgage_holder: np.ndarray,
    as_of: datetime,
    risk0: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Snapshot times (n, SNAPSHOTS) and credit columns (n, SNAPSHOTS each), oldest first."""
    base = np.datetime64(as_of.replace(tzinfo=None), "s")
    offset_s = rng.integers(0, 28 * 86400, n)
    steps = np.arange(SNAPSHOTS - 1, -1, -1) * SNAPSHOT_EVERY_DAYS * 86400
    times = base - (offset_s[:, None] + steps[None, :]).astype("timedelta64[s]")
    risk = np.empty((n, SNAPSHOTS))
    risk[:, 0] = rng.standard_normal(n) if risk0 is None else risk0
    for k in range(1, SNAPSHOTS):
        risk[:, k] = 0.8 * risk[:, k - 1] + 0.6 * rng.standard_normal(n)

    has_student = rng.random(n) < 0.35
    has_vehicle = rng.random(n) < 0.40
    mortgage0 = np.where(mortgage_holder, rng.lognormal(np.log(210000), 0.6, n), 0.0)
    student0 = np.where(has_student, rng.lognormal(np.log(22000), 0.7, n), 0.0)
    vehicle0 = np.where(has_vehicle, rng.lognormal(np.log(12000), 0.6, n), 0.0)
    bankrupt = rng.choice([0, 1, 2], size=n, p=[0.955, 0.038, 0.007])
    bankrupt_from = rng.integers(0, SNAPSHOTS * 2, n)  # >= SNAPSHOTS: not yet on the file

    cols = {c: np.empty((n, SNAPSHOTS), dtype=np.int64) for c in CREDIT_COLUMNS}
    for k in range(SNAPSHOTS):
        r = risk[:, k]
        decay = 1 - 0.015 * k
        cols["credit_card_due"][:, k] = np.clip(rng.lognormal(7.6 + 0.35 * r, 0.6), 0, 20000)
        cols["mortgage_due"][:, k] = mortgage0 * decay
        cols["student_loan_due"][:, k] = student0 * decay
        cols["vehicle_loan_due"][:, k] = vehicle0 * max(0.0, 1 - 0.04 * k)
        cols["hard_pulls"][:, k] = np.clip(rng.poisson(np.exp(0.3 + 0.35 * r)), 0, 10)
        m6 = np.clip(rng.poisson(np.exp(-2.3 + 0.9 * r)), 0, 3)
        m1 = m6 + np.clip(rng.poisson(np.exp(-2.2 + 0.8 * r)), 0, 3)
        cols["missed_payments_6m"][:, k] = m6
        cols["missed_payments_1y"][:, k] = m1
        cols["missed_payments_2y"][:, k] = m1 + np.clip(rng.poisson(np.exp(-1.6 + 0.7 * r)), 0, 4)
        cols["bankruptcies"][:, k] = np.where(bankrupt_from <= k, bankrupt, 0)
    return times, cols


def snapshot_frame(dob_ssn: np.ndarray, times: np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The long credit_history frame (one row per applicant and snapshot) of ``credit_arrays``."""
    ts = pd.to_datetime(times.ravel()).tz_localize(UTC)
    frame = pd.DataFrame({"dob_ssn": np.repeat(dob_ssn, times.shape[1])})
    for c in CREDIT_COLUMNS:
        frame[c] = cols[c].ravel()
    frame["event_timestamp"] = ts
    # The bureau delivers each snapshot a day after it is taken.
    frame["created_timestamp"] = ts + pd.Timedelta(1, unit="D")
    return frame


def default_dates(rng: np.random.Generator, loan_time: np.ndarray) -> np.ndarray:
    """When a defaulting loan goes bad: the first missed instalment, 3 weeks to 8 months after the
    loan (2 to 3 months typically)."""
    days = np.clip(20 + rng.gamma(2.0, 25.0, len(loan_time)), 20, 240)
    return loan_time + (days * 86400).astype("timedelta64[s]")


def damage_after_default(
    rng: np.random.Generator, times: np.ndarray, cols: dict[str, np.ndarray], defaulted: np.ndarray, when: np.ndarray
) -> np.ndarray:
    """Worsen, in place, every snapshot dated after a default: the bureau sees what followed it.

    Missed payments rise (and stay on the 6-month count for two quarters), card dues rise,
    collectors and new lenders pull the file, and some defaulters file for bankruptcy a few
    months later.  Returns the (n, SNAPSHOTS) mask of snapshots that changed.  The label does
    not depend on any of this (it is drawn from the file as of the loan date), so only a
    training set that reads snapshots dated after the loan -- "latest" features -- sees it.
    """
    n = len(defaulted)
    after = defaulted[:, None] & (times > when[:, None])
    age_days = (times - when[:, None]).astype("timedelta64[D]").astype(np.int64)
    recent = after & (age_days <= 183)
    missed = 1 + rng.poisson(1.2, n)
    bankrupt_later = rng.random(n) < 0.25
    card_factor = 1.5 + rng.random(n)
    pulls = 1 + rng.poisson(1.5, n)
    m6, m1, m2 = cols["missed_payments_6m"], cols["missed_payments_1y"], cols["missed_payments_2y"]
    add6 = np.where(recent, missed[:, None], 0)
    add1 = np.where(after & (age_days <= 365), missed[:, None] + 1, 0)
    add2 = np.where(after, missed[:, None] + 2, 0)
    m6 += add6
    m1[:] = np.maximum(m1 + add1, m6)
    m2[:] = np.maximum(m2 + add2, m1)
    cols["credit_card_due"][:] = np.where(
        after, np.minimum(cols["credit_card_due"] * card_factor[:, None], 25000), cols["credit_card_due"]
    )
    cols["hard_pulls"][:] = np.where(after, np.minimum(cols["hard_pulls"] + pulls[:, None], 10), cols["hard_pulls"])
    filed = after & bankrupt_later[:, None] & (age_days > 90)
    cols["bankruptcies"][:] = np.where(filed, cols["bankruptcies"] + 1, cols["bankruptcies"])
    return after


def as_of_index(times: np.ndarray, when: np.ndarray) -> np.ndarray:
    """Index of the latest snapshot at or before ``when`` per row (-1 when none)."""
    return (times <= when[:, None]).sum(axis=1) - 1


def risk_logit(app: pd.DataFrame, credit_at: dict[str, np.ndarray], avg_wage: np.ndarray) -> np.ndarray:
    """Log-odds of default (before the intercept) from the application and the file at the loan date."""
    lti = app["loan_amnt"].to_numpy() / app["person_income"].to_numpy()
    emp = app["person_emp_length"].to_numpy()
    renter = (app["person_home_ownership"].to_numpy() == "RENT").astype(float)
    rate = app["loan_int_rate"].to_numpy()
    stretch = np.maximum(lti - LTI_KNEE, 0)
    weight = (1 + SHORT_JOB_WEIGHT * (emp < SHORT_JOB_YEARS)) * (1 + RENTER_WEIGHT * renter)
    z = (
        0.4 * (lti - 0.15)
        + STRETCH_SLOPE * stretch * weight
        + 0.10 * (rate - 11)
        + HIGH_RATE_STEP * (rate >= HIGH_RATE)
        + 0.55 * credit_at["missed_payments_6m"]
        + 0.30 * credit_at["missed_payments_1y"]
        + 0.12 * credit_at["missed_payments_2y"]
        + 0.90 * credit_at["bankruptcies"]
        + 0.07 * credit_at["hard_pulls"]
        + 0.00004 * (credit_at["credit_card_due"] - 2000)
        + app["person_home_ownership"].map(OWNERSHIP_EFFECT).to_numpy()
        + app["loan_intent"].map(INTENT_EFFECT).to_numpy()
        - 0.04 * np.minimum(emp, 15)
        - 0.35 * np.log(avg_wage / 50000)
    )
    return z


def calibrated_probability(z: np.ndarray, rate: float = TARGET_DEFAULT_RATE) -> np.ndarray:
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(z + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return _sigmoid(z + (lo + hi) / 2)


def generate(applicants: int, seed: int = 42, as_of: datetime | None = None) -> Dataset:
    if applicants < 1:
        raise ValueError("--applicants must be at least 1")
    as_of = as_of or default_as_of()
    rng = np.random.default_rng(seed)
    n = applicants
    zips = make_zipcodes(rng, int(np.clip(n // 2, 50, 30000)), as_of)
    latest_zip = zips.drop_duplicates("zipcode", keep="last").reset_index(drop=True)

    age_now = np.clip(20 + rng.gamma(2.0, 6.5, n), 20, 80)
    dob = np.datetime64(as_of.replace(tzinfo=None), "D") - (age_now * 365.25).astype("timedelta64[D]")
    dob_ssn = unique_dob_ssn(rng, dob)
    zip_idx = rng.integers(0, len(latest_zip), n)
    ownership = rng.choice(np.array(HOME_OWNERSHIP), size=n, p=[0.50, 0.41, 0.08, 0.01])
    times, cols = credit_arrays(rng, n, ownership == "MORTGAGE", as_of)

    loan_offset = rng.integers(86400, 365 * 86400, n).astype("timedelta64[s]")
    loan_time = np.datetime64(as_of.replace(tzinfo=None), "s") - loan_offset
    k = as_of_index(times, loan_time)
    rows = np.arange(n)
    credit_at = {c: cols[c][rows, k] for c in CREDIT_COLUMNS}
    age_at_loan = np.floor((loan_time - dob.astype("datetime64[s]")).astype(np.int64) / (365.25 * 86400))
    income = np.round(np.clip(rng.lognormal(np.log(58000), 0.55, n), 4000, 2_000_000), -2)
    emp = np.clip(np.round(rng.gamma(1.6, 3.2, n)), 0, np.maximum(age_at_loan - 16, 0))
    amount = np.round(np.clip(rng.lognormal(np.log(8500), 0.6, n), 500, 35000) / 25) * 25
    # The rate the lender priced in reflects the credit file as of the loan date.
    grade_signal = 0.25 * credit_at["missed_payments_1y"] + 0.6 * credit_at["bankruptcies"]
    rate = np.round(np.clip(10.5 + 2.0 * grade_signal + rng.normal(0, 2.8, n), 5.42, 23.22), 2)
    app = pd.DataFrame(
        {
            "loan_id": np.arange(10000, 10000 + n, dtype=np.int64),
            "dob_ssn": dob_ssn,
            "zipcode": latest_zip["zipcode"].to_numpy()[zip_idx],
            "person_age": age_at_loan.astype(np.int64),
            "person_income": income.astype(np.int64),
            "person_home_ownership": ownership,
            "person_emp_length": emp.astype(float),
            "loan_intent": rng.choice(np.array(LOAN_INTENTS), size=n, p=[0.2, 0.18, 0.17, 0.17, 0.16, 0.12]),
            "loan_amnt": amount.astype(np.int64),
            "loan_int_rate": rate,
        }
    )
    wage = (latest_zip["total_wages"] / latest_zip["tax_returns_filed"]).to_numpy()[zip_idx]
    prob = calibrated_probability(risk_logit(app, credit_at, wage))
    app["loan_status"] = (rng.random(n) < prob).astype(np.int32)
    app["true_default_prob"] = prob
    # Only now, the label drawn, does the future happen: a default shows on the later snapshots.
    damage_after_default(rng, times, cols, app["loan_status"].to_numpy() == 1, default_dates(rng, loan_time))
    credit = snapshot_frame(dob_ssn, times, cols)
    ts = pd.to_datetime(loan_time).tz_localize(UTC)
    app["event_timestamp"] = ts
    app["created_timestamp"] = ts
    app = app.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    app["loan_id"] = np.arange(10000, 10000 + n, dtype=np.int64)
    return Dataset(loans=app, credit_history=credit, zipcodes=zips)
