"""The fast materialization writer writes exactly what Feast's own materialize writes.

The same small data set is loaded into two databases (each with its own registry) and
materialized into two Redis dbs: one with ``FeatureStore.materialize`` (Feast's local engine
with the repo's settings), one with ``feast_ext.engine``.  Every key, every hash field
and every TTL must be byte-identical, after a full window and after an incremental step with
new rows, and both registries must record the same materialization intervals.  Feast's own
``get_online_features`` must then read every sampled value as Postgres has it.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis

DB_A = os.environ.get("LOAN_DESK_WRITER_TEST_DB_A", "loan_desk_writer_test_a")
DB_B = os.environ.get("LOAN_DESK_WRITER_TEST_DB_B", "loan_desk_writer_test_b")
REDIS_A = int(os.environ.get("LOAN_DESK_WRITER_TEST_REDIS_A", "10"))
REDIS_B = int(os.environ.get("LOAN_DESK_WRITER_TEST_REDIS_B", "11"))
APPLICANTS = 400


@pytest.fixture()
def restore_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _setup(settings, db: str, redis_db: int):
    from bootstrap.load import LoadRequest, load
    from bootstrap.services import ensure_database
    from feast_ext.store import apply, feature_store

    s = dataclasses.replace(settings, pgdatabase=db, redis_db=redis_db)
    ensure_database(s)
    load(s, LoadRequest(applicants=APPLICANTS, seed=11, as_of=datetime(2026, 1, 15, tzinfo=UTC)), force=True)
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS feast_registry CASCADE")
        conn.execute("CREATE SCHEMA feast_registry")
    apply(s)
    redis.Redis.from_url(s.redis_url).flushdb()
    return s, feature_store(s)


def _dump(s) -> dict:
    r = redis.Redis.from_url(s.redis_url)
    return {k: (r.hgetall(k), r.ttl(k)) for k in r.scan_iter(count=1000)}


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


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), f"{len(a.keys() ^ b.keys())} keys differ"
    for key in a:
        assert a[key] == b[key], f"key {key!r} differs"


def test_writer_matches_feast_byte_for_byte(settings, restore_env):
    from feast_ext import engine as online_writer

    end = datetime(2026, 1, 16, tzinfo=UTC)
    start = end - timedelta(days=3650)
    sa, store_a = _setup(settings, DB_A, REDIS_A)
    store_a.materialize(start_date=start, end_date=end)
    sb, store_b = _setup(settings, DB_B, REDIS_B)
    res = online_writer.materialize(store_b, sb.pg_kwargs(), start, end)
    assert res.rows > APPLICANTS
    feast_full, fast_full = _dump(sa), _dump(sb)
    assert len(feast_full) > APPLICANTS
    _assert_same(feast_full, fast_full)
    assert _intervals(store_a) == _intervals(store_b)

    # An incremental step over new rows: Feast's materialize_incremental against ours.
    end2 = end + timedelta(days=1)
    _add_rows(sa, end)
    _add_rows(sb, end)
    os.environ.update(sa.feast_env())
    store_a.materialize_incremental(end_date=end2)
    res = online_writer.materialize_incremental(store_b, sb.pg_kwargs(), end2)
    assert {v.view: v.written for v in res.views}["credit_history"] == 5
    feast_inc, fast_inc = _dump(sa), _dump(sb)
    assert feast_inc != feast_full  # the step changed something
    _assert_same(feast_inc, fast_inc)
    assert _intervals(store_a) == _intervals(store_b)
    ia = _intervals(store_b)["credit_history"]
    assert ia[-1] == (end, end2)

    # Written twice with the dedup rule: nothing is newer, nothing changes.
    again = online_writer.materialize(store_b, sb.pg_kwargs(), start, end2)
    assert all(v.written == 0 for v in again.views)
    _assert_same(feast_inc, _dump(sb))


def test_feast_reads_what_the_writer_wrote(settings, restore_env):
    """get_online_features on a sample of entities returns exactly Postgres's latest rows."""
    from feast_ext import engine as online_writer

    end = datetime(2026, 1, 16, tzinfo=UTC)
    sb, store = _setup(settings, DB_B, REDIS_B)
    online_writer.materialize(store, sb.pg_kwargs(), end - timedelta(days=3650), end, dedup=False)
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
