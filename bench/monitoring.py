"""The monitoring page's queries at a million recorded decisions.

Runs against the configured database (PGDATABASE etc.; it must hold the loans, a trained model
and some decisions recorded by DecisionService, e.g. after `loan-desk --no-serve` and a few
decisions).  It copies those recorded decisions until the trail holds ``rows`` decisions, with
decision times spread evenly over the last ``days`` days — plain copies marked with the user
name ``bench-copy`` and not sealed (they are not part of the audit chain; `--drop` deletes them)
— then times each query of the page for the last 30 days and for the whole span, each the best
of three runs on the pooled connection the page uses.

    uv run python -m bench.monitoring [--rows 1000000] [--days 90] [--drop]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

COPY_USER = "bench-copy"
COLUMNS = (
    "username, channel, client, batch_id, inputs, features, probability, outcome, threshold, band, reasons, "
    "refer_reasons, contributions, model_version, policy_version, challenger, latency_ms, status"
)


def fill(settings, rows: int, days: int) -> int:
    from runtime import db

    with db.connect(settings, job=True) as conn:
        have = conn.execute("SELECT count(*) FROM loan_desk_decisions").fetchone()[0]
        source = conn.execute("SELECT count(*) FROM loan_desk_decisions WHERE username <> %s", [COPY_USER]).fetchone()[
            0
        ]
        if source == 0:
            raise SystemExit("no recorded decisions to copy: decide a few applications first")
        need = rows - have
        if need > 0:
            cols = COLUMNS.replace("username, ", "")
            conn.execute(
                f"WITH src AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, {cols} FROM loan_desk_decisions "
                "  WHERE username <> %(user)s) "
                f"INSERT INTO loan_desk_decisions (decided_at, username, {cols}) "
                f"SELECT now() - make_interval(secs => %(span)s * (g.i::float8 / %(need)s)), %(user)s, {cols} "
                "FROM generate_series(1, %(need)s) AS g(i) JOIN src ON src.k = g.i %% %(source)s",
                {"span": days * 86400.0, "need": need, "user": COPY_USER, "source": source},
            )
            conn.commit()
        conn.execute("ANALYZE loan_desk_decisions")
        conn.commit()
        return conn.execute("SELECT count(*) FROM loan_desk_decisions").fetchone()[0]


def drop(settings) -> int:
    from runtime import db

    with db.connect(settings, job=True) as conn:
        n = conn.execute("DELETE FROM loan_desk_decisions WHERE username = %s", [COPY_USER]).rowcount
        conn.commit()
        return n


def _best(fn, period, runs: int = 3) -> float | str:
    import psycopg

    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        try:
            fn(period)
        except psycopg.errors.QueryCanceled:
            return f"timeout ({time.perf_counter() - t:.0f} s)"
        best = min(best, time.perf_counter() - t)
    return best * 1000


def time_queries(settings, days: int, runs: int = 3) -> list[tuple[str, float, float]]:
    from model import bundles
    from model import monitoring as M
    from runtime import monitoring as Q

    meta = bundles.current_metadata() or {}
    start = (meta.get("training_window") or {}).get("test_start")
    test_start = datetime.fromisoformat(start) if start else None
    today = datetime.now(UTC).date()
    periods = (Q.Period(today - timedelta(days=29), today), Q.Period(today - timedelta(days=days), today))
    queries = {
        "decided_range": lambda p: Q.decided_range(settings),
        "outcomes_over_time (day)": lambda p: Q.outcomes_over_time(settings, p, "day"),
        "score_histogram + cutoffs": lambda p: (Q.score_histogram(settings, p), Q.cutoffs(settings, p)),
        "approvals_by_age": lambda p: Q.approvals_by_age(settings, p),
        "approvals_by_state": lambda p: Q.approvals_by_state(settings, p),
        "feature_drift (PSI, 9 features)": lambda p: M.feature_drift(settings, p, meta),
        "feature_age + quantiles": lambda p: (Q.feature_age(settings, p), Q.feature_age_quantiles(settings, p)),
        "data_referrals": lambda p: Q.data_referrals(settings, p),
        "calibration (join to loans)": lambda p: Q.calibration(settings, p, test_start),
    }
    return [(name, _best(fn, periods[0], runs), _best(fn, periods[1], runs)) for name, fn in queries.items()]


def _ms(v) -> str:
    return v if isinstance(v, str) else f"{v:,.0f}"


def run(rows: int = 1_000_000, days: int = 90) -> None:
    from runtime.settings import Settings

    settings = Settings.from_env()
    t = time.perf_counter()
    total = fill(settings, rows, days)
    print(f"{total:,} decisions on record ({time.perf_counter() - t:.1f} s to fill)")
    from runtime import db

    with db.connect(settings) as conn:
        last30 = conn.execute(
            "SELECT count(*) FROM loan_desk_decisions WHERE decided_at >= now() - interval '30 days'"
        ).fetchone()[0]
    print(
        f"\n| query | last 30 days ({last30:,} decisions) ms | all {days} days ({total:,}) ms |\n| --- | ---: | ---: |"
    )
    for name, a, b in time_queries(settings, days):
        print(f"| {name} | {_ms(a)} | {_ms(b)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.monitoring", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--drop", action="store_true", help="delete the copies and stop")
    args = ap.parse_args()
    if args.drop:
        from runtime.settings import Settings

        print(f"deleted {drop(Settings.from_env()):,} copies")
        return
    run(args.rows, args.days)


if __name__ == "__main__":
    main()
