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
