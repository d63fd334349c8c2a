"""6. Decision API: `loan-desk api` over HTTP at 1, 8 and 32 concurrent clients, beside decide() in process.

Each client is a thread with one keep-alive connection posting applications (JSON) with a
bearer token; every request is a real decision, recorded in the decision trail.  The 8-client
run is also the exactness check: 8 x 2,000 requests must give 0 errors and exactly 16,000 new
rows for the bench's client.  In the same run, the same applications go through
``DecisionService.decide`` in process (alone, and with ``record_decision``), at the same
concurrency, so the table shows what HTTP, JSON, the token check and the thread hand-offs add.
Client and server share this machine's cores: the latencies include the client's own work.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import ROOT, SMALL, ensure_data, free_port, percentiles, record, say, stop_app

# Published by Feast for its Python feature server (features only: no model, no audit write),
# on other hardware; context for the table, not measured here.
FEAST_SERVER_P99_PUBLISHED_MS = (4.2, 7.2)
QUICK = {"per_client": {1: 20, 8: 10, 32: 2}, "inprocess_calls": 64}
FULL = {1: 2_000, 8: 2_000, 32: 125}
EXACT_CLIENTS = 8


def _start(port: int, workers: int) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "loan-desk"
    cmd = [str(exe), "api", "--port", str(port), "--workers", str(workers), "--no-access-log"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    t0 = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 120:
            stop_app(proc)
            raise RuntimeError(f"loan-desk api did not become healthy: {proc.stderr.read().decode()[-800:]}")
        time.sleep(0.2)


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of group ``pgid`` (the server
    and its workers): unlike latency, hardly changed by other jobs on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _client(port, token, bodies, n, offset, start, latencies, errors):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    mine, bad = [], []
    start.wait()
    for i in range(n):
        body = bodies[(offset + i) % len(bodies)]
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/decisions", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 201:
                bad.append(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
        except (OSError, http.client.HTTPException) as exc:
            bad.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine.append(time.perf_counter() - t0)
    conn.close()
    latencies.extend(mine)
    errors.extend(bad)


def _http_level(port: int, token: str, bodies: list[bytes], clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(
            target=_client, args=(port, token, bodies, per_client, c * 997, start, latencies, errors), daemon=True
        )
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {**percentiles(latencies), "per_s": len(latencies) / wall, "errors": len(errors), "first_errors": errors[:3]}


def _inprocess_level(fn, apps: list[dict], clients: int, calls: int) -> dict:
    latencies: list[float] = []

    def one(i: int) -> None:
        t0 = time.perf_counter()
        fn(apps[i % len(apps)])
        latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(calls, 100))))  # warm the threads
        latencies.clear()
        cpu0, t0 = time.process_time(), time.perf_counter()
        list(pool.map(one, range(calls)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {**percentiles(latencies), "per_s": calls / wall, "cpu_ms": cpu * 1000 / calls}


def _count(settings, username: str) -> int:
    import psycopg

    with psycopg.connect(**settings.pg_kwargs()) as conn:
        return conn.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = %s", [username]).fetchone()[0]


def run(per_client: dict | None = None, inprocess_calls: int = 4_000, applicants: int = SMALL) -> dict:
    per_client = per_client or FULL
    workers = int(os.environ.get("LOAN_DESK_BENCH_API_WORKERS", "1"))
    s = ensure_data(applicants, materialized=True, trained=True)
    from bench.decision import applications
    from model.inference import DecisionService
    from runtime.decisions import record_decision
    from runtime.migrations import migrate
    from runtime.tokens import create_token, revoke_token

    migrate(s)
    apps = applications(s)
    bodies = [json.dumps(a).encode() for a in apps]
    client = f"bench-{uuid.uuid4().hex[:8]}"
    token = create_token(s, client)
    username = f"api:{client}"
    port = free_port()
    say(f"api: starting loan-desk api ({workers} worker{'s' * (workers > 1)}) on port {port} ...")
    proc = _start(port, workers)
    http_results: dict[int, dict] = {}
    try:
        _http_level(port, token, bodies, 4, 50)  # warm the server's threads, pools and connections
        for clients, n in per_client.items():
            before = _count(s, username)
            cpu0 = _group_cpu_s(proc.pid)
            res = _http_level(port, token, bodies, clients, n)
            res["server_cpu_ms"] = (_group_cpu_s(proc.pid) - cpu0) * 1000 / (clients * n)
            res["recorded"] = _count(s, username) - before
            res["requests"] = clients * n
            http_results[clients] = res
            say(
                f"  HTTP, {clients:>2} clients x {n:,}: p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                f"{res['per_s']:,.0f}/s, {res['errors']} errors, {res['recorded']:,} recorded"
            )
            if res["errors"]:
                say(f"    first errors: {res['first_errors']}")
    finally:
        stop_app(proc)
        revoke_token(s, client)

    svc = DecisionService(settings=s)
    svc.warm()
    paths = {
        "decide()": svc.decide,
        "decide() + record": lambda a: record_decision(s, "bench:inprocess", svc.decide(a)),
    }
    inproc: dict[str, dict[int, dict]] = {name: {} for name in paths}
    for clients in per_client:
        for name, fn in paths.items():
            inproc[name][clients] = _inprocess_level(fn, apps, clients, inprocess_calls)
            r = inproc[name][clients]
            say(f"  in process {name}, {clients:>2} threads: p50 {r['p50_ms']:.2f} ms, {r['per_s']:,.0f}/s")

    exact = http_results.get(EXACT_CLIENTS, {})
    figures = {
        "api_applicants": applicants,
        "api_workers": workers,
        "api_exact_requests": exact.get("requests"),
        "api_exact_errors": exact.get("errors"),
        "api_exact_recorded": exact.get("recorded"),
        "feast_feature_server_p99_published_ms": list(FEAST_SERVER_P99_PUBLISHED_MS),
        "targets": {
            f"{EXACT_CLIENTS} clients: 0 errors": exact.get("errors") == 0,
            f"{EXACT_CLIENTS} clients: every request recorded exactly once": exact.get("recorded")
            == exact.get("requests"),
        },
        "detail": {"http": http_results, "inprocess": inproc},
    }
    for clients, r in http_results.items():
        figures[f"api_p50_ms_c{clients}"] = r["p50_ms"]
        figures[f"api_p99_ms_c{clients}"] = r["p99_ms"]
        figures[f"api_per_s_c{clients}"] = r["per_s"]
        figures[f"api_server_cpu_ms_c{clients}"] = r["server_cpu_ms"]
        figures[f"decide_p50_ms_c{clients}"] = inproc["decide()"][clients]["p50_ms"]
        figures[f"decide_p99_ms_c{clients}"] = inproc["decide()"][clients]["p99_ms"]
        figures[f"decide_per_s_c{clients}"] = inproc["decide()"][clients]["per_s"]

    table = [("path", "clients", "p50 ms", "p99 ms", "per s", "CPU ms/req", "requests", "errors", "recorded")]
    for clients, r in http_results.items():
        row = (r["p50_ms"], r["p99_ms"], r["per_s"], r["server_cpu_ms"], r["n"], r["errors"], r["recorded"])
        table.append(("POST /v1/decisions", clients, *row))
    for name in paths:
        for clients, r in inproc[name].items():
            row = (r["p50_ms"], r["p99_ms"], r["per_s"], r["cpu_ms"], r["n"], "", "")
            table.append((f"in process {name}", clients, *row))
    lo, hi = FEAST_SERVER_P99_PUBLISHED_MS
    table.append(("Feast feature server p99 (published, NOT measured here)", "", f"{lo}-{hi}", *[""] * 6))
    ok = all(figures["targets"].values())
    table.append((f"{EXACT_CLIENTS} clients: 0 errors and every request recorded once", *[""] * 7, ok))
    record(
        "api",
        figures,
        table,
        f"Decision API over HTTP ({applicants:,} applicants, {workers} uvicorn worker{'s' * (workers > 1)}, "
        "access log off; client threads on the same 2 cores)",
    )
    print(
        "  CPU ms/req: the server's processes for HTTP (not Postgres or Valkey); this process, "
        "client threads included, in process"
    )
    return figures
