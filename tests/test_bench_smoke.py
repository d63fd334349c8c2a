"""The benchmarks still run: each at a tiny size, in a database and Redis db of their own.

Not a timing test: it only checks that every benchmark completes and writes its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["decision", "materialize", "training", "load", "api", "cluster"])
def test_benchmark_runs_at_a_tiny_size(name, settings, tmp_path):
    results = tmp_path / "results.json"
    env = {
        **os.environ,
        "LOAN_DESK_BENCH_DB": os.environ.get("LOAN_DESK_BENCH_SMOKE_DB", "loan_desk_bench_smoke"),
        "LOAN_DESK_BENCH_REDIS_URL": os.environ.get("LOAN_DESK_BENCH_SMOKE_REDIS_URL", "redis://127.0.0.1:6379/9"),
        "LOAN_DESK_BENCH_HOME": str(tmp_path / "home"),
        "LOAN_DESK_BENCH_RESULTS": str(results),
        "LOAN_DESK_BENCH_STOCK_TIMEOUT_S": "60",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(results.read_text())
    assert name in data["benchmarks"]
    assert data["versions"]["feast"]
    figures = data["benchmarks"][name]
    expected = {
        "decision": "decision_p50_ms",
        "materialize": "materialize_vs_floor_600",
        "training": "pit_vs_floor_600",
        "load": "load_rows_per_s",
        "api": "api_p50_ms_c1",
        "cluster": "cluster_p50_ms",
    }[name]
    assert figures[expected] > 0
    if name == "api":
        assert figures["api_exact_errors"] == 0 and figures["api_exact_recorded"] == figures["api_exact_requests"]
