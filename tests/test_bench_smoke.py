"""The benchmarks still run: the five quick ones at tiny sizes, in one process (`python -m bench
--quick`), in databases and a Redis db of the suite's own (tests/conftest.py).

Not a timing test: it only checks that every benchmark completes and writes its figures.  Their
databases are kept between runs (marked as the suite's), so a later run reuses their data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BENCH_BIG, BENCH_SMALL, NAMES, ROOT

QUICK = ("decision", "batch", "materialize", "training", "load", "operations", "api", "cluster", "policy")
FIGURE = {
    "decision": "decision_p50_ms",
    "batch": "batch_score_csv_rows_per_s",
    "materialize": "materialize_vs_floor_600",
    "training": "pit_vs_floor_600",
    "load": "load_rows_per_s",
    "api": "api_p50_ms_c1",
    "operations": "operations_decisions",
    "cluster": "cluster_p50_ms",
    "policy": "policy_simulate_s_median",
}


@pytest.fixture(scope="module")
def quick_run(settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    results = tmp / "results.json"
    env = {
        **os.environ,
        "LOAN_DESK_BENCH_DB": NAMES.bench_db,
        "LOAN_DESK_BENCH_LOAD_DB": f"{NAMES.bench_db}_load",
        "LOAN_DESK_BENCH_REDIS_URL": NAMES.bench_redis_url,
        "LOAN_DESK_BENCH_SMALL": str(BENCH_SMALL),
        "LOAN_DESK_BENCH_BIG": str(BENCH_BIG),
        "LOAN_DESK_BENCH_HOME": str(tmp / "home"),
        "LOAN_DESK_BENCH_RESULTS": str(results),
        "LOAN_DESK_BENCH_STOCK_TIMEOUT_S": "60",
    }
    env.pop("LOAN_DESK_MODEL_DIR", None)  # the benchmarks' model is their own
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *QUICK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results.read_text()), proc.stderr


@pytest.mark.parametrize("name", QUICK)
def test_benchmark_runs_at_a_tiny_size(name, quick_run):
    data, stderr = quick_run
    assert name in data["benchmarks"], stderr[-2000:]
    assert data["versions"]["feast"]
    figures = data["benchmarks"][name]
    assert figures[FIGURE[name]] > 0
    assert f"\n{name}: " in "\n" + stderr  # the run reports each benchmark's time
    if name == "api":
        assert figures["api_exact_errors"] == 0 and figures["api_exact_recorded"] == figures["api_exact_requests"]


def test_the_quick_benchmarks_use_the_suites_databases_only(quick_run, settings):
    """Every database the benchmarks used is one the suite made and marked beforehand."""
    from tests.conftest import MARK, _admin

    data, _ = quick_run
    assert data["benchmarks"]["load"]["load_applicants"] == BENCH_BIG
    with _admin(settings) as conn:
        made = dict(
            conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE %s",
                [NAMES.bench_db.replace("_", r"\_") + "%"],
            ).fetchall()
        )
    assert set(made) == set(NAMES.bench_dbs)
    assert set(made.values()) == {MARK}
