"""What the data teaches: models the card shows beside the deployed one, on the same rows.

``comparisons`` is called by training with the point-in-time training frame and its split, and
returns a small dict for the bundle's metadata (key ``comparisons``):

* **the leak** -- the same XGBoost trained on "latest" credit features: each applicant's newest
  snapshot in the offline table, whatever its date (read with SQL from ``credit_history``,
  ``DISTINCT ON (dob_ssn) ... ORDER BY event_timestamp DESC, created_timestamp DESC`` -- the
  same "newest row wins" rule the online store follows, without Feast's TTL), beside the
  point-in-time model.  Each is scored on its own validation slice (what its author sees
  offline) and on the point-in-time test rows (what production feeds it: the file as it is on
  the day of the application).  In the synthetic data a default worsens the snapshots after
  it, so the "latest" model looks better offline and is worse on the point-in-time test.
* **the linear baseline** -- logistic regression (scikit-learn; categories one-hot, numbers
  median-imputed with a missing-value indicator, then standardized) on the same fit and test
  rows as XGBoost.
* **a random split** -- the same XGBoost on a seeded random split of the same rows (as many
  test rows as the temporal holdout), beside the temporal one.  For the tutorial's data, whose
  timestamps only follow file order, this is the split that means something.
* **left out** -- features ``excluded_features`` drops (the tutorial's synthesized credit file)
  and what the model would score with them.

Every model here is trained the same way: XGBoost with the caller's parameters, early stopping
on the last 15% of the fit rows (in the order given, i.e. time order for a temporal split).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from runtime.schema import CREDIT_FEATURES

CATEGORICAL = ("person_home_ownership", "loan_intent")
# Derived from the credit file, so it goes wherever the credit columns go.
CREDIT_DERIVED = ("total_debt_due",)
VALID_SHARE = 0.15
EARLY_STOP = 40
RANDOM_SPLIT_SEED = 2024
LATEST_SQL = (
    "SELECT DISTINCT ON (dob_ssn) dob_ssn, {cols}, event_timestamp AS latest_credit_timestamp "
    "FROM credit_history ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC"
)
SYNTHESIZED_MARK = "synthesized"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- which features a dataset's model leaves out ------------------------------------------------
def credit_is_synthesized(dataset_info: dict | None) -> bool:
    """True when the loaded data's credit file was made up by the importer (the tutorial without
    its credit_history.parquet): it is independent of the labels, so it carries no signal."""
    info = dataset_info or {}
    if info.get("source") != "tutorial":
        return False
    return any(SYNTHESIZED_MARK in n and "credit" in n for n in info.get("notes", []))


def excluded_features(dataset_info: dict | None) -> set[str]:
    """Model inputs to leave out for this dataset (``loan_desk_dataset.info``): the credit
    columns and what is derived from them when the credit file was synthesized, else nothing."""
    if credit_is_synthesized(dataset_info):
        return set(CREDIT_FEATURES) | set(CREDIT_DERIVED)
    return set()


# --- training one model the same way every time ----------------------------------------------
def _params_for(params: dict, features: Sequence[str], columns: Sequence[str]) -> dict:
    """``params`` for a matrix of ``columns``: positional monotone constraints follow the names."""
    out = dict(params)
    mono = out.get("monotone_constraints")
    if isinstance(mono, str):
        mono = [int(v) for v in mono.strip("()").split(",") if v.strip()]
    if isinstance(mono, list | tuple):
        by_name = dict(zip(features, mono, strict=False))
        out["monotone_constraints"] = tuple(int(by_name.get(c, 0)) for c in columns)
    return out


def _fit(X: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, params: dict, rounds: int):
    """XGBoost with early stopping on the last VALID_SHARE of ``fit_idx``; (booster, valid rows)."""
    n_valid = max(1, int(len(fit_idx) * VALID_SHARE))
    train, valid = fit_idx[:-n_valid], fit_idx[-n_valid:]
    booster = xgb.train(
        params,
        xgb.DMatrix(X[train], label=y[train]),
        num_boost_round=rounds,
        evals=[(xgb.DMatrix(X[valid], label=y[valid]), "valid")],
        early_stopping_rounds=EARLY_STOP,
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1], valid


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    if len(set(y.tolist())) < 2:
        return None
    return round(float(roc_auc_score(y, p)), 4)


def _predict(booster, X: np.ndarray) -> np.ndarray:
    return booster.inplace_predict(X)


def logistic_auc(X: np.ndarray, y: np.ndarray, fit_idx: np.ndarray, test_idx: np.ndarray, features) -> float | None:
    """Test AUC of a standardized logistic regression fitted on ``fit_idx``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = list(features)
    cat = [i for i, f in enumerate(features) if f in CATEGORICAL]
    # A column with no value at all (a left-out feature kept as NaN) has nothing to fit.
    num = [i for i, f in enumerate(features) if f not in CATEGORICAL and not np.isnan(X[fit_idx, i]).all()]
    steps = [("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), num)]
    if cat:
        steps.append(
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)
                ),
                cat,
            )
        )
    model = make_pipeline(ColumnTransformer(steps), LogisticRegression(max_iter=2000))
    model.fit(X[fit_idx], y[fit_idx])
    return _auc(y[test_idx], model.predict_proba(X[test_idx])[:, 1])


# --- "latest" credit features ------------------------------------------------------------------
def latest_credit(settings) -> pd.DataFrame:
    """Each applicant's newest credit snapshot in the offline table, whatever its date."""
    from psycopg import sql

    from runtime import db

    query = sql.SQL(LATEST_SQL).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in CREDIT_FEATURES))
    with db.connect(settings, job=True) as conn, conn.cursor() as cur:
        cur.execute(query)
        rows = cur.fetchall()
        names = [d.name for d in cur.description]
    frame = pd.DataFrame(rows, columns=names)
    frame["latest_credit_timestamp"] = pd.to_datetime(frame["latest_credit_timestamp"], utc=True)
    return frame


def with_latest_credit(df: pd.DataFrame, latest: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its credit columns replaced by each applicant's newest snapshot."""
    out = df.drop(columns=list(CREDIT_FEATURES)).merge(latest, on="dob_ssn", how="left", validate="many_to_one")
    return out[[*df.columns, "latest_credit_timestamp"]]


# --- the comparisons ---------------------------------------------------------------------------
def _select(full: np.ndarray, all_features: Sequence[str], columns: Sequence[str]) -> np.ndarray:
    index = {f: i for i, f in enumerate(all_features)}
    return full[:, [index[c] for c in columns]]


def comparisons(
    settings,
    df: pd.DataFrame,
    X: np.ndarray,
    y: np.ndarray,
    fit_idx,
    test_idx,
    features: Sequence[str],
    params: dict,
    *,
    dataset_info: dict | None = None,
    matrix: Callable[[pd.DataFrame], np.ndarray] | None = None,
    all_features: Sequence[str] | None = None,
    rounds: int = 600,
    booster=None,
) -> dict:
    """Compare the model's way of training with the alternatives on the same rows.

    ``df`` is the point-in-time training frame (one row per loan, time order), ``X`` the model's
    matrix of it (columns ``features``), ``y`` the labels, ``fit_idx`` / ``test_idx`` the rows
    the model is fitted on (early stopping uses their last 15%) and tested on, ``params`` its
    XGBoost parameters.  ``matrix`` builds the full feature matrix of a frame (columns
    ``all_features``; default model.features' ``frame_matrix`` and ``FEATURES``): it turns the
    "latest" frame into features, and gives the columns the model leaves out.
    ``dataset_info`` is the loaded data's ``loan_desk_dataset.info``.  ``booster``, when given,
    is the model already trained this way on ``X[fit_idx]`` (early stopping on their last 15%):
    it is reused instead of fitted again.  Returns plain numbers (AUCs rounded to 4 places) and
    sentences."""
    if matrix is None or all_features is None:
        from model.features import FEATURES, frame_matrix

        matrix, all_features = matrix or frame_matrix, all_features or FEATURES
    t0 = time.perf_counter()
    fit_idx, test_idx = np.asarray(fit_idx), np.asarray(test_idx)
    features = list(features)
    excluded = sorted(excluded_features(dataset_info))
    y_test = y[test_idx]
    out: dict = {
        "rows": {"fit": int(len(fit_idx)), "test": int(len(test_idx))},
        "training": (
            f"every model below: XGBoost with the deployed model's parameters, early stopping on the last "
            f"{VALID_SHARE:.0%} of its fit rows, unless it says otherwise"
        ),
    }

    # The model's own recipe on the temporal split, and the linear baseline on the same rows.
    if booster is None:
        booster, valid = _fit(X, y, fit_idx, params, rounds)
    else:
        valid = fit_idx[-max(1, int(len(fit_idx) * VALID_SHARE)) :]
    pit_test = _auc(y_test, _predict(booster, X[test_idx]))
    out["baseline"] = {
        "xgboost_auc": pit_test,
        "logistic_regression_auc": logistic_auc(X, y, fit_idx, test_idx, features),
        "logistic_regression": (
            "scikit-learn LogisticRegression on the same features and rows: categories one-hot, "
            "numbers median-imputed with a missing-value indicator, then standardized"
        ),
    }

    # A seeded random split of the same rows, as many test rows as the temporal one.
    rows = np.concatenate([fit_idx, test_idx])
    perm = np.random.default_rng(RANDOM_SPLIT_SEED).permutation(rows)
    r_test, r_fit = perm[: len(test_idx)], perm[len(test_idx) :]
    r_booster, _ = _fit(X, y, r_fit, params, rounds)
    out["random_split"] = {
        "auc": _auc(y[r_test], _predict(r_booster, X[r_test])),
        "temporal_auc": pit_test,
        "how": (
            f"{len(r_test):,} loans drawn at random (seed {RANDOM_SPLIT_SEED}) from the same "
            f"{len(rows):,} as test rows, the rest to fit; the temporal split tests on the latest "
            f"{len(test_idx):,} by event time"
        ),
    }

    if excluded:
        cols = [*features, *[f for f in excluded if f not in features]]
        full = _select(matrix(df), all_features, cols)
        p = _params_for(params, features, cols)
        with_temporal, _ = _fit(full, y, fit_idx, p, rounds)
        with_random, _ = _fit(full, y, r_fit, p, rounds)
        out["left_out"] = {
            "features": excluded,
            "why": (
                "the credit file was synthesized by the importer (the tutorial's credit_history.parquet "
                "is missing): independent of the labels, it carries no signal"
            ),
            "temporal_auc_with_them": _auc(y_test, _predict(with_temporal, full[test_idx])),
            "random_split_auc_with_them": _auc(y[r_test], _predict(with_random, full[r_test])),
        }

    if set(CREDIT_FEATURES) & set(excluded):
        out["leak"] = {"skipped": "the credit columns are left out of this model, so there is no credit leak to show"}
    else:
        out["leak"] = _leak(settings, df, X, y, fit_idx, test_idx, features, params, rounds, matrix, all_features)
        out["leak"]["point_in_time"] = {
            "validation_auc": _auc(y[valid], _predict(booster, X[valid])),
            "test_auc": pit_test,
        }
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _leak(settings, df, X, y, fit_idx, test_idx, features, params, rounds, matrix, all_features) -> dict:
    import psycopg

    try:
        latest = latest_credit(settings)
    except psycopg.Error as exc:
        _say(f"comparisons: could not read the latest credit snapshots ({exc}); the leak is not shown")
        return {"error": f"could not read the latest credit snapshots: {str(exc).strip()}"}
    late = with_latest_credit(df, latest)
    XL = _select(matrix(late), all_features, features)
    booster, valid = _fit(XL, y, fit_idx, params, rounds)
    after = (late["latest_credit_timestamp"] > df["event_timestamp"]).to_numpy()
    return {
        "how": (
            "each applicant's newest credit snapshot in the offline table, whatever its date "
            "(SQL on credit_history), instead of the one on file at the loan's time"
        ),
        "latest": {
            "validation_auc": _auc(y[valid], _predict(booster, XL[valid])),
            "test_auc_on_latest_features": _auc(y[test_idx], _predict(booster, XL[test_idx])),
            "test_auc": _auc(y[test_idx], _predict(booster, X[test_idx])),
        },
        "share_latest_after_loan": round(float(after[fit_idx].mean()), 4) if len(fit_idx) else math.nan,
    }
