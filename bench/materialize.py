"""2. Materialization: the fast writer against Feast's local engine (stock and tuned) and a raw floor.

Each run is a fresh process into an emptied Redis db; rows = entities written.  At the big size
Feast's engines run on a recent window of the data (every applicant with a credit snapshot in
the last SUBSET_DAYS days, every zipcode row in it): at ~4k rows/s the full million takes
minutes.  The fast writer runs on that same window too, side by side, and on the full data.
"""

from __future__ import annotations

import os

from bench.common import BIG, SMALL, ensure_data, record, run_worker, say

SUBSET_DAYS = int(os.environ.get("LOAN_DESK_BENCH_SUBSET_DAYS", "10"))
QUICK = {"sizes": None, "in_process": True}


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


def run(sizes: list[int] | None = None, in_process: bool = False) -> dict:
    """``in_process``: every run in this process (no peak memory of its own; the quick smoke run)."""
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
