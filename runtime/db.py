"""Postgres connections: one pool per process for requests, plain connections for long jobs.

Every connection carries bounded waits (a statement timeout, a lock timeout, an
idle-in-transaction timeout and TCP keepalives), so a stalled server or a held lock turns
into an error within seconds instead of a frozen page.  Jobs that legitimately run long
(a bulk load, a point-in-time join over a million loans, materialization) ask for
``job=True``: no statement timeout, the same lock and keepalive limits.

Server-side timeouts cannot help when the path to the server stalls while the TCP
connection stays open (a stuck proxy or load balancer keeps acknowledging packets, so
keepalives and tcp_user_timeout never fire, and the server never sees the query).  So every
connection here is a ``WatchedConnection``: when no reply has come after
``timeouts.reply_s``, a second, short-lived connection asks Postgres whether it is still
working on the first one's request (pg_stat_activity).  If it is (a slow query, a lock
wait: the server-side timeouts bound those), the wait goes on; if the server cannot be
reached, or is not working on it, the connection is closed and the caller gets
``DatabaseUnavailable`` with one sentence, within a few seconds.  A request's connection
also never waits past its statement timeout plus a margin.
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


class ServerStalled(DatabaseUnavailable):
    """An open connection got no reply, and Postgres is not working on its request (or cannot be reached)."""


def connect_kwargs(settings: Settings, *, job: bool = False, dbname: str | None = None, probe: bool = False) -> dict:
    """libpq keyword arguments with the bounded waits of a request (or of a job; or of the
    short-lived connection that checks on a silent one: libpq's shortest connect timeout)."""
    t = settings.timeouts
    options = [
        f"-c statement_timeout={0 if job else int(t.statement_s * 1000)}",
        f"-c lock_timeout={int(t.lock_s * 1000)}",
        f"-c idle_in_transaction_session_timeout={int(t.idle_in_transaction_s * 1000)}",
    ]
    kwargs = {
        **settings.pg_kwargs(dbname),
        "options": " ".join(options),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": int(t.tcp_user_s * 1000),
    }
    if probe:
        kwargs["connect_timeout"] = 2
        kwargs["application_name"] = "loan-desk liveness check"
    return kwargs


_WaitTimeout = getattr(psycopg.errors, "_WaitTimeout", None)  # psycopg >= 3.2's wait timeout
_WAIT_INTERVAL = 0.1
# After a watched wait gave up, the next requests of this process fail at once for a moment
# with the same sentence (rather than each waiting again): see _probe.
_recent_failure: dict[str, tuple[float, str, type]] = {}
FAILURE_MEMORY_S = 2.0


class WatchedConnection(psycopg.Connection):
    """A psycopg connection that never waits silently for a server that stopped answering."""

    _ld_settings: Settings | None = None
    _ld_limit_s: float | None = None  # a request's longest wait; None for jobs
    _ld_quick = False  # pool checks: an empty query answers at once or the connection is dropped

    def watch(self, settings: Settings, *, job: bool) -> WatchedConnection:
        self._ld_settings = settings
        t = settings.timeouts
        self._ld_limit_s = None if job else t.statement_s + t.reply_s + 1.0
        return self

    def wait(self, gen, interval: float = _WAIT_INTERVAL, timeout: float | None = None):
        s = self._ld_settings
        if s is None or timeout is not None or _WaitTimeout is None:
            return super().wait(gen, interval, timeout)
        started = time.monotonic()
        step = s.timeouts.reply_s
        while True:
            try:
                return super().wait(gen, interval, timeout=step)
            except _WaitTimeout:
                pass
            waited = time.monotonic() - started
            why = self._why_no_reply(waited)
            if why is None:
                continue
            if why == "idle":  # the reply may be in flight this very moment: one last short wait
                try:
                    return super().wait(gen, interval, timeout=0.3)
                except _WaitTimeout:
                    why = "the server is not working on this request: its reply was lost on the way"
            waited = time.monotonic() - started
            self.pgconn.finish()  # unknown state: never reuse it (the pool drops closed connections)
            msg = f"Postgres at {s.pg_where} stopped answering (no reply within {waited:.0f} s; {why})"
            if not self._ld_quick:  # a pool check only drops that one connection; the pool tries another
                _recent_failure[_failure_key(s)] = (time.monotonic(), msg, ServerStalled)
            raise ServerStalled(msg)

    def _why_no_reply(self, waited: float) -> str | None:
        """None while Postgres is still working on this connection's request; else why to give up."""
        if self._ld_quick:
            return "a connection check got no answer"
        if self._ld_limit_s is not None and waited >= self._ld_limit_s:
            return "longer than the statement timeout"
        s = self._ld_settings
        pid = self.info.backend_pid
        try:
            with psycopg.connect(**connect_kwargs(s, probe=True), autocommit=True) as probe:
                row = probe.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        except psycopg.Error as exc:
            if exc.sqlstate:  # the server answered (e.g. too many clients): it is alive, keep waiting
                return None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"a second connection failed too: {first}"
        if row and row[0] == "active":  # running, or waiting for a lock: server-side timeouts bound it
            return None
        return "idle"


def _failure_key(settings: Settings) -> str:
    return f"loan-desk {settings.pg_where}"


def connect(settings: Settings, *, job: bool = False, autocommit: bool = True, dbname: str | None = None):
    """A new connection of its own (jobs, the CLI, anything that holds a session-level lock)."""
    conn = WatchedConnection.connect(**connect_kwargs(settings, job=job, dbname=dbname), autocommit=autocommit)
    return conn.watch(settings, job=job)


def _check(conn: WatchedConnection) -> None:
    """The pool's check before handing out a connection: an empty query, answered at once."""
    conn._ld_quick = True
    try:
        ConnectionPool.check_connection(conn)
    finally:
        conn._ld_quick = False


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
                    connection_class=WatchedConnection,
                    configure=lambda conn: conn.watch(settings, job=False),
                    min_size=0,
                    max_size=settings.pool_size,
                    timeout=settings.timeouts.connect_s + 1,
                    open=True,
                    name=_failure_key(settings),
                    check=_check,
                )
                _pools[key] = p
    return p


def _probe(settings: Settings, p: ConnectionPool) -> None:
    """When the pool holds no connection, connect once directly: a refused or stalled server
    fails here within the connect timeout instead of after the pool's whole wait, and the
    failure is remembered for a moment so a page's next queries fail at once too."""
    key = p.name
    failed = _recent_failure.get(key)
    if failed and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
        raise failed[2](failed[1])
    if p.get_stats().get("pool_size", 0) > 0:
        return
    try:
        psycopg.connect(**connect_kwargs(settings)).close()
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"Postgres at {settings.pg_where} is not reachable ({first})"
        _recent_failure[key] = (time.monotonic(), msg, DatabaseUnavailable)
        raise DatabaseUnavailable(msg) from None
    _recent_failure.pop(key, None)


# A page run (one run of a Streamlit script, on its own thread) that met a held lock does not
# wait for it again: its later queries fail at once with the same cause, so the page shows one
# sentence after one lock timeout instead of one per query.  Only threads that called
# page_run() take part (the CLI and jobs never do), and only for one lock timeout's length.
_page = threading.local()


def page_run() -> None:
    """Mark the start of a page run on this thread (pages/_ui.require and streamlit_app call it)."""
    _page.active = True
    _page.busy = None


def _busy_check(settings: Settings) -> None:
    busy = getattr(_page, "busy", None)
    if busy and time.monotonic() - busy[0] < settings.timeouts.lock_s:
        raise psycopg.errors.LockNotAvailable(busy[1])


@contextmanager
def connection(settings: Settings):
    """A pooled autocommit connection for one request; returned to the pool afterwards."""
    p = pool(settings)
    _busy_check(settings)
    _probe(settings, p)
    try:
        with p.connection() as conn:
            yield conn
    except psycopg.errors.LockNotAvailable as exc:
        if getattr(_page, "active", False):
            _page.busy = (time.monotonic(), str(exc))
        raise
    except PoolTimeout as exc:
        msg = f"no connection to Postgres at {settings.pg_where} within {settings.timeouts.connect_s + 1:.0f} s"
        _recent_failure[p.name] = (time.monotonic(), msg, DatabaseUnavailable)
        raise DatabaseUnavailable(msg) from exc


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
