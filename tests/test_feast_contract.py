"""The private Feast names Loan Desk relies on still exist, with the parameters we call them with.

Feast does not promise to keep underscore names across releases.  Upgrading Feast should
fail here, naming what moved, instead of somewhere inside a decision or a materialization.
Each entry: module, name (``Class.method`` for methods), the leading parameters (after
``self``) in the order and with the names our code passes them, and where we use it.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

REDIS = "feast.infra.online_stores.redis"
HELPERS = "feast.infra.online_stores.helpers"
PG_CONN = "feast.infra.utils.postgres.connection_utils"

CONTRACT = [
    (HELPERS, "_mmh3", ["key"], "feast_ext/engine.py, bench/decision.py: hash field names"),
    (HELPERS, "_redis_key", ["project", "entity_key", "entity_key_serialization_version"], "engine key check"),
    (REDIS, "_versioned_fv_name", ["table", "config"], "engine and online reader: a view's stored name"),
    (REDIS, "RedisOnlineStore._parse_connection_string", ["connection_string"], "engine: its Redis client"),
    (REDIS, "RedisOnlineStore._get_client", ["online_store_config"], "online reader: retry policy"),
    (REDIS, "RedisOnlineStore._read_hash_fields", ["config", "commands"], "online reader: the HMGETs"),
    (
        REDIS,
        "RedisOnlineStore._generate_hset_keys_for_features",
        ["feature_view", "requested_features", "fv_name_override"],
        "online reader: field names",
    ),
    (REDIS, "RedisOnlineStore._generate_redis_keys_for_entities", ["config", "entity_keys"], "online reader: keys"),
    (
        REDIS,
        "RedisOnlineStore._get_features_for_entity",
        ["values", "feature_view", "requested_features"],
        "online reader: decoding",
    ),
    (PG_CONN, "_get_conn", ["config"], "feast_ext/offline_store.py"),
    (PG_CONN, "_get_conninfo", ["config"], "engine: Postgres from the offline store config"),
    (PG_CONN, "_get_conn_kwargs", ["config"], "engine: Postgres from the offline store config"),
    ("feast.feature_store", "FeatureStore._get_provider", [], "online reader, materialize job: the provider"),
    (
        "feast.infra.compute_engines.base",
        "ComputeEngine._materialize_one",
        ["registry", "task"],
        "LoanDeskEngine overrides it",
    ),
    (
        "feast.infra.offline_stores.offline_store",
        "RetrievalJob._to_arrow_internal",
        ["timeout"],
        "LateralRetrievalJob overrides it",
    ),
    (
        "feast.infra.offline_stores.offline_store",
        "RetrievalJob._to_df_internal",
        ["timeout"],
        "LateralRetrievalJob overrides it",
    ),
]


def _resolve(module: str, name: str):
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module", "name", "params", "used_by"), CONTRACT, ids=[c[1] for c in CONTRACT])
def test_private_feast_name(module, name, params, used_by):
    where = f"{module}.{name} (used by {used_by})"
    try:
        obj = _resolve(module, name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{where} no longer exists in this Feast: {exc}", pytrace=False)
    got = [p for p in inspect.signature(obj).parameters if p != "self"]
    if got[: len(params)] != params:
        pytest.fail(f"{where}: parameters are now ({', '.join(got)}); we pass ({', '.join(params)})", pytrace=False)


def test_the_engine_hooks_feast_calls():
    """What LoanDeskEngine relies on: Feast builds the engine with the config's keys, calls
    ``_materialize_one`` once per task, and finds the config class by the engine's name."""
    from feast.infra.common.materialization_job import MaterializationTask
    from feast.infra.compute_engines.base import ComputeEngine
    from feast.repo_config import get_batch_engine_config_from_type

    from feast_ext.engine import LoanDeskEngineConfig

    calls = []

    class Probe(ComputeEngine):
        def update(self, *a, **k):
            pass

        def teardown_infra(self, *a, **k):
            pass

        def _materialize_one(self, registry, task, **kwargs):
            calls.append(task)
            return task

    engine = Probe(repo_config=None, offline_store=None, online_store=None, type="anything")
    task = MaterializationTask(project="p", feature_view=None, start_time=None, end_time=None)
    assert engine.materialize(None, task) == [task] and calls == [task], "ComputeEngine.materialize changed"
    assert get_batch_engine_config_from_type("feast_ext.engine.LoanDeskEngine") is LoanDeskEngineConfig


def test_redis_py_socket_we_write_to(redis_client):
    """The engine writes raw protocol on a redis-py connection's socket (``Connection._sock``)."""
    conn = redis_client.connection_pool.get_connection()
    try:
        conn.connect()
        assert hasattr(conn._sock, "sendall"), "redis-py's Connection._sock is gone: feast_ext/engine.py _RawPipe"
    finally:
        redis_client.connection_pool.release(conn)
