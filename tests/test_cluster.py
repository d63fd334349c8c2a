"""Loan Desk on a Valkey/Redis Cluster: settings, the whole path, failover and a hung primary.

A session fixture starts a local cluster of six ``redis-server --cluster-enabled yes`` nodes
(``bench.cluster.local_cluster``: 3 primaries + 3 replicas, ports 7301-7306 unless
LOAN_DESK_CLUSTER_TEST_PORT names another first port) with ``cluster-node-timeout 2000`` so a
failover takes seconds, and shuts every node down (SHUTDOWN NOSAVE) at the end.
The data lives in a database of its own (LOAN_DESK_CLUSTER_TEST_DB, default ``<test db>_cl``)
and the model in a temporary folder, so nothing here touches the other tests' data or model.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from datetime import UTC, datetime

import pandas as pd
import pytest

from bench.cluster import node_pid, wait_state_ok
from model.features import CREDIT_FEATURES, ZIPCODE_FEATURES, ZIPCODE_TEXT
from runtime.settings import Settings, parse_redis_url
from tests.conftest import NAMES, claim_database, run_cli

FIRST_PORT = int(os.environ.get("LOAN_DESK_CLUSTER_TEST_PORT", "7301"))
PORTS = list(range(FIRST_PORT, FIRST_PORT + 6))
CLUSTER_DB = NAMES.cluster_db
SEEDS = f"127.0.0.1:{PORTS[0]},127.0.0.1:{PORTS[1]}"
APPLICANTS = 1500


# --- settings (no cluster needed) -----------------------------------------------------------------
def _parsed(url: str, **env) -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(base, **parse_redis_url(url, **env))


def test_a_cluster_url_gives_feasts_cluster_configuration():
    s = _parsed("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert s.redis_cluster and s.redis_type == "redis_cluster"
    assert s.redis_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    conn = s.feast_redis_connection()
    assert conn.startswith("10.0.0.1:7000,10.0.0.2:7001,") and "db=" not in conn
    assert "socket_timeout=" in conn and "socket_connect_timeout=" in conn and "password=s3cret" in conn
    assert "s3cret" not in s.redis_where and s.redis_where == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
    assert Settings.from_env().redis_type == "redis"  # the tests' own single server
    env = s.feast_env()
    assert env["LOAN_DESK_REDIS_TYPE"] == "redis_cluster" and env["REDIS_URL"] == s.redis_url
    # The URL read back gives the same settings (what `loan-desk env` prints is usable as is).
    assert _parsed(s.redis_url) == s

    from feast_ext.store import repo_config

    online = repo_config(s).online_store
    assert online.redis_type.value == "redis_cluster" and online.connection_string == conn

    flagged = parse_redis_url("redis://127.0.0.1:7000", cluster=True)
    assert flagged["redis_cluster"] and flagged["redis_nodes"] == (("127.0.0.1", 7000),)


def test_tls_and_user_for_managed_services():
    s = _parsed("rediss://app:p%40ss@cache.example.com:6380/2")
    assert s.redis_tls and s.redis_username == "app" and s.redis_password == "p@ss" and s.redis_db == 2
    conn = s.feast_redis_connection()
    assert conn.startswith("cache.example.com:6380,db=2,") and "ssl=true" in conn and "username=app" in conn
    assert s.redis_kwargs()["ssl"] is True and s.redis_kwargs()["socket_timeout"] > 0
    c = _parsed("valkeys+cluster://cfg.example.com:6379")
    assert c.redis_tls and c.redis_cluster and "ssl=true" in c.feast_redis_connection()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://a:1,b:2/0", "use redis.cluster://"),
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
        ("http://x", "REDIS_URL must look like"),
        ("redis+sentinel://x:1", "REDIS_URL must look like"),
        ("redis://:a,b@x:1/0", "must not contain ','"),
        ("redis://x:99999/0", "not a TCP port"),
    ],
)
def test_bad_redis_urls_are_one_sentence(url, says):
    with pytest.raises(ValueError, match=says) as info:
        parse_redis_url(url)
    assert "\n" not in str(info.value)


def test_cli_refuses_a_bad_cluster_url_in_one_line():
    out = run_cli("loan-desk", "env", env={"REDIS_URL": "redis+cluster://127.0.0.1:7000/5"})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "only database 0" in out.stderr


# --- the local cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    from bench.cluster import local_cluster

    with local_cluster(FIRST_PORT, tmp_path_factory.mktemp("cluster"), node_timeout_ms=2000) as c:
        yield c


@pytest.fixture(scope="session")
def cs(cluster, settings):
    """The tests' settings pointed at the cluster and the cluster's own database (made and marked
    as the suite's, like every database it touches)."""
    claim_database(settings, CLUSTER_DB)
    return dataclasses.replace(settings, pgdatabase=CLUSTER_DB, **parse_redis_url(f"redis+cluster://{SEEDS}"))


def _env(cs: Settings, model_dir) -> dict:
    return {"REDIS_URL": cs.redis_url, "PGDATABASE": cs.pgdatabase, "LOAN_DESK_MODEL_DIR": str(model_dir)}


@pytest.fixture(scope="session")
def cluster_backbone(cs, tmp_path_factory):
    """Loaded, applied, materialized (our engine) and trained, on the cluster."""
    from bootstrap.load import LoadRequest, load
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, clear_online, feature_store
    from model.train import train

    load(cs, LoadRequest(applicants=APPLICANTS, seed=11), force=True)
    apply(cs)
    clear_online(cs)
    result = materialize(cs, requested_by="tests", full=True)
    model_dir = tmp_path_factory.mktemp("cluster-model")
    meta = train(feature_store(cs), cs, out_dir=model_dir, rounds=60, compare=False)
    return {"settings": cs, "materialized": result, "model_dir": model_dir, "meta": meta}


def _latest(cs: Settings):
    import psycopg

    with psycopg.connect(**cs.pg_kwargs(), autocommit=True) as pg:
        credit = pd.DataFrame(
            pg.execute(
                "SELECT DISTINCT ON (dob_ssn) dob_ssn, " + ", ".join(CREDIT_FEATURES) + " FROM credit_history "
                "ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC"
            ).fetchall(),
            columns=["dob_ssn", *CREDIT_FEATURES],
        )
        zips = pd.DataFrame(
            pg.execute(
                "SELECT DISTINCT ON (zipcode) zipcode, " + ", ".join((*ZIPCODE_TEXT, *ZIPCODE_FEATURES)) + " "
                "FROM zipcode_features ORDER BY zipcode, event_timestamp DESC, created_timestamp DESC"
            ).fetchall(),
            columns=["zipcode", *ZIPCODE_TEXT, *ZIPCODE_FEATURES],
        )
    return credit, zips


def _check_online_equals_latest(cs: Settings, store) -> None:
    credit, zips = _latest(cs)
    sample = credit.sample(250, random_state=3)
    online = store.get_online_features(
        features=[f"credit_history:{f}" for f in CREDIT_FEATURES], entity_rows=[{"dob_ssn": k} for k in sample.dob_ssn]
    ).to_df()
    for col in CREDIT_FEATURES:
        assert online[col].tolist() == sample[col].tolist(), col
    zsample = zips.sample(min(len(zips), 250), random_state=3)
    online_z = store.get_online_features(
        features=[f"zipcode_features:{f}" for f in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES)],
        entity_rows=[{"zipcode": int(z)} for z in zsample.zipcode],
    ).to_df()
    for col in (*ZIPCODE_TEXT, *ZIPCODE_FEATURES):
        assert online_z[col].tolist() == zsample[col].tolist(), col


def _primaries(cs: Settings) -> dict[str, int]:
    """Keys of this project per primary (name → count), a SCAN of each."""
    from feast_ext.engine import is_project_key

    client = cs.redis_client()
    try:
        out = {}
        for node in client.get_primaries():
            conn = client.get_redis_connection(node)
            keys = conn.scan_iter(match=b"*" + cs.project.encode(), count=10_000)
            out[node.name] = sum(1 for k in keys if is_project_key(k, cs.project))
        return out
    finally:
        client.close()


def test_materialize_spreads_over_every_primary_and_online_equals_postgres(cluster_backbone):
    from feast_ext.store import feature_store, online_key_count

    cs = cluster_backbone["settings"]
    credit, zips = _latest(cs)
    per_node = _primaries(cs)
    assert len(per_node) == 3 and all(n > 0 for n in per_node.values()), per_node
    assert online_key_count(cs) == sum(per_node.values()) == len(credit) + len(zips)
    assert cluster_backbone["materialized"].rows == len(credit) + len(zips)
    _check_online_equals_latest(cs, feature_store(cs))


def test_feasts_own_engine_on_the_cluster_writes_the_same(cluster_backbone):
    from feast_ext.materialize import materialize
    from feast_ext.store import clear_online, feature_store, online_key_count

    cs = dataclasses.replace(cluster_backbone["settings"], materializer="feast")
    before = online_key_count(cs)
    assert clear_online(cs) == before and online_key_count(cs) == 0
    materialize(cs, requested_by="tests", full=True)
    assert online_key_count(cs) == before
    _check_online_equals_latest(cs, feature_store(cs))
    # and back with ours, incremental: nothing newer, nothing doubled
    materialize(cluster_backbone["settings"], requested_by="tests")
    assert online_key_count(cluster_backbone["settings"]) == before


def _applications(cs: Settings, n: int) -> list[dict]:
    from bench.decision import applications

    return applications(cs, n)


def test_decisions_read_keys_on_different_nodes(cluster_backbone):
    from feast_ext.engine import _KeyEncoder
    from feast_ext.store import feature_store
    from model.inference import DecisionService

    cs = cluster_backbone["settings"]
    svc = DecisionService(store=feature_store(cs), model_dir=cluster_backbone["model_dir"], settings=cs)
    apps = _applications(cs, 300)
    assert len(apps) >= 250
    decisions = [svc.decide(a) for a in apps]  # any failure raises
    assert all(0 < d.probability < 1 for d in decisions)
    from feast.value_type import ValueType

    credit_key = _KeyEncoder("dob_ssn", ValueType.STRING, cs.project, 3)
    zip_key = _KeyEncoder("zipcode", ValueType.INT64, cs.project, 3)
    client = cs.redis_client()
    try:
        split = sum(
            client.get_node_from_key(credit_key(a["dob_ssn"])).name
            != client.get_node_from_key(zip_key(int(a["zipcode"]))).name
            for a in apps
        )
    finally:
        client.close()
    assert split > len(apps) // 4, split  # about two thirds of decisions read from two nodes


def test_run_py_and_the_feast_cli_on_the_cluster(cluster_backbone):
    cs = cluster_backbone["settings"]
    env = _env(cs, cluster_backbone["model_dir"])
    out = run_cli("python", "run.py", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] in (
        "loan approved!",
        "loan rejected!",
        "loan referred to an underwriter",
    )
    printed = run_cli("loan-desk", "env", env=env)
    assert printed.returncode == 0 and "LOAN_DESK_REDIS_TYPE=redis_cluster" in printed.stdout
    from runtime.settings import FEATURE_REPO

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    feast = run_cli("feast", "materialize-incremental", now, cwd=FEATURE_REPO, env=cs.feast_env())
    assert feast.returncode == 0, feast.stderr[-2000:]


def test_full_refresh_removes_stale_keys_on_every_node(cluster_backbone):
    from feast.value_type import ValueType

    from feast_ext.engine import _KeyEncoder
    from feast_ext.materialize import materialize
    from feast_ext.store import online_key_count

    cs = cluster_backbone["settings"]
    before = online_key_count(cs)
    key_of = _KeyEncoder("dob_ssn", ValueType.STRING, cs.project, 3)
    # Keys that differ in many characters: CRC16 is linear, so keys that differ only in the last
    # digits can all fall in two primaries' slot ranges for some project names (it did for id h1).
    stale = [key_of(f"{1900 + 7 * i}{i % 12 + 1:02d}{i % 28 + 1:02d}_{(i * 7919) % 10000:04d}") for i in range(48)]
    client = cs.redis_client()
    try:
        nodes = {client.get_node_from_key(k).name for k in stale}
        assert len(nodes) == 3, nodes  # the keys land on every primary
        for k in stale:
            client.hset(k, mapping={b"_ts:credit_history": b"", b"x": b"1"})
        other = b"not-ours:" + cs.project.encode()
        client.set(other, b"keep")
        assert online_key_count(cs) == before + len(stale)
        materialize(cs, requested_by="tests", full=True)
        assert online_key_count(cs) == before
        assert not any(client.exists(k) for k in stale)
        assert client.get(other) == b"keep"
        client.delete(other)
    finally:
        client.close()


def test_the_writer_follows_moved_after_refreshing_its_slot_map(cluster_backbone, caplog):
    """A stale slot map (every key's slot pointed at a wrong primary): the nodes answer MOVED,
    the writer refreshes the map and sends the chunk again; every key ends up written once."""
    from feast.value_type import ValueType
    from redis.crc import key_slot

    from feast_ext.engine import _bulk, _ClusterSink, _KeyEncoder, unlink_keys

    cs = cluster_backbone["settings"]
    key_of = _KeyEncoder("dob_ssn", ValueType.STRING, cs.project, 3)
    keys = [key_of(f"19990101_{i:04d}") for i in range(40)]
    client = cs.redis_client(socket_timeout=5)
    try:
        nodes = client.nodes_manager
        primaries = client.get_primaries()
        for k in keys:
            slot = key_slot(k)
            right = nodes.slots_cache[slot][0]
            wrong = next(p for p in primaries if p.name != right.name)
            nodes.slots_cache[slot] = [wrong, *nodes.slots_cache[slot][1:]]
        sink = _ClusterSink(client)
        commands = [b"*4\r\n$4\r\nHSET\r\n" + _bulk(k) + _bulk(b"f") + _bulk(b"v") for k in keys]
        with caplog.at_level("WARNING", logger="feast_ext.engine"):
            replies = sink.send(keys, commands, 1)
        sink.close()
        assert "MOVED" in caplog.text  # it did meet the redirection
        assert replies == [1] * len(keys)
        assert all(client.hget(k, b"f") == b"v" for k in keys)
        assert unlink_keys(client, keys) == len(keys)
    finally:
        client.close()


def test_service_errors_are_one_sentence(cs):
    from runtime.health import valkey

    assert valkey(cs) is None
    wrong_pw = dataclasses.replace(cs, redis_password="nope")
    assert "refused the password" in valkey(wrong_pw)
    tls = dataclasses.replace(cs, redis_tls=True)
    msg = valkey(tls)
    assert "TLS" in msg and "\n" not in msg
    nobody = dataclasses.replace(cs, **parse_redis_url("redis+cluster://127.0.0.1:7399"))
    msg = valkey(nobody)
    assert "no seed node answered" in msg and "\n" not in msg


# --- faults (last: they change which node is primary) ---------------------------------------------
def _owner_port(cs: Settings, key: bytes) -> int:
    client = cs.redis_client()
    try:
        return int(client.get_node_from_key(key).port)
    finally:
        client.close()


def test_a_hung_primary_costs_a_caller_a_bounded_wait(cluster_backbone, cluster):
    from feast.value_type import ValueType

    from feast_ext.engine import _KeyEncoder
    from feast_ext.store import new_feature_store
    from model.inference import DecisionService, StoreUnavailable
    from runtime.settings import REDIS_CLUSTER_BACKOFF_S, REDIS_CLUSTER_RETRIES, REDIS_SOCKET_TIMEOUT_S

    cs = cluster_backbone["settings"]
    svc = DecisionService(store=new_feature_store(cs), model_dir=cluster_backbone["model_dir"], settings=cs)
    app = _applications(cs, 1)[0]
    svc.decide(app)
    port = _owner_port(cs, _KeyEncoder("dob_ssn", ValueType.STRING, cs.project, 3)(app["dob_ssn"]))
    pid = node_pid(cluster["dir"], port)
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailable) as info:
            svc.decide(app)
        waited = time.perf_counter() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert b"\\x" not in str(info.value).encode() and "HMGET" not in str(info.value)
    # each attempt: a read that times out, then a slot-map refresh that may time out on the same node
    budget = (1 + REDIS_CLUSTER_RETRIES) * (2 * REDIS_SOCKET_TIMEOUT_S + REDIS_CLUSTER_BACKOFF_S)
    print(f"\nhung primary: the caller waited {waited:.2f} s (budget {budget:.2f} s): {info.value}")
    assert waited < budget + 1.5  # generous: a busy machine
    wait_state_ok(cluster["ports"])
    deadline = time.monotonic() + 20
    while True:  # back without restarting anything
        try:
            svc.decide(app)
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "decisions did not come back after the primary resumed"
            time.sleep(0.1)


def test_decisions_resume_after_a_primary_dies(cluster_backbone, cluster):
    from feast.value_type import ValueType

    from feast_ext.engine import _KeyEncoder
    from feast_ext.store import new_feature_store
    from model.inference import DecisionService, StoreUnavailable

    cs = cluster_backbone["settings"]
    svc = DecisionService(store=new_feature_store(cs), model_dir=cluster_backbone["model_dir"], settings=cs)
    apps = _applications(cs, 30)
    key_of = _KeyEncoder("dob_ssn", ValueType.STRING, cs.project, 3)
    app = apps[0]
    victim = _owner_port(cs, key_of(app["dob_ssn"]))
    events: list[tuple[float, bool]] = []
    other: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                svc.decide(app)
                events.append((time.monotonic(), True))
            except StoreUnavailable:
                events.append((time.monotonic(), False))
                time.sleep(0.02)
            except BaseException as exc:  # anything else is a bug
                other.append(exc)
                return

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        assert events and all(ok for _, ok in events), "decisions failed before the fault"
        killed_at = time.monotonic()
        os.kill(node_pid(cluster["dir"], victim), signal.SIGKILL)
        deadline = killed_at + 30
        while time.monotonic() < deadline:
            after = [(ts, ok) for ts, ok in events if ts > killed_at]
            if any(not ok for _, ok in after) and after[-1][1]:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    assert not other, other
    after = [(ts, ok) for ts, ok in events if ts > killed_at]
    failures = [ts for ts, ok in after if not ok]
    assert failures, "no decision failed after the primary was killed"
    resumed = [ts for ts, ok in after if ok and ts > failures[-1]]
    assert resumed, "decisions did not resume after the failover"
    gap = resumed[0] - killed_at
    print(f"\nfailover: decisions resumed {gap:.2f} s after the primary was killed ({len(failures)} refused)")
    assert gap < 20
    assert all(ok for ts, ok in after if ts > resumed[0]), "decisions failed again after resuming"
