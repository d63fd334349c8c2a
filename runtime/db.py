"""Postgres connections: one pool per process for requests, plain connections for long jobs.

Every connection carries bounded waits (a statement timeout, a lock timeout, an
idle-in-transaction timeout and TCP keepalives), so a stalled server or a held lock turns
into an error within seconds instead of a frozen page.  Jobs that legitimately run long
(a bulk load, a point-in-time join over a million loans, materialization) ask for
``job=True``: no statement timeout, the same lock and keepalive limits.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from runtime.settings import Settings

_pools: dict[tuple, ConnectionPool] = {}
_pools_lock = threading.Lock()


class DatabaseUnavailable(psycopg.OperationalError):
    """No connection could be had in time (the server is down, stalled or full)."""


def connect_kwargs(settings: Settings, *, job: bool = False, dbname: str | None = None) -> dict:
    """libpq keyword arguments with the bounded waits of a request (or of a job)."""
    t = settings.timeouts
    options = [
        f"-c statement_timeout={0 if job else int(t.statement_s * 1000)}",
        f"-c lock_timeout={int(t.lock_s * 1000)}",
        f"-c idle_in_transaction_session_timeout={int(t.idle_in_transaction_s * 1000)}",
    ]
    return {
        **settings.pg_kwargs(dbname),
        "options": " ".join(options),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": int(t.tcp_user_s * 1000),
    }


def connect(settings: Settings, *, job: bool = False, autocommit: bool = True, dbname: str | None = None):
    """A new connection of its own (jobs, the CLI, anything that holds a session-level lock)."""
    return psycopg.connect(**connect_kwargs(settings, job=job, dbname=dbname), autocommit=autocommit)


def pool(settings: Settings) -> ConnectionPool:
    """This process's pool for ``settings`` (opened on first use, at most ``pool_size`` connections)."""
    key = (settings.pg_where, settings.pgpassword, settings.timeouts)
    p = _pools.get(key)
    if p is None:
        with _pools_lock:
            p = _pools.get(key)
            if p is None:
                p = ConnectionPool(
                    kwargs={**connect_kwargs(settings), "autocommit": True},
                    min_size=0,
                    max_size=settings.pool_size,
                    timeout=settings.timeouts.connect_s + 1,
                    open=True,
                    name=f"loan-desk {settings.pg_where}",
                    check=ConnectionPool.check_connection,
                )
                _pools[key] = p
    return p


_recent_failure: dict[tuple, tuple[float, str]] = {}
FAILURE_MEMORY_S = 2.0


def _probe(settings: Settings, p: ConnectionPool) -> None:
    """When the pool holds no connection, connect once directly: a refused or stalled server
    fails here within the connect timeout instead of after the pool's whole wait, and the
    failure is remembered for a moment so a page's next queries fail at once too."""
    key = p.name
    failed = _recent_failure.get(key)
    if failed and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
        raise DatabaseUnavailable(failed[1])
    if p.get_stats().get("pool_size", 0) > 0:
        return
    try:
        psycopg.connect(**connect_kwargs(settings)).close()
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"Postgres at {settings.pg_where} is not reachable ({first})"
        _recent_failure[key] = (time.monotonic(), msg)
        raise DatabaseUnavailable(msg) from None
    _recent_failure.pop(key, None)


@contextmanager
def connection(settings: Settings):
    """A pooled autocommit connection for one request; returned to the pool afterwards."""
    p = pool(settings)
    _probe(settings, p)
    try:
        with p.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise DatabaseUnavailable(
            f"no connection to Postgres at {settings.pg_where} within {settings.timeouts.connect_s + 1:.0f} s"
        ) from exc


def close_pools() -> None:
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


def ensure_database(settings: Settings) -> None:
    """Create the configured database if it does not exist (its tables come from migrations)."""
    try:
        connect(settings).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    try:
        with connect(settings, dbname="postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pgdatabase)))
    except psycopg.errors.DuplicateDatabase:
        pass  # another process created it meanwhile
