"""The model's feature vector: one definition shared by training and inference.

Categorical application fields are fixed integer codes (no pandas categoricals anywhere),
so training builds the same numbers that inference puts in a numpy row.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.schema import CREDIT_FEATURES, ZIPCODE_FEATURES, ZIPCODE_TEXT  # noqa: F401

HOME_OWNERSHIP = ("RENT", "MORTGAGE", "OWN", "OTHER")
LOAN_INTENTS = ("EDUCATION", "MEDICAL", "VENTURE", "PERSONAL", "DEBTCONSOLIDATION", "HOMEIMPROVEMENT")
OWNERSHIP_CODE = {v: i for i, v in enumerate(HOME_OWNERSHIP)}
INTENT_CODE = {v: i for i, v in enumerate(LOAN_INTENTS)}

APPLICATION_FIELDS = (
    "person_age",
    "person_income",
    "person_home_ownership",
    "person_emp_length",
    "loan_intent",
    "loan_amnt",
    "loan_int_rate",
)
DERIVED = ("loan_pct_income", "total_debt_due", "avg_wage_zip")

# Every column Loan Desk builds for an application (the decision record keeps them all).
FEATURES = (*APPLICATION_FIELDS, *DERIVED, *CREDIT_FEATURES, *ZIPCODE_FEATURES)
INDEX = {name: i for i, name in enumerate(FEATURES)}

# The input policy (README "Input policy"): the model does not score age (Regulation B
# 1002.6(b)(2): an applicant aged 62 or older must not get a negative value for age) nor the
# zipcode's area statistics (a neighbourhood, not the applicant: a redlining proxy). Both are
# still read and recorded, for exploration and fair-lending monitoring.
EXCLUDED_BY_POLICY = ("person_age", "avg_wage_zip", *ZIPCODE_FEATURES)
MODEL_FEATURES = tuple(f for f in FEATURES if f not in EXCLUDED_BY_POLICY)

# Direction of risk for every directional input: +1 risk rises with the value, -1 it falls.
# XGBoost enforces them (monotone_constraints); tests sweep each one through decide().
MONOTONE = {
    "person_income": -1,
    "person_emp_length": -1,
    "loan_amnt": +1,
    "loan_int_rate": +1,
    "loan_pct_income": +1,
    "total_debt_due": +1,
    "credit_card_due": +1,
    "mortgage_due": +1,
    "student_loan_due": +1,
    "vehicle_loan_due": +1,
    "hard_pulls": +1,
    "missed_payments_2y": +1,
    "missed_payments_1y": +1,
    "missed_payments_6m": +1,
    "bankruptcies": +1,
}


def monotone_constraints(features) -> str:
    """XGBoost's constraint string for a feature list, e.g. ``(0,-1,1,...)``."""
    return "(" + ",".join(str(MONOTONE.get(f, 0)) for f in features) + ")"


def columns(features) -> np.ndarray:
    """Positions of ``features`` in the full FEATURES row."""
    return np.array([INDEX[f] for f in features], dtype=np.intp)


FEATURE_SERVICE = "credit_model_v1"
ONLINE_REFS = tuple(
    [f"credit_history:{f}" for f in CREDIT_FEATURES]
    + [f"zipcode_features:{f}" for f in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES)]
)
NAN = math.nan


def row_vector(app: dict, credit: dict, zipcode: dict) -> np.ndarray:
    """One application plus its online features → a float32 row (missing values are NaN)."""
    x = np.full((1, len(FEATURES)), np.nan, dtype=np.float32)
    v = x[0]
    v[0] = app["person_age"]
    v[1] = app["person_income"]
    v[2] = OWNERSHIP_CODE[app["person_home_ownership"]]
    v[3] = app["person_emp_length"]
    v[4] = INTENT_CODE[app["loan_intent"]]
    v[5] = app["loan_amnt"]
    v[6] = app["loan_int_rate"]
    v[7] = app["loan_amnt"] / app["person_income"] if app["person_income"] else NAN
    dues = [credit.get(k) for k in CREDIT_FEATURES[:4]]
    v[8] = sum(dues) if all(d is not None for d in dues) else NAN
    wages, returns = zipcode.get("total_wages"), zipcode.get("tax_returns_filed")
    v[9] = wages / returns if wages is not None and returns else NAN
    base = 10
    for i, k in enumerate(CREDIT_FEATURES):
        val = credit.get(k)
        if val is not None:
            v[base + i] = val
    base += len(CREDIT_FEATURES)
    for i, k in enumerate(ZIPCODE_FEATURES):
        val = zipcode.get(k)
        if val is not None:
            v[base + i] = val
    return x


def frame_matrix(df) -> np.ndarray:
    """Training frame (one row per loan, columns named as in FEATURES' sources) → float32 matrix."""
    out = np.full((len(df), len(FEATURES)), np.nan, dtype=np.float32)
    for name in APPLICATION_FIELDS + CREDIT_FEATURES + ZIPCODE_FEATURES:
        col = df[name]
        if name == "person_home_ownership":
            col = col.map(OWNERSHIP_CODE)
        elif name == "loan_intent":
            col = col.map(INTENT_CODE)
        out[:, INDEX[name]] = col.astype("float64").to_numpy()
    out[:, INDEX["loan_pct_income"]] = (df["loan_amnt"] / df["person_income"].where(df["person_income"] > 0)).to_numpy()
    out[:, INDEX["total_debt_due"]] = (
        df[list(CREDIT_FEATURES[:4])].astype("float64").sum(axis=1, skipna=False).to_numpy()
    )
    returns = df["tax_returns_filed"].astype("float64")
    out[:, INDEX["avg_wage_zip"]] = (df["total_wages"].astype("float64") / returns.where(returns > 0)).to_numpy()
    return out


def model_features(dataset: dict | None = None, with_age_and_area: bool = False) -> tuple[str, ...]:
    """The columns a model is trained on: MODEL_FEATURES (or every column, for the model card's
    comparison), less the credit columns when the data synthesized them."""
    from model.comparisons import excluded_features

    chosen = FEATURES if with_age_and_area else MODEL_FEATURES
    left_out = excluded_features(dataset)
    return tuple(f for f in chosen if f not in left_out)
