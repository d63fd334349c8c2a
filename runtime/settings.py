"""Settings shared by every part of Loan Desk, read once from the environment.

Postgres is configured through the standard libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE, PGSSLMODE) and Valkey through REDIS_URL.  The defaults match
docker-compose.yml.  Nothing here writes the environment: ``feast_env`` only returns the
variables that feature_repo/feature_store.yaml reads, for `loan-desk env` (the feast CLI in
another terminal) and for the Feast configuration built in process (feast_ext.store).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = ROOT / "feature_repo"

PG_DEFAULTS = {
    "PGHOST": "127.0.0.1",
    "PGPORT": "5432",
    "PGUSER": "postgres",
    "PGPASSWORD": "postgres",
    "PGDATABASE": "loan_desk",
    "PGSSLMODE": "prefer",
}
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
# A hung Valkey must never block a caller: redis-py waits forever without these.
REDIS_SOCKET_TIMEOUT_S = 0.5
REDIS_CONNECT_TIMEOUT_S = 0.5

MATERIALIZERS = ("fast", "feast")

# Setting any of these means "use my servers"; PGSSLMODE alone does not name a server.
ENV_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "REDIS_URL")


def home() -> Path:
    """The project's data folder (embedded servers, model, secrets); git-ignored."""
    return Path(os.environ.get("LOAN_DESK_HOME", ROOT / ".loan-desk")).resolve()


def model_dir() -> Path:
    return Path(os.environ.get("LOAN_DESK_MODEL_DIR", home() / "model")).resolve()


def any_env_set() -> bool:
    return any(os.environ.get(v) for v in ENV_VARS)


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw) if raw.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:
        raise ValueError(f"{name} must be a number of seconds between 0 and 86400, got {raw[:40]!r}")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Bounded waits on Postgres (seconds); LOAN_DESK_PG_*_TIMEOUT_S override them."""

    connect_s: float = 3.0
    statement_s: float = 15.0
    lock_s: float = 3.0
    idle_in_transaction_s: float = 30.0
    tcp_user_s: float = 10.0
    # No reply after this long: ask Postgres on a second connection whether it is still
    # working on the request (runtime/db.py), so a stalled network path fails in seconds.
    reply_s: float = 2.0

    @classmethod
    def from_env(cls) -> Timeouts:
        d = cls()
        return cls(
            connect_s=_seconds("LOAN_DESK_PG_CONNECT_TIMEOUT_S", d.connect_s),
            statement_s=_seconds("LOAN_DESK_PG_STATEMENT_TIMEOUT_S", d.statement_s),
            lock_s=_seconds("LOAN_DESK_PG_LOCK_TIMEOUT_S", d.lock_s),
            idle_in_transaction_s=_seconds("LOAN_DESK_PG_IDLE_TX_TIMEOUT_S", d.idle_in_transaction_s),
            tcp_user_s=_seconds("LOAN_DESK_PG_TCP_USER_TIMEOUT_S", d.tcp_user_s),
            reply_s=_seconds("LOAN_DESK_PG_REPLY_TIMEOUT_S", d.reply_s),
        )


@dataclass(frozen=True)
class Settings:
    pghost: str
    pgport: int
    pguser: str
    pgpassword: str
    pgdatabase: str
    pgsslmode: str
    redis_host: str
    redis_port: int
    redis_db: int
    redis_password: str | None
    # Feast project: its name ends every online key, so two projects share a Redis db safely.
    project: str = "credit_scoring"
    # Materialization engine: "fast" (feast_ext.engine, named in feature_store.yaml) or "feast"
    # (Feast's own local engine); LOAN_DESK_MATERIALIZER.
    materializer: str = "fast"
    timeouts: Timeouts = Timeouts()
    pool_size: int = 8

    @classmethod
    def from_env(cls) -> Settings:
        env = {k: os.environ.get(k) or v for k, v in PG_DEFAULTS.items()}
        url = os.environ.get("REDIS_URL") or REDIS_DEFAULT
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "valkey") or not parsed.hostname:
            raise ValueError(f"REDIS_URL must look like redis://host:port/db, got {url!r}")
        try:
            db = int((parsed.path or "/0").strip("/") or 0)
            port = int(env["PGPORT"])
        except ValueError as exc:
            raise ValueError(f"bad port or database number in the settings: {exc}") from None
        project = os.environ.get("LOAN_DESK_FEAST_PROJECT") or "credit_scoring"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]{0,62}", project):
            raise ValueError(f"LOAN_DESK_FEAST_PROJECT must be letters, digits and '_', got {project[:40]!r}")
        materializer = os.environ.get("LOAN_DESK_MATERIALIZER") or "fast"
        if materializer not in MATERIALIZERS:
            raise ValueError(
                f"LOAN_DESK_MATERIALIZER must be one of {', '.join(MATERIALIZERS)}, got {materializer[:40]!r}"
            )
        return cls(
            pghost=env["PGHOST"],
            pgport=port,
            pguser=env["PGUSER"],
            pgpassword=env["PGPASSWORD"],
            pgdatabase=env["PGDATABASE"],
            pgsslmode=env["PGSSLMODE"],
            redis_host=parsed.hostname,
            redis_port=parsed.port or 6379,
            redis_db=db,
            redis_password=parsed.password,
            project=project,
            materializer=materializer,
            timeouts=Timeouts.from_env(),
        )

    # --- Postgres -----------------------------------------------------------------
    def pg_kwargs(self, dbname: str | None = None) -> dict:
        return {
            "host": self.pghost,
            "port": self.pgport,
            "user": self.pguser,
            "password": self.pgpassword,
            "dbname": dbname or self.pgdatabase,
            "sslmode": self.pgsslmode,
            "connect_timeout": max(1, round(self.timeouts.connect_s)),
        }

    @property
    def pg_where(self) -> str:
        return f"postgresql://{self.pguser}@{self.pghost}:{self.pgport}/{self.pgdatabase}"

    # --- Valkey -------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        auth = f":{quote(self.redis_password)}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def redis_where(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def feast_redis_connection(self) -> str:
        """Feast's own connection-string format: host:port,key=value,..."""
        parts = [
            f"{self.redis_host}:{self.redis_port}",
            f"db={self.redis_db}",
            f"socket_timeout={REDIS_SOCKET_TIMEOUT_S}",
            f"socket_connect_timeout={REDIS_CONNECT_TIMEOUT_S}",
        ]
        if self.redis_password:
            parts.append(f"password={self.redis_password}")
        return ",".join(parts)

    def registry_url(self) -> str:
        user = quote(self.pguser, safe="")
        pw = quote(self.pgpassword, safe="")
        return (
            f"postgresql+psycopg://{user}:{pw}@{self.pghost}:{self.pgport}/{self.pgdatabase}?sslmode={self.pgsslmode}"
        )

    def feast_env(self) -> dict[str, str]:
        """Every variable feature_repo/feature_store.yaml reads."""
        return {
            "PGHOST": self.pghost,
            "PGPORT": str(self.pgport),
            "PGUSER": self.pguser,
            "PGPASSWORD": self.pgpassword,
            "PGDATABASE": self.pgdatabase,
            "PGSSLMODE": self.pgsslmode,
            "REDIS_URL": self.redis_url,
            "LOAN_DESK_FEAST_REDIS": self.feast_redis_connection(),
            "LOAN_DESK_REGISTRY_URL": self.registry_url(),
            "LOAN_DESK_FEAST_PROJECT": self.project,
        }
