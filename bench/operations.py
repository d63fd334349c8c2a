"""6. Routine operations beside live traffic: nothing an operator runs may interrupt or corrupt a decision.

* decisions during a full refresh (`materialize --full`) at the small and the big size: a
  thread decides in a loop for the whole refresh and checks every answer's features against
  the latest offline values read from Postgres before it started — refused and wrong answers
  are counted (the goal is 0 and 0);
* readers during a reload of the big data set: a thread runs the explore page's kind of
  queries (a count and one applicant's history) for the whole load and records the longest
  single wait (goal: at most 1 s while the load runs for a minute);
* decisions during `train`: a thread decides in a loop while two models are trained and the
  pointer moves twice; each answer's probability is recomputed with the bundle its version
  names, and its threshold compared with that bundle's (goal: every answer belongs to one bundle).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from bench.common import BIG, SMALL, ensure_data, record, say

QUICK = {"sizes": None, "reload": True}
SAMPLE = 400


def _expected(settings, apps: list[dict]) -> dict:
    """Latest offline values per applicant and zipcode of the sample, as Postgres has them now."""
    from model import features as F
    from runtime import db

    people = sorted({a["dob_ssn"] for a in apps})
    zips = sorted({a["zipcode"] for a in apps})
    cols = ", ".join(F.CREDIT_FEATURES)
    zcols = ", ".join((*F.ZIPCODE_TEXT, *F.ZIPCODE_FEATURES))
    with db.connect(settings, job=True) as conn:
        credit = conn.execute(
            f"SELECT DISTINCT ON (dob_ssn) dob_ssn, {cols} FROM credit_history WHERE dob_ssn = ANY(%s) "
            "AND event_timestamp <= now() ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC",
            [people],
        ).fetchall()
        zipcode = conn.execute(
            f"SELECT DISTINCT ON (zipcode) zipcode, {zcols} FROM zipcode_features WHERE zipcode = ANY(%s) "
            "AND event_timestamp <= now() ORDER BY zipcode, event_timestamp DESC, created_timestamp DESC",
            [zips],
        ).fetchall()
    out = {("credit_history", r[0]): dict(zip(F.CREDIT_FEATURES, r[1:], strict=True)) for r in credit}
    names = (*F.ZIPCODE_TEXT, *F.ZIPCODE_FEATURES)
    out |= {("zipcode_features", r[0]): dict(zip(names, r[1:], strict=True)) for r in zipcode}
    return out


def _check(decision, expected: dict) -> bool:
    app = decision.application
    for f in decision.features:
        entity = app.dob_ssn if f.view == "credit_history" else app.zipcode
        if expected.get((f.view, entity), {}).get(f.name) != f.value:
            return False
    return True


def decisions_during_full_refresh(n: int) -> dict:
    from bench.decision import applications
    from feast_ext.materialize import materialize
    from model.inference import DecisionError, DecisionService

    s = ensure_data(n, materialized=True, trained=True)
    svc = DecisionService(settings=s)
    apps = []
    for app in applications(s, SAMPLE * 3):
        try:
            svc.decide(app)
            apps.append(app)
        except DecisionError:
            continue  # e.g. a credit file older than its TTL: refused before the refresh too
        if len(apps) >= SAMPLE:
            break
    expected = _expected(s, apps)
    stop = threading.Event()
    counts = {"decisions": 0, "refused": 0, "wrong": 0}
    errors: list[str] = []

    def loop() -> None:
        i = 0
        while not stop.is_set():
            app = apps[i % len(apps)]
            i += 1
            try:
                d = svc.decide(app)
            except DecisionError as exc:
                counts["refused"] += 1
                if len(errors) < 3:
                    errors.append(str(exc)[:200])
                continue
            counts["decisions"] += 1
            if not _check(d, expected):
                counts["wrong"] += 1

    t = threading.Thread(target=loop, name="decide-during-refresh")
    t.start()
    t0 = time.perf_counter()
    try:
        res = materialize(s, requested_by="bench", full=True, progress=lambda m: None)
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        t.join()
    say(f"  full refresh of {n:,} applicants: {seconds:.1f} s, {counts} {errors}")
    return {**counts, "refresh_s": seconds, "rows": res.rows, "sample": len(apps), "errors": errors}


def readers_during_reload(n: int) -> dict:
    """The longest single wait of explore-style reads while the big data set is loaded again."""
    from bench.common import SEED
    from runtime import db

    s = ensure_data(n)
    with db.connect(s) as conn:
        who = conn.execute("SELECT dob_ssn FROM loans ORDER BY loan_id LIMIT 1").fetchone()[0]
    stop = threading.Event()
    waits: list[float] = []
    failures: list[str] = []

    def reader() -> None:
        with db.connect(s, job=True) as conn:
            # One untimed round first: a cold connection and cold pages (count(*) over 1M rows can
            # take seconds the first time) are not the reload's doing.
            conn.execute("SELECT count(*) FROM loans").fetchone()
            conn.execute("SELECT 1 FROM credit_history WHERE dob_ssn = %s LIMIT 1", [who]).fetchall()
            ready.set()
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.execute("SELECT count(*) FROM loans").fetchone()
                    conn.execute(
                        "SELECT event_timestamp, credit_card_due FROM credit_history WHERE dob_ssn = %s "
                        "ORDER BY event_timestamp DESC LIMIT 8",
                        [who],
                    ).fetchall()
                except Exception as exc:  # counted, not raised: the reader keeps going
                    failures.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                waits.append(time.perf_counter() - t0)
                time.sleep(0.02)

    ready = threading.Event()
    t = threading.Thread(target=reader, name="read-during-reload")
    t.start()
    ready.wait(120)
    t0 = time.perf_counter()
    try:
        # The load runs in a process of its own, as it does for an operator: in this one, its
        # numpy/pandas work would hold the GIL and stall the reader thread, which is not a wait
        # any reader of the database sees.
        out = subprocess.run(
            [sys.executable, "-m", "bootstrap.cli", "load", "--applicants", str(n), "--seed", str(SEED), "--force"],
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if out.returncode:
            raise RuntimeError(f"the reload failed: {out.stderr[-2000:]}")
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        t.join()
    longest = max(waits) if waits else float("nan")
    say(f"  reload of {n:,} applicants: {seconds:.1f} s; {len(waits):,} reads, longest {longest * 1000:.0f} ms")
    return {"reload_s": seconds, "reads": len(waits), "longest_read_s": longest, "failed_reads": len(failures)}


def decisions_during_train(n: int, trains: int = 2) -> dict:
    """Decide in a loop while ``trains`` models are trained and published; rescore every answer
    with the bundle its version names (model.bundles.check_decisions)."""
    from bench.decision import applications
    from feast_ext.store import feature_store
    from model.bundles import check_decisions
    from model.inference import DecisionError, DecisionService
    from model.train import train

    s = ensure_data(n, materialized=True, trained=True)
    svc = DecisionService(settings=s)
    apps = applications(s, SAMPLE)
    stop = threading.Event()
    decided: list = []
    refused = {"n": 0}

    def loop() -> None:
        i = 0
        while not stop.is_set():
            try:
                decided.append(svc.decide(apps[i % len(apps)]))
            except DecisionError:
                refused["n"] += 1
            i += 1

    t = threading.Thread(target=loop, name="decide-during-train")
    t.start()
    t0 = time.perf_counter()
    try:
        for _ in range(trains):
            train(feature_store(s), s)
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        t.join()
    problems = check_decisions(decided)
    versions = sorted({d.model_version for d in decided})
    say(
        f"  {trains} trainings in {seconds:.1f} s: {len(decided):,} decisions over {len(versions)} versions, "
        f"{len(problems)} inconsistent"
    )
    return {
        "train_s": seconds,
        "decisions": len(decided),
        "refused": refused["n"],
        "versions_seen": len(versions),
        "inconsistent": len(problems),
        "first_problems": problems[:3],
    }


def run(sizes: list[int] | None = None, reload: bool = True) -> dict:
    sizes = sizes or [SMALL, BIG]
    figures: dict = {}
    table = [("operation", "size", "seconds", "decisions/reads", "refused/failed", "wrong / longest ms")]
    for n in sizes:
        r = decisions_during_full_refresh(n)
        figures[f"refresh_{n}"] = r
        table.append(
            ("decisions during materialize --full", n, r["refresh_s"], r["decisions"], r["refused"], r["wrong"])
        )
    r = decisions_during_train(min(sizes))
    figures["train"] = r
    table.append(
        ("decisions during 2 trainings", min(sizes), r["train_s"], r["decisions"], r["refused"], r["inconsistent"])
    )
    if reload:
        n = max(sizes)
        r = readers_during_reload(n)
        figures[f"reload_{n}"] = r
        table.append(
            ("reads during a reload", n, r["reload_s"], r["reads"], r["failed_reads"], r["longest_read_s"] * 1000)
        )
        # The reload marks the online store as older than the data: refresh it for the next benchmarks.
        ensure_data(n, materialized=True)
    figures["operations_decisions"] = sum(figures[f"refresh_{n}"]["decisions"] for n in sizes)
    figures["targets"] = {
        "every decision during training belongs to one bundle": figures["train"]["inconsistent"] == 0,
        "0 refused, 0 wrong during full refreshes": all(
            figures[f"refresh_{n}"]["refused"] == 0 and figures[f"refresh_{n}"]["wrong"] == 0 for n in sizes
        ),
    }
    if reload:
        figures["targets"]["longest read during a reload <= 1 s"] = (
            figures[f"reload_{max(sizes)}"]["longest_read_s"] <= 1
        )
    record("operations", figures, table, "Routine operations beside live traffic")
    return figures
