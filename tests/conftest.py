"""Shared fixtures: real Postgres and Valkey/Redis, in a database and Redis db of the tests' own.

The services come from the environment (CI: the machine's Postgres and Redis); with nothing
configured and nothing answering on the default ports, the embedded servers are started.
The tests' data lives in database ``loan_desk_test`` and Redis db 15 unless
LOAN_DESK_TEST_PGDATABASE / LOAN_DESK_TEST_REDIS_URL say otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = os.environ.get("LOAN_DESK_TEST_PGDATABASE", "loan_desk_test")
TEST_REDIS = os.environ.get("LOAN_DESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_APPLICANTS = 3000
TUTORIAL_DIR = ROOT.parent / "shared" / "data" / "credit-scoring"


def _configure(tmp: Path) -> None:
    from bootstrap.services import ensure_services

    # Start (or find) the servers with the default settings first, then point at our own db.
    ensure_services()
    os.environ["PGDATABASE"] = TEST_DB
    os.environ["REDIS_URL"] = TEST_REDIS
    os.environ.setdefault("PGHOST", "127.0.0.1")
    os.environ["LOAN_DESK_HOME"] = str(tmp)
    ensure_services()


@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    _configure(tmp_path_factory.mktemp("loan-desk-home"))
    from runtime.settings import Settings

    s = Settings.from_env()
    return s


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
