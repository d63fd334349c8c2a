"""Decision latency on a local Valkey/Redis Cluster beside the single server, in one run.

A cluster of six local nodes (3 primaries + 3 replicas; ports LOAN_DESK_BENCH_CLUSTER_PORT..+5,
default 7311-7316) is started for the run and shut down after it.  The same benchmark data set
is materialized into it with Loan Desk's engine, and two ``DecisionService`` objects, one per
online store, decide the same applications in interleaved rounds.  On one machine the cluster
adds no network distance: the difference is the client's work (slot lookup, one round trip per
node a read touches instead of one).

``local_cluster`` is also what tests/test_cluster.py runs its cluster with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import SMALL, ensure_data, percentiles, record, say
from bench.decision import _time

FIRST_PORT = int(os.environ.get("LOAN_DESK_BENCH_CLUSTER_PORT", "7311"))
QUICK = {"calls": 300}


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cli(port: int, *args: str, timeout: float = 10) -> str:
    exe = shutil.which("valkey-cli") or shutil.which("redis-cli") or "redis-cli"
    try:
        out = subprocess.run([exe, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


def wait_state_ok(ports, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all("cluster_state:ok" in cli(p, "cluster", "info", timeout=2) for p in ports):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the cluster on ports {ports[0]}-{ports[-1]} did not reach cluster_state:ok in {timeout_s} s")


def node_pid(directory: Path, port: int) -> int:
    return int((directory / f"{port}.pid").read_text().strip())


@contextlib.contextmanager
def local_cluster(first_port: int, directory: Path, node_timeout_ms: int = 2000) -> Iterator[dict]:
    """Six local cluster nodes on first_port..first_port+5 (3 primaries, 3 replicas) with their files
    in ``directory``; yields {"dir", "ports", "url"}; every node is shut down (NOSAVE) at the end."""
    server = shutil.which("valkey-server") or shutil.which("redis-server")
    exe = shutil.which("valkey-cli") or shutil.which("redis-cli")
    if not server or not exe:
        raise RuntimeError("a cluster needs valkey-server/redis-server and valkey-cli/redis-cli on PATH")
    ports = list(range(first_port, first_port + 6))
    busy = [p for p in ports if _port_open(p)]
    if busy:
        raise RuntimeError(f"ports {busy} are in use: stop what runs there or choose other ports")
    started = []
    try:
        for p in ports:
            subprocess.run(
                [server, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(directory / f"nodes-{p}.conf"),
                 "--cluster-node-timeout", str(node_timeout_ms), "--dir", str(directory), "--save", "",
                 "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(directory / f"{p}.pid"),
                 "--logfile", str(directory / f"{p}.log")],
                check=True,
            )  # fmt: skip
            started.append(p)
        for p in ports:
            for _ in range(100):
                if (directory / f"{p}.pid").exists() and cli(p, "ping").strip() == "PONG":
                    break
                time.sleep(0.05)
        subprocess.run(
            [exe, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports]]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_state_ok(ports)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3])
        yield {"dir": directory, "ports": ports, "url": url}
    finally:
        for p in started:
            try:
                pid = node_pid(directory, p)
                os.kill(pid, signal.SIGCONT)  # a test may have left it stopped
            except (OSError, ValueError):
                continue  # already gone
            cli(p, "shutdown", "nosave", timeout=5)
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def run(calls: int = 10_000, applicants: int = SMALL) -> dict:
    from bench.decision import applications
    from feast_ext.materialize import materialize
    from feast_ext.store import feature_store
    from model.inference import DecisionService
    from runtime.settings import parse_redis_url

    s = ensure_data(applicants, materialized=True, trained=True)
    with (
        tempfile.TemporaryDirectory(prefix="loan-desk-bench-cluster-") as tmp,
        local_cluster(FIRST_PORT, Path(tmp)) as c,
    ):
        cs = dataclasses.replace(s, **parse_redis_url(c["url"]))
        say(f"materializing {s.pgdatabase} into the cluster {cs.redis_where} ...")
        t0 = time.perf_counter()
        materialize(cs, requested_by="bench", full=True, progress=lambda m: None)
        mat_s = time.perf_counter() - t0
        single = DecisionService(settings=s)
        clustered = DecisionService(store=feature_store(cs), settings=cs)
        apps = applications(s)
        assert abs(single.decide(apps[0]).probability - clustered.decide(apps[0]).probability) < 1e-9
        paths = {"single": single.decide, "cluster": clustered.decide}
        for fn in paths.values():
            _time(fn, apps, max(200, calls // 20))
        samples: dict[str, list[float]] = {k: [] for k in paths}
        rounds = 10
        for _ in range(rounds):  # interleaved: drift on a shared machine hits both alike
            for name, fn in paths.items():
                samples[name] += _time(fn, apps, max(1, calls // rounds))
    res = {k: percentiles(v) for k, v in samples.items()}
    figures = {
        "cluster_applicants": applicants,
        "cluster_calls": calls,
        "single_p50_ms": res["single"]["p50_ms"],
        "single_p99_ms": res["single"]["p99_ms"],
        "cluster_p50_ms": res["cluster"]["p50_ms"],
        "cluster_p99_ms": res["cluster"]["p99_ms"],
        "cluster_vs_single_p50": res["cluster"]["p50_ms"] / res["single"]["p50_ms"],
        "cluster_materialize_s": mat_s,
        "detail": res,
    }
    table = [("online store", "p50 ms", "p95 ms", "p99 ms", "calls")]
    for name, r in res.items():
        table.append((name, r["p50_ms"], r["p95_ms"], r["p99_ms"], r["n"]))
    table.append(("cluster / single (p50)", figures["cluster_vs_single_p50"], "", "", ""))
    table.append(("materialize into the cluster, s", mat_s, "", "", applicants))
    record(
        "cluster", figures, table, f"Decision latency, single server vs 3-primary cluster ({applicants:,} applicants)"
    )
    return figures
