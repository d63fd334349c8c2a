"""The feature repo through Feast's CLI, online = latest offline, point-in-time correctness."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from model.features import CREDIT_FEATURES, ZIPCODE_FEATURES, ZIPCODE_TEXT
from runtime.settings import FEATURE_REPO
from tests.conftest import run_cli


def _feast(*args, settings):
    out = run_cli("feast", *args, cwd=FEATURE_REPO, env=settings.feast_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_seed_feast_commands_work_verbatim(backbone):
    s = backbone["settings"]
    _feast("apply", settings=s)
    entities = _feast("entities", "list", settings=s)
    assert "dob_ssn" in entities and "zipcode" in entities
    views = _feast("feature-views", "list", settings=s)
    assert "credit_history" in views and "zipcode_features" in views
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _feast("materialize-incremental", now, settings=s)


def test_online_values_equal_latest_offline_values(backbone, pg):
    from feast_ext.online_reader import OnlineReader
    from feast_ext.store import feature_store

    store = feature_store(backbone["settings"])
    latest = pd.DataFrame(
        pg.execute(
            "SELECT DISTINCT ON (dob_ssn) dob_ssn, " + ", ".join(CREDIT_FEATURES) + ", event_timestamp "
            "FROM credit_history ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC"
        ).fetchall(),
        columns=["dob_ssn", *CREDIT_FEATURES, "event_timestamp"],
    )
    sample = latest.sample(60, random_state=1)
    zips = pd.DataFrame(
        pg.execute(
            "SELECT DISTINCT ON (zipcode) zipcode, " + ", ".join((*ZIPCODE_TEXT, *ZIPCODE_FEATURES)) + " "
            "FROM zipcode_features ORDER BY zipcode, event_timestamp DESC, created_timestamp DESC"
        ).fetchall(),
        columns=["zipcode", *ZIPCODE_TEXT, *ZIPCODE_FEATURES],
    ).sample(40, random_state=2)
    online = store.get_online_features(
        features=[f"credit_history:{f}" for f in CREDIT_FEATURES],
        entity_rows=[{"dob_ssn": k} for k in sample.dob_ssn],
    ).to_df()
    for col in CREDIT_FEATURES:
        assert online[col].tolist() == sample[col].tolist(), col
    online_z = store.get_online_features(
        features=[f"zipcode_features:{f}" for f in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES)],
        entity_rows=[{"zipcode": int(z)} for z in zips.zipcode],
    ).to_df()
    for col in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES):
        assert online_z[col].tolist() == zips[col].tolist(), col

    # The inference module's reader returns what get_online_features returns, with the timestamp.
    reader = OnlineReader(store, ("credit_history", "zipcode_features"))
    for row, z in zip(sample.head(10).itertuples(), zips.head(10).itertuples(), strict=True):
        (credit, c_ts), (zipc, _) = reader.read(row.dob_ssn, int(z.zipcode))
        assert credit == {c: getattr(row, c) for c in CREDIT_FEATURES}
        assert zipc == {c: getattr(z, c) for c in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES)}
        assert c_ts == row.event_timestamp


@pytest.fixture(scope="module")
def training(backbone):
    from feast_ext.store import feature_store
    from model.train import training_frame

    store = feature_store(backbone["settings"])
    return store, training_frame(store)


def test_point_in_time_correctness(training, pg):
    _, df = training
    snaps = pd.DataFrame(
        pg.execute(
            "SELECT dob_ssn, event_timestamp, created_timestamp, credit_card_due, missed_payments_1y "
            "FROM credit_history"
        ).fetchall(),
        columns=["dob_ssn", "event_timestamp", "created_timestamp", "credit_card_due", "missed_payments_1y"],
    )
    by_key = {k: g.sort_values(["event_timestamp", "created_timestamp"]) for k, g in snaps.groupby("dob_ssn")}
    ttl = pd.Timedelta(180, unit="D")
    differs_from_latest = 0
    for row in df.itertuples():
        g = by_key[row.dob_ssn]
        ok = g[(g.event_timestamp <= row.event_timestamp) & (g.event_timestamp >= row.event_timestamp - ttl)]
        if ok.empty:
            assert pd.isna(row.credit_card_due)
            continue
        expected = ok.iloc[-1]
        assert row.credit_card_due == expected.credit_card_due, row.loan_id
        assert row.missed_payments_1y == expected.missed_payments_1y, row.loan_id
        # Never a later snapshot: the value used was on file at the loan's time.
        assert expected.event_timestamp <= row.event_timestamp
        differs_from_latest += int(g.iloc[-1].credit_card_due != row.credit_card_due)
    # The data changes over time, so "latest" would have been wrong for most loans.
    assert differs_from_latest > len(df) * 0.5


def test_lateral_join_matches_feasts_own_postgres_query(training, backbone):
    """Our offline store and Feast's stock Postgres store give the same training rows."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStore

    store, ours = training
    subset = ours.sample(150, random_state=3)[["loan_id", "dob_ssn", "zipcode", "event_timestamp"]]
    fs = store.get_feature_service("credit_model_v1")
    mine = store.get_historical_features(entity_df=subset, features=fs).to_df()
    views = [store.get_feature_view(n) for n in ("credit_history", "zipcode_features")]
    refs = [f"{fv.name}:{f.name}" for fv in views for f in fv.features]
    stock = PostgreSQLOfflineStore.get_historical_features(
        store.config, views, refs, subset, store.registry, store.project
    ).to_df()
    cols = ["loan_id", *CREDIT_FEATURES, *ZIPCODE_TEXT, *ZIPCODE_FEATURES]
    a = mine[cols].sort_values("loan_id").reset_index(drop=True)
    b = stock[cols].sort_values("loan_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_training_metadata(backbone):
    meta = backbone["meta"]
    m = meta["metrics"]
    assert 0.5 < m["auc"] <= 1 and 0 <= m["brier"] <= 0.25
    assert "bayes_auc" in m and m["auc"] <= m["bayes_auc"] + 0.05
    assert sum(b["count"] for b in m["calibration"]) == meta["rows"]["test"]
    w = meta["training_window"]
    assert w["train_end"] <= w["test_start"]  # temporal holdout
    assert set(meta["versions"]) >= {"feast", "xgboost-cpu"}
    assert meta["model_version"] and 0 < meta["threshold"] < 1


def test_full_materialize_leaves_other_keys_of_the_redis_db_alone(backbone, redis_client, pg):
    from feast_ext.materialize import materialize

    s = backbone["settings"]
    other = f"another-app:{s.project}:setting".encode()  # a key of this run's own: runs share the db
    redis_client.set(other, b"keep me")
    try:
        res = materialize(s, requested_by="tests", full=True)
        assert redis_client.get(other) == b"keep me"
        # The run counts this project's entities only (other projects may share the Redis db).
        entities = pg.execute(
            "SELECT (SELECT count(DISTINCT dob_ssn) FROM credit_history) "
            "+ (SELECT count(DISTINCT zipcode) FROM zipcode_features)"
        ).fetchone()[0]
        assert res.rows == entities > 0
        assert res.rows == sum(1 for k in redis_client.scan_iter(count=10_000) if k.endswith(s.project.encode()))
    finally:
        redis_client.delete(other)
