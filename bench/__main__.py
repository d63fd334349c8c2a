"""Loan Desk benchmarks: `uv run python -m bench [NAME ...]` (none = all).

NAME: decision, batch, materialize, training, load, operations, app, api, cluster, policy, history.
Each prints a table and merges its figures into bench/results.json.  Sizes: LOAN_DESK_BENCH_SMALL
(30000) and LOAN_DESK_BENCH_BIG (1000000) applicants; --quick runs tiny sizes (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

NAMES = (
    "decision",
    "batch",
    "materialize",
    "training",
    "load",
    "operations",
    "app",
    "api",
    "cluster",
    "policy",
    "history",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", choices=[*NAMES, []], metavar="NAME", help=", ".join(NAMES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the benchmarks still run")
    args = ap.parse_args(argv)
    if args.quick:
        os.environ.setdefault("LOAN_DESK_BENCH_DB", "loan_desk_bench_quick")  # never the real benchmark data
        os.environ.setdefault("LOAN_DESK_BENCH_SMALL", "600")
        os.environ.setdefault("LOAN_DESK_BENCH_BIG", "1500")
        os.environ.setdefault("LOAN_DESK_BENCH_QUICK", "1")
    failed = []
    for name in args.names or NAMES:
        t0 = time.perf_counter()
        mod = importlib.import_module(f"bench.{name}")
        try:
            mod.run(**(mod.QUICK if args.quick and hasattr(mod, "QUICK") else {}))
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
