"""Turn exceptions from services and libraries into one clear sentence."""

from __future__ import annotations

import re

MAX_ECHO = 40


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """User input echoed back in a message: cut to a short prefix, with control characters shown
    as escapes (a NUL or a newline never reaches the screen raw)."""
    text = str(value)
    cut = text[:limit]
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in cut)
    return shown + ("…" if len(text) > limit else "")


def explain(exc: BaseException) -> str:
    import psycopg
    import redis

    from runtime.db import DatabaseUnavailable, ServerStalled
    from runtime.settings import Settings

    try:
        s = Settings.from_env()
        pg, rd = s.pg_where, s.redis_where
        t = s.timeouts
    except ValueError as bad:
        return str(bad)
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return (
            f"Postgres is busy: another session holds a lock on the data this needs, and it was not released "
            f"within {t.lock_s:g} s; nothing was changed — try again in a moment"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return (
            f"Postgres did not finish in time (the statement timeout is {t.statement_s:g} s); "
            "nothing was changed — try again in a moment"
        )
    if isinstance(exc, ServerStalled):
        return f"{_first_line(exc)}; nothing more was sent — try again once it answers"
    if isinstance(exc, DatabaseUnavailable):  # says where already
        return f"{_first_line(exc)}; check that it runs and is reachable (`uv run loan-desk services` starts it)"
    if isinstance(exc, psycopg.OperationalError):
        return f"Postgres at {pg} is not reachable ({_first_line(exc)}); start it with `uv run loan-desk services`"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing in {pg} ({_first_line(exc)}); run `uv run loan-desk load` first"
    if isinstance(exc, psycopg.errors.DataError):
        return f"Postgres refused a value ({_first_line(exc)}); nothing was changed"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return f"Valkey at {rd} is still loading its dataset; try again in a moment"
    problem = redis_problem(exc, s.redis_tls)
    if problem is not None:
        return f"Valkey at {rd} {problem}; check REDIS_URL, or start it with `uv run loan-desk services`"
    msg = str(exc).strip() or type(exc).__name__
    return msg.splitlines()[0] if len(msg) > 400 else msg


_CLUSTER_REPLY = re.compile(r"^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b")
_PIPELINE_COMMAND = re.compile(r"Command # ?\d+ \(.*?\) of pipeline caused error: ", re.S)


def redis_problem(exc: BaseException, tls: bool = False) -> str | None:
    """What follows "Valkey at <where>" when ``exc`` means Valkey (one server or a cluster) cannot
    serve, else None; ``tls``: the settings ask for TLS (rediss://).

    Never carries key bytes (redis-py's pipeline errors quote the failing command)."""
    import ssl

    import redis
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        ClusterDownError,
        ClusterError,
        RedisClusterException,
        TryAgainError,
    )

    text = _PIPELINE_COMMAND.sub("", str(exc)).strip()
    text = (text.splitlines() or [type(exc).__name__])[0][:200]
    known = (redis.exceptions.RedisError, RedisClusterException, OSError)
    if not isinstance(exc, known):
        return None
    if isinstance(exc, AuthenticationError) or re.search(
        r"WRONGPASS|NOAUTH|invalid password|invalid username|AUTH .*password|Authentication required", text
    ):
        return "refused the password (or user) in REDIS_URL"
    if isinstance(exc, ssl.SSLError) or re.search(r"SSL|TLS|wrong version number", text):
        return f"did not complete a TLS handshake ({text}): is the port TLS-enabled (rediss://) or plain (redis://)?"
    if isinstance(exc, AskError | TryAgainError | ClusterDownError) or _CLUSTER_REPLY.match(text):
        return f"is a cluster in change (slots moving or a failover under way) that did not settle in time ({text})"
    if tls and re.search(r"Timeout|timed out", text):
        return f"did not answer a TLS handshake in time ({text}): is the port TLS-enabled, or should it be redis://?"
    if isinstance(exc, RedisClusterException) and "at least one reachable node" in text:
        return f"is not reachable: no seed node answered ({text.split(': ', 1)[-1]})"
    if isinstance(exc, RedisClusterException | ClusterError):
        return f"has no cluster node that could serve the request ({text})"
    return f"is not reachable ({text})"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
