"""1. Decision latency: DecisionService.decide against the floor, the tutorial's path and Feast alone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from bench.common import SMALL, ensure_data, percentiles, record, say
from model.inference import age_on

THREADS = 8
QUICK = {"calls": 200, "warm": 10}


def applications(settings, n: int = 1000) -> list[dict]:
    import psycopg

    with psycopg.connect(**settings.pg_kwargs()) as conn:
        rows = conn.execute(
            "SELECT dob_ssn, zipcode, person_income, person_home_ownership, person_emp_length, loan_intent, "
            "loan_amnt, loan_int_rate FROM loans WHERE person_income BETWEEN 4000 AND 2000000 "
            "AND loan_amnt BETWEEN 500 AND 35000 AND loan_int_rate BETWEEN 5 AND 25 ORDER BY loan_id LIMIT %s",
            [n],
        ).fetchall()
    today = datetime.now(UTC).date()
    out = []
    for dob_ssn, zipcode, income, own, emp, intent, amount, rate in rows:
        age = age_on(datetime.strptime(dob_ssn[:8], "%Y%m%d").date(), today)
        if not 18 <= age <= 100:
            continue
        out.append(
            {
                "dob_ssn": dob_ssn,
                "zipcode": zipcode,
                "person_age": age,
                "person_income": income,
                "person_home_ownership": own,
                "person_emp_length": min(emp, max(age - 14, 0)),
                "loan_intent": intent,
                "loan_amnt": amount,
                "loan_int_rate": rate,
            }
        )
    return out


class Floor:
    """The same work with nothing in between: one pipelined HMGET, decode, numpy row, predict +
    contributions, the cut-off compare, the top four positive contributions, and the challenger's
    prediction when there is one (the product's policy, reasons and shadow scoring, bare)."""

    def __init__(self, store, booster, columns=None, names=None, cutoff: float = 0.5, challenger=None):
        import redis
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        from model import features as F
        from runtime.settings import Settings

        self.F = F
        self.Value, self.EntityKey, self._redis_key = Value, EntityKey, _redis_key
        self.project, self.version = store.config.project, store.config.entity_key_serialization_version
        self.r = redis.Redis.from_url(Settings.from_env().redis_url)
        self.credit = list(F.CREDIT_FEATURES)
        self.zip = list(F.ZIPCODE_FEATURES)
        self.credit_fields = [_mmh3(f"credit_history:{n}") for n in self.credit] + [b"_ts:credit_history"]
        self.zip_fields = [_mmh3(f"zipcode_features:{n}") for n in self.zip] + [b"_ts:zipcode_features"]
        self.booster = booster
        self.names = list(names or F.FEATURES)
        self.columns = columns
        self.cutoff = cutoff
        self.challenger = challenger  # (booster, columns) or None

    def key(self, join_key: str, value) -> bytes:
        v = self.Value(string_val=value) if isinstance(value, str) else self.Value(int64_val=value)
        return self._redis_key(self.project, self.EntityKey(join_keys=[join_key], entity_values=[v]), self.version)

    def decide(self, app: dict):
        import xgboost as xgb

        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.key("dob_ssn", app["dob_ssn"]), self.credit_fields)
        pipe.hmget(self.key("zipcode", app["zipcode"]), self.zip_fields)
        c_raw, z_raw = pipe.execute()
        parse = self.Value.FromString
        credit = {n: parse(b).int64_val for n, b in zip(self.credit, c_raw, strict=False)}
        zipcode = {n: parse(b).int64_val for n, b in zip(self.zip, z_raw, strict=False)}
        full = self.F.row_vector(app, credit, zipcode)
        x = full if self.columns is None else full[:, self.columns]
        p = float(self.booster.inplace_predict(x)[0])
        contribs = self.booster.predict(xgb.DMatrix(x, feature_names=self.names, nthread=1), pred_contribs=True)[0]
        outcome = p >= self.cutoff
        top = [i for i in contribs[:-1].argsort()[::-1][:4] if contribs[i] > 0] if outcome else []
        if self.challenger is not None:
            self.challenger[0].inplace_predict(full[:, self.challenger[1]])
        return p, contribs, top


def tutorial_path(store, booster, app: dict) -> float:
    """The tutorial's way: get_online_features(...).to_df(), a pandas frame of the application, predict on it.

    Its DMatrix gets one thread, as ours does: the comparison is of the paths, not of thread pools."""
    import pandas as pd
    import xgboost as xgb

    from model import features as F

    feats = store.get_online_features(
        features=list(F.ONLINE_REFS), entity_rows=[{"dob_ssn": app["dob_ssn"], "zipcode": app["zipcode"]}]
    ).to_df()
    frame = pd.concat([pd.DataFrame([app]).drop(columns=["dob_ssn", "zipcode"]), feats], axis=1)
    names = list(booster.feature_names)
    x = F.frame_matrix(frame)[:, F.columns(names)]
    return float(booster.predict(xgb.DMatrix(x, feature_names=names, nthread=1))[0])


def _shadow_challenger(bundle) -> str:
    """A challenger for the run: a copy of the champion's booster published under another version
    (the shadow costs one more prediction, whatever the booster)."""
    from model import bundles

    version = f"{bundle.version}-shadow"
    if not bundles.bundle_path(version, bundle.path.parent.parent).exists():
        meta = {**bundle.metadata, "model_version": version}
        bundles.write_bundle((bundle.path / bundles.MODEL_FILE).read_bytes(), meta, bundle.path.parent.parent)
    bundles.set_challenger(version, bundle.path.parent.parent)
    return version


def _time(fn, apps: list[dict], calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        app = apps[i % len(apps)]
        t0 = time.perf_counter()
        fn(app)
        samples.append(time.perf_counter() - t0)
    return samples


def run(calls: int = 10_000, applicants: int = SMALL, warm: int | None = None) -> dict:
    s = ensure_data(applicants, materialized=True, trained=True)
    from model import features as F
    from model.inference import DecisionService

    svc = DecisionService(settings=s)
    apps = applications(s)
    store = svc.store
    bundle = svc.bundle()
    booster = bundle.booster
    challenger = _shadow_challenger(bundle)  # shadow scoring on, as the issue asks of the figures
    cb = svc.challenger()
    assert cb is not None and cb.version == challenger
    cutoff = svc.policy().cutoff(bundle.metadata)
    floor = Floor(store, booster, bundle.columns, bundle.metadata["features"], cutoff, (cb.booster, cb.columns))
    # Same answer from every path before timing anything.
    d = svc.decide(apps[0])
    assert d.challenger and d.challenger["model_version"] == challenger
    p_floor, _, _ = floor.decide(apps[0])
    p_tut = tutorial_path(store, booster, apps[0])
    assert abs(d.probability - p_floor) < 1e-6 and abs(d.probability - p_tut) < 1e-6, (d.probability, p_floor, p_tut)

    def feast_alone(app):
        store.get_online_features(
            features=list(F.ONLINE_REFS), entity_rows=[{"dob_ssn": app["dob_ssn"], "zipcode": app["zipcode"]}]
        ).to_dict()

    warm = max(200, calls // 20) if warm is None else warm
    results = {}
    # Interleaved in rounds so drift on a shared machine hits every path alike.
    paths = {
        "decide": lambda a: svc.decide(a),
        "floor": floor.decide,
        "tutorial": lambda a: tutorial_path(store, booster, a),
        "feast_get_online_features": feast_alone,
    }
    for fn in paths.values():
        _time(fn, apps, warm)
    samples = {k: [] for k in paths}
    rounds = 10
    for _ in range(rounds):
        for name, fn in paths.items():
            n = calls // rounds if name in ("decide", "floor") else max(1, calls // rounds // 4)
            samples[name] += _time(fn, apps, n)
    for name, xs in samples.items():
        results[name] = percentiles(xs)
        say(f"  {name}: p50 {results[name]['p50_ms']:.3f} ms over {len(xs):,} calls")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(svc.decide, apps[: max(warm, 2 * THREADS)]))
        t0 = time.perf_counter()
        list(pool.map(svc.decide, (apps[i % len(apps)] for i in range(calls))))
        threaded = calls / (time.perf_counter() - t0)

    from model import bundles

    bundles.set_challenger(None, bundle.path.parent.parent)
    dec, flo, tut, feast = (results[k] for k in ("decide", "floor", "tutorial", "feast_get_online_features"))
    figures = {
        "decision_applicants": applicants,
        "decision_calls": calls,
        "decision_p50_ms": dec["p50_ms"],
        "decision_p95_ms": dec["p95_ms"],
        "decision_p99_ms": dec["p99_ms"],
        "floor_p50_ms": flo["p50_ms"],
        "floor_p99_ms": flo["p99_ms"],
        "tutorial_p50_ms": tut["p50_ms"],
        "tutorial_p99_ms": tut["p99_ms"],
        "feast_get_online_features_p50_ms": feast["p50_ms"],
        "feast_get_online_features_p99_ms": feast["p99_ms"],
        "decision_vs_floor_p50": dec["p50_ms"] / flo["p50_ms"],
        "decision_vs_floor_p99": dec["p99_ms"] / flo["p99_ms"],
        "decision_vs_tutorial_p50": dec["p50_ms"] / tut["p50_ms"],
        f"decisions_per_s_{THREADS}_threads": threaded,
        "targets": {
            "p50 <= 2x floor": dec["p50_ms"] <= 2 * flo["p50_ms"],
            "p99 <= 1.5x floor p99": dec["p99_ms"] <= 1.5 * flo["p99_ms"],
            "p50 <= 0.5x tutorial": dec["p50_ms"] <= 0.5 * tut["p50_ms"],
            "p99 <= 3 ms": dec["p99_ms"] <= 3.0,
        },
        "detail": results,
    }
    table = [("path", "p50 ms", "p95 ms", "p99 ms", "calls")]
    for name in paths:
        r = results[name]
        table.append((name, r["p50_ms"], r["p95_ms"], r["p99_ms"], r["n"]))
    table.append(("decide / floor (p50)", figures["decision_vs_floor_p50"], "", "", ""))
    table.append(("decide / floor (p99)", figures["decision_vs_floor_p99"], "", "", ""))
    table.append(("decide / tutorial (p50)", figures["decision_vs_tutorial_p50"], "", "", ""))
    table.append((f"decisions/s, {THREADS} threads", threaded, "", "", calls))
    record("decision", figures, table, f"Decision latency ({applicants:,} applicants, warm, one at a time)")
    return figures
