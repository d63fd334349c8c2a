"""Feast registration and materialization, run in-process with the project's settings."""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bootstrap.config import FEATURE_REPO, Settings, export_feast_env


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def feature_store(settings: Settings | None = None):
    """A FeatureStore over feature_repo/ with the settings in this process's environment."""
    export_feast_env(settings)
    from feast import FeatureStore

    return FeatureStore(repo_path=str(FEATURE_REPO))


def apply(settings: Settings) -> str:
    """`feast apply` for feature_repo/, in-process (same code path as the CLI)."""
    export_feast_env(settings)
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    if str(FEATURE_REPO) not in sys.path:
        sys.path.insert(0, str(FEATURE_REPO))  # feast imports the definitions as top-level modules
    # Feast applies the objects of the imported definition modules, and registering them can
    # leave state on those objects (materialization intervals). Import them afresh each time,
    # so applying to another database in the same process never carries that state over.
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().parent == FEATURE_REPO:
            del sys.modules[name]
    config = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.yaml")
    apply_total(config, FEATURE_REPO, skip_source_validation=False)
    return "registered entities, feature views and feature service in the Postgres registry"


@dataclass
class MaterializeResult:
    mode: str  # incremental | full
    start: datetime | None
    end: datetime
    seconds: float
    rows: int


RUNS_DDL = """
CREATE TABLE IF NOT EXISTS loan_desk_materialize_runs (
    id          bigserial PRIMARY KEY,
    requested_by text       NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    mode        text,
    window_start timestamptz,
    window_end  timestamptz NOT NULL,
    rows        bigint,
    seconds     double precision,
    status      text        NOT NULL DEFAULT 'running',
    progress    text,
    error       text
)"""
# One materialization at a time across every session and process: a Postgres advisory lock.
LOCK_KEY = 0x4C4F414E  # "LOAN"


class AlreadyRunning(RuntimeError):
    """Another materialization holds the lock."""


def _conn(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(**settings.pg_kwargs(), autocommit=True)


def dataset_loaded_at(conn: psycopg.Connection) -> datetime | None:
    return conn.execute(
        "SELECT CASE WHEN to_regclass('public.loan_desk_dataset') IS NULL THEN NULL "
        "ELSE (SELECT max(loaded_at) FROM loan_desk_dataset) END"
    ).fetchone()[0]


def last_success(conn: psycopg.Connection) -> datetime | None:
    conn.execute(RUNS_DDL)
    return conn.execute("SELECT max(started_at) FROM loan_desk_materialize_runs WHERE status = 'succeeded'").fetchone()[
        0
    ]


def materialization_state(store) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Per feature view: (start, end) of its latest materialized interval."""
    out = {}
    for fv in store.list_feature_views():
        intervals = fv.materialization_intervals
        out[fv.name] = (intervals[-1][0], intervals[-1][1]) if intervals else (None, None)
    return out


def needs_full_refresh(store, conn: psycopg.Connection) -> bool:
    """True when the online store was never filled, or the data was (re)loaded since.

    Incremental materialization only moves forward from the last end time; a reload writes
    rows dated before it, so those need a full window instead.
    """
    if any(end is None for _, end in materialization_state(store).values()):
        return True
    loaded, done = dataset_loaded_at(conn), last_success(conn)
    return loaded is not None and (done is None or done < loaded)


@functools.cache
def project_key_suffix() -> bytes:
    """Feast's Redis keys end with the project name (feature_store.yaml's ``project``)."""
    import yaml

    return yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())["project"].encode()


def _project_keys(settings: Settings):
    """(client, iterator over this project's online keys): a SCAN, about 1 s per million keys;
    other keys sharing the Redis db are left out."""
    import redis

    r = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    return r, r.scan_iter(match=b"*" + project_key_suffix(), count=10_000)


def online_key_count(settings: Settings) -> int:
    """Entities of this project online."""
    _, keys = _project_keys(settings)
    return sum(1 for _ in keys)


def clear_online(settings: Settings) -> int:
    """Drop every online row of this project, nothing else in the Redis db."""
    r, keys = _project_keys(settings)
    deleted, batch = 0, []
    for key in keys:
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += r.unlink(*batch)
            batch = []
    if batch:
        deleted += r.unlink(*batch)
    return deleted


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
    say = progress or _say
    end = end or datetime.now(UTC)
    with _conn(settings) as conn:
        conn.execute(RUNS_DDL)
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]:
            raise AlreadyRunning("a materialization is already running")
        try:
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
                if full is None:
                    full = needs_full_refresh(store, conn)
                start = None
                views = store.list_feature_views()
                if full:
                    longest = max((fv.ttl for fv in views if fv.ttl), default=None)
                    start = end - longest if longest else datetime(1970, 1, 1, tzinfo=UTC)
                    cleared = clear_online(settings)
                    if cleared:
                        step(f"cleared {cleared:,} online rows of earlier data")
                # The fast writer (bootstrap/online_writer.py) writes Feast's exact online format and
                # records the same registry intervals; LOAN_DESK_MATERIALIZER=feast uses Feast's engine.
                fast = os.environ.get("LOAN_DESK_MATERIALIZER", "fast") != "feast"
                if fast:
                    from bootstrap import online_writer

                    try:
                        online_writer.redis_client_for(store).close()
                    except online_writer.WriterUnsupported:
                        fast = False
                for i, fv in enumerate(views, 1):
                    step(f"[{i}/{len(views)}] materializing {fv.name} ...")

                    def done(view: str, n: int, i=i) -> None:
                        step(f"[{i}/{len(views)}] {view}: {n:,} rows written")

                    if fast and full:  # keys were just cleared: no stored timestamps to compare
                        online_writer.materialize(
                            store, settings.pg_kwargs(), start, end, [fv.name], dedup=False, progress=done
                        )
                    elif fast:
                        online_writer.materialize_incremental(
                            store, settings.pg_kwargs(), end, [fv.name], progress=done
                        )
                    elif full:
                        store.materialize(start_date=start, end_date=end, feature_views=[fv.name])
                    else:
                        store.materialize_incremental(end_date=end, feature_views=[fv.name])
                rows = online_key_count(settings)
                seconds = time.perf_counter() - t0
                conn.execute(
                    "UPDATE loan_desk_materialize_runs SET finished_at = now(), status = 'succeeded', "
                    "mode = %s, window_start = %s, rows = %s, seconds = %s, progress = 'done' WHERE id = %s",
                    ["full" if full else "incremental", start, rows, seconds, run_id],
                )
            except Exception as exc:
                conn.execute(
                    "UPDATE loan_desk_materialize_runs SET finished_at = now(), status = 'failed', "
                    "seconds = %s, error = %s WHERE id = %s",
                    [time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:2000], run_id],
                )
                raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return MaterializeResult("full" if full else "incremental", start, end, seconds, rows)
