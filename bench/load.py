"""4. Bulk load: generate and COPY BIG applicants with their credit history into a scratch database."""

from __future__ import annotations

import json
import os
import re
import sys
import time

from bench.common import BENCH_DB, BIG, SEED, record, run_worker, say

QUICK = {"in_process": True}


def measure(applicants: int) -> dict:
    """Load ``applicants`` into the scratch database (forced), in this process."""
    import bench.common as common
    from bench.common import peak_rss_mb, settings_for
    from bootstrap.load import LoadRequest, load

    # The scratch database's name: settings_for names databases after BENCH_DB.
    saved, common.BENCH_DB = common.BENCH_DB, os.environ.get("LOAN_DESK_BENCH_LOAD_DB", f"{BENCH_DB}_load")
    try:
        s = settings_for(applicants)
    finally:
        common.BENCH_DB = saved
    t0 = time.perf_counter()
    _, msg = load(s, LoadRequest(applicants=applicants, seed=SEED), force=True)
    seconds = time.perf_counter() - t0
    m = re.search(r"([\d,]+) rows in .*prepare ([\d.]+) s, COPY\+index ([\d.]+) s", msg)
    rows = int(m.group(1).replace(",", "")) if m else 0
    return {
        "applicants": applicants,
        "rows": rows,
        "seconds": seconds,
        "prepare_s": float(m.group(2)) if m else None,
        "copy_index_s": float(m.group(3)) if m else None,
        "peak_rss_mb": peak_rss_mb(),
        "database": s.pgdatabase,
        "message": msg,
    }


def _worker() -> int:
    """In a fresh process: load BIG applicants into the scratch db; print one JSON line."""
    print(json.dumps(measure(int(sys.argv[1]))))
    return 0


def run(applicants: int | None = None, in_process: bool = False) -> dict:
    """``in_process``: load in this process (its peak memory is not the load's own; the quick run)."""
    n = applicants or BIG
    say(f"load: {n:,} synthetic applicants into a scratch database ...")
    res = measure(n) if in_process else run_worker("bench.load", str(n))
    figures = {
        "load_applicants": n,
        "load_rows": res["rows"],
        "load_seconds": res["seconds"],
        "load_rows_per_s": res["rows"] / res["seconds"],
        "load_applicants_per_s": n / res["seconds"],
        "load_prepare_s": res["prepare_s"],
        "load_copy_index_s": res["copy_index_s"],
        "load_copy_rows_per_s": res["rows"] / res["copy_index_s"] if res["copy_index_s"] else None,
        "load_peak_mb": res["peak_rss_mb"],
    }
    table = [
        ("measure", "value"),
        ("applicants", n),
        ("rows (loans + credit snapshots + zipcodes)", res["rows"]),
        ("total seconds", res["seconds"]),
        ("  generate (numpy/pandas)", res["prepare_s"]),
        ("  COPY + indexes + ANALYZE", res["copy_index_s"]),
        ("rows/s overall", figures["load_rows_per_s"]),
        ("rows/s COPY+index", figures["load_copy_rows_per_s"]),
        ("applicants/s", figures["load_applicants_per_s"]),
        ("peak memory MB", res["peak_rss_mb"]),
    ]
    record("load", figures, table, "Bulk load")
    return figures


if __name__ == "__main__":
    sys.exit(_worker())
