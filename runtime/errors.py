"""Turn exceptions from services and libraries into one clear sentence."""

from __future__ import annotations


def explain(exc: BaseException) -> str:
    import psycopg
    import redis

    from runtime.settings import Settings

    try:
        s = Settings.from_env()
        pg, rd = s.pg_where, s.redis_where
    except ValueError as bad:
        return str(bad)
    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"Postgres at {pg} is not reachable ({first}); start it with `uv run loan-desk services`"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing in {pg} ({str(exc).splitlines()[0]}); run `uv run loan-desk load` first"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return f"Valkey at {rd} is still loading its dataset; try again in a moment"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"Valkey at {rd} is not reachable ({exc}); start it with `uv run loan-desk services`"
    msg = str(exc).strip() or type(exc).__name__
    return msg.splitlines()[0] if len(msg) > 400 else msg
