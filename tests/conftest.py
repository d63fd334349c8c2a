"""Shared fixtures: real Postgres and Valkey/Redis, in databases and Redis dbs of the tests' own.

One setting places everything a test run touches: ``LOAN_DESK_TEST_ID`` (default ``test``).

* Databases ``loan_desk_<id>`` (the session's data), ``loan_desk_<id>_load`` and
  ``loan_desk_<id>_fresh`` (scratch, dropped by their tests), ``loan_desk_<id>_reload``,
  ``loan_desk_<id>_writer_a``/``_b`` and ``loan_desk_<id>_bench`` (with ``_bench_1500`` and
  ``_bench_load_1500``).
* Redis dbs 15 (the session), 10 and 11 (the writer tests) and 9 (the benchmarks) of the server
  that REDIS_URL names (default 127.0.0.1:6379); every key the suite writes there belongs to its
  own Feast project, ``loan_desk_<id>``, or to a test's project ``loan_desk_<id>_<name>``
  (``NAMES.project_for``), and the suite deletes keys only by project.

The older individual variables still override single names: LOAN_DESK_TEST_PGDATABASE,
LOAN_DESK_TEST_REDIS_URL, LOAN_DESK_WRITER_TEST_DB_A/_B, LOAN_DESK_WRITER_TEST_REDIS_A/_B,
LOAN_DESK_BENCH_SMOKE_DB, LOAN_DESK_BENCH_SMOKE_REDIS_URL.

The suite creates each database it uses and marks it (``COMMENT ON DATABASE ... IS 'loan-desk
test suite <id>'``); it drops or recreates only databases carrying its mark.  A database of
one of its names that exists without the mark is refused (unless it is empty), never touched.
One run per main database at a time (a session advisory lock); runs with different ids share
a server safely.  The servers come from the environment; with nothing configured and nothing
answering on the default ports, the embedded servers are started, and stopped at session end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_APPLICANTS = 3000
TUTORIAL_DIR = ROOT.parent / "shared" / "data" / "credit-scoring"

TEST_ID = os.environ.get("LOAN_DESK_TEST_ID") or "test"
if not re.fullmatch(r"[a-z][a-z0-9_]{0,29}", TEST_ID):
    raise pytest.UsageError(
        f"LOAN_DESK_TEST_ID must be lower-case letters, digits and '_' (at most 30), got {TEST_ID!r}"
    )
MARK = f"loan-desk test suite {TEST_ID}"


@dataclass(frozen=True)
class Names:
    """Every database, Redis db and key suffix one test run uses."""

    db: str
    load_db: str
    fresh_db: str
    reload_db: str
    cluster_db: str
    teach_db: str
    parts_db: str
    plain_db: str
    writer_db_a: str
    writer_db_b: str
    bench_db: str
    redis_url: str
    writer_redis_a: int
    writer_redis_b: int
    bench_redis_url: str
    project: str

    @property
    def bench_dbs(self) -> list[str]:
        """The quick benchmarks' databases: SMALL under bench_db, BIG and the load's under suffixes."""
        return [self.bench_db, f"{self.bench_db}_{BENCH_BIG}", f"{self.bench_db}_load_{BENCH_BIG}"]

    @property
    def databases(self) -> list[str]:
        return [
            self.db,
            self.load_db,
            self.fresh_db,
            self.reload_db,
            self.cluster_db,
            self.teach_db,
            self.parts_db,
            self.plain_db,
            self.writer_db_a,
            self.writer_db_b,
            *self.bench_dbs,
        ]

    def project_for(self, name: str) -> str:
        """A Feast project of this run's own for one test (``<project>_<name>``): runs with other
        ids use other names, so they never clear or count each other's keys."""
        return f"{self.project}_{name}"


BENCH_SMALL, BENCH_BIG = 600, 1500  # the quick benchmarks' sizes (tests/test_bench_smoke.py)


def _names() -> Names:
    env = os.environ.get
    server = urlparse(env("REDIS_URL") or "redis://127.0.0.1:6379/0")
    base = f"{server.scheme}://{server.netloc}"
    db = env("LOAN_DESK_TEST_PGDATABASE") or f"loan_desk_{TEST_ID}"
    return Names(
        db=db,
        load_db=f"{db}_load",
        fresh_db=f"{db}_fresh",
        reload_db=f"{db}_reload",
        cluster_db=os.environ.get("LOAN_DESK_CLUSTER_TEST_DB", f"{db}_cl"),
        teach_db=f"{db}_teach",  # tests/test_comparisons.py: data that teaches, at a size that shows it
        parts_db=f"{db}_parts",  # tests/test_pg_scale.py: the same data hash-partitioned ...
        plain_db=f"{db}_plain",  # ... and in one plain table
        writer_db_a=env("LOAN_DESK_WRITER_TEST_DB_A") or f"loan_desk_{TEST_ID}_writer_a",
        writer_db_b=env("LOAN_DESK_WRITER_TEST_DB_B") or f"loan_desk_{TEST_ID}_writer_b",
        bench_db=env("LOAN_DESK_BENCH_SMOKE_DB") or f"loan_desk_{TEST_ID}_bench",
        redis_url=env("LOAN_DESK_TEST_REDIS_URL") or f"{base}/15",
        writer_redis_a=int(env("LOAN_DESK_WRITER_TEST_REDIS_A") or 10),
        writer_redis_b=int(env("LOAN_DESK_WRITER_TEST_REDIS_B") or 11),
        bench_redis_url=env("LOAN_DESK_BENCH_SMOKE_REDIS_URL") or f"{base}/9",
        project=f"loan_desk_{TEST_ID}",
    )


NAMES = _names()
# Test modules and subprocesses read the individual names from the environment.
for _var, _value in {
    "LOAN_DESK_TEST_PGDATABASE": NAMES.db,
    "LOAN_DESK_TEST_REDIS_URL": NAMES.redis_url,
    "LOAN_DESK_WRITER_TEST_DB_A": NAMES.writer_db_a,
    "LOAN_DESK_WRITER_TEST_DB_B": NAMES.writer_db_b,
    "LOAN_DESK_WRITER_TEST_REDIS_A": str(NAMES.writer_redis_a),
    "LOAN_DESK_WRITER_TEST_REDIS_B": str(NAMES.writer_redis_b),
    "LOAN_DESK_BENCH_SMOKE_DB": NAMES.bench_db,
    "LOAN_DESK_BENCH_SMOKE_REDIS_URL": NAMES.bench_redis_url,
}.items():
    os.environ[_var] = _value
TEST_DB, TEST_REDIS = NAMES.db, NAMES.redis_url


# --- databases of the suite's own ---------------------------------------------------------------
class NotOurs(RuntimeError):
    """A database of one of the suite's names exists and was not made by this suite."""


def _admin(settings):
    from runtime import db

    return db.connect(settings, dbname="postgres")


def _mark_of(conn, name: str) -> tuple[bool, str | None]:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
    ).fetchone()
    return (row is not None, row[0] if row else None)


def _is_empty(settings, name: str) -> bool:
    """No relation outside the system schemas and no schema but public: nothing to lose."""
    from runtime import db

    with db.connect(settings, dbname=name) as conn:
        return not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
            "  AND n.nspname NOT LIKE 'pg_temp%%') "
            "OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname NOT IN ('public', 'pg_catalog', "
            "  'information_schema') AND nspname NOT LIKE 'pg_toast%%' AND nspname NOT LIKE 'pg_temp%%')"
        ).fetchone()[0]


def claim_database(settings, name: str, fresh: bool = False) -> None:
    """Make ``name`` a database of this suite: create and mark it when absent; with ``fresh``,
    drop and recreate it.  Raises NotOurs, touching nothing, when it exists without our mark
    (an empty unmarked database is adopted)."""
    from psycopg import sql

    with _admin(settings) as conn:
        exists, mark = _mark_of(conn, name)
        if exists and mark != MARK:
            if not _is_empty(settings, name):
                raise NotOurs(
                    f"database {name!r} exists and is not marked as this test suite's "
                    f"(its comment is {mark!r}, expected {MARK!r}); the tests will not touch it. "
                    f"Choose another LOAN_DESK_TEST_ID, or if it is an old test database, mark it: "
                    f"psql -d postgres -c \"COMMENT ON DATABASE {name} IS '{MARK}'\""
                )
        if exists and fresh:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        if not exists or fresh:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(MARK)))


def foreign_databases(settings) -> list[str]:
    """The suite's names taken by databases that are neither marked as its own nor empty."""
    with _admin(settings) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = ANY(%s)",
            [NAMES.databases],
        ).fetchall()
    return [name for name, mark in rows if mark != MARK and not _is_empty(settings, name)]


def drop_database(settings, name: str) -> bool:
    """Drop ``name`` if it carries this suite's mark; anything else is left alone (False)."""
    from psycopg import sql

    with _admin(settings) as conn:
        exists, mark = _mark_of(conn, name)
        if not exists or mark != MARK:
            return False
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        return True


def pytest_addoption(parser):
    parser.addoption(
        "--drop-test-data",
        action="store_true",
        help="at the end, drop every database marked as this suite's (LOAN_DESK_TEST_ID) and delete its Redis keys",
    )


def _start_services():
    """Find (or start, with nothing configured) the servers; nothing is created in them yet.
    Returns what to stop at the end: the embedded servers this run started."""
    from bootstrap import services
    from runtime.settings import Settings

    state = services.ensure_services(Settings.from_env(), prepare_database=False)
    started = [name for name, how in (("valkey", state.valkey), ("postgres", state.postgres)) if "started" in how]
    return started, os.environ.get("LOAN_DESK_HOME")


def _stop_started(started: list[str], home: str | None) -> None:
    from bootstrap import services

    saved = os.environ.get("LOAN_DESK_HOME")
    os.environ.pop("LOAN_DESK_HOME", None)
    if home:
        os.environ["LOAN_DESK_HOME"] = home
    try:
        if "valkey" in started:
            services.stop_embedded_valkey()
        if "postgres" in started:
            services.stop_embedded_postgres()
    finally:
        os.environ.pop("LOAN_DESK_HOME", None)
        if saved:
            os.environ["LOAN_DESK_HOME"] = saved


@pytest.fixture(scope="session")
def settings(request, tmp_path_factory):
    started, home = _start_services()
    if started:
        request.addfinalizer(lambda: _stop_started(started, home))
    os.environ["PGDATABASE"] = NAMES.db
    os.environ["REDIS_URL"] = NAMES.redis_url
    os.environ["LOAN_DESK_FEAST_PROJECT"] = NAMES.project
    os.environ.setdefault("PGHOST", "127.0.0.1")
    os.environ["LOAN_DESK_HOME"] = str(tmp_path_factory.mktemp("loan-desk-home"))
    from bootstrap.services import ensure_services
    from runtime.settings import Settings

    s = Settings.from_env()
    # One run per main database at a time: held by this connection until the session ends.
    lock = _admin(s)
    request.addfinalizer(lock.close)
    if not lock.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [f"{MARK} {NAMES.db}"]).fetchone()[0]:
        pytest.exit(f"another test run is using database {NAMES.db}: set another LOAN_DESK_TEST_ID", returncode=2)
    foreign = foreign_databases(s)
    if foreign:
        pytest.exit(
            f"database(s) {', '.join(foreign)} exist without the mark {MARK!r}: the tests will not touch them. "
            "Choose another LOAN_DESK_TEST_ID, or, if they are test databases of an older version, mark them: "
            + "; ".join(f"psql -d postgres -c \"COMMENT ON DATABASE {n} IS '{MARK}'\"" for n in foreign),
            returncode=2,
        )
    for name in (NAMES.db, NAMES.writer_db_a, NAMES.writer_db_b, *NAMES.bench_dbs):
        claim_database(s, name)
    ensure_services(s)  # migrations, and Valkey answering
    if request.config.getoption("--drop-test-data"):
        request.addfinalizer(lambda: _drop_test_data(s))
    return s


def _run_projects(s) -> set[str]:
    """This run's Feast projects (its own and its tests', ``NAMES.project_for``) registered in
    any of its databases."""
    import psycopg

    found = {NAMES.project}
    for name in NAMES.databases:
        try:
            with psycopg.connect(**s.pg_kwargs(name)) as conn:
                tables = conn.execute(
                    "SELECT table_name FROM information_schema.columns "
                    "WHERE table_schema = 'feast_registry' AND column_name = 'project_id'"
                ).fetchall()
                for (table,) in tables:
                    rows = conn.execute(f'SELECT DISTINCT project_id FROM feast_registry."{table}"').fetchall()
                    found |= {r[0] for r in rows if r[0].startswith(NAMES.project + "_")}
        except psycopg.OperationalError:
            continue  # not there (a scratch database already dropped)
    return found


def _drop_test_data(s) -> None:
    """--drop-test-data: this run's online rows (by project, in each of its Redis dbs), then every
    database carrying its mark."""
    import dataclasses

    from feast_ext.store import clear_online
    from runtime import db

    projects = _run_projects(s)
    bench = urlparse(NAMES.bench_redis_url)
    places = {(s.redis_host, s.redis_port, d) for d in (s.redis_db, NAMES.writer_redis_a, NAMES.writer_redis_b)}
    places.add((bench.hostname, bench.port or 6379, int(bench.path.strip("/") or 0)))
    for host, port, redis_db in places:
        for project in projects:
            clear_online(dataclasses.replace(s, redis_host=host, redis_port=port, redis_db=redis_db, project=project))
    db.close_pools()
    for name in NAMES.databases:
        drop_database(s, name)


@pytest.fixture(scope="session")
def backbone(settings):
    """Synthetic data loaded, registered, materialized and a model trained — once per session."""
    from bootstrap.load import LoadRequest, load
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, feature_store
    from model.train import train

    load(settings, LoadRequest(applicants=TEST_APPLICANTS, seed=7))
    apply(settings)
    materialize(settings, requested_by="tests", full=True)
    meta = train(feature_store(settings), settings)
    return {"settings": settings, "meta": meta}


@pytest.fixture()
def pg(settings):
    import psycopg

    with psycopg.connect(**settings.pg_kwargs(), autocommit=True) as conn:
        yield conn


@pytest.fixture()
def redis_client(settings):
    import redis

    return redis.Redis.from_url(settings.redis_url)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, input: str | None = None, timeout=300):
    """Run a console command of this venv with the tests' environment."""
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).parent / args[0]
    return subprocess.run(
        [str(exe), *args[1:]],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def forget_feast_project(settings) -> None:
    """Remove one Feast project (``settings.project``) from the registry and its keys from the
    online store, leaving every other project and key as it is: tests start their own projects
    from nothing this way without dropping anything shared."""
    import psycopg
    from psycopg import sql

    from feast_ext.store import clear_online

    clear_online(settings)
    with psycopg.connect(**settings.pg_kwargs(), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'feast_registry' AND column_name = 'project_id'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("DELETE FROM feast_registry.{} WHERE project_id = %s").format(sql.Identifier(table)),
                [settings.project],
            )


def age(dob_ssn: str) -> int:
    """Whole years since the applicant's date of birth (the YYYYMMDD of a dob_ssn)."""
    from model.inference import age_on

    return age_on(datetime.strptime(dob_ssn[:8], "%Y%m%d").date())


@pytest.fixture(scope="module")
def app(backbone, settings):
    """An application of the first loan's applicant and zipcode (in the session's data)."""
    from runtime import db

    with db.connect(settings) as conn:
        key, zipcode = conn.execute("SELECT dob_ssn, zipcode FROM loans ORDER BY loan_id LIMIT 1").fetchone()
    return {
        "dob_ssn": key,
        "zipcode": zipcode,
        "person_age": age(key),
        "person_income": 52000,
        "person_home_ownership": "RENT",
        "person_emp_length": 3,
        "loan_intent": "MEDICAL",
        "loan_amnt": 9000,
        "loan_int_rate": 12.5,
    }
