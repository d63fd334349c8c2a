"""Batch scoring: 10k applications through the batch path beside 10k single decide() calls.

Same rows, same warm service, one run.  Three paths are timed:

* ``score_csv``: the whole batch job — a CSV in memory, validated, decided 500 rows per chunk,
  every decision recorded (one transaction per chunk), the results CSV written;
* ``decide_many``: the decisions alone (one pipelined read and one scoring pass per chunk);
* ``decide``: one ``decide()`` call per row, the form's path without the recording;
* ``decide`` + ``record_decision``: the form's whole path, each decision recorded on its own
  (timed on the first 1,000 rows, as rows/s).

Peak memory is measured in a second pass with tracemalloc (Python allocations; the timed pass
runs without it, as tracing slows allocation down): the single calls keep nothing, decide_many
holds its result list, score_csv streams (the batch is scored again, ``again=True``).
"""

from __future__ import annotations

import csv
import io
import time
import tracemalloc

from bench.common import SMALL, ensure_data, record, say
from bench.decision import applications

QUICK = {"rows": 300}
FIELDS = (
    "dob_ssn",
    "zipcode",
    "person_age",
    "person_income",
    "person_home_ownership",
    "person_emp_length",
    "loan_intent",
    "loan_amnt",
    "loan_int_rate",
)


def _csv(apps: list[dict]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(apps)
    return buf.getvalue().encode()


def _peak(fn) -> float:
    """Peak Python allocation (MiB) while ``fn`` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / 2**20
    finally:
        tracemalloc.stop()


def run(rows: int = 10_000, applicants: int = SMALL) -> dict:
    s = ensure_data(applicants, materialized=True, trained=True)
    from model.batch import score_csv
    from model.inference import DecisionService
    from runtime.migrations import migrate

    migrate(s)
    svc = DecisionService(settings=s)
    apps = applications(s, int(rows * 1.25) + 100)
    if len(apps) < rows:
        apps = (apps * (rows // len(apps) + 1))[:rows]
    apps = apps[:rows]
    data = _csv(apps)
    svc.warm()
    svc.decide_many(apps[:500])
    for a in apps[:200]:
        svc.decide(a)

    def single() -> None:
        for a in apps:
            svc.decide(a)

    def many() -> list:
        return svc.decide_many(apps)

    def batch(again: bool):
        return score_csv(
            s,
            io.BytesIO(data),
            io.StringIO(newline=""),
            username="bench",
            filename="bench.csv",
            service=svc,
            again=again,
        )

    t0 = time.perf_counter()
    single()
    t_single = time.perf_counter() - t0
    say(f"  decide x {rows:,}: {t_single:.1f} s")
    t0 = time.perf_counter()
    results = many()
    t_many = time.perf_counter() - t0
    say(f"  decide_many({rows:,}): {t_many:.1f} s")
    outcomes = {}
    for d in results:
        key = getattr(d, "outcome", "error")
        outcomes[key] = outcomes.get(key, 0) + 1
    del results
    t0 = time.perf_counter()
    summary = batch(again=True)
    t_batch = time.perf_counter() - t0
    assert summary.status == "done" and summary.rows == rows, summary.describe()
    say(f"  score_csv: {summary.describe()}")

    # The form's path, each decision recorded on its own (on the first rows only: it is slow).
    from runtime.decisions import record_decision

    n_rec = min(rows, 1000)
    t0 = time.perf_counter()
    for a in apps[:n_rec]:
        record_decision(s, "bench", svc.decide(a), channel="cli")
    t_rec = (time.perf_counter() - t0) * rows / n_rec

    mem_single = _peak(single)
    mem_many = _peak(many)
    mem_batch = _peak(lambda: batch(again=True))
    figures = {
        "batch_rows": rows,
        "batch_outcomes": outcomes,
        "batch_score_csv_rows_per_s": rows / t_batch,
        "batch_decide_many_rows_per_s": rows / t_many,
        "batch_single_decide_rows_per_s": rows / t_single,
        "batch_single_decide_recorded_rows_per_s": rows / t_rec,
        "batch_score_csv_vs_single": t_single / t_batch,
        "batch_score_csv_vs_single_recorded": t_rec / t_batch,
        "batch_decide_many_vs_single": t_single / t_many,
        "batch_score_csv_peak_mib": mem_batch,
        "batch_decide_many_peak_mib": mem_many,
        "batch_single_decide_peak_mib": mem_single,
    }
    table = [
        ("path", "rows/s", "seconds", "peak MiB (tracemalloc)", "x single"),
        ("score_csv (CSV in, recorded, CSV out)", rows / t_batch, t_batch, mem_batch, t_single / t_batch),
        ("decide_many (decisions only)", rows / t_many, t_many, mem_many, t_single / t_many),
        (f"decide() x {rows:,} (not recorded)", rows / t_single, t_single, mem_single, 1.0),
        (f"decide() + record_decision() x {n_rec:,}", rows / t_rec, t_rec * n_rec / rows, "", t_single / t_rec),
        ("score_csv / (decide + record), rows/s", t_rec / t_batch, "", "", ""),
    ]
    record("batch", figures, table, f"Batch scoring of {rows:,} applications beside single decisions (warm)")
    return figures
