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

from model import bundles, comparisons, groups
from model import features as F
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


def _dataset_info(settings: Settings) -> dict:
    with psycopg.connect(**settings.pg_kwargs()) as conn:
        row = conn.execute("SELECT info FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1").fetchone()
    return row[0] if row else {}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Σ over ten probability bins of (share of rows) × |mean predicted − observed rate|."""
    total = sum(b["count"] * abs(b["mean_predicted"] - b["observed_rate"]) for b in calibration_bins(y, p, bins))
    return float(total) / max(len(y), 1)


def _fit(X, y, features, fit, valid, params, rounds):
    cols = F.columns(features)
    dfit = xgb.DMatrix(X[fit][:, cols], label=y[fit], feature_names=list(features))
    dvalid = xgb.DMatrix(X[valid][:, cols], label=y[valid], feature_names=list(features))
    booster = xgb.train(
        {**params, "monotone_constraints": F.monotone_constraints(features)},
        dfit,
        num_boost_round=rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=40,
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1], cols


def _holdout(booster, cols, X, y, df, rows, cutoff) -> dict:
    """AUC, calibration and group approval ratios of one booster on one slice at one cut-off."""
    p = booster.inplace_predict(X[rows][:, cols])
    yt = y[rows]
    approved = p < cutoff
    ages = df["person_age"].to_numpy()[rows]
    states = df["state"].fillna("unknown").to_numpy()[rows] if "state" in df else np.array(["unknown"] * len(yt))
    by_age = groups.age_band_ratios(approved, ages)
    by_state = groups.approval_ratios(approved, states)
    return {
        "auc": float(roc_auc_score(yt, p)) if len(set(yt)) > 1 else None,
        "calibration_error": expected_calibration_error(yt, p),
        "approval_rate": float(approved.mean()),
        "bad_rate_approved": float(yt[approved].mean()) if approved.any() else None,
        "min_age_band_ratio": groups.min_ratio(by_age),
        "min_state_ratio": groups.min_ratio(by_state),
        "by_age_band": by_age,
        "_p": p,
    }


def train(
    store,
    settings: Settings,
    out_dir: Path | None = None,
    rounds: int = 600,
    params: dict | None = None,
    policy=None,
    compare: bool = True,
) -> dict:
    """Train a candidate, publish it as a new bundle in ``out_dir`` (default: the model folder),
    then promote it (make it current) when it is not worse than the champion by the credit
    policy's promotion margins; otherwise it becomes the challenger (scored in the shadow).

    Protocol, on loans sorted by time: the newest 20% are the test slice; the rest is split into
    fit (70%), validation (15%: early stopping picks the rounds) and the policy slice (15%: the
    credit policy picks its cut-off there).  Every reported metric comes from the model fitted on
    the fit slice only.  The released booster is then refitted on all labelled loans with the
    rounds chosen on validation.

    ``compare`` (default on) also fits the model card's comparisons: with age and area inputs,
    "latest" features (the leak), logistic regression and a random split.
    ``params`` override entries of PARAMS.  Returns the metadata, plus ``seconds``,
    ``written_to`` (the bundle's folder) and ``promotion`` (what happened and why)."""
    from model.policy import load_policy

    out_dir = Path(out_dir or model_dir())
    params = {**PARAMS, **(params or {})}
    policy = policy or load_policy()
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
    dataset = _dataset_info(settings)
    features = F.model_features(dataset)
    _say(
        f"training set: {len(df):,} loans, {len(features)} model inputs of {len(FEATURES)} columns, "
        f"point-in-time join {pit_s:.2f} s"
    )
    X = frame_matrix(df)
    y = df["loan_status"].to_numpy().astype(np.int32)
    n = len(df)
    n_test = max(1, int(n * TEST_SHARE))
    n_rest = n - n_test
    n_valid = max(1, int(n_rest * 0.15))
    n_policy = max(1, int(n_rest * 0.15))
    n_fit = n_rest - n_valid - n_policy
    fit = slice(0, n_fit)
    valid = slice(n_fit, n_fit + n_valid)
    pslice = slice(n_fit + n_valid, n_rest)
    test = slice(n_rest, None)

    booster, cols = _fit(X, y, features, fit, valid, params, rounds)
    best_rounds = int(booster.num_boosted_rounds())
    p_policy = booster.inplace_predict(X[pslice][:, cols])
    amount = df["loan_amnt"].to_numpy()
    rate = df["loan_int_rate"].to_numpy()
    policy_slice = {
        "rows": int(len(p_policy)),
        "p": [round(float(v), 7) for v in p_policy],
        "y": [int(v) for v in y[pslice]],
        "amount": [float(v) for v in amount[pslice]],
        "rate": [float(v) for v in rate[pslice]],
    }
    cutoff = policy.cutoff_on({"policy_slice": policy_slice})
    held = _holdout(booster, cols, X, y, df, test, cutoff)
    p_test = held.pop("_p")
    y_test = y[test]
    metrics = {
        "auc": held["auc"],
        "accuracy_at_threshold": float(accuracy_score(y_test, p_test >= cutoff)),
        "brier": float(brier_score_loss(y_test, p_test)),
        "calibration_error": held["calibration_error"],
        "default_rate_test": float(y_test.mean()),
        "approval_rate_test": held["approval_rate"],
        "bad_rate_approved_test": held["bad_rate_approved"],
        "min_age_band_ratio": held["min_age_band_ratio"],
        "min_state_ratio": held["min_state_ratio"],
        "by_age_band": held["by_age_band"],
        "calibration": calibration_bins(y_test, p_test),
    }
    truth = df["true_default_prob"].to_numpy()[test]
    if not np.isnan(truth).any() and len(set(y_test)) > 1:
        metrics["bayes_auc"] = float(roc_auc_score(y_test, truth))
    missing_credit = float(df["credit_card_due"].isna().mean())

    input_policy = {"default": {k: held[k] for k in ("auc", "approval_rate", "min_age_band_ratio", "min_state_ratio")}}
    input_policy["default"]["features"] = len(features)
    if compare:
        wide = F.model_features(dataset, with_age_and_area=True)
        b2, c2 = _fit(X, y, wide, fit, valid, params, rounds)
        p2 = b2.inplace_predict(X[pslice][:, c2])
        cut2 = policy.cutoff_on({"policy_slice": {**policy_slice, "p": [float(v) for v in p2]}})
        h2 = _holdout(b2, c2, X, y, df, test, cut2)
        input_policy["with_age_and_area"] = {
            **{k: h2[k] for k in ("auc", "approval_rate", "min_age_band_ratio", "min_state_ratio")},
            "features": len(wide),
            "by_age_band": h2["by_age_band"],
        }

    # What the data teaches (model/comparisons.py): the leak of "latest" features, the linear
    # baseline and a random split, on the fit + validation rows and the test slice.
    compared = None
    if compare:
        t_cmp = time.perf_counter()
        compared = comparisons.comparisons(
            settings,
            df,
            X[:, cols],
            y,
            np.arange(n_fit + n_valid),
            np.arange(n_rest, n),
            features,
            {**params, "monotone_constraints": F.monotone_constraints(features)},
            dataset_info=dataset,
            booster=booster,  # the fit-only model: its test AUC is the reported one
        )
        _say(f"comparisons (leak, linear baseline, random split): {time.perf_counter() - t_cmp:.1f} s")

    # The release: the same rounds, refitted on every labelled loan.
    dall = xgb.DMatrix(X[:, cols], label=y, feature_names=list(features))
    release = xgb.train(
        {**params, "monotone_constraints": F.monotone_constraints(features)}, dall, num_boost_round=best_rounds
    )
    raw = release.save_raw("json")
    model_version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(raw).hexdigest()[:8]
    taken = 1
    while bundles.bundle_path(model_version, out_dir).exists():  # the same booster again within a second
        taken += 1
        model_version = f"{model_version.rsplit('.', 1)[0]}.{taken}"
    gain = release.get_score(importance_type="gain")
    ts = df["event_timestamp"]
    meta = {
        "model_version": model_version,
        "trained_at": datetime.now(UTC).isoformat(),
        "threshold": cutoff,
        "threshold_rule": f"credit policy {policy.label} ({policy.method}) on the policy slice",
        "policy_at_training": policy.label,
        "features": list(features),
        "excluded_inputs": [f for f in FEATURES if f not in features],
        "monotone_constraints": {f: F.MONOTONE[f] for f in features if f in F.MONOTONE},
        "feature_service": FEATURE_SERVICE,
        "metrics": metrics,
        "input_policy": input_policy,
        "feature_importance_gain": {k: float(gain.get(k, 0.0)) for k in features},
        "rows": {"fit": n_fit, "validation": n_valid, "policy": n_policy, "test": n_test, "release": n},
        "training_window": {
            "train_start": ts.iloc[0].isoformat(),
            "train_end": ts.iloc[n_rest - 1].isoformat(),
            "policy_start": ts.iloc[n_fit + n_valid].isoformat(),
            "test_start": ts.iloc[n_rest].isoformat(),
            "test_end": ts.iloc[-1].isoformat(),
        },
        "protocol": (
            "time-ordered: fit 70% / validation 15% (early stopping) / policy slice 15% (cut-off) of the "
            "older 80%, test = newest 20%; metrics from the fit-only model; the release is refitted on "
            "all labelled loans with the validation's rounds"
        ),
        "policy_slice": policy_slice,
        "training_distribution": _distribution(X, features),
        "share_without_credit_file": missing_credit,
        "point_in_time_join_seconds": pit_s,
        "boost_rounds": best_rounds,
        "params": params,
        "dataset": dataset,
        "comparisons": compared,
        "versions": {p: version(p) for p in ("feast", "xgboost-cpu", "pandas", "numpy", "scikit-learn") if _has(p)},
    }
    bundles.write_bundle(raw, meta, out_dir)
    bundles.load_bundle(model_version, out_dir)  # it must load before anything points at it
    meta["promotion"] = promote_or_challenge(meta, policy, out_dir)
    meta["seconds"] = time.perf_counter() - t0
    meta["written_to"] = str(bundles.bundle_path(model_version, out_dir))
    return meta


def _distribution(X: np.ndarray, features) -> dict:
    """Decile edges and missing share of each input over the training loans (the PSI reference).

    ``shares``: the share of the present values in each bucket the edges make (below the first
    edge, between consecutive edges, from the last edge up: Postgres' width_bucket with the edges
    as thresholds), so a feature with tied deciles (counts such as bankruptcies) keeps its true
    reference shares instead of an assumed 10% each."""
    out = {}
    for f in features:
        col = X[:, F.INDEX[f]].astype(float)
        ok = col[~np.isnan(col)]
        edges = np.unique(np.quantile(ok, np.linspace(0.1, 0.9, 9))) if len(ok) else np.array([])
        counts = np.bincount(np.searchsorted(edges, ok, side="right"), minlength=len(edges) + 1)
        out[f] = {
            "deciles": [float(v) for v in edges],
            "shares": [float(c) / len(ok) for c in counts] if len(ok) else [],
            "missing": float(np.isnan(col).mean()),
            "rows": int(len(col)),
        }
    return out


def promotion_verdict(candidate: dict, champion: dict | None, policy) -> tuple[bool, list[str]]:
    """Whether a candidate may replace the champion: not worse by more than the policy's margins
    on AUC, calibration error and the lowest age-band approval ratio (each measured on the
    model's own time-ordered holdout).  Returns (promote, one line per check)."""
    if champion is None:
        return True, ["no champion yet: the candidate becomes the champion"]
    if champion.get("dataset") != candidate.get("dataset"):
        # The data was reloaded since the champion trained: it refers every application until replaced.
        return True, ["the champion was trained on data that has since been replaced: the candidate replaces it"]
    m = policy.promotion
    a, b = candidate.get("metrics", {}), champion.get("metrics", {})
    checks = [
        ("AUC", b.get("auc"), a.get("auc"), -1, m["max_auc_drop"]),
        (
            "calibration error",
            b.get("calibration_error"),
            a.get("calibration_error"),
            +1,
            m["max_calibration_error_rise"],
        ),
        (
            "lowest age-band approval ratio",
            b.get("min_age_band_ratio"),
            a.get("min_age_band_ratio"),
            -1,
            m["max_group_ratio_drop"],
        ),
    ]
    ok, lines = True, []
    for name, champ, cand, worse_sign, margin in checks:
        if champ is None or cand is None:
            lines.append(f"{name}: not measured on both models — not compared")
            continue
        worse_by = (cand - champ) * worse_sign
        passed = worse_by <= margin + 1e-12
        ok &= passed
        lines.append(
            f"{name}: candidate {cand:.4f}, champion {champ:.4f} — "
            + ("within" if passed else "outside")
            + f" the margin {margin:g}"
        )
    return ok, lines


def promote_or_challenge(meta: dict, policy, out_dir: Path) -> dict:
    champion = bundles.current_metadata(out_dir)
    promote, lines = promotion_verdict(meta, champion, policy)
    version = meta["model_version"]
    if promote:
        bundles.use(version, out_dir)
        if bundles.challenger_version(out_dir) == version:
            bundles.set_challenger(None, out_dir)
        action = "promoted"
    else:
        bundles.set_challenger(version, out_dir)
        action = "challenger"
    _say(f"model {version}: {action}" + "".join(f"\n  {line}" for line in lines))
    return {"action": action, "checks": lines, "champion": champion.get("model_version") if champion else None}


def _has(pkg: str) -> bool:
    try:
        version(pkg)
        return True
    except Exception:
        return False
