"""Settings shared by every part of Loan Desk, read once from the environment.

Postgres is configured through the standard libpq variables (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGDATABASE, PGSSLMODE) and Valkey through REDIS_URL.  The defaults match
docker-compose.yml.  REDIS_URL forms:

* ``redis://[[user]:password@]host:port/db`` (or ``valkey://``): one server;
* ``rediss://...`` (or ``valkeys://``): the same over TLS, for managed services;
* ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (also ``rediss+cluster://``,
  ``valkey+cluster://``, ``valkeys+cluster://``): a Valkey/Redis Cluster, given by one or more
  seed nodes (the client discovers the rest).  ``LOAN_DESK_REDIS_CLUSTER=1`` with a plain
  ``redis://`` URL means the same.  A cluster has no database numbers: a ``/db`` other than 0
  is refused.  Nothing is detected by asking the server: the URL says what it is, so a
  misconfiguration fails at start with one sentence instead of halfway through a write.

Nothing here writes the environment: ``feast_env`` only returns the variables that
feature_repo/feature_store.yaml reads, for `loan-desk env` (the feast CLI in another terminal)
and for the Feast configuration built in process (feast_ext.store).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

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
# LOAN_DESK_OFFLINE picks the offline side of Feast: Postgres (feature_store.yaml) or Spark over
# a Parquet export (feature_store.spark.yaml, README "Spark profile").
OFFLINE_PROFILES = ("postgres", "spark")
PROJECT_DEFAULT = {"postgres": "credit_scoring", "spark": "credit_scoring_spark"}
# Cluster reads: attempts after the first on MOVED/ASK/TRYAGAIN/CLUSTERDOWN or a lost node, and
# the pause between them.  Each failed attempt refreshes the slot map, which may itself wait one
# socket timeout on the hung node, so a hung primary costs a read at most about
# (1 + REDIS_CLUSTER_RETRIES) * (2 * socket timeout + backoff): 2.1 s.  One retry is enough to
# recover on its own after a failover (the next read uses the refreshed map).
REDIS_CLUSTER_RETRIES = 1
REDIS_CLUSTER_BACKOFF_S = 0.05
_SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}

# Postgres at scale (README "Postgres at scale"): credit_history is hash-partitioned by dob_ssn into
# LOAN_DESK_PG_PARTITIONS partitions at load time (0 or 1: one plain table); materialization and
# the training join run LOAN_DESK_MATERIALIZE_WORKERS workers, each on its own connections, one
# per group of partitions.
PG_PARTITIONS_DEFAULT = 8
PG_PARTITIONS_MAX = 256
MATERIALIZE_WORKERS_MAX = 64


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _count(name: str, default: int, low: int, high: int) -> int:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


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
    # "postgres" or "spark" (LOAN_DESK_OFFLINE); the Spark profile reads the Parquet export in
    # export_dir (LOAN_DESK_EXPORT_DIR, default .loan-desk/export) and is its own Feast project.
    offline: str = "postgres"
    export_dir: str | None = None
    # Valkey/Redis Cluster (REDIS_URL redis+cluster://... or LOAN_DESK_REDIS_CLUSTER=1): the seed
    # nodes; redis_host/redis_port are the first of them.
    redis_cluster: bool = False
    redis_nodes: tuple[tuple[str, int], ...] = ()
    redis_tls: bool = False
    redis_username: str | None = None
    # Hash partitions of credit_history made by a load (1: unpartitioned); LOAN_DESK_PG_PARTITIONS.
    pg_partitions: int = PG_PARTITIONS_DEFAULT
    # Parallel workers of a materialization and of the point-in-time join; LOAN_DESK_MATERIALIZE_WORKERS.
    materialize_workers: int = field(default_factory=default_workers)

    @classmethod
    def from_env(cls) -> Settings:
        env = {k: os.environ.get(k) or v for k, v in PG_DEFAULTS.items()}
        url = os.environ.get("REDIS_URL") or REDIS_DEFAULT
        redis = parse_redis_url(url, cluster=os.environ.get("LOAN_DESK_REDIS_CLUSTER", "") in ("1", "true", "yes"))
        try:
            port = int(env["PGPORT"])
        except ValueError as exc:
            raise ValueError(f"bad port or database number in the settings: {exc}") from None
        offline = (os.environ.get("LOAN_DESK_OFFLINE") or "postgres").strip().lower()
        if offline not in OFFLINE_PROFILES:
            raise ValueError(f"LOAN_DESK_OFFLINE must be postgres or spark, got {offline[:40]!r}")
        export_dir = os.environ.get("LOAN_DESK_EXPORT_DIR") or None
        if export_dir and ("`" in export_dir or "\n" in export_dir):
            raise ValueError("LOAN_DESK_EXPORT_DIR must not contain backquotes or line breaks")
        project = os.environ.get("LOAN_DESK_FEAST_PROJECT") or PROJECT_DEFAULT[offline]
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
            project=project,
            materializer=materializer,
            timeouts=Timeouts.from_env(),
            offline=offline,
            export_dir=export_dir,
            pg_partitions=max(1, _count("LOAN_DESK_PG_PARTITIONS", PG_PARTITIONS_DEFAULT, 0, PG_PARTITIONS_MAX)),
            materialize_workers=_count("LOAN_DESK_MATERIALIZE_WORKERS", default_workers(), 1, MATERIALIZE_WORKERS_MAX),
            **redis,
        )

    # --- the Spark profile -----------------------------------------------------------
    def export_location(self) -> str:
        """Where `loan-desk export --parquet` writes and the Spark sources read: a local folder
        (absolute, its link not resolved: re-exports swap what it points to) or a URL (s3a://...)."""
        raw = self.export_dir or str(home() / "export")
        return raw.rstrip("/") if "://" in raw else os.path.abspath(raw)

    def feast_config_file(self) -> Path:
        """The Feast configuration of the offline profile."""
        return FEATURE_REPO / ("feature_store.spark.yaml" if self.offline == "spark" else "feature_store.yaml")

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
    def redis_seeds(self) -> tuple[tuple[str, int], ...]:
        return self.redis_nodes or ((self.redis_host, self.redis_port),)

    @property
    def redis_type(self) -> str:
        """Feast's ``online_store.redis_type``."""
        return "redis_cluster" if self.redis_cluster else "redis"

    def _redis_url(self, with_auth: bool) -> str:
        scheme = ("rediss" if self.redis_tls else "redis") + ("+cluster" if self.redis_cluster else "")
        auth = ""
        if with_auth and (self.redis_password or self.redis_username):
            user = quote(self.redis_username or "", safe="")
            auth = f"{user}:{quote(self.redis_password or '', safe='')}@"
        hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.redis_seeds)
        return f"{scheme}://{auth}{hosts}" + ("" if self.redis_cluster else f"/{self.redis_db}")

    @property
    def redis_url(self) -> str:
        return self._redis_url(with_auth=True)

    @property
    def redis_where(self) -> str:
        """Where Valkey is, for messages (never the password)."""
        return self._redis_url(with_auth=False)

    def redis_kwargs(self) -> dict:
        """redis-py connection arguments shared by every client (timeouts always set)."""
        kw: dict = {"socket_timeout": REDIS_SOCKET_TIMEOUT_S, "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S}
        if self.redis_password:
            kw["password"] = self.redis_password
        if self.redis_username:
            kw["username"] = self.redis_username
        if self.redis_tls:
            kw["ssl"] = True
        return kw

    def redis_client(self, **overrides):
        """A redis-py client for these settings: ``RedisCluster`` for a cluster (slot-aware,
        refreshing its slot map on MOVED), else ``Redis`` on db ``redis_db``.  ``overrides``
        replace connection arguments (e.g. a longer ``socket_timeout`` for bulk work)."""
        import redis
        from redis.cluster import ClusterNode, RedisCluster

        kw = {**self.redis_kwargs(), **overrides}
        if self.redis_cluster:
            from redis.backoff import ConstantBackoff
            from redis.retry import Retry

            kw.setdefault("retry", Retry(ConstantBackoff(REDIS_CLUSTER_BACKOFF_S), REDIS_CLUSTER_RETRIES))
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.redis_seeds], **kw)
        return redis.Redis(host=self.redis_host, port=self.redis_port, db=self.redis_db, **kw)

    def feast_redis_connection(self) -> str:
        """Feast's own connection-string format: host:port[,host:port...],key=value,...

        A cluster lists its seed nodes and carries no ``db`` (Feast builds a RedisCluster from
        ``redis_type: redis_cluster``); TLS adds ``ssl=true``."""
        parts = [f"{h}:{p}" for h, p in self.redis_seeds]
        if not self.redis_cluster:
            parts.append(f"db={self.redis_db}")
        parts += [f"socket_timeout={REDIS_SOCKET_TIMEOUT_S}", f"socket_connect_timeout={REDIS_CONNECT_TIMEOUT_S}"]
        if self.redis_tls:
            parts.append("ssl=true")
        if self.redis_username:
            parts.append(f"username={self.redis_username}")
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
        """Every variable feature_repo/feature_store.yaml (or .spark.yaml) and features.py read."""
        spark = {}
        if self.offline == "spark":
            spark = {"LOAN_DESK_EXPORT_DIR": self.export_location(), "LOAN_DESK_SPARK_PYTHON": sys.executable}
        return {
            "PGHOST": self.pghost,
            "PGPORT": str(self.pgport),
            "PGUSER": self.pguser,
            "PGPASSWORD": self.pgpassword,
            "PGDATABASE": self.pgdatabase,
            "PGSSLMODE": self.pgsslmode,
            "REDIS_URL": self.redis_url,
            "LOAN_DESK_FEAST_REDIS": self.feast_redis_connection(),
            "LOAN_DESK_REDIS_TYPE": self.redis_type,
            "LOAN_DESK_REGISTRY_URL": self.registry_url(),
            "LOAN_DESK_FEAST_PROJECT": self.project,
            "LOAN_DESK_OFFLINE": self.offline,
            "LOAN_DESK_MATERIALIZE_WORKERS": str(self.materialize_workers),
            # the feast CLI reads the profile's configuration without a -f (and a terminal that
            # switches profiles with another `eval` switches it too)
            "FEAST_FS_YAML_FILE_PATH": str(self.feast_config_file()),
            **spark,
        }


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


def parse_redis_url(url: str, cluster: bool = False) -> dict:
    """REDIS_URL → the Settings fields that describe Valkey (see the module's docstring)."""
    shown = re.sub(r"//[^@/]*@", "//***@", url)[:120]  # never echo a password
    usage = (
        "REDIS_URL must look like redis://host:port/db, rediss://user:password@host:port/db (TLS) "
        f"or redis+cluster://host:port,host:port (a cluster), got {shown!r}"
    )
    scheme, sep, rest = url.partition("://")
    base, plus, kind = scheme.lower().partition("+")
    if not sep or base not in _SCHEMES or (plus and kind != "cluster"):
        raise ValueError(usage)
    cluster = cluster or bool(plus)
    auth, at, hostpart = rest.rpartition("@")
    if not at:
        auth, hostpart = "", rest
    hostpart, _, path = hostpart.partition("/")
    path = path.split("?")[0]
    user, _, password = auth.partition(":") if auth else ("", "", "")
    user, password = unquote(user), unquote(password)
    nodes = []
    for item in hostpart.split(","):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([A-Za-z0-9_.-]+)(?::(\d{1,5}))?", item.strip())
        if not m:
            raise ValueError(usage)
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4) or 6379)
        if not 0 < port < 65536:
            raise ValueError(f"REDIS_URL names port {port}, which is not a TCP port")
        nodes.append((host, port))
    if len(nodes) > 1 and not cluster:
        raise ValueError("REDIS_URL lists several hosts: use redis+cluster://host:port,host:port for a cluster")
    try:
        db = int(path or 0)
    except ValueError:
        raise ValueError(f"REDIS_URL's database must be a number, got {path[:20]!r}") from None
    if not 0 <= db < 1_000_000:
        raise ValueError(f"REDIS_URL's database must be a number from 0, got {db}")
    if cluster and db:
        raise ValueError("a Valkey/Redis Cluster has only database 0: drop the /db from REDIS_URL")
    if "," in password or "," in user:
        raise ValueError("the Valkey password and user must not contain ',' (Feast's connection string splits on it)")
    return {
        "redis_host": nodes[0][0],
        "redis_port": nodes[0][1],
        "redis_db": db,
        "redis_password": password or None,
        "redis_cluster": cluster,
        "redis_nodes": tuple(nodes) if cluster else (),
        "redis_tls": _SCHEMES[base],
        "redis_username": user or None,
    }
