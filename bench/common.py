"""Shared pieces of the benchmarks: their own databases, data sets, results.json, tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("LOAN_DESK_BENCH_RESULTS", ROOT / "bench" / "results.json"))

# Benchmarks never touch the app's or the tests' data: databases and a Redis db of their own.
BENCH_DB = os.environ.get("LOAN_DESK_BENCH_DB", "loan_desk_bench")
BENCH_REDIS = os.environ.get("LOAN_DESK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BENCH_HOME = os.environ.get("LOAN_DESK_BENCH_HOME", str(ROOT / ".loan-desk" / "bench-home"))
SMALL = int(os.environ.get("LOAN_DESK_BENCH_SMALL", "30000"))
BIG = int(os.environ.get("LOAN_DESK_BENCH_BIG", "1000000"))
SEED = 42
ONLINE_MARKER = "loan_desk_bench:online_rows_of"


def online_marker(settings) -> str:
    """The key saying which benchmark database's rows this Feast project has in the Redis db."""
    return f"{ONLINE_MARKER}:{settings.project}"


def db_for(applicants: int) -> str:
    if applicants == SMALL:
        return BENCH_DB
    if applicants % 1_000_000 == 0:
        return f"{BENCH_DB}_{applicants // 1_000_000}m"
    return f"{BENCH_DB}_{applicants}"


def settings_for(applicants: int):
    """Point this process at the benchmark database holding ``applicants`` applicants."""
    os.environ["PGDATABASE"] = db_for(applicants)
    os.environ["REDIS_URL"] = BENCH_REDIS
    os.environ["LOAN_DESK_HOME"] = BENCH_HOME
    os.environ.setdefault("PGHOST", "127.0.0.1")
    Path(BENCH_HOME).mkdir(parents=True, exist_ok=True)
    from bootstrap.services import ensure_services
    from runtime.settings import Settings

    ensure_services()
    s = Settings.from_env()
    return s


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_data(applicants: int, materialized: bool = False, trained: bool = False):
    """Data loaded and registered (each step skipped when already done); returns the settings."""
    s = settings_for(applicants)
    from bootstrap.load import LoadRequest, load
    from feast_ext.materialize import materialization_state, materialize
    from feast_ext.store import apply, feature_store

    changed, msg = load(s, LoadRequest(applicants=applicants, seed=SEED))
    say(msg)
    store = feature_store(s)
    if changed or not store.list_feature_views():
        apply(s)
        store = feature_store(s)
    if materialized:
        from feast_ext.store import online_key_count

        # The benchmark data sets share one Redis db: a marker says whose rows are in it.
        r = s.redis_client(socket_timeout=30)
        marker = r.get(online_marker(s))
        stale = any(e is None for _, e in materialization_state(store).values()) or not online_key_count(s)
        if changed or stale or marker != s.pgdatabase.encode():
            say(f"materializing {s.pgdatabase} into {s.redis_where} ...")
            materialize(s, requested_by="bench", full=True, progress=lambda m: None)
            r.set(online_marker(s), s.pgdatabase)
    if trained:
        from model.bundles import current_metadata
        from model.train import train
        from runtime.dataset import data_state

        # One model folder serves every benchmark data set: retrain when the model was fitted to
        # another load than this database's (decisions on it would be refused as outdated).
        if changed or current_metadata() is None or data_state(s).model_older_than_data(current_metadata()):
            say("training the model for the benchmark ...")
            train(feature_store(s), s)
    return s


def percentiles(samples_s: list[float]) -> dict:
    ms = sorted(x * 1000 for x in samples_s)

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]

    return {"p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "mean_ms": statistics.fmean(ms), "n": len(ms)}


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return info


def versions() -> dict:
    out = {}
    for p in ("feast", "xgboost-cpu", "xgboost", "redis", "psycopg", "pandas", "numpy", "streamlit", "protobuf"):
        try:
            out[p] = version(p)
        except Exception:
            pass
    try:
        import psycopg

        from runtime.settings import Settings

        with psycopg.connect(**Settings.from_env().pg_kwargs()) as conn:
            out["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        out["redis_server"] = Settings.from_env().redis_client().info("server")["redis_version"]
    except Exception:
        pass
    return out


def record(section: str, figures: dict, table: list[tuple], title: str) -> None:
    """Print the table and merge ``figures`` into results.json under ``section``."""
    print(f"\n## {title}")
    width = max(len(str(r[0])) for r in table) if table else 10
    for row in table:
        print(f"  {str(row[0]):<{width}}  " + "  ".join(_fmt(c) for c in row[1:]))
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    data["machine"] = machine()
    data["versions"] = versions()
    data["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    data.setdefault("benchmarks", {})[section] = {"measured_at": data["date"], **figures}
    flat = data.setdefault("figures", {})
    for k, v in figures.items():
        if not isinstance(v, dict | list):
            flat[k] = v
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, RESULTS)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:>12,.3f}" if abs(c) < 100 else f"{c:>12,.0f}"
    return f"{c!s:>12}"


def run_worker(module: str, *args: str, timeout: float = 3600, env: dict | None = None) -> dict:
    """Run ``python -m module args`` in a fresh process; it prints one JSON line last (with peak memory)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.setdefault("wall_s", time.perf_counter() - t0)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across exec, so a worker started by a big
    parent would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the app as a server (bench app, docs/screenshots.py) -------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_app(cmd: list[str], env: dict | None = None, timeout: float = 120) -> tuple[subprocess.Popen, float]:
    """Start ``cmd``, which serves the app on its ``--port``, in a process group of its own, and
    wait until /_stcore/health answers: (process, seconds).  If it exits or does not answer in
    time, it is stopped and RuntimeError says why (with the end of its stderr)."""
    url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    while not _healthy(url):
        problem = None
        if proc.poll() is not None:
            problem = f"{' '.join(cmd[:3])} exited: {proc.stderr.read().decode()[-800:]}"
        elif time.perf_counter() - t0 > timeout:
            problem = f"no answer on {url}/_stcore/health within {timeout:.0f} s"
        if problem:
            stop_app(proc)
            raise RuntimeError(problem)
        time.sleep(0.05)
    return proc, time.perf_counter() - t0


def stop_app(proc: subprocess.Popen) -> None:
    """SIGTERM to the app's process group, SIGKILL if it is still there after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
