"""One materialization run in a fresh process (so its peak memory is its own); prints one JSON line.

python -m bench._mat_worker ENGINE APPLICANTS WINDOW_DAYS [WORKERS]
ENGINE: fast | feast_default | feast_tuned | floor; WINDOW_DAYS 0 = every view's full TTL window;
WORKERS: the fast engine's parallel writers (default: the settings', LOAN_DESK_MATERIALIZE_WORKERS).
The online store is LOAN_DESK_BENCH_REDIS_URL's (a cluster too, redis+cluster://...).
``run_one`` is the same run in the calling process (the quick smoke run: no process start per run).
Rows are counted as this Feast project's keys, so other projects sharing the Redis db do not count.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta


def _window(store, days: int) -> tuple[datetime, datetime]:
    end = datetime.now(UTC)
    if days:
        return end - timedelta(days=days), end
    longest = max(fv.ttl for fv in store.list_feature_views())
    return end - longest, end


def _feast(settings, start, end, tuned: bool) -> None:
    """Feast's own engine (batch_engine: local): stock settings, or with every knob Feast offers turned on."""
    from feast_ext.store import new_feature_store

    store = new_feature_store(
        settings,
        batch_engine="local",
        materialization={"pull_latest_features": tuned, "online_write_batch_size": 10_000 if tuned else None},
        online_store={"skip_dedup": tuned},
    )
    store.materialize(start_date=start, end_date=end)


def _raw_prefix(settings) -> bytes:
    """The floor's keys: ``raw:<project>:<entity>``, so runs of two projects never meet."""
    return b"raw:" + settings.project.encode() + b":"


def _floor(settings, store, start, end) -> int:
    """The same kind of work as the engine at its best, without Feast's format: the same
    DISTINCT ON query on a binary server-side cursor with the next chunk prefetched while this
    one is written, values written as their plain text (no protobuf, no key encoding), raw
    pipelined HSETs on one connection."""
    import psycopg

    from feast_ext import engine as W

    client = W.redis_client_for(store.config)
    pipe = W._RawPipe(client)
    rows = 0
    prefix = _raw_prefix(settings)
    with psycopg.connect(**settings.pg_kwargs(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET jit = off")
        for fv in store.list_feature_views():
            plan = W._plan(store.config, fv)
            fields = [W._bulk(n.encode()) for n in ["_ts", *plan.feature_names]]
            header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(fields))
            chunks = W._prefetch(W._stream_chunks(conn, plan, start, end, W.DEFAULT_CHUNK_ROWS))
            for chunk in chunks:
                out = []
                for row in chunk:
                    parts = [header, W._bulk(prefix + str(row[0]).encode())]
                    for f, v in zip(fields, [row[-1], *row[1:-1]], strict=True):
                        parts.append(f)
                        parts.append(W._bulk(str(v).encode()))
                    out.append(b"".join(parts))
                pipe.send(b"".join(out), len(out))
                rows += len(out)
    pipe.close()
    return rows


def _drop_raw(r, settings) -> None:
    batch = []
    for key in r.scan_iter(match=_raw_prefix(settings) + b"*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)


def run_one(engine: str, applicants: int, days: int, workers: int | None = None) -> dict:
    from bench.common import online_marker, peak_rss_mb, settings_for
    from feast_ext.engine import view_partitions
    from feast_ext.store import clear_online, feature_store, online_key_count

    s = settings_for(applicants)
    store = feature_store(s)
    r = s.redis_client(socket_timeout=30)
    r.delete(online_marker(s))
    clear_online(s)
    if not s.redis_cluster:
        _drop_raw(r, s)
    start, end = _window(store, days)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    if engine == "fast":  # the engine feature_store.yaml names, through Feast, overwriting
        with store._get_provider().batch_engine.run(dedup=False, workers=workers):
            store.materialize(start_date=start, end_date=end)
    elif engine in ("feast_default", "feast_tuned"):
        _feast(s, start, end, tuned=engine == "feast_tuned")
    elif engine == "floor":
        rows = _floor(s, store, start, end)
    else:
        raise SystemExit(f"unknown engine {engine}")
    seconds = time.perf_counter() - t0
    if engine == "floor":
        _drop_raw(r, s)
    else:
        rows = online_key_count(s)
    from feast_ext import engine as W

    with W.pg_connect(store.config.offline_store) as conn:
        partitions = len(view_partitions(conn, W._plan(store.config, store.get_feature_view("credit_history"))))
    return {
        "engine": engine,
        "applicants": applicants,
        "window_days": days,
        "workers": workers or s.materialize_workers,
        "partitions": partitions,
        "online_store": "cluster" if s.redis_cluster else "single",
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss0,
    }


def main() -> int:
    engine, applicants, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print(json.dumps(run_one(engine, applicants, days, workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
