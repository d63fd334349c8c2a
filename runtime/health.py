"""Whether Postgres and Valkey answer, and whether an exception means one of them is down.

For callers above runtime/ (the Decision API) that must not import psycopg or redis
themselves.  Every check is bounded by the settings' timeouts.
"""

from __future__ import annotations

import threading

from runtime import db
from runtime.migrations import SchemaMissing
from runtime.settings import REDIS_CONNECT_TIMEOUT_S, REDIS_SOCKET_TIMEOUT_S, Settings

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def postgres(settings: Settings) -> str | None:
    """None when Postgres answers, else one sentence saying why not."""
    try:
        with db.connection(settings) as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        return unavailable(exc, settings) or f"Postgres at {settings.pg_where} failed: {_first_line(exc)}"
    return None


def valkey(settings: Settings) -> str | None:
    """None when Valkey answers a PING, else one sentence saying why not."""
    import redis

    key = settings.redis_url
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = redis.Redis.from_url(
                key, socket_timeout=REDIS_SOCKET_TIMEOUT_S, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S
            )
            _clients[key] = client
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"Valkey at {settings.redis_where} is not reachable ({_first_line(exc)})"
    return None


def unavailable(exc: BaseException, settings: Settings) -> str | None:
    """One sentence when ``exc`` means Postgres is down, stalled or not set up; else None."""
    import psycopg

    if isinstance(exc, SchemaMissing):
        return str(exc)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing in {settings.pg_where}: run `uv run loan-desk api` (it migrates) or `loan-desk`"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        if isinstance(exc, db.DatabaseUnavailable):
            return str(exc)
        return f"Postgres at {settings.pg_where} is not reachable ({_first_line(exc)})"
    # Feast's SQL registry reaches the same Postgres through SQLAlchemy.
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        return f"Postgres at {settings.pg_where} (Feast's registry) is not reachable ({_first_line(exc.orig or exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
