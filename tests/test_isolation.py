"""The suite's own safety on a shared server: one setting names everything, only databases it
made and marked are dropped, and two runs never share a main database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from tests.conftest import MARK, NAMES, ROOT, TEST_ID, NotOurs, _admin, claim_database, drop_database

OVERRIDES = (
    "LOAN_DESK_TEST_PGDATABASE",
    "LOAN_DESK_TEST_REDIS_URL",
    "LOAN_DESK_WRITER_TEST_DB_A",
    "LOAN_DESK_WRITER_TEST_DB_B",
    "LOAN_DESK_WRITER_TEST_REDIS_A",
    "LOAN_DESK_WRITER_TEST_REDIS_B",
    "LOAN_DESK_BENCH_SMOKE_DB",
    "LOAN_DESK_BENCH_SMOKE_REDIS_URL",
)
OTHER_ID = f"{TEST_ID}_sub"[:30]


def _env_of_another_run(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    return {**env, "LOAN_DESK_TEST_ID": OTHER_ID, **extra}


def _pytest(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_one_setting_names_every_database_redis_db_and_key_suffix():
    code = "from tests.conftest import NAMES; print(repr(NAMES))"
    env = _env_of_another_run(REDIS_URL="redis://127.0.0.1:6390/3")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    o = OTHER_ID
    assert f"db='loan_desk_{o}'" in out.stdout
    assert f"writer_db_a='loan_desk_{o}_writer_a'" in out.stdout and f"bench_db='loan_desk_{o}_bench'" in out.stdout
    assert "redis_url='redis://127.0.0.1:6390/15'" in out.stdout  # the server REDIS_URL names, db 15
    assert "bench_redis_url='redis://127.0.0.1:6390/9'" in out.stdout
    assert f"project='loan_desk_{o}'" in out.stdout
    # The older individual variables still override single names.
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "LOAN_DESK_WRITER_TEST_DB_A": "mine_a", "LOAN_DESK_TEST_PGDATABASE": "mine"},
        capture_output=True,
        text=True,
    )
    assert "db='mine'" in out.stdout and "load_db='mine_load'" in out.stdout and "writer_db_a='mine_a'" in out.stdout
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**env, "LOAN_DESK_TEST_ID": "Bad-Id"}, capture_output=True
    )
    assert out.returncode != 0 and b"LOAN_DESK_TEST_ID must be" in out.stderr


def test_a_database_not_marked_as_ours_is_never_touched(settings):
    name = f"{NAMES.db}_foreign"
    with _admin(settings) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # Empty and unmarked: nothing to lose, so it is adopted (marked).
        claim_database(settings, name)
        with _admin(settings) as conn:
            assert (
                conn.execute(
                    "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
                ).fetchone()[0]
                == MARK
            )
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'somebody else'").format(sql.Identifier(name)))
        with psycopg.connect(**settings.pg_kwargs(name), autocommit=True) as conn:
            conn.execute("CREATE TABLE precious (x int)")
            conn.execute("INSERT INTO precious VALUES (1)")
        # With data and someone else's comment: refused, neither recreated nor dropped.
        with pytest.raises(NotOurs, match=f"database '{name}' exists and is not marked"):
            claim_database(settings, name, fresh=True)
        assert drop_database(settings, name) is False
        with psycopg.connect(**settings.pg_kwargs(name)) as conn:
            assert conn.execute("SELECT x FROM precious").fetchone() == (1,)
    finally:
        with _admin(settings) as conn:  # made by this test: removed by it
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_second_run_on_the_same_database_is_refused(settings):
    """This run holds the lock a second run on its main database would take first (that run then
    stops at once: "another test run is using database ...")."""
    with _admin(settings) as other:
        key = f"{MARK} {NAMES.db}"
        assert other.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()[0] is False
        key = f"loan-desk test suite {OTHER_ID} loan_desk_{OTHER_ID}"  # another id's: free
        assert other.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()[0] is True


def test_another_id_creates_marks_and_with_drop_test_data_removes_its_own(settings):
    """A run with another LOAN_DESK_TEST_ID beside this one: its databases are its own, marked,
    and --drop-test-data removes exactly them at its end."""
    out = _pytest(
        "tests/test_isolation.py::test_the_session_databases_are_marked", "--drop-test-data", env=_env_of_another_run()
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
    with _admin(settings) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"loan_desk_{OTHER_ID}%".replace("_", r"\_")]
        ).fetchall()
        ours = conn.execute(
            "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') = %s", [MARK]
        ).fetchone()[0]
    assert left == []
    assert ours >= 4  # this run's own databases are still there


def test_the_session_databases_are_marked(settings):
    with _admin(settings) as conn:
        marks = dict(
            conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = ANY(%s)",
                [[NAMES.db, NAMES.writer_db_a, NAMES.writer_db_b, *NAMES.bench_dbs]],
            ).fetchall()
        )
    assert marks == dict.fromkeys([NAMES.db, NAMES.writer_db_a, NAMES.writer_db_b, *NAMES.bench_dbs], MARK)
