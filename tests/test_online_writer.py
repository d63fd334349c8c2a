"""The Loan Desk engine writes exactly what Feast's own engine writes.

The same small data set is loaded into two databases (each with its own registry) and
materialized with ``FeatureStore.materialize`` into two Redis dbs: one store configured with
``batch_engine: local`` (Feast's engine), one with ``feast_ext.engine.LoanDeskEngine``, both with
``key_ttl_seconds`` set so that EXPIRE is compared too.  Every key and every hash field must be
byte-identical and every TTL equal (to the second the two runs are apart), after a full window
and after an incremental step with new rows, and both registries must record the same
materialization intervals.  Feast's own ``get_online_features`` must then read every sampled
value as Postgres has it.

The test works in a Feast project of its own: it clears only that project's keys and registry
entries, never a whole Redis db or registry.
"""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis

from tests.conftest import NAMES, forget_feast_project

DB_A = os.environ.get("LOAN_DESK_WRITER_TEST_DB_A", "loan_desk_writer_test_a")
DB_B = os.environ.get("LOAN_DESK_WRITER_TEST_DB_B", "loan_desk_writer_test_b")
REDIS_A = int(os.environ.get("LOAN_DESK_WRITER_TEST_REDIS_A", "10"))
REDIS_B = int(os.environ.get("LOAN_DESK_WRITER_TEST_REDIS_B", "11"))
PROJECT = NAMES.project_for("writer_diff")  # the run's own (LOAN_DESK_TEST_ID)
APPLICANTS = 400
KEY_TTL_S = 30 * 86_400
TTL_SLACK_S = 2


def _setup(settings, db: str, redis_db: int, batch_engine: str | None):
    from bootstrap.load import LoadRequest, load
    from bootstrap.services import ensure_database
    from feast_ext.store import apply, new_feature_store

    s = dataclasses.replace(settings, pgdatabase=db, redis_db=redis_db, project=PROJECT)
    ensure_database(s)
    load(s, LoadRequest(applicants=APPLICANTS, seed=11, as_of=datetime(2026, 1, 15, tzinfo=UTC)), force=True)
    forget_feast_project(s)
    apply(s)
    changes = {"online_store": {"key_ttl_seconds": KEY_TTL_S}}
    if batch_engine:
        changes["batch_engine"] = batch_engine
    return s, new_feature_store(s, **changes)


@pytest.fixture()
def stores(settings):
    from feast.infra.compute_engines.local.compute import LocalComputeEngine

    from feast_ext.engine import LoanDeskEngine

    sa, store_a = _setup(settings, DB_A, REDIS_A, "local")
    sb, store_b = _setup(settings, DB_B, REDIS_B, None)  # the engine feature_store.yaml names
    assert isinstance(store_a._get_provider().batch_engine, LocalComputeEngine)
    assert isinstance(store_b._get_provider().batch_engine, LoanDeskEngine)
    yield sa, store_a, sb, store_b
    forget_feast_project(sa)
    forget_feast_project(sb)


def _dump(s) -> dict:
    from feast_ext.engine import is_project_key

    r = redis.Redis.from_url(s.redis_url)
    keys = [k for k in r.scan_iter(match=b"*" + s.project.encode(), count=1000) if is_project_key(k, s.project)]
    return {k: (r.hgetall(k), r.ttl(k)) for k in keys}


def _intervals(store) -> dict:
    return {fv.name: list(fv.materialization_intervals) for fv in store.list_feature_views(allow_cache=False)}


def _add_rows(s, end: datetime) -> None:
    """New credit snapshots after ``end``: a newer file for five applicants, two with a created tie."""
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
        people = [r[0] for r in conn.execute("SELECT DISTINCT dob_ssn FROM credit_history ORDER BY 1 LIMIT 5")]
        for i, who in enumerate(people):
            ts = end + timedelta(minutes=10 + i)
            for created_offset, due in ((0, 1000 + i), (5, 2000 + i)):  # the later created row must win
                conn.execute(
                    "INSERT INTO credit_history VALUES (%s, %s, 1, 2, 3, 4, 5, 6, 7, 0, %s, %s)",
                    [who, due, ts, ts + timedelta(seconds=created_offset)],
                )


def _assert_same(a: dict, b: dict, slack_s: float = TTL_SLACK_S) -> None:
    assert a.keys() == b.keys(), f"{len(a.keys() ^ b.keys())} keys differ"
    for key in a:
        (fields_a, ttl_a), (fields_b, ttl_b) = a[key], b[key]
        assert fields_a == fields_b, f"key {key!r} differs"
        assert 0 < ttl_a <= KEY_TTL_S and 0 < ttl_b <= KEY_TTL_S, f"key {key!r}: TTLs {ttl_a}, {ttl_b}"
        assert abs(ttl_a - ttl_b) <= slack_s, f"key {key!r}: TTL {ttl_a} (Feast) vs {ttl_b} (ours)"


def _engine(store):
    return store._get_provider().batch_engine


def test_engine_matches_feast_byte_for_byte(stores):
    sa, store_a, sb, store_b = stores
    end = datetime(2026, 1, 16, tzinfo=UTC)
    start = end - timedelta(days=3650)
    store_a.materialize(start_date=start, end_date=end)
    with _engine(store_b).run() as run:
        store_b.materialize(start_date=start, end_date=end)
    assert run.rows > APPLICANTS and run.written == run.rows
    feast_full, fast_full = _dump(sa), _dump(sb)
    assert len(feast_full) > APPLICANTS
    _assert_same(feast_full, fast_full)
    assert _intervals(store_a) == _intervals(store_b)

    # An incremental step over new rows: Feast's engine against ours, both through Feast.
    end2 = end + timedelta(days=1)
    _add_rows(sa, end)
    _add_rows(sb, end)
    store_a.materialize_incremental(end_date=end2)
    with _engine(store_b).run() as run:
        store_b.materialize_incremental(end_date=end2)
    assert {v.view: v.written for v in run.views}["credit_history"] == 5
    feast_inc, fast_inc = _dump(sa), _dump(sb)
    dumped = time.monotonic()
    assert {k: v[0] for k, v in feast_inc.items()} != {k: v[0] for k, v in feast_full.items()}  # it changed
    _assert_same(feast_inc, fast_inc)
    assert _intervals(store_a) == _intervals(store_b)
    assert _intervals(store_b)["credit_history"][-1] == (end, end2)

    # Written twice with the dedup rule: nothing is newer, nothing changes.
    with _engine(store_b).run() as run:
        store_b.materialize(start_date=start, end_date=end2)
    assert run.rows > APPLICANTS and run.written == 0
    # The TTLs count down meanwhile (this step's time on a busy machine can pass the slack alone).
    _assert_same(feast_inc, _dump(sb), TTL_SLACK_S + time.monotonic() - dumped)


def test_feast_reads_what_the_engine_wrote(stores):
    """get_online_features on a sample of entities returns exactly Postgres's latest rows."""
    _, _, sb, store = stores
    end = datetime(2026, 1, 16, tzinfo=UTC)
    with _engine(store).run(dedup=False):
        store.materialize(start_date=end - timedelta(days=3650), end_date=end)
    credit_cols = [
        "credit_card_due", "mortgage_due", "student_loan_due", "vehicle_loan_due", "hard_pulls",
        "missed_payments_2y", "missed_payments_1y", "missed_payments_6m", "bankruptcies",
    ]  # fmt: skip
    zip_cols = ["city", "state", "location_type", "tax_returns_filed", "population", "total_wages"]
    with psycopg.connect(**sb.pg_kwargs()) as conn:
        credit = conn.execute(
            "SELECT DISTINCT ON (dob_ssn) dob_ssn, " + ", ".join(credit_cols) + " FROM credit_history "
            "WHERE event_timestamp <= %s ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC",
            [end],
        ).fetchall()
        zips = conn.execute(
            "SELECT DISTINCT ON (zipcode) zipcode, " + ", ".join(zip_cols) + " FROM zipcode_features "
            "WHERE event_timestamp <= %s ORDER BY zipcode, event_timestamp DESC, created_timestamp DESC",
            [end],
        ).fetchall()
    sample_c, sample_z = credit[::20], zips[::20]
    got = store.get_online_features(
        features=[f"credit_history:{c}" for c in credit_cols],
        entity_rows=[{"dob_ssn": r[0]} for r in sample_c],
    ).to_dict()
    for i, row in enumerate(sample_c):
        assert [got[c][i] for c in credit_cols] == list(row[1:]), row[0]
    got = store.get_online_features(
        features=[f"zipcode_features:{c}" for c in zip_cols],
        entity_rows=[{"zipcode": r[0]} for r in sample_z],
    ).to_dict()
    for i, row in enumerate(sample_z):
        assert [got[c][i] for c in zip_cols] == list(row[1:]), row[0]
