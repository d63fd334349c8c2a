"""2. Materialization: the fast writer against Feast's local engine (stock and tuned) and a raw floor;
then parallel writers over the hash-partitioned credit_history (README "Postgres at scale").

Each run is a fresh process into an emptied Redis db; rows = entities written.  At the big size
Feast's engines run on a recent window of the data (every applicant with a credit snapshot in
the last SUBSET_DAYS days, every zipcode row in it): at ~4k rows/s the full million takes
minutes.  The fast writer runs on that same window too, side by side, and on the full data.

The workers part: LOAN_DESK_BENCH_SCALE_APPLICANTS applicants (default the big size) loaded with
LOAN_DESK_PG_PARTITIONS partitions (default 8), materialized (full window, overwriting) with 1, 2
and 4 workers into the single server and into a local 3-primary cluster (ports
LOAN_DESK_BENCH_CLUSTER_PORT..+5), interleaved; ratios against 1 worker on the same store.
LOAN_DESK_BENCH_SCALE_ONLY=1 runs only this part.
"""

from __future__ import annotations

import os

from bench.common import BIG, SMALL, ensure_data, record, run_worker, say

SUBSET_DAYS = int(os.environ.get("LOAN_DESK_BENCH_SUBSET_DAYS", "10"))
SCALE_WORKERS = (1, 2, 4)
QUICK = {"sizes": None, "in_process": True, "cluster": False}


def verify_sample(settings, every: int = 0) -> int:
    """Feast's get_online_features reads exactly Postgres's latest values for a sample of entities."""
    from datetime import UTC, datetime

    import psycopg

    from feast_ext.store import feature_store
    from model import features as F

    store = feature_store(settings)
    checked = 0
    now = datetime.now(UTC)
    for view, key, table, cols in (
        ("credit_history", "dob_ssn", "credit_history", list(F.CREDIT_FEATURES)),
        ("zipcode_features", "zipcode", "zipcode_features", [*F.ZIPCODE_TEXT, *F.ZIPCODE_FEATURES]),
    ):
        with psycopg.connect(**settings.pg_kwargs()) as conn:
            rows = conn.execute(
                f"SELECT DISTINCT ON ({key}) {key}, {', '.join(cols)} FROM {table} WHERE event_timestamp <= %s "
                f"AND {key} IN ((SELECT {key} FROM {table} TABLESAMPLE SYSTEM (1) LIMIT 200) "
                f"UNION (SELECT {key} FROM {table} ORDER BY {key} DESC LIMIT 50)) "
                f"ORDER BY {key}, event_timestamp DESC, created_timestamp DESC",
                [now],
            ).fetchall()
        got = store.get_online_features(
            features=[f"{view}:{c}" for c in cols], entity_rows=[{key: r[0]} for r in rows]
        ).to_dict()
        for i, row in enumerate(rows):
            assert [got[c][i] for c in cols] == list(row[1:]), f"{view} {row[0]}: online differs from Postgres"
        checked += len(rows)
    return checked


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n / 1000:g}k"


def run_workers(applicants: int, in_process: bool = False, cluster: bool = True) -> dict:
    """Rows/s of the fast engine with 1, 2 and 4 workers over the partitioned data, on the single
    server and (``cluster``) on a local cluster, interleaved so drift on a shared machine hits all."""
    import contextlib
    import tempfile
    from pathlib import Path

    from bench.cluster import FIRST_PORT, local_cluster

    ensure_data(applicants)
    figures: dict = {"scale_applicants": applicants, "runs": []}
    table = [("store, workers", "rows", "seconds", "rows/s", "vs 1 worker")]
    with contextlib.ExitStack() as stack:
        stores = {"single": None}
        if cluster:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="loan-desk-bench-mat-cluster-"))
            stores["cluster"] = stack.enter_context(local_cluster(FIRST_PORT, Path(tmp)))["url"]
        results: dict = {}
        for workers in SCALE_WORKERS:
            for name, url in stores.items():
                say(f"materialize: {applicants:,} applicants, {workers} worker(s), {name} ...")
                if in_process:
                    from bench._mat_worker import run_one

                    res = run_one("fast", applicants, 0, workers)
                else:
                    env = {"LOAN_DESK_BENCH_REDIS_URL": url} if url else None
                    res = run_worker("bench._mat_worker", "fast", str(applicants), "0", str(workers), env=env)
                results[(name, workers)] = res
                figures["runs"].append(res)
    rows = {r["rows"] for r in results.values()}
    assert len(rows) == 1, f"the runs wrote different numbers of entities: {rows}"
    figures["scale_partitions"] = next(iter(results.values()))["partitions"]
    for name in stores:
        one = results[(name, 1)]["rows_per_s"]
        for workers in SCALE_WORKERS:
            res = results[(name, workers)]
            figures[f"materialize_{name}_w{workers}_rows_per_s"] = res["rows_per_s"]
            figures[f"materialize_{name}_w{workers}_vs_w1"] = res["rows_per_s"] / one
            table.append(
                (f"{name}, {workers}", res["rows"], res["seconds"], res["rows_per_s"], res["rows_per_s"] / one)
            )
    if "cluster" in stores:
        for workers in SCALE_WORKERS:
            ratio = results[("cluster", workers)]["rows_per_s"] / results[("single", workers)]["rows_per_s"]
            figures[f"materialize_cluster_vs_single_w{workers}"] = ratio
            table.append((f"cluster / single, {workers}", ratio, "", "", ""))
    record(
        "materialize_workers",
        figures,
        table,
        f"Materialization with parallel writers ({applicants:,} applicants, credit_history in "
        f"{figures['scale_partitions']} partitions)",
    )
    return figures


def run(
    sizes: list[int] | None = None, in_process: bool = False, cluster: bool = True, scale: int | None = None
) -> dict:
    """``in_process``: every run in this process (no peak memory of its own; the quick smoke run)."""
    scale = scale or int(os.environ.get("LOAN_DESK_BENCH_SCALE_APPLICANTS") or BIG)
    if os.environ.get("LOAN_DESK_BENCH_SCALE_ONLY") == "1":
        return run_workers(scale, in_process, cluster)
    figures = _engines(sizes, in_process)
    figures["workers"] = run_workers(scale, in_process, cluster)
    return figures


def _engines(sizes: list[int] | None = None, in_process: bool = False) -> dict:
    sizes = sizes or [SMALL, BIG]
    figures: dict = {"subset_days": SUBSET_DAYS, "runs": []}
    table = [("run", "rows", "seconds", "rows/s", "peak MB")]
    for n in sizes:
        s = ensure_data(n)
        big = n == BIG and n != SMALL
        plan = []
        if big:
            plan += [("feast_default", SUBSET_DAYS), ("feast_tuned", SUBSET_DAYS), ("fast", SUBSET_DAYS)]
        else:
            plan += [("feast_default", 0), ("feast_tuned", 0)]
        plan += [("floor", 0), ("fast", 0)]
        results = {}
        for engine, days in plan:
            say(f"materialize: {engine} on {n:,} applicants{f', last {days} days' if days else ''} ...")
            if in_process:
                from bench._mat_worker import run_one

                res = run_one(engine, n, days)
            else:
                res = run_worker("bench._mat_worker", engine, str(n), str(days))
            results[(engine, days)] = res
            figures["runs"].append(res)
            label = f"{_label(n)} {engine}" + (f" ({days}-day subset)" if days else "")
            table.append((label, res["rows"], res["seconds"], res["rows_per_s"], res["peak_rss_mb"]))
        checked = verify_sample(s)
        import redis

        from bench.common import online_marker

        redis.Redis.from_url(s.redis_url).set(online_marker(s), s.pgdatabase)
        fast = results[("fast", 0)]
        floor = results[("floor", 0)]
        feast_key = ("feast_default", SUBSET_DAYS if big else 0)
        tuned_key = ("feast_tuned", SUBSET_DAYS if big else 0)
        tag = "1m" if n == 1_000_000 else ("30k" if n == 30_000 else str(n))
        figures[f"materialize_rows_per_s_{tag}"] = fast["rows_per_s"]
        figures[f"materialize_peak_mb_{tag}"] = fast["peak_rss_mb"]
        figures[f"materialize_floor_rows_per_s_{tag}"] = floor["rows_per_s"]
        figures[f"materialize_feast_default_rows_per_s_{tag}"] = results[feast_key]["rows_per_s"]
        figures[f"materialize_feast_tuned_rows_per_s_{tag}"] = results[tuned_key]["rows_per_s"]
        figures[f"materialize_vs_floor_{tag}"] = fast["rows_per_s"] / floor["rows_per_s"]
        figures[f"materialize_vs_feast_default_{tag}"] = fast["rows_per_s"] / results[feast_key]["rows_per_s"]
        figures[f"materialize_verified_entities_{tag}"] = checked
        if big:
            sub = results[("fast", SUBSET_DAYS)]
            figures[f"materialize_subset_fast_rows_per_s_{tag}"] = sub["rows_per_s"]
            figures[f"materialize_subset_vs_feast_default_{tag}"] = sub["rows_per_s"] / results[feast_key]["rows_per_s"]
        table.append((f"{_label(n)} fast / floor", figures[f"materialize_vs_floor_{tag}"], "", "", ""))
        table.append((f"{_label(n)} fast / Feast stock", figures[f"materialize_vs_feast_default_{tag}"], "", "", ""))
        table.append((f"{_label(n)} sample checked via get_online_features", checked, "", "", ""))
    if BIG in sizes and "materialize_rows_per_s_1m" in figures:
        figures["targets"] = {
            ">= 30k rows/s at 1M": figures["materialize_rows_per_s_1m"] >= 30_000,
            "peak <= 2 GB": figures["materialize_peak_mb_1m"] <= 2048,
        }
    record("materialize", figures, table, "Materialization (rows = entities written to Valkey)")
    return figures
