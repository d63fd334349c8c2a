"""Loan Desk's batch materialization engine: Feast's Redis online format, written fast.

``feature_store.yaml`` selects it with ``batch_engine: {type: feast_ext.engine.LoanDeskEngine}``,
so ``feast materialize``, ``feast materialize-incremental`` and ``FeatureStore.materialize[_incremental]``
all run it, and Feast keeps the registry's state itself (the view's MATERIALIZING state, the
materialization intervals, rolling back on an error).  ``LOAN_DESK_MATERIALIZER=feast`` builds
the configuration with ``batch_engine: local`` instead: Feast's own engine, unchanged.

Feast's local engine pulls the latest row per entity into Arrow, turns every value into a
``ValueProto`` object and hands lists of tuples to ``RedisOnlineStore.online_write_batch``, which
(without ``skip_dedup``) first reads every key's timestamp and then writes through redis-py's
pipeline: most of its time is Python object churn, not I/O.  For each task this engine

* runs one ``SELECT DISTINCT ON (join key) ... ORDER BY join key, event_timestamp DESC,
  created_timestamp DESC`` over the task's window (``BETWEEN start AND end``, as Feast's
  ``pull_latest_from_table_or_query``) on a binary server-side cursor, the next chunk fetched
  in a thread while the current one is written;
* encodes keys, field names and values with Feast's own building blocks: ``_mmh3`` field names
  of the view's ``_versioned_fv_name``, ``ValueProto``/``Timestamp`` messages serialized by
  protobuf (memoized per distinct value), the entity key in Feast's v3 layout checked at start
  against ``serialize_entity_key`` (other entity types use Feast's function row by row);
* writes raw Redis protocol: one ``HSET key _ts:<view> ts <mmh3(field)> value ...`` per entity
  (plus ``EXPIRE`` when ``key_ttl_seconds`` is set), pipelined in chunks on one connection;
  on a Valkey/Redis Cluster (``redis_type: redis_cluster``) a chunk's keys are grouped by hash
  slot into one pipeline per primary, and a chunk is sent again after a ``MOVED``/``ASK``/
  ``TRYAGAIN``/``CLUSTERDOWN`` reply or a lost node, once the slot map is refreshed (HSET of
  the same values is idempotent);
* applies Feast's dedup rule unless ``online_store.skip_dedup`` is set or the caller asks to
  overwrite (``engine.run(dedup=False)``): a row is skipped when the stored ``_ts:<view>`` is
  the same instant or newer.

Postgres comes from ``repo_config.offline_store``, Redis from ``repo_config.online_store``.
What it cannot serve (another offline store or source type, a Redis sentinel,
several join keys, transformations, views that also write offline) fails the task with
``WriterUnsupported``, saying to use Feast's engine; nothing is written then.

``tests/test_online_writer.py`` materializes the same data through ``FeatureStore.materialize``
with Feast's engine and with this one into two Redis databases and compares every key, hash
field and TTL.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from feast.infra.common.materialization_job import MaterializationJob, MaterializationJobStatus
from feast.infra.compute_engines.base import ComputeEngine
from feast.repo_config import FeastConfigBaseModel
from psycopg import sql
from pydantic import Field, model_validator

DEFAULT_CHUNK_ROWS = 20_000
_CACHE_LIMIT = 500_000  # distinct encoded values kept per column before the memo is reset
_EPOCH_US = "(extract(epoch FROM {col}) * 1000000)::bigint"
log = logging.getLogger(__name__)
_USE_FEAST = "use Feast's own engine for it (`batch_engine: local`, or LOAN_DESK_MATERIALIZER=feast)"


class WriterUnsupported(RuntimeError):
    """The configuration or view needs Feast's own engine (e.g. a Redis sentinel)."""


class WorkerStopped(RuntimeError):
    """A worker ended early because another worker of the same view failed."""


class MaterializeWorkerFailed(RuntimeError):
    """A worker of a parallel materialization failed; the others were stopped."""


@dataclass
class ViewResult:
    view: str
    rows: int  # latest rows pulled from the offline store
    written: int  # rows written (rows minus those skipped by the dedup rule)
    seconds: float


@dataclass
class TrackedKeys:
    """The online keys a refresh of one view holds (written, or already up to date)."""

    view: str
    join_keys: tuple[str, ...]
    fields: list[bytes]  # the view's hash fields, as Feast names them (features, then _ts:<view>)
    keys: set[bytes]


@dataclass
class EngineRun:
    """Options and results of the materializations a thread runs inside ``LoanDeskEngine.run``."""

    dedup: bool | None = None  # None: Feast's rule unless online_store.skip_dedup
    track_keys: bool = False
    progress: Callable[[str, int], None] | None = None  # (view, rows pulled so far)
    workers: int | None = None  # None: the engine's configured workers
    views: list[ViewResult] = field(default_factory=list)
    tracked: list[TrackedKeys] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)

    @property
    def written(self) -> int:
        return sum(v.written for v in self.views)


# --- encoding -----------------------------------------------------------------------------------
def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _value_encoder(value_type) -> Callable[[object], bytes]:
    """Python value → serialized ValueProto, the bytes Feast stores for that feature type."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    direct = {
        ValueType.INT64: "int64_val",
        ValueType.INT32: "int32_val",
        ValueType.STRING: "string_val",
        ValueType.DOUBLE: "double_val",
        ValueType.FLOAT: "float_val",
        ValueType.BOOL: "bool_val",
        ValueType.BYTES: "bytes_val",
    }
    empty = Value().SerializeToString()
    attr = direct.get(value_type)
    if attr is not None:

        def make(v):
            return Value(**{attr: v})

        makers = {  # without the keyword-dict of the generic form: this runs once per distinct value
            "int64_val": lambda v: Value(int64_val=v),
            "int32_val": lambda v: Value(int32_val=v),
            "string_val": lambda v: Value(string_val=v),
        }
        make = makers.get(attr, make)

        def encode(v) -> bytes:
            return empty if v is None else make(v).SerializeToString()

    else:  # anything else: Feast's own conversion, one value at a time

        def encode(v) -> bytes:
            return python_values_to_proto_values([v], value_type)[0].SerializeToString()

    return encode


class _KeyEncoder:
    """Entity value → Feast's Redis key: serialize_entity_key(v3) + project.

    For a single join key of type STRING/INT64/INT32 the layout is built directly and checked
    against Feast's own function on sample values; anything else calls Feast's function.
    """

    def __init__(self, join_key: str, value_type, project: str, version: int):
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.value_type import ValueType

        self._project = project
        self._version = version
        attr = {ValueType.STRING: "string_val", ValueType.INT64: "int64_val", ValueType.INT32: "int32_val"}.get(
            value_type
        )

        def feast_key(v) -> bytes:
            return _redis_key(project, EntityKey(join_keys=[join_key], entity_values=[Value(**{attr: v})]), version)

        self._feast = feast_key if attr else None
        self.fast = False
        if attr is None:
            raise WriterUnsupported(f"entity value type {value_type} is not supported by the fast writer")
        if version >= 3:
            name = join_key.encode()
            self._prefix = struct.pack("<II", 1, ValueType.STRING.value) + struct.pack("<I", len(name)) + name
            self._type = struct.pack("<I", value_type.value)
            self._suffix = project.encode()
            self._kind = attr
            samples = ["", "a", "19630621_4278", "é✓"] if attr == "string_val" else [0, 1, -1, 76104, 2**31 - 1]
            if attr == "int64_val":
                samples += [-(2**63), 2**63 - 1]
            self.fast = all(self._build(s) == feast_key(s) for s in samples)

    def _build(self, v) -> bytes:
        if self._kind == "string_val":
            payload = v.encode()
        elif self._kind == "int64_val":
            payload = struct.pack("<q", v)
        else:
            payload = struct.pack("<i", v)
        return b"".join((self._prefix, self._type, struct.pack("<I", len(payload)), payload, self._suffix))

    def __call__(self, v) -> bytes:
        return self._build(v) if self.fast else self._feast(v)


def _timestamp_bytes(epoch_us: int) -> bytes:
    from google.protobuf.timestamp_pb2 import Timestamp

    seconds, micros = divmod(epoch_us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString()


# --- the plan for one feature view -------------------------------------------------------------
@dataclass
class _ViewPlan:
    fv: object
    name: str  # versioned name, as Feast's Redis store uses it
    join_key: str
    source_columns: list[str]  # join key, features (source names)
    feature_names: list[str]
    value_types: list
    table: str
    ts_col: str
    created_col: str | None
    ttl_s: float = 0.0  # the view's TTL in seconds (0: none)
    table_name: str | None = None  # the source's table (None for a query source)

    @property
    def fields(self) -> list[bytes]:
        from feast.infra.online_stores.helpers import _mmh3

        return [_mmh3(f"{self.name}:{n}") for n in self.feature_names] + [f"_ts:{self.name}".encode()]


def check_config(config) -> None:
    """Refuse, with a reason, the stores this engine cannot serve."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

    if not isinstance(config.offline_store, PostgreSQLOfflineStoreConfig):
        raise WriterUnsupported(
            f"the Loan Desk engine reads a PostgreSQL offline store, not {config.offline_store.type!r}: {_USE_FEAST}"
        )
    online = config.online_store
    if not isinstance(online, RedisOnlineStoreConfig) or online.redis_type not in (
        RedisType.redis,
        RedisType.redis_cluster,
    ):
        kind = getattr(online, "redis_type", None) or getattr(online, "type", type(online).__name__)
        kind = getattr(kind, "value", kind)
        raise WriterUnsupported(
            f"the Loan Desk engine writes to one Redis/Valkey server or a cluster, not {kind}: {_USE_FEAST}"
        )
    if config.entity_key_serialization_version < 3:
        raise WriterUnsupported(f"entity_key_serialization_version must be 3 for the Loan Desk engine: {_USE_FEAST}")


def _plan(config, fv) -> _ViewPlan:
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.infra.online_stores.redis import _versioned_fv_name

    src = fv.batch_source
    if not isinstance(src, PostgreSQLSource):
        raise WriterUnsupported(
            f"{fv.name}: its source is a {type(src).__name__}, not a PostgreSQL table: {_USE_FEAST}"
        )
    if getattr(fv, "feature_transformation", None) or getattr(fv, "aggregations", None):
        raise WriterUnsupported(f"{fv.name}: transformations and aggregations are not supported: {_USE_FEAST}")
    if getattr(fv, "offline", False):
        raise WriterUnsupported(
            f"{fv.name}: views that also write to the offline store are not supported: {_USE_FEAST}"
        )
    entities = list(fv.entity_columns)
    if len(entities) != 1:
        raise WriterUnsupported(f"{fv.name}: the Loan Desk engine handles one join key per view: {_USE_FEAST}")
    reverse = {v: k for k, v in (src.field_mapping or {}).items()}
    join_key = entities[0].name
    feats = list(fv.features)
    return _ViewPlan(
        fv=fv,
        name=_versioned_fv_name(fv, config),
        join_key=join_key,
        source_columns=[reverse.get(join_key, join_key)] + [reverse.get(f.name, f.name) for f in feats],
        feature_names=[f.name for f in feats],
        value_types=[entities[0].dtype.to_value_type()] + [f.dtype.to_value_type() for f in feats],
        table=src.get_table_query_string(),
        ts_col=src.timestamp_field,
        created_col=src.created_timestamp_column or None,
        ttl_s=fv.ttl.total_seconds() if fv.ttl else 0.0,
        table_name=source_table(src),
    )


def source_table(src) -> str | None:
    """The table a PostgreSQL source names (``schema.table`` or ``table``), None for a query source."""
    text = src.get_table_query_string().strip()
    return None if text.startswith("(") else text


def lower_bound(plan: _ViewPlan, end: datetime) -> datetime:
    """The oldest event time a row may have to be served at ``end``: the view's TTL before it."""
    floor = datetime(1970, 1, 1, tzinfo=UTC)
    return max(floor, end - timedelta(seconds=plan.ttl_s)) if plan.ttl_s else floor


def is_incremental(plan: _ViewPlan, start: datetime, end: datetime) -> bool:
    """A window that starts after the TTL's lower bound: what materialize-incremental asks for."""
    return start > lower_bound(plan, end)


def latest_rows_query(plan: _ViewPlan, table: sql.Composable | None = None, incremental: bool = False) -> sql.Composed:
    """Latest row per entity, parameters ``start``, ``end`` (and ``lower``, ``incremental``).

    Full window: every entity with a row in [start, end], Feast's ``pull_latest_from_table_or_query``
    written as DISTINCT ON (the (entity, event_timestamp DESC, created_timestamp DESC) index
    delivers the rows in that order).

    Incremental window (start after the TTL's lower bound, i.e. the previous window's end): only
    the rows dated in [start, end] or created after ``start`` are read, through the event and
    created indexes, and for each of their entities the latest row in [lower, end] is looked up
    with one probe of that index.  For the entities Feast's window finds this is the same row;
    it also finds rows loaded late (created after the last window, dated before it), which a
    window on event time alone never sees again.  ``table`` replaces the source's table (one
    partition of it)."""
    ts = sql.Identifier(plan.ts_col)
    order = [sql.SQL("{} DESC").format(ts)]
    if plan.created_col:
        order.append(sql.SQL("{} DESC").format(sql.Identifier(plan.created_col)))
    jk = sql.Identifier(plan.source_columns[0])
    cols = sql.SQL(", ").join(map(sql.Identifier, plan.source_columns))
    source = table if table is not None else sql.SQL(plan.table)
    if not incremental:
        return sql.SQL(
            "SELECT DISTINCT ON ({jk}) {cols}, " + _EPOCH_US + " AS _ts_us FROM {table} AS a "
            "WHERE {ts} BETWEEN %(start)s AND %(end)s ORDER BY {jk}, {order}"
        ).format(jk=jk, cols=cols, col=ts, table=source, ts=ts, order=sql.SQL(", ").join(order))
    new = sql.SQL("{ts} >= %(start)s").format(ts=ts)
    if plan.created_col:
        new = sql.SQL("({} OR {} > %(start)s)").format(new, sql.Identifier(plan.created_col))
    return sql.SQL(
        "SELECT {acols}, " + _EPOCH_US + " AS _ts_us FROM "
        "(SELECT DISTINCT {jk} FROM {table} WHERE {ts} BETWEEN %(lower)s AND %(end)s AND {new}) AS t "
        "CROSS JOIN LATERAL (SELECT {cols}, {ts} FROM {table} AS f WHERE f.{jk} = t.{jk} "
        "AND f.{ts} BETWEEN %(lower)s AND %(end)s ORDER BY {order} LIMIT 1) AS a"
    ).format(
        acols=sql.SQL(", ").join(sql.SQL("a.{}").format(sql.Identifier(c)) for c in plan.source_columns),
        col=sql.Identifier("a", plan.ts_col),
        jk=jk,
        cols=cols,
        table=source,
        ts=ts,
        new=new,
        order=sql.SQL(", ").join(order),
    )


def query_params(plan: _ViewPlan, start: datetime, end: datetime) -> dict:
    return {"start": start, "end": end, "lower": lower_bound(plan, end)}


def pg_connect(offline_config, connect_timeout_s: int = 10, application_name: str | None = None):
    """An autocommit connection from the offline store's settings (Feast's conninfo and options)."""
    import psycopg
    from feast.infra.utils.postgres.connection_utils import _get_conn_kwargs, _get_conninfo

    conn = psycopg.connect(
        conninfo=_get_conninfo(offline_config),
        autocommit=True,
        connect_timeout=connect_timeout_s,
        keepalives_idle=offline_config.keepalives_idle,
        **_get_conn_kwargs(offline_config),
    )
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET jit = off")  # JIT compiles the scan for ~1 s and wins nothing on this query
    if application_name:
        conn.execute("SELECT set_config('application_name', %s, false)", [application_name[:63]])
    return conn


def _stream_chunks(
    conn, plan: _ViewPlan, start: datetime, end: datetime, chunk_rows: int, table: str | None = None
) -> Iterator[list]:
    """The latest rows in chunks, from a server-side cursor (binary rows, parsed in C); ``table``:
    one partition of the source's table instead of the table."""
    incremental = is_incremental(plan, start, end)
    query = latest_rows_query(plan, sql.Identifier(table) if table else None, incremental)
    with conn.transaction(), conn.cursor(name=f"loan_desk_materialize_{plan.name}", binary=True) as cur:
        cur.itersize = chunk_rows
        cur.execute(query, query_params(plan, start, end))
        while batch := cur.fetchmany(chunk_rows):
            yield batch


def _prefetch(chunks: Iterator[list], depth: int = 2) -> Iterator[list]:
    """Fetch the next chunk from Postgres in a thread while this one is encoded and written."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def pump() -> None:
        try:
            with contextlib.closing(chunks):
                for chunk in chunks:
                    if stop.is_set():
                        break
                    q.put(chunk)
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    t = threading.Thread(target=pump, name="materialize-fetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock the pump so the cursor and transaction close in its thread
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        t.join()


# --- writing ------------------------------------------------------------------------------------
class _RawPipe:
    """Pipelined raw Redis protocol on one connection of a redis-py client (no MULTI/EXEC).

    redis-py connects (AUTH, SELECT, TLS); the replies of a whole chunk are then parsed by
    one hiredis reader fed straight from the socket.
    """

    def __init__(self, client):
        import hiredis

        self._client = client
        self._conn = client.connection_pool.get_connection()
        self._conn.connect()
        self._sock = self._conn._sock
        self._reader = hiredis.Reader()
        self._hiredis = hiredis

    def send(self, payload: bytes, replies: int) -> list:
        self._sock.sendall(payload)
        out, error = [], None
        reader, recv, buf = self._reader, self._sock.recv, 1 << 20
        while len(out) < replies:
            reply = reader.gets()
            if reply is False:
                data = recv(buf)
                if not data:
                    raise ConnectionError("the online store closed the connection during a bulk write")
                reader.feed(data)
                continue
            if isinstance(reply, self._hiredis.ReplyError):
                error = error or reply
            out.append(reply)
        if error:
            import redis

            text = str(error)
            if _REDIRECT.match(text):
                raise _ClusterMoved(text.split(" ")[0])
            raise redis.exceptions.ResponseError(text)
        return out

    def close(self, broken: bool = False) -> None:
        if broken:  # replies may be left unread: never hand this connection to anyone else
            self._conn.disconnect()
        self._client.connection_pool.release(self._conn)


_REDIRECT = __import__("re").compile(r"^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b")
CLUSTER_WRITE_ATTEMPTS = 8  # a chunk's tries on a cluster; the pauses add up to about 10 s
_MAX_PAUSE_S = 2.0


class _ClusterMoved(RuntimeError):
    """A node answered that the slot is elsewhere or the cluster is changing: refresh, send again."""


class _SingleSink:
    """Commands for one server: one pipelined round trip per chunk."""

    def __init__(self, client):
        self._pipe = _RawPipe(client)

    def send(self, keys: list[bytes], commands: list[bytes], per: int) -> list:
        """``commands[i]`` (``per`` replies each) is about ``keys[i]``; the first reply of each, in order."""
        replies = self._pipe.send(b"".join(commands), len(commands) * per)
        return replies[::per] if per > 1 else replies

    def close(self) -> None:
        self._pipe.close()


class _ClusterSink:
    """Commands for a cluster: a chunk's keys grouped by hash slot into one raw pipeline per primary.

    On a redirect or a lost node the pipelines are dropped, the slot map is refreshed and the
    whole chunk is sent again (HSET/HMGET/EXPIRE are idempotent), at most
    ``CLUSTER_WRITE_ATTEMPTS`` times with growing pauses; then the error is raised.
    """

    def __init__(self, client, attempts: int = CLUSTER_WRITE_ATTEMPTS):
        from redis.crc import key_slot

        self._client = client
        self._slot = key_slot
        self._pipes: dict[str, _RawPipe] = {}
        self._attempts = attempts

    def _groups(self, keys: list[bytes]) -> dict[str, tuple[object, list[int]]]:
        nodes = self._client.nodes_manager
        groups: dict[str, tuple[object, list[int]]] = {}
        by_slot: dict[int, object] = {}
        for i, k in enumerate(keys):
            slot = self._slot(k)
            node = by_slot.get(slot)
            if node is None:
                node = by_slot[slot] = nodes.get_node_from_slot(slot)
            entry = groups.get(node.name)
            if entry is None:
                entry = groups[node.name] = (node, [])
            entry[1].append(i)
        return groups

    def _pipe(self, node) -> _RawPipe:
        pipe = self._pipes.get(node.name)
        if pipe is None:
            pipe = self._pipes[node.name] = _RawPipe(self._client.get_redis_connection(node))
        return pipe

    def send(self, keys: list[bytes], commands: list[bytes], per: int) -> list:
        import redis

        for attempt in range(self._attempts):
            try:
                out: list = [None] * len(keys)
                for node, idx in self._groups(keys).values():
                    replies = self._pipe(node).send(b"".join([commands[i] for i in idx]), len(idx) * per)
                    for j, i in enumerate(idx):
                        out[i] = replies[j * per]
                return out
            except (_ClusterMoved, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                self._drop(broken=True)
                if attempt + 1 == self._attempts:
                    raise redis.exceptions.ConnectionError(
                        f"the cluster did not settle after {self._attempts} tries ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); nothing is lost: run the materialization again"
                    ) from None
                log.warning("cluster write: %s; refreshing the slot map and sending the chunk again", exc)
                time.sleep(min(_MAX_PAUSE_S, 0.1 * 2**attempt))
                with contextlib.suppress(Exception):
                    self._client.nodes_manager.initialize()
        raise AssertionError("unreachable")

    def _drop(self, broken: bool = False) -> None:
        for pipe in self._pipes.values():
            with contextlib.suppress(Exception):
                pipe.close(broken=broken)
        self._pipes.clear()

    def close(self) -> None:
        self._drop()


def _sink(client):
    from redis.cluster import RedisCluster

    return _ClusterSink(client) if isinstance(client, RedisCluster) else _SingleSink(client)


def scan_primaries(client, match: bytes, count: int = 10_000):
    """Every key matching ``match`` on one server, or on every primary of a cluster (a SCAN each)."""
    from redis.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        yield from client.scan_iter(match=match, count=count)
        return
    for node in client.get_primaries():
        yield from client.get_redis_connection(node).scan_iter(match=match, count=count)


def unlink_keys(client, keys, batch: int = 10_000) -> int:
    """UNLINK ``keys`` in batches; on a cluster each key on its own (one slot per command,
    never CROSSSLOT), sent through redis-py's cluster pipeline: one round trip per node."""
    from redis.cluster import RedisCluster

    cluster = isinstance(client, RedisCluster)
    deleted, pending = 0, []

    def flush() -> int:
        if not pending:
            return 0
        if not cluster:
            n = client.unlink(*pending)
        else:
            with client.pipeline() as pipe:
                for k in pending:
                    pipe.unlink(k)
                n = sum(pipe.execute())
        pending.clear()
        return n

    for key in keys:
        pending.append(key)
        if len(pending) >= batch:
            deleted += flush()
    return deleted + flush()


def redis_client_for(config, timeout_s: float = 60.0):
    """A redis-py client from Feast's connection string, with timeouts fit for bulk writes."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType
    from redis import Redis
    from redis.cluster import ClusterNode, RedisCluster

    check_config(config)
    nodes, kwargs = RedisOnlineStore._parse_connection_string(config.online_store.connection_string)
    kwargs["socket_timeout"] = timeout_s
    kwargs["socket_connect_timeout"] = max(float(kwargs.get("socket_connect_timeout") or 0), 5.0)
    if config.online_store.redis_type == RedisType.redis_cluster:
        return RedisCluster(startup_nodes=[ClusterNode(n["host"], int(n["port"])) for n in nodes], **kwargs)
    kwargs.update(host=nodes[0]["host"], port=int(nodes[0]["port"]))
    return Redis(**kwargs)


def write_view(
    config,
    pg_conn,
    plan: _ViewPlan,
    start: datetime,
    end: datetime,
    *,
    client,
    dedup: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int], None] | None = None,
    keys_out: set[bytes] | None = None,
    table: str | None = None,
    stop: threading.Event | None = None,
) -> ViewResult:
    """Write the latest row per entity of the plan's view in [start, end] to the online store.

    ``keys_out`` receives every key of the window (written, or skipped as already up to date).
    ``table``: read this partition of the source's table only.  ``stop``: set by another worker
    that failed; this one then ends after the chunk it is writing (each entity's row whole).
    """
    t0 = time.perf_counter()
    fv = plan.fv
    key_of = _KeyEncoder(plan.join_key, plan.value_types[0], config.project, config.entity_key_serialization_version)
    ts_field_bulk = _bulk(f"_ts:{plan.name}".encode())
    names = [_bulk(f) for f in plan.fields[:-1]]
    encoders = [_value_encoder(vt) for vt in plan.value_types[1:]]
    caches: list[dict] = [{} for _ in encoders]
    ts_cache: dict[int, bytes] = {}
    n_fields = 1 + len(names)
    header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * n_fields)
    ttl = getattr(config.online_store, "key_ttl_seconds", None)
    expire = b"$%d\r\n%d\r\n" % (len(str(ttl)), ttl) if ttl else b""
    per_row_replies = 2 if ttl else 1

    def lit(b: bytes) -> bytes:  # a constant inside a %-format
        return b.replace(b"%", b"%%")

    row_fmt = lit(header) + b"%b" + lit(ts_field_bulk) + b"%b" + b"".join(lit(n) + b"%b" for n in names)
    expire_cmd = b"*3\r\n$6\r\nEXPIRE\r\n"

    def encoded(col, j: int) -> list[bytes]:
        cache, encode = caches[j], encoders[j]
        if len(cache) > _CACHE_LIMIT:
            cache.clear()

        def miss(v) -> bytes:
            enc = cache[v] = _bulk(encode(v))
            return enc

        get = cache.get
        return [get(v) or miss(v) for v in col]

    def stamp(us: int) -> bytes:
        enc = ts_cache[us] = _bulk(_timestamp_bytes(us))
        return enc

    pipe = _sink(client)
    pulled = written = 0
    with contextlib.ExitStack() as stack:
        stack.callback(pipe.close)
        chunks = stack.enter_context(
            contextlib.closing(_prefetch(_stream_chunks(pg_conn, plan, start, end, chunk_rows, table)))
        )
        for chunk in chunks:
            if stop is not None and stop.is_set():
                raise WorkerStopped("stopped: another worker of this materialization failed")
            pulled += len(chunk)
            cols = list(zip(*chunk, strict=True))
            del chunk
            keys = [key_of(v) for v in cols[0]]
            if keys_out is not None:
                keys_out.update(keys)
            stamps = cols[-1]
            if dedup:  # Feast's rule: skip when the stored timestamp is the same instant or newer
                probes = [b"*3\r\n$5\r\nHMGET\r\n%b%b" % (_bulk(k), ts_field_bulk) for k in keys]
                stored = pipe.send(keys, probes, 1)
                keep = [i for i, prev in enumerate(stored) if prev[0] is None or _ts_us(prev[0]) < stamps[i]]
                if len(keep) < len(keys):
                    keys = [keys[i] for i in keep]
                    cols = [[c[i] for i in keep] for c in cols]
                    stamps = cols[-1]
            if not keys:
                continue
            if len(ts_cache) > _CACHE_LIMIT:
                ts_cache.clear()
            get_ts = ts_cache.get
            key_bulks = [_bulk(k) for k in keys]
            parts = [key_bulks, [get_ts(us) or stamp(us) for us in stamps]]
            parts += [encoded(cols[j + 1], j) for j in range(len(names))]
            commands = [row_fmt % t for t in zip(*parts, strict=True)]
            if ttl:
                commands = [c + expire_cmd + kb + expire for c, kb in zip(commands, key_bulks, strict=True)]
            pipe.send(keys, commands, per_row_replies)
            written += len(commands)
            if progress:
                progress(fv.name, pulled)
    return ViewResult(fv.name, pulled, written, time.perf_counter() - t0)


def view_partitions(conn, plan: _ViewPlan) -> list[str | None]:
    """The tables one materialization of the view reads: each hash partition of its source table
    when that table is hash-partitioned by the view's join key (one query each, on any
    connection), else the table itself (``[None]``)."""
    from runtime.partitions import hash_partitions

    if not plan.table_name:
        return [None]
    schema, _, name = plan.table_name.rpartition(".")
    parts = hash_partitions(conn, name, schema or "public")
    if parts is None or parts.column != plan.source_columns[0]:
        return [None]
    return list(parts.names)


def write_view_parallel(
    config,
    plan: _ViewPlan,
    start: datetime,
    end: datetime,
    *,
    workers: int,
    dedup: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int], None] | None = None,
    keys_out: set[bytes] | None = None,
) -> ViewResult:
    """``write_view`` over every partition of the view's table by ``workers`` threads, each with
    its own Postgres connection and Redis client (slot-aware on a cluster), worker ``w`` taking
    partitions ``w, w + workers, ...``.  An entity's rows all live in one partition, so the
    partitions' latest rows together are the table's.  The first failure stops the other
    workers after their current chunk and is raised as ``MaterializeWorkerFailed``, naming the
    partitions; every online row written is whole (each entity is one HSET) and the caller
    records nothing (Feast keeps the previous window; a full refresh removes nothing)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    t0 = time.perf_counter()
    with pg_connect(config.offline_store) as conn:
        tables = view_partitions(conn, plan)
    n = max(1, min(workers, len(tables)))
    groups = [tables[w::n] for w in range(n)]
    stop = threading.Event()
    pulled = [0] * n

    def label(group: list[str | None]) -> str:
        return ", ".join(t or plan.table for t in group)

    def work(w: int) -> tuple[int, int, set[bytes] | None]:
        keys: set[bytes] | None = set() if keys_out is not None else None
        rows = written = 0
        client = redis_client_for(config)
        try:
            with pg_connect(
                config.offline_store, application_name=f"loan-desk materialize {plan.fv.name} worker {w}"
            ) as conn:
                for table in groups[w]:
                    base = rows

                    def count(_view: str, k: int, base=base) -> None:
                        pulled[w] = base + k

                    if table:
                        conn.execute(
                            "SELECT set_config('application_name', %s, false)", [f"loan-desk materialize {table}"]
                        )
                    r = write_view(
                        config, conn, plan, start, end, client=client, dedup=dedup, chunk_rows=chunk_rows,
                        progress=count, keys_out=keys, table=table, stop=stop,
                    )  # fmt: skip
                    rows, written = rows + r.rows, written + r.written
        except BaseException:
            stop.set()
            raise
        finally:
            client.close()
        return rows, written, keys

    with ThreadPoolExecutor(n, thread_name_prefix="materialize-worker") as pool:
        futures = [pool.submit(work, w) for w in range(n)]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            if progress and pending and not stop.is_set():
                progress(plan.fv.name, sum(pulled))
    failed = [(w, f.exception()) for w, f in enumerate(futures) if f.exception() is not None]
    if failed:
        w, exc = next(((w, e) for w, e in failed if not isinstance(e, WorkerStopped)), failed[0])
        if isinstance(exc, WriterUnsupported) or tables == [None]:
            raise exc  # one query over a plain table: its own error, as before partitions
        from runtime.errors import redis_problem

        stopped = sum(isinstance(e, WorkerStopped) for _, e in failed)
        others = len(failed) - 1 - stopped
        problem = redis_problem(exc, bool(getattr(config.online_store, "ssl", False)))
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        detail = f"Valkey {problem}" if problem else f"{type(exc).__name__}: {first}"
        raise MaterializeWorkerFailed(
            f"materializing {plan.fv.name}: the worker for {label(groups[w])} failed ({detail})"
            + (f"; {others} other worker(s) failed too" if others else "")
            + (f"; {stopped} other worker(s) stopped early" if stopped else "")
            + ". Every online row is whole (its previous or its new values), the window is not recorded "
            "and no row was removed: run the materialization again"
        ) from exc
    futures_result = [f.result() for f in futures]
    rows = sum(r[0] for r in futures_result)
    written = sum(r[1] for r in futures_result)
    if keys_out is not None:
        for r in futures_result:
            keys_out.update(r[2])
    if progress:
        progress(plan.fv.name, rows)
    return ViewResult(plan.fv.name, rows, written, time.perf_counter() - t0)


def _ts_us(raw: bytes) -> int:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.ParseFromString(raw)
    return t.seconds * 1_000_000 + t.nanos // 1000


# --- the keys of a refresh ------------------------------------------------------------------------
def is_project_key(key: bytes, project: str) -> bool:
    """True when ``key`` is a Feast Redis key of ``project``: a v3 serialized entity key, then the name.

    A suffix match alone is not enough: project ``xcredit`` also ends with ``credit``.
    """
    suffix = project.encode()
    body = len(key) - len(suffix)
    if body < 4 or not key.endswith(suffix):
        return False
    try:
        (n,) = struct.unpack_from("<I", key, 0)
        if not 0 < n <= 64:
            return False
        pos = 4
        for i in range(2 * n):  # n join key names (STRING), then n values
            kind, length = struct.unpack_from("<II", key, pos)
            if i < n and kind != 2:  # ValueType.STRING
                return False
            pos += 8 + length
            if pos > body:
                return False
        return pos == body
    except struct.error:
        return False


def tracked_keys(plan: _ViewPlan, keys: set[bytes]) -> TrackedKeys:
    return TrackedKeys(plan.fv.name, (plan.join_key,), plan.fields, keys)


def collect_keys(config, fv, start: datetime, end: datetime, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> TrackedKeys:
    """The keys a materialization of ``fv`` over [start, end] writes, without writing (for Feast's engine)."""
    check_config(config)
    plan = _plan(config, fv)
    key_of = _KeyEncoder(plan.join_key, plan.value_types[0], config.project, config.entity_key_serialization_version)
    keys: set[bytes] = set()
    with pg_connect(config.offline_store) as conn:
        for chunk in _stream_chunks(conn, plan, start, end, chunk_rows):
            keys.update(key_of(row[0]) for row in chunk)
    return tracked_keys(plan, keys)


def remove_untracked(config, tracked: list[TrackedKeys]) -> int:
    """After a refresh of every view: drop this project's online rows the refresh did not hold.

    Keys no view holds are unlinked; on a key that some views sharing its entity hold and
    others do not, the others' fields are removed.  Only keys of ``config.project`` (checked
    by layout, not just by suffix) are touched.  Returns the number of keys unlinked.
    """
    if not tracked:
        return 0
    client = redis_client_for(config)
    held = set().union(*(t.keys for t in tracked))
    removed, batch = 0, []
    try:
        # Collected first, then unlinked: a SCAN per primary of a cluster, UNLINK never across slots.
        for key in scan_primaries(client, b"*" + config.project.encode()):
            if key not in held and is_project_key(key, config.project):
                batch.append(key)
        removed = unlink_keys(client, batch)
        groups: dict[tuple[str, ...], list[TrackedKeys]] = {}
        for t in tracked:
            groups.setdefault(t.join_keys, []).append(t)
        for views in groups.values():
            if len(views) < 2:
                continue
            shared = set().union(*(v.keys for v in views))
            with client.pipeline() as pipe:  # per key: routed by slot on a cluster
                for v in views:
                    for key in shared - v.keys:
                        pipe.hdel(key, *v.fields)
                pipe.execute()
    finally:
        client.close()
    return removed


# --- the Feast compute engine ---------------------------------------------------------------------
class LoanDeskEngineConfig(FeastConfigBaseModel):
    """``batch_engine: {type: feast_ext.engine.LoanDeskEngine, chunk_rows: 20000}``."""

    type: Literal["feast_ext.engine.LoanDeskEngine"] = "feast_ext.engine.LoanDeskEngine"
    chunk_rows: int = Field(DEFAULT_CHUNK_ROWS, gt=0, le=1_000_000)
    """Rows fetched from Postgres and written to Redis per round trip."""
    workers: int = Field(1, gt=0, le=64)
    """Parallel writers, one per group of the source table's hash partitions (LOAN_DESK_MATERIALIZE_WORKERS)."""

    @model_validator(mode="before")
    @classmethod
    def _environment_is_set(cls, values):
        """The feast CLI in a terminal without Loan Desk's environment: say what to run, no traceback."""
        if isinstance(values, dict) and any("${" in str(v) for v in values.values()):
            print(
                'feast: this terminal lacks Loan Desk\'s settings: run `eval "$(uv run loan-desk env)"` first',
                file=sys.stderr,
            )
            raise SystemExit(2)
        return values


class LoanDeskMaterializationJob(MaterializationJob):
    def __init__(self, job_id: str, status: MaterializationJobStatus, error: BaseException | None = None):
        self._job_id, self._status, self._error = job_id, status, error

    def status(self) -> MaterializationJobStatus:
        return self._status

    def error(self) -> BaseException | None:
        return self._error

    def should_be_retried(self) -> bool:
        return False

    def job_id(self) -> str:
        return self._job_id

    def url(self) -> str | None:
        return None


class LoanDeskEngine(ComputeEngine):
    """Feast compute engine: materialization with the fast writer above; nothing to provision."""

    def __init__(self, *, repo_config, offline_store, online_store, **engine_config):
        super().__init__(repo_config=repo_config, offline_store=offline_store, online_store=online_store)
        self.config = LoanDeskEngineConfig(**engine_config)
        self._local = threading.local()

    def update(self, project, views_to_delete, views_to_keep, entities_to_delete, entities_to_keep) -> None:
        pass

    def teardown_infra(self, project, fvs, entities) -> None:
        pass

    @contextlib.contextmanager
    def run(
        self,
        *,
        dedup: bool | None = None,
        track_keys: bool = False,
        progress: Callable[[str, int], None] | None = None,
        workers: int | None = None,
    ) -> Iterator[EngineRun]:
        """Options for the materializations this thread runs inside the block; yields their results.

        ``dedup=False`` overwrites whatever is stored (a full refresh); ``track_keys`` collects
        every key written per view, for ``remove_untracked``.
        """
        run = EngineRun(dedup=dedup, track_keys=track_keys, progress=progress, workers=workers)
        stack = self._runs()
        stack.append(run)
        try:
            yield run
        finally:
            stack.remove(run)

    def _runs(self) -> list[EngineRun]:
        if not hasattr(self._local, "runs"):
            self._local.runs = []
        return self._local.runs

    def _materialize_one(self, registry, task, **kwargs) -> LoanDeskMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        runs = self._runs()
        run = runs[-1] if runs else EngineRun()
        try:
            run.views.append(self._write(task, run))
        except Exception as exc:  # Feast raises it and rolls the view's state back
            return LoanDeskMaterializationJob(job_id, MaterializationJobStatus.ERROR, exc)
        return LoanDeskMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED)

    def _write(self, task, run: EngineRun) -> ViewResult:
        cfg = self.repo_config
        check_config(cfg)
        if not task.only_latest:
            raise WriterUnsupported(f"{task.feature_view.name}: only the latest row per entity is supported")
        plan = _plan(cfg, task.feature_view)
        start, end = task.start_time, task.end_time
        if task.disable_event_timestamp:  # Feast: everything from 1970 up to now
            start, end = datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC)
        dedup = run.dedup if run.dedup is not None else not cfg.online_store.skip_dedup
        keys: set[bytes] | None = set() if run.track_keys else None
        result = write_view_parallel(
            cfg,
            plan,
            start,
            end,
            workers=run.workers or self.config.workers,
            dedup=dedup,
            chunk_rows=self.config.chunk_rows,
            progress=run.progress,
            keys_out=keys,
        )
        if keys is not None:
            run.tracked.append(tracked_keys(plan, keys))
        log.info(
            "Loan Desk engine: %s %s..%s (%s): %d rows, %d written in %.2f s",
            plan.name, start, end, "incremental" if is_incremental(plan, start, end) else "full window",
            result.rows, result.written, result.seconds,
        )  # fmt: skip
        return result
