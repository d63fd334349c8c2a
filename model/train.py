"""Train the credit model on a point-in-time-correct training set from Feast.

Entity rows are the loans (already in Postgres, so Feast reads them with SQL rather than
uploading a frame); features come from ``get_historical_features`` for the feature service;
the holdout is temporal: the model learns on earlier loans and is tested on the latest 20%.
Each run publishes a new immutable bundle (booster + metadata, model/bundles.py) and then
switches the ``current`` pointer to it; earlier bundles stay for `loan-desk models use`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import xgboost as xgb
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from model import bundles, comparisons
from model.bundles import current_metadata  # noqa: F401  (callers import it from here too)
from model.features import FEATURE_SERVICE, FEATURES, frame_matrix
from runtime.settings import Settings, model_dir

ENTITY_SQL = (
    "SELECT loan_id, dob_ssn, zipcode, event_timestamp, person_age, person_income, "
    "person_home_ownership, person_emp_length, loan_intent, loan_amnt, loan_int_rate, "
    "loan_status, true_default_prob FROM loans"
)
PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": "auc",
    "max_depth": 4,
    "eta": 0.06,
    "subsample": 0.9,
    "colsample_bytree": 0.9,
    "min_child_weight": 5,
    "tree_method": "hist",
    "nthread": 2,
    "seed": 7,
}
TEST_SHARE = 0.2


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def entity_sql(settings: Settings) -> str:
    """The loans as the offline store reads them: the Postgres table, or under the Spark profile
    the export's Parquet folder (Spark SQL reads it by path)."""
    if settings.offline != "spark":
        return ENTITY_SQL
    from feast_ext.spark import table_path

    loans = table_path(settings.export_location(), "loans")
    return ENTITY_SQL.removesuffix("FROM loans") + f"FROM parquet.`{loans}`"


def training_frame(store, entity_sql: str = ENTITY_SQL) -> pd.DataFrame:
    """Point-in-time join of every loan with its credit file and zipcode as of the loan date."""
    job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(FEATURE_SERVICE))
    df = job.to_df()
    if df["event_timestamp"].dt.tz is None:  # Spark hands back its session time zone's wall clock: UTC
        df["event_timestamp"] = df["event_timestamp"].dt.tz_localize("UTC")
    return df.sort_values(["event_timestamp", "loan_id"], kind="stable").reset_index(drop=True)


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append(
                {
                    "bin": [round(edges[b], 2), round(edges[b + 1], 2)],
                    "count": int(m.sum()),
                    "mean_predicted": float(p[m].mean()),
                    "observed_rate": float(y[m].mean()),
                }
            )
    return out


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold that maximises sensitivity + specificity - 1 on the validation rows."""
    best, best_t = -1.0, 0.5
    for t in np.linspace(0.05, 0.95, 181):
        pred = p >= t
        tpr = (pred & (y == 1)).sum() / max((y == 1).sum(), 1)
        tnr = (~pred & (y == 0)).sum() / max((y == 0).sum(), 1)
        if tpr + tnr - 1 > best:
            best, best_t = tpr + tnr - 1, float(t)
    return round(best_t, 3)


def _dataset_info(settings: Settings) -> dict:
    with psycopg.connect(**settings.pg_kwargs()) as conn:
        row = conn.execute("SELECT info FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1").fetchone()
    return row[0] if row else {}


def train(
    store, settings: Settings, out_dir: Path | None = None, rounds: int = 600, params: dict | None = None
) -> dict:
    """Train, then publish a new bundle in ``out_dir`` (default: the model folder) and make it current.

    ``params`` override entries of PARAMS.  Returns the metadata, plus ``seconds`` and
    ``written_to`` (the bundle's folder)."""
    out_dir = Path(out_dir or model_dir())
    params = {**PARAMS, **(params or {})}
    guard = contextlib.nullcontext()
    if settings.offline == "spark":
        from feast_ext import spark

        spark.check_export(settings.export_location())
        spark.session(settings)  # Feast's Spark offline store reuses it (its start is not the join's time)
        guard = spark.job_errors("the training set")
    t0 = time.perf_counter()
    with guard:
        df = training_frame(store, entity_sql(settings))
    pit_s = time.perf_counter() - t0
    if len(df) < 50:
        raise ValueError(f"only {len(df)} loans in Postgres: load data first (loan-desk load)")
    _say(f"training set: {len(df):,} loans x {len(FEATURES)} features, point-in-time join {pit_s:.2f} s")
    X = frame_matrix(df)
    y = df["loan_status"].to_numpy().astype(np.int32)
    # --- data that teaches (issue #10 item 8, model/comparisons.py): columns left out -------------
    # A left-out column is all NaN, so no tree splits on it: its contribution is 0 and the booster
    # keeps the column list inference builds.
    dataset = _dataset_info(settings)
    left_out = comparisons.excluded_features(dataset)
    for name in left_out:
        X[:, FEATURES.index(name)] = np.nan
    if left_out:
        _say(f"left out of the model: {', '.join(sorted(left_out))} (the credit file was synthesized)")
    # --- end data that teaches ------------------------------------------------------------------
    n_test = max(1, int(len(df) * TEST_SHARE))
    n_train = len(df) - n_test
    n_valid = max(1, int(n_train * 0.15))
    fit, valid, test = slice(0, n_train - n_valid), slice(n_train - n_valid, n_train), slice(n_train, None)

    dfit = xgb.DMatrix(X[fit], label=y[fit], feature_names=list(FEATURES))
    dvalid = xgb.DMatrix(X[valid], label=y[valid], feature_names=list(FEATURES))
    booster = xgb.train(
        params,
        dfit,
        num_boost_round=rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=40,
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    threshold = youden_threshold(y[valid], booster.inplace_predict(X[valid]))
    p_test = booster.inplace_predict(X[test])
    y_test = y[test]
    ts = df["event_timestamp"]
    metrics = {
        "auc": float(roc_auc_score(y_test, p_test)) if len(set(y_test)) > 1 else None,
        "accuracy_at_threshold": float(accuracy_score(y_test, p_test >= threshold)),
        "brier": float(brier_score_loss(y_test, p_test)),
        "default_rate_test": float(y_test.mean()),
        "approval_rate_test": float((p_test < threshold).mean()),
        "calibration": calibration_bins(y_test, p_test),
    }
    truth = df["true_default_prob"].to_numpy()[test]
    if not np.isnan(truth).any() and len(set(y_test)) > 1:
        metrics["bayes_auc"] = float(roc_auc_score(y_test, truth))
    missing_credit = float(df["credit_card_due"].isna().mean())
    # --- data that teaches (issue #10 item 8): the comparisons the model card shows ---------------
    t_cmp = time.perf_counter()
    compared = comparisons.comparisons(
        settings,
        df,
        X,
        y,
        np.arange(n_train),
        np.arange(n_train, len(df)),
        FEATURES,
        params,
        dataset_info=dataset,
        booster=booster,
    )
    _say(f"comparisons (leak, linear baseline, random split): {time.perf_counter() - t_cmp:.1f} s")
    # --- end data that teaches ------------------------------------------------------------------

    raw = booster.save_raw("json")
    model_version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(raw).hexdigest()[:8]
    taken = 1
    while bundles.bundle_path(model_version, out_dir).exists():  # the same booster again within a second
        taken += 1
        model_version = f"{model_version.rsplit('.', 1)[0]}.{taken}"
    gain = booster.get_score(importance_type="gain")
    meta = {
        "model_version": model_version,
        "trained_at": datetime.now(UTC).isoformat(),
        "threshold": threshold,
        "threshold_rule": "maximises sensitivity + specificity on the validation slice",
        "features": list(FEATURES),
        "feature_service": FEATURE_SERVICE,
        "metrics": metrics,
        "feature_importance_gain": {k: float(gain.get(k, 0.0)) for k in FEATURES},
        "rows": {"train": n_train - n_valid, "validation": n_valid, "test": n_test},
        "training_window": {
            "train_start": ts.iloc[0].isoformat(),
            "train_end": ts.iloc[n_train - 1].isoformat(),
            "test_start": ts.iloc[n_train].isoformat(),
            "test_end": ts.iloc[-1].isoformat(),
        },
        "share_without_credit_file": missing_credit,
        "point_in_time_join_seconds": pit_s,
        "boost_rounds": int(booster.num_boosted_rounds()),
        "params": params,
        "dataset": dataset,
        "comparisons": compared,  # data that teaches (issue #10 item 8)
        "versions": {p: version(p) for p in ("feast", "xgboost-cpu", "pandas", "numpy", "scikit-learn") if _has(p)},
    }
    bundle = bundles.publish(raw, meta, out_dir)
    meta["seconds"] = time.perf_counter() - t0
    meta["written_to"] = str(bundle.path)
    return meta


def _has(pkg: str) -> bool:
    try:
        version(pkg)
        return True
    except Exception:
        return False
