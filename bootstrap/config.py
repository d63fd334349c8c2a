"""Connection settings shared by every part of Loan Desk.

Postgres is configured through the standard libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE, PGSSLMODE) and Valkey through REDIS_URL.  The defaults match
docker-compose.yml.  ``feast_env`` turns these into the variables that
feature_repo/feature_store.yaml reads, so the feast CLI sees what the app sees.
"""

from __future__ import annotations

import os
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

# Setting any of these means "use my servers"; PGSSLMODE alone does not name a server.
ENV_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "REDIS_URL")


def home() -> Path:
    """The project's data folder (embedded servers, model, secrets); git-ignored."""
    return Path(os.environ.get("LOAN_DESK_HOME", ROOT / ".loan-desk")).resolve()


def model_dir() -> Path:
    return Path(os.environ.get("LOAN_DESK_MODEL_DIR", home() / "model")).resolve()


def any_env_set() -> bool:
    return any(os.environ.get(v) for v in ENV_VARS)


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
            "connect_timeout": 3,
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
        }


def export_feast_env(settings: Settings | None = None) -> dict[str, str]:
    """Put the feature_store.yaml variables into this process's environment."""
    env = (settings or Settings.from_env()).feast_env()
    os.environ.update(env)
    return env
