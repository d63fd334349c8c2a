"""Postgres at scale: credit_history hash-partitioned by dob_ssn, per-partition queries, parallel writers.

The same synthetic data is loaded twice, into ``<test db>_parts`` (4 hash partitions) and
``<test db>_plain`` (one plain table); each test works in Feast projects of its own, so the
session's data and keys stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest
import redis

from tests.conftest import NAMES, claim_database, forget_feast_project

APPLICANTS = 1500
PARTITIONS = 4
# Fixed data: both databases get the same rows, dated a few days back so that every row was
# created before the tests' windows (created = event + 1 day in the synthetic data).
AS_OF = datetime.combine(datetime.now(UTC).date() - timedelta(days=3), datetime.min.time(), UTC)
VIEWS = ("credit_history", "zipcode_features")


@pytest.fixture(scope="module")
def dbs(settings):
    """{"parts": settings, "plain": settings}, loaded with the same data in the two layouts."""
    from bootstrap.load import LoadRequest, load

    out = {}
    for kind, name, parts in (("parts", NAMES.parts_db, PARTITIONS), ("plain", NAMES.plain_db, 1)):
        claim_database(settings, name)
        s = dataclasses.replace(settings, pgdatabase=name, pg_partitions=parts)
        load(s, LoadRequest(applicants=APPLICANTS, seed=13, as_of=AS_OF), force=True)  # fresh: as loaded
        out[kind] = s
    return out


@pytest.fixture()
def project(dbs):
    """``project(kind, name, **changes)``: settings for a Feast project of the test's own in that
    database, registered; removed afterwards (registry rows and online keys)."""
    from feast_ext.store import apply

    made = []

    def make(kind: str, name: str, **changes):
        s = dataclasses.replace(dbs[kind], project=NAMES.project_for(name), **changes)
        forget_feast_project(s)
        apply(s)
        made.append(s)
        return s

    yield make
    for s in made:
        forget_feast_project(s)


def _online(s) -> dict[bytes, dict[bytes, bytes]]:
    """Every online row of the project, keyed by the entity key without the project's name."""
    from feast_ext.store import _project_keys

    r, keys = _project_keys(s)
    try:
        keys = list(keys)
        with r.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hgetall(k)
            rows = pipe.execute()
    finally:
        r.close()
    cut = len(s.project.encode())
    return {k[:-cut]: v for k, v in zip(keys, rows, strict=True)}


# --- the load ---------------------------------------------------------------------------------------
def test_a_partitioned_load_holds_the_same_rows_as_a_plain_one(dbs):
    from bootstrap.load import leftover_tables
    from runtime.partitions import hash_partitions

    checks = {}
    for kind, s in dbs.items():
        with psycopg.connect(**s.pg_kwargs()) as conn:
            parts = hash_partitions(conn, "credit_history")
            checks[kind] = {
                t: conn.execute(
                    f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {t} AS t"  # noqa: S608
                ).fetchone()
                for t in ("credit_history", "loans", "zipcode_features")
            }
            if kind == "plain":
                assert parts is None
                continue
            assert parts is not None and parts.column == "dob_ssn" and parts.modulus == PARTITIONS
            assert parts.names == tuple(f"credit_history_p{i}" for i in range(PARTITIONS))
            sizes = []
            for i, name in enumerate(parts.names):
                n, wrong = conn.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE NOT satisfies_hash_partition("  # noqa: S608
                    f"'credit_history'::regclass, {PARTITIONS}, {i}, dob_ssn)) FROM {name}"
                ).fetchone()
                assert wrong == 0
                sizes.append(n)
                indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [name])}
                assert indexes == {f"{name}_pit", f"{name}_ts", f"{name}_created"}
            assert min(sizes) > 0.15 * sum(sizes)  # spread over every partition
            # Written frozen (COPY FREEZE into each partition): every page all-frozen in the visibility map,
            # so no reader after the switch has hint bits to set.
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
            pages = conn.execute(
                "SELECT c.relname, c.relpages, (pg_visibility_map_summary(c.oid)).all_frozen FROM pg_class c "
                "JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent = 'credit_history'::regclass"
            ).fetchall()
            assert len(pages) == PARTITIONS and all(n > 0 and frozen == n for _, n, frozen in pages), pages
            assert leftover_tables(conn) == []
            info = conn.execute("SELECT info FROM loan_desk_dataset").fetchone()[0]
            assert info["partitions"] == PARTITIONS
    assert checks["parts"] == checks["plain"]
    assert checks["parts"]["credit_history"][0] == APPLICANTS * 8


def test_changing_the_partition_count_reloads_and_switches_every_partition(dbs):
    from bootstrap.load import LoadRequest, leftover_tables, load
    from runtime.partitions import hash_partitions

    s = dbs["parts"]
    changed, _ = load(s, LoadRequest(applicants=APPLICANTS, seed=13, as_of=AS_OF))
    assert not changed  # the same data and layout: a no-op
    try:
        changed, msg = load(
            dataclasses.replace(s, pg_partitions=3), LoadRequest(applicants=APPLICANTS, seed=13, as_of=AS_OF)
        )
        assert changed and "3 hash partitions" in msg
        with psycopg.connect(**s.pg_kwargs()) as conn:
            assert len(hash_partitions(conn, "credit_history")) == 3
            assert conn.execute("SELECT count(*) FROM credit_history").fetchone()[0] == APPLICANTS * 8
            names = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'credit_history%%'")}
            assert not any("__" in n for n in names), names  # no staging or old generation left
            assert "credit_history_p3" not in names
            assert leftover_tables(conn) == []
    finally:
        load(s, LoadRequest(applicants=APPLICANTS, seed=13, as_of=AS_OF))  # back to 4 partitions
        with psycopg.connect(**s.pg_kwargs()) as conn:
            assert len(hash_partitions(conn, "credit_history")) == PARTITIONS


# --- the point-in-time join ---------------------------------------------------------------------------
def test_the_point_in_time_join_per_partition_equals_the_plain_tables(project):
    from feast_ext.store import feature_store
    from model.train import ENTITY_SQL, training_frame

    frames, entity_frames = {}, {}
    for kind in ("parts", "plain"):
        s = project(kind, f"pit_{kind}", materialize_workers=3)
        store = feature_store(s)
        job = store.get_historical_features(entity_df=ENTITY_SQL, features=store.get_feature_service("credit_model_v1"))
        # One query per partition, on connections of their own, or one query over the plain table.
        assert len(job._parts) == (PARTITIONS if kind == "parts" else 1)
        frames[kind] = training_frame(store)
        # An entity DataFrame too, with an unknown applicant and a missing key.
        ent = frames[kind][["loan_id", "dob_ssn", "zipcode", "event_timestamp"]].head(300).copy()
        ent.loc[ent.index[5], "dob_ssn"] = "19000101_0000"
        ent.loc[ent.index[7], "dob_ssn"] = None
        got = store.get_historical_features(entity_df=ent, features=store.get_feature_service("credit_model_v1"))
        entity_frames[kind] = got.to_df().sort_values("loan_id").reset_index(drop=True)
    assert len(frames["parts"]) == APPLICANTS
    pd.testing.assert_frame_equal(frames["parts"], frames["plain"])
    pd.testing.assert_frame_equal(entity_frames["parts"], entity_frames["plain"])
    assert frames["parts"]["credit_card_due"].notna().mean() > 0.5
    assert entity_frames["parts"]["credit_card_due"].isna().sum() >= 2


# --- materialization ----------------------------------------------------------------------------------
def test_online_rows_are_equal_with_one_or_four_workers_and_without_partitions(project):
    from feast_ext.materialize import materialize

    end = datetime.now(UTC)
    got = {}
    for kind, workers in (("plain", 1), ("parts", 1), ("parts", 4)):
        s = project(kind, f"mat_{kind}_{workers}", materialize_workers=workers)
        res = materialize(s, requested_by="tests", end=end, full=True)
        got[(kind, workers)] = _online(s)
        assert res.rows == len(got[(kind, workers)])
    first = got[("plain", 1)]
    assert len(first) == APPLICANTS + len({k for k in first if b"zipcode" in k})
    assert got[("parts", 1)] == first and got[("parts", 4)] == first  # every key, field and value, byte for byte


def _explain_rows(conn, query, params) -> tuple[set[str], int]:
    """(node types, rows read from credit_history's tables) of one EXPLAIN ANALYZE."""
    from psycopg import sql

    plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, params).fetchone()[0]
    plan = plan if isinstance(plan, list) else json.loads(plan)
    kinds, rows = set(), 0
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        kinds.add(node["Node Type"])
        if node.get("Relation Name", "").startswith("credit_history"):
            rows += node["Actual Rows"] * node["Actual Loops"]
        stack += node.get("Plans", [])
    return kinds, rows


def test_incremental_materialization_reads_only_the_new_rows(project, dbs):
    """After a full refresh, three new snapshots and two late ones (created now, dated before the
    last window): the next incremental run reads those five rows and their entities' latest
    rows, nothing else, and serves all five."""
    from feast_ext import engine as E
    from feast_ext.materialize import materialize
    from feast_ext.store import feature_store

    s = project("parts", "incr", materialize_workers=2)
    materialize(s, requested_by="tests", full=True)
    store = feature_store(s)
    store.refresh_registry()
    last_end = store.get_feature_view("credit_history").materialization_intervals[-1][1]
    cols = "dob_ssn, credit_card_due, mortgage_due, student_loan_due, vehicle_loan_due, hard_pulls, " + (
        "missed_payments_2y, missed_payments_1y, missed_payments_6m, bankruptcies, event_timestamp, created_timestamp"
    )
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
        people = [
            r[0] for r in conn.execute("SELECT DISTINCT dob_ssn FROM credit_history ORDER BY 1 LIMIT 5 OFFSET 100")
        ]
        newest = dict(
            conn.execute(
                "SELECT dob_ssn, max(event_timestamp) FROM credit_history WHERE dob_ssn = ANY(%s) GROUP BY 1", [people]
            ).fetchall()
        )
        now = datetime.now(UTC)
        new_values = {}
        for i, who in enumerate(people):
            late = i >= 3  # dated just after its latest snapshot, before the last window's end
            when = newest[who] + timedelta(seconds=1) if late else now
            assert (when < last_end) == late
            new_values[who] = 7_770_000 + i
            conn.execute(
                f"INSERT INTO credit_history ({cols}) SELECT dob_ssn, %s, mortgage_due, student_loan_due, "  # noqa: S608
                "vehicle_loan_due, hard_pulls, missed_payments_2y, missed_payments_1y, missed_payments_6m, "
                "bankruptcies, %s, %s FROM credit_history WHERE dob_ssn = %s ORDER BY event_timestamp DESC LIMIT 1",
                [new_values[who], when, now, who],
            )
    try:
        engine = store._get_provider().batch_engine
        end = datetime.now(UTC)
        with engine.run() as run:
            store.materialize_incremental(end_date=end)
        pulled = {v.view: v.rows for v in run.views}
        assert pulled == {"credit_history": 5, "zipcode_features": 0}, pulled
        online = store.get_online_features(
            features=["credit_history:credit_card_due"], entity_rows=[{"dob_ssn": p} for p in people]
        ).to_dict()
        assert online["credit_card_due"] == [new_values[p] for p in people]  # the late ones too

        # What Postgres read for it: index scans only, about the new rows and one probe per entity.
        plan = E._plan(store.config, store.get_feature_view("credit_history"))
        assert E.is_incremental(plan, last_end, end)
        from psycopg import sql

        kinds, rows = set(), 0
        with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
            for i in range(PARTITIONS):
                k, n = _explain_rows(
                    conn,
                    E.latest_rows_query(plan, sql.Identifier(f"credit_history_p{i}"), incremental=True),
                    E.query_params(plan, last_end, end),
                )
                kinds |= k
                rows += n
        assert "Seq Scan" not in kinds and {"Bitmap Index Scan", "Index Scan"} <= kinds, kinds
        assert rows <= 15, rows  # 5 new rows found, 5 probes: not the 12,000 rows of the table
    finally:
        with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
            conn.execute("DELETE FROM credit_history WHERE created_timestamp >= %s", [now])


def test_a_failed_worker_leaves_every_row_whole_and_removes_nothing(project, dbs):
    """One partition is locked by another session and its worker's backend is terminated while
    it waits: the run fails with a sentence naming that partition; the other workers' rows are
    new, the failed partition's are the previous ones, none mixed; the stale key stays and the
    window is not recorded.  The next run completes."""
    from feast_ext.materialize import materialization_state, materialize
    from feast_ext.store import feature_store

    s = project("parts", "fail", materialize_workers=PARTITIONS)
    materialize(s, requested_by="tests", full=True)
    before = _online(s)
    state = materialization_state(feature_store(s))
    r = redis.Redis.from_url(s.redis_url)
    template = next(k for k in before if b"dob_ssn" in k)
    stale_key = template[:-1] + b"Z" + s.project.encode()  # the key of an applicant not in the data
    r.hset(stale_key, mapping=before[template])
    victim = "credit_history_p2"
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as admin:
        admin.execute("UPDATE credit_history SET hard_pulls = hard_pulls + 100")
        try:
            with psycopg.connect(**s.pg_kwargs()) as locker:
                locker.execute(f"LOCK TABLE {victim} IN ACCESS EXCLUSIVE MODE")  # noqa: S608
                outcome: dict = {}

                def run() -> None:
                    try:
                        materialize(s, requested_by="tests", full=True, progress=lambda m: None)
                    except Exception as exc:  # noqa: BLE001 - inspected below
                        outcome["error"] = exc

                t = threading.Thread(target=run)
                t.start()
                pid, deadline = None, time.monotonic() + 120
                while pid is None and time.monotonic() < deadline:
                    row = admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = %s AND wait_event_type = 'Lock'",
                        [f"loan-desk materialize {victim}"],
                    ).fetchone()
                    pid = row and row[0]
                    time.sleep(0.05)
                assert pid, "the worker never waited on the locked partition"
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                t.join(120)
                locker.rollback()
            err = outcome.get("error")
            assert err is not None and victim in str(err) and "run the materialization again" in str(err), err
            with psycopg.connect(**s.pg_kwargs()) as conn:
                status, error = conn.execute(
                    "SELECT status, error FROM loan_desk_materialize_runs ORDER BY id DESC LIMIT 1"
                ).fetchone()
                in_victim = {
                    row[0]
                    for row in conn.execute(f"SELECT DISTINCT dob_ssn FROM {victim}")  # noqa: S608
                }
            assert status == "failed" and victim in error
            assert not any(p in str(err) for p in in_victim)  # no applicant's key in the message
            assert r.exists(stale_key), "a failed refresh removed a key"
            assert materialization_state(feature_store(s))["credit_history"] == state["credit_history"]
            after = _online(s)
            assert set(before) <= set(after)
            from feast.value_type import ValueType

            from feast_ext.engine import _KeyEncoder

            key_of = _KeyEncoder("dob_ssn", ValueType.STRING, s.project, 3)
            cut = len(s.project.encode())
            victims = {key_of(p)[:-cut] for p in in_victim}
            credit = {k for k in before if b"dob_ssn" in k}
            changed = {k for k in before if after[k] != before[k]}
            assert victims and victims <= credit
            assert all(set(after[k]) == set(before[k]) for k in before)  # every row whole: all its fields
            assert not changed & victims  # the failed partition's rows are the previous ones
            assert credit - victims <= changed  # every other partition's rows have the new values

            materialize(s, requested_by="tests", full=True, progress=lambda m: None)
            assert not r.exists(stale_key)
            final = _online(s)
            assert all(final[k] != before[k] for k in victims)
        finally:
            admin.execute("UPDATE credit_history SET hard_pulls = hard_pulls - 100")
