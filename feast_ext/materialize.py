"""Materialization runs: one at a time across every process, each recorded in Postgres."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from feast_ext.store import feature_store, new_feature_store, online_key_count
from runtime import db
from runtime import runs as run_log
from runtime.dataset import read_data_state
from runtime.runs import LOCK_KEY
from runtime.settings import Settings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class MaterializeResult:
    mode: str  # incremental | full
    start: datetime | None
    end: datetime
    seconds: float
    rows: int


class AlreadyRunning(RuntimeError):
    """Another materialization holds the lock."""


def materialization_state(store) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Per feature view: (start, end) of its latest materialized interval."""
    out = {}
    for fv in store.list_feature_views(allow_cache=False):
        intervals = fv.materialization_intervals
        out[fv.name] = (intervals[-1][0], intervals[-1][1]) if intervals else (None, None)
    return out


def needs_full_refresh(store, conn: object) -> bool:
    """True when the online store was never filled, or the data was (re)loaded since.

    Incremental materialization only moves forward from the last end time; a reload writes
    rows dated before it, so those need a full window instead.
    """
    if any(end is None for _, end in materialization_state(store).values()):
        return True
    return read_data_state(conn).online_older_than_data


def _write_views(settings: Settings, store, views, start, end, full: bool, step, guard) -> None:
    """Materialize every view through Feast (and so through the configured batch engine).

    A full refresh never leaves a decision without features: it overwrites every entity of
    the window first (no dedup, so the values of a replaced dataset are replaced), and only
    when every view is written removes this project's keys the refresh did not write (entities
    no longer in the data).  If a write fails, nothing is removed.  Under the Spark profile
    the refresh overwrites every entity of the export but removes nothing (the keys it wrote
    are not known to Loan Desk there).
    """
    from feast_ext.engine import LoanDeskEngine, collect_keys, remove_untracked

    engine = store._get_provider().batch_engine
    ours = isinstance(engine, LoanDeskEngine)
    # Feast's own engine (LOAN_DESK_MATERIALIZER=feast) overwrites with its skip_dedup setting.
    writer = store if ours or not full else new_feature_store(settings, online_store={"skip_dedup": True})
    tracked = []
    for i, fv in enumerate(views, 1):
        step(f"[{i}/{len(views)}] materializing {fv.name} ...")

        def done(view: str, n: int, i=i) -> None:
            step(f"[{i}/{len(views)}] {view}: {n:,} rows written")

        options = engine.run(dedup=False if full else None, track_keys=full, progress=done) if ours else None
        with options or contextlib.nullcontext() as run, guard(fv.name):
            if full:
                writer.materialize(start_date=start, end_date=end, feature_views=[fv.name])
            else:
                writer.materialize_incremental(end_date=end, feature_views=[fv.name])
        if full and settings.offline == "postgres":
            tracked += run.tracked if ours else [collect_keys(writer.config, fv, start, end)]
    if full and settings.offline == "postgres":
        removed = remove_untracked(store.config, tracked)
        if removed:
            step(f"removed {removed:,} online rows of entities no longer in the data")


def _spark_guard(settings: Settings):
    """Under the Spark profile: check the export, start the Spark session Feast's engine reuses,
    and turn a Spark failure into one sentence. A no-op for the Postgres profile."""
    if settings.offline != "spark":
        return lambda _view: contextlib.nullcontext()
    from feast_ext import spark

    spark.check_export(settings.export_location())
    spark.session(settings)
    return lambda view: spark.job_errors(f"materializing {view}")


def materialize(
    settings: Settings,
    requested_by: str = "cli",
    end: datetime | None = None,
    full: bool | None = None,
    progress=None,
) -> MaterializeResult:
    """Materialize up to ``end`` (now); one run at a time, recorded in loan_desk_materialize_runs.

    Raises AlreadyRunning when another session or process is materializing.
    """
    from runtime.migrations import migrate

    say = progress or _say
    end = end or datetime.now(UTC)
    migrate(settings)
    with db.connect(settings, job=True) as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]:
            raise AlreadyRunning("a materialization is already running")
        try:
            run_log.settle_earlier_runs(conn)
            run_id = conn.execute(
                "INSERT INTO loan_desk_materialize_runs (requested_by, window_end) VALUES (%s, %s) RETURNING id",
                [requested_by, end],
            ).fetchone()[0]

            def step(msg: str) -> None:
                conn.execute("UPDATE loan_desk_materialize_runs SET progress = %s WHERE id = %s", [msg, run_id])
                say(msg)

            t0 = time.perf_counter()
            try:
                store = feature_store(settings)
                guard = _spark_guard(settings)  # before anything is cleared
                if full is None:
                    full = needs_full_refresh(store, conn)
                start = None
                store.refresh_registry()
                views = store.list_feature_views()
                if not views:
                    raise RuntimeError("no feature views are registered: run `uv run loan-desk apply` first")
                if full:
                    longest = max((fv.ttl for fv in views if fv.ttl), default=None)
                    start = end - longest if longest else datetime(1970, 1, 1, tzinfo=UTC)
                _write_views(settings, store, views, start, end, full, step, guard)
                rows = online_key_count(settings)
                seconds = time.perf_counter() - t0
                conn.execute(
                    "UPDATE loan_desk_materialize_runs SET finished_at = now(), status = 'succeeded', "
                    "mode = %s, window_start = %s, rows = %s, seconds = %s, progress = 'done' WHERE id = %s",
                    ["full" if full else "incremental", start, rows, seconds, run_id],
                )
            except Exception as exc:
                error, seconds = f"{type(exc).__name__}: {exc}"[:2000], time.perf_counter() - t0
                try:
                    conn.execute(
                        "UPDATE loan_desk_materialize_runs SET finished_at = now(), status = 'failed', "
                        "seconds = %s, error = %s WHERE id = %s",
                        [seconds, error, run_id],
                    )
                except Exception:  # Postgres went away: the next run writes it
                    run_log.remember_unrecorded(run_id, error, seconds)
                raise
        finally:
            if not conn.closed:
                with contextlib.suppress(Exception):  # a lost connection has released the lock already
                    conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return MaterializeResult("full" if full else "incremental", start, end, seconds, rows)
