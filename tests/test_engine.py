"""The materialization engine as Feast runs it: full refreshes that never interrupt decisions,
refusals of what it cannot serve, and versioned feature views read back by the online reader.

Each test works in a Feast project of its own inside the tests' database (the backbone's data),
so the session's project and everything else in the Redis db stay as they are.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from runtime.settings import FEATURE_REPO
from tests.conftest import NAMES, forget_feast_project

VIEWS = ("credit_history", "zipcode_features")


@pytest.fixture()
def projects(backbone):
    """Feast projects of the test's own (``make(name, apply=True, **settings changes)``) and other
    keys it sets (``extra_keys``); all removed afterwards, whatever the outcome."""
    from feast_ext.store import apply

    made, extra_keys = [], []

    def make(name: str, register: bool = True, **changes):
        s = dataclasses.replace(backbone["settings"], project=NAMES.project_for(name), **changes)
        forget_feast_project(s)
        made.append(s)
        if register:
            apply(s)
        return s

    make.extra_keys = extra_keys
    yield make
    for s in made:
        forget_feast_project(s)
    if extra_keys:
        redis.Redis.from_url(backbone["settings"].redis_url).delete(*extra_keys)


def _key(project: str, join_key: str, value) -> bytes:
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value(string_val=value) if isinstance(value, str) else Value(int64_val=value)
    return _redis_key(project, EntityKey(join_keys=[join_key], entity_values=[v]), 3)


def _current_entities(pg, n: int = 40) -> list[tuple[str, int]]:
    """Applicants with a credit file, paired with zipcodes that have statistics."""
    people = [r[0] for r in pg.execute("SELECT DISTINCT dob_ssn FROM credit_history ORDER BY 1 LIMIT %s", [n])]
    zips = [r[0] for r in pg.execute("SELECT DISTINCT zipcode FROM zipcode_features ORDER BY 1 LIMIT %s", [n])]
    return list(zip(people, zips, strict=True))


@pytest.mark.parametrize("materializer", ["fast", "feast"])
def test_full_refresh_never_leaves_a_current_entity_missing(projects, pg, materializer):
    from feast_ext.materialize import materialize
    from feast_ext.online_reader import OnlineReader
    from feast_ext.store import feature_store

    s = projects(f"t_refresh_{materializer}", materializer=materializer)
    materialize(s, requested_by="tests", full=True)
    r = redis.Redis.from_url(s.redis_url)
    current = _current_entities(pg)
    template = r.hgetall(_key(s.project, "dob_ssn", current[0][0]))
    assert template, "the first refresh wrote nothing"
    # An applicant that is no longer in the data, as an earlier dataset left it online.
    stale = _key(s.project, "dob_ssn", "19000101_0000")
    r.hset(stale, mapping=template)
    # Keys that are not this project's, though their names end like its keys do.
    foreign = _key("x" + s.project, "dob_ssn", current[0][0])
    r.hset(foreign, mapping=template)
    not_feast = b"not-a-feast-key:" + s.project.encode()
    r.set(not_feast, b"keep me")
    projects.extra_keys += [foreign, not_feast]

    reader = OnlineReader(feature_store(s), VIEWS)
    reads, missing, errors = [0], [], []
    writing = threading.Event()
    stop = threading.Event()

    def keep_reading() -> None:
        try:
            while not stop.is_set():
                for who, zipcode in current:
                    credit, stats = reader.read(who, zipcode)
                    if writing.is_set():
                        reads[0] += 1
                    if credit is None or stats is None:
                        missing.append((who, zipcode))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    def progress(msg: str) -> None:
        if "materializing" in msg:
            writing.set()

    t = threading.Thread(target=keep_reading)
    t.start()
    try:
        res = materialize(s, requested_by="tests", full=True, progress=progress)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert res.mode == "full"
    assert reads[0] > 0, "no read overlapped the refresh"
    assert missing == [], f"{len(missing)} of {reads[0]} reads found a current entity missing"
    assert not r.exists(stale), "the entity that left the data is still online"
    assert r.hgetall(foreign) == template and r.get(not_feast) == b"keep me"
    assert res.rows == len(r.keys(b"*" + s.project.encode())) - 2  # the foreign and the non-Feast key


def test_a_failed_refresh_removes_nothing(projects, pg):
    """A view that cannot be read fails the refresh before any cleanup: every key stays."""
    from feast import FeatureView, Field
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Int64, String

    from feast_ext.materialize import materialize
    from feast_ext.store import feature_store

    s = projects("t_refresh_fails")
    materialize(s, requested_by="tests", full=True)
    store = feature_store(s)
    r = redis.Redis.from_url(s.redis_url)
    current = _current_entities(pg, 5)
    template = r.hgetall(_key(s.project, "dob_ssn", current[0][0]))
    stale = _key(s.project, "dob_ssn", "19000101_0000")
    r.hset(stale, mapping=template)
    before = {k: r.hgetall(k) for k in r.keys(b"*" + s.project.encode())}
    broken = FeatureView(
        name="zz_broken",
        entities=[store.get_entity("dob_ssn")],
        ttl=timedelta(days=1),
        schema=[Field(name="dob_ssn", dtype=String), Field(name="anything", dtype=Int64)],
        source=PostgreSQLSource(name="zz_broken", table="loan_desk_no_such_table", timestamp_field="event_timestamp"),
        online=True,
    )
    store.apply([broken])
    with pytest.raises(Exception, match="loan_desk_no_such_table"):
        materialize(s, requested_by="tests", full=True)
    after = {k: r.hgetall(k) for k in r.keys(b"*" + s.project.encode())}
    assert after.keys() == before.keys()  # the stale key included: only a finished refresh removes


def test_what_the_engine_cannot_serve_is_refused_with_a_reason(backbone):
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Int64
    from feast.value_type import ValueType

    from feast_ext import engine
    from feast_ext.store import new_feature_store, repo_config

    s = backbone["settings"]
    sentinel = repo_config(s, online_store={"redis_type": "redis_sentinel"})
    with pytest.raises(engine.WriterUnsupported, match="server or a cluster, not redis_sentinel.*batch_engine: local"):
        engine.check_config(sentinel)
    engine.check_config(repo_config(s, online_store={"redis_type": "redis_cluster"}))  # tests/test_cluster.py
    parquet = FeatureView(
        name="from_a_file",
        entities=[Entity(name="who", join_keys=["who"], value_type=ValueType.STRING)],
        schema=[Field(name="x", dtype=Int64)],
        source=FileSource(path="x.parquet", timestamp_field="ts"),
    )
    with pytest.raises(engine.WriterUnsupported, match="from_a_file: its source is a FileSource"):
        engine._plan(repo_config(s), parquet)
    # Through Feast: the job fails with that reason and the view keeps its state.
    store = new_feature_store(s, online_store={"redis_type": "redis_sentinel"})
    end = datetime.now(UTC)
    with pytest.raises(engine.WriterUnsupported, match="redis_sentinel"):
        store.materialize(start_date=end - timedelta(days=1), end_date=end, feature_views=["credit_history"])


def test_the_materializer_setting_selects_feasts_engine(backbone):
    from feast.infra.compute_engines.local.compute import LocalComputeEngine

    from feast_ext.engine import LoanDeskEngine
    from feast_ext.store import new_feature_store

    s = backbone["settings"]
    assert isinstance(new_feature_store(s)._get_provider().batch_engine, LoanDeskEngine)
    feast = dataclasses.replace(s, materializer="feast")
    assert isinstance(new_feature_store(feast)._get_provider().batch_engine, LocalComputeEngine)


def _definitions():
    """feature_repo/features.py imported afresh (its objects carry registry state once applied)."""
    spec = importlib.util.spec_from_file_location("loan_desk_features_copy", FEATURE_REPO / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_versioned_views_are_written_and_read_under_their_versioned_names(projects, pg):
    """With the registry's feature view versioning on, a view at version 2 lives in Redis as
    ``<view>_v2``: the engine writes there, and the reader reads what get_online_features reads."""
    from feast_ext.online_reader import OnlineReader
    from feast_ext.store import new_feature_store

    s = projects("t_versioned", register=False)
    store = new_feature_store(s, registry={"enable_online_feature_view_versioning": True})
    d = _definitions()
    for fv in (d.credit_history, d.zipcode_features):
        fv.version = "v2"
    store.apply([d.applicant, d.zipcode, d.credit_history, d.zipcode_features])
    assert {fv.name: fv.current_version_number for fv in store.list_feature_views()} == dict.fromkeys(VIEWS, 2)
    end = datetime.now(UTC)
    with store._get_provider().batch_engine.run(dedup=False) as run:
        store.materialize(start_date=end - timedelta(days=3650), end_date=end)
    assert run.rows > 0

    current = _current_entities(pg, 30)
    r = redis.Redis.from_url(s.redis_url)
    fields = r.hkeys(_key(s.project, "dob_ssn", current[0][0]))
    assert b"_ts:credit_history_v2" in fields and b"_ts:credit_history" not in fields

    reader = OnlineReader(store, VIEWS)
    got = store.get_online_features(
        features=[f"{fv.name}:{f.name}" for fv in store.list_feature_views() for f in fv.features],
        entity_rows=[{"dob_ssn": who, "zipcode": z} for who, z in current],
    ).to_dict()
    for i, (who, z) in enumerate(current):
        (credit, _), (stats, _) = reader.read(who, z)
        assert credit.keys() and stats.keys()
        for name, value in {**credit, **stats}.items():
            assert got[name][i] == value, (who, z, name)
        assert all(v is not None for v in credit.values()), who

    # Without versioning the same registry's rows are not where a plain reader looks.
    plain = OnlineReader(new_feature_store(s), VIEWS)
    assert plain.read(*current[0]) == (None, None)
