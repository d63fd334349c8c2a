"""A fast materialization writer that produces exactly Feast's Redis online format.

Feast's local engine pulls the latest row per entity into Arrow, turns every value into a
``ValueProto`` object, and hands lists of tuples to ``RedisOnlineStore.online_write_batch``,
which (without ``skip_dedup``) first reads every key's timestamp and then writes through
redis-py's pipeline.  Most of that time is Python object churn, not I/O.

This writer does the same job in one pass per feature view:

* one ``SELECT DISTINCT ON (join keys) ... ORDER BY join keys, event_timestamp DESC,
  created_timestamp DESC`` over the same window (``BETWEEN start AND end``, as Feast's
  ``pull_latest_from_table_or_query``), streamed out of Postgres with binary COPY;
* keys, field names and values encoded with Feast's own building blocks: ``_mmh3`` field
  names, ``_versioned_fv_name``, ``ValueProto``/``Timestamp`` messages serialized by
  protobuf (memoized per distinct value), and the entity key in Feast's v3 layout, checked
  at start-up against ``serialize_entity_key`` (any other entity shape uses Feast's function
  row by row);
* written as raw Redis protocol: one ``HSET key _ts:<view> ts <mmh3(field)> value ...`` per
  entity (plus ``EXPIRE`` when ``key_ttl_seconds`` is set), sent in pipelined chunks on one
  connection;
* with Feast's dedup rule unless the caller knows the keys are new: a row is skipped when the
  stored ``_ts:<view>`` is the same instant or newer;
* then recording the materialization interval in the registry exactly as
  ``FeatureStore.materialize`` does (state MATERIALIZING while writing, then
  ``registry.apply_materialization(view, project, start, end)``).

``tests/test_online_writer.py`` materializes the same data with Feast and with this writer
into two Redis databases and compares every key and every hash field byte by byte.
"""

from __future__ import annotations

import contextlib
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from psycopg import sql

DEFAULT_CHUNK_ROWS = 20_000
_CACHE_LIMIT = 500_000  # distinct encoded values kept per column before the memo is reset
_EPOCH_US = "(extract(epoch FROM {col}) * 1000000)::bigint"


class WriterUnsupported(RuntimeError):
    """The configuration needs Feast's own materialization (e.g. a Redis cluster)."""


@dataclass
class ViewResult:
    view: str
    rows: int  # latest rows pulled from the offline store
    written: int  # rows written (rows minus those skipped by the dedup rule)
    seconds: float


@dataclass
class WriteResult:
    start: datetime
    end: datetime
    views: list[ViewResult] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.views)


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


def _plan(store, fv) -> _ViewPlan:
    from feast.infra.online_stores.redis import _versioned_fv_name

    src = fv.batch_source
    if src is None or not hasattr(src, "get_table_query_string"):
        raise WriterUnsupported(f"{fv.name}: only PostgreSQL sources are supported")
    entities = list(fv.entity_columns)
    if len(entities) != 1:
        raise WriterUnsupported(f"{fv.name}: the fast writer handles one join key per view")
    reverse = {v: k for k, v in (src.field_mapping or {}).items()}
    join_key = entities[0].name
    feats = list(fv.features)
    return _ViewPlan(
        fv=fv,
        name=_versioned_fv_name(fv, store.config),
        join_key=join_key,
        source_columns=[reverse.get(join_key, join_key)] + [reverse.get(f.name, f.name) for f in feats],
        feature_names=[f.name for f in feats],
        value_types=[entities[0].dtype.to_value_type()] + [f.dtype.to_value_type() for f in feats],
        table=src.get_table_query_string(),
        ts_col=src.timestamp_field,
        created_col=src.created_timestamp_column or None,
    )


def latest_rows_query(plan: _ViewPlan) -> sql.Composed:
    """Latest row per entity in [start, end]: Feast's pull_latest_from_table_or_query, as DISTINCT ON."""
    ts = sql.Identifier(plan.ts_col)
    order = [sql.SQL("{} DESC").format(ts)]
    if plan.created_col:
        order.append(sql.SQL("{} DESC").format(sql.Identifier(plan.created_col)))
    jk = sql.Identifier(plan.source_columns[0])
    cols = sql.SQL(", ").join(map(sql.Identifier, plan.source_columns))
    return sql.SQL(
        "SELECT DISTINCT ON ({jk}) {cols}, " + _EPOCH_US + " AS _ts_us FROM {table} AS a "
        "WHERE {ts} BETWEEN %(start)s AND %(end)s ORDER BY {jk}, {order}"
    ).format(jk=jk, cols=cols, col=ts, table=sql.SQL(plan.table), ts=ts, order=sql.SQL(", ").join(order))


def _stream_chunks(conn, plan: _ViewPlan, start: datetime, end: datetime, chunk_rows: int) -> Iterator[list]:
    """The latest rows in chunks, from a server-side cursor (binary rows, parsed in C)."""
    query = latest_rows_query(plan)
    with conn.transaction(), conn.cursor(name=f"loan_desk_materialize_{plan.name}", binary=True) as cur:
        cur.itersize = chunk_rows
        cur.execute(query, {"start": start, "end": end})
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

            raise redis.exceptions.ResponseError(str(error))
        return out

    def close(self) -> None:
        self._client.connection_pool.release(self._conn)


def redis_client_for(store, timeout_s: float = 60.0):
    """A redis-py client from Feast's connection string, with timeouts fit for bulk writes."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType
    from redis import Redis

    cfg = store.config.online_store
    if getattr(cfg, "type", None) != "redis" or cfg.redis_type != RedisType.redis:
        raise WriterUnsupported("the fast writer supports a single Redis/Valkey server only")
    nodes, kwargs = RedisOnlineStore._parse_connection_string(cfg.connection_string)
    kwargs.update(host=nodes[0]["host"], port=int(nodes[0]["port"]), socket_timeout=timeout_s)
    kwargs["socket_connect_timeout"] = max(float(kwargs.get("socket_connect_timeout") or 0), 5.0)
    return Redis(**kwargs)


def write_view(
    store,
    pg_conn,
    fv,
    start: datetime,
    end: datetime,
    *,
    client,
    dedup: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> ViewResult:
    """Write the latest row per entity of ``fv`` in [start, end] to the online store."""
    from feast.infra.online_stores.helpers import _mmh3

    t0 = time.perf_counter()
    plan = _plan(store, fv)
    cfg = store.config
    key_of = _KeyEncoder(plan.join_key, plan.value_types[0], cfg.project, cfg.entity_key_serialization_version)
    ts_field = f"_ts:{plan.name}".encode()
    ts_field_bulk = _bulk(ts_field)
    names = [_bulk(_mmh3(f"{plan.name}:{n}")) for n in plan.feature_names]
    encoders = [_value_encoder(vt) for vt in plan.value_types[1:]]
    caches: list[dict] = [{} for _ in encoders]
    ts_cache: dict[int, bytes] = {}
    n_fields = 1 + len(names)
    header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * n_fields)
    ttl = getattr(cfg.online_store, "key_ttl_seconds", None)
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

    pipe = _RawPipe(client)
    pulled = written = 0
    with contextlib.ExitStack() as stack:
        stack.callback(pipe.close)
        chunks = stack.enter_context(
            contextlib.closing(_prefetch(_stream_chunks(pg_conn, plan, start, end, chunk_rows)))
        )
        for chunk in chunks:
            pulled += len(chunk)
            cols = list(zip(*chunk, strict=True))
            del chunk
            keys = [key_of(v) for v in cols[0]]
            stamps = cols[-1]
            if dedup:  # Feast's rule: skip when the stored timestamp is the same instant or newer
                probe = b"".join(b"*3\r\n$5\r\nHMGET\r\n%b%b" % (_bulk(k), ts_field_bulk) for k in keys)
                stored = pipe.send(probe, len(keys))
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
            pipe.send(b"".join(commands), len(commands) * per_row_replies)
            written += len(commands)
            if progress:
                progress(fv.name, pulled)
    return ViewResult(fv.name, pulled, written, time.perf_counter() - t0)


def _ts_us(raw: bytes) -> int:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.ParseFromString(raw)
    return t.seconds * 1_000_000 + t.nanos // 1000


# --- FeatureStore-level entry points ----------------------------------------------------------
def _record(store, fv, start: datetime, end: datetime) -> None:
    """What FeatureStore.materialize does to the registry around one view."""
    store.registry.apply_materialization(fv, store.project, start, end)


def _mark_materializing(store, fv):
    from feast.feature_view import FeatureViewState

    state = getattr(fv, "state", None)
    if state is None or state == FeatureViewState.STATE_UNSPECIFIED:
        return state
    if state == FeatureViewState.MATERIALIZING:
        return FeatureViewState.GENERATED
    if not state.can_transition_to(FeatureViewState.MATERIALIZING):
        raise ValueError(f"FeatureView {fv.name} cannot transition from {state.name} to MATERIALIZING.")
    fv.state = FeatureViewState.MATERIALIZING
    store.registry.apply_feature_view(fv, store.project, commit=True)
    return state


def _restore_state(store, fv, previous) -> None:
    from feast.feature_view import FeatureViewState

    if previous is not None and previous != FeatureViewState.STATE_UNSPECIFIED:
        fv.state = previous
        store.registry.apply_feature_view(fv, store.project, commit=True)


def _views(store, names: list[str] | None):
    views = [fv for fv in store.list_feature_views() if fv.online]
    if names is not None:
        wanted = set(names)
        views = [fv for fv in views if fv.name in wanted]
        missing = wanted - {fv.name for fv in views}
        if missing:
            raise ValueError(f"unknown or offline-only feature views: {', '.join(sorted(missing))}")
    return views


def materialize(
    store,
    pg_kwargs: dict,
    start: datetime,
    end: datetime,
    feature_views: list[str] | None = None,
    *,
    dedup: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> WriteResult:
    """Like ``FeatureStore.materialize(start, end, feature_views)``, with the fast writer.

    ``dedup=False`` skips reading the stored timestamps first (Feast's ``skip_dedup``); only
    use it when the view's keys are known to be absent (e.g. right after clearing them).
    """
    return _run(store, pg_kwargs, end, feature_views, lambda fv: start, dedup, chunk_rows, progress)


def materialize_incremental(
    store,
    pg_kwargs: dict,
    end: datetime,
    feature_views: list[str] | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> WriteResult:
    """Like ``FeatureStore.materialize_incremental``: each view from its last end time (or now - TTL)."""

    def start_of(fv) -> datetime:
        if fv.most_recent_end_time is not None:
            return _aware(fv.most_recent_end_time)
        if fv.ttl is None:
            raise ValueError(
                f"No start time found for feature view {fv.name}: it has no TTL and was never materialized"
            )
        if fv.ttl.total_seconds() > 0:
            return datetime.now(UTC) - fv.ttl
        return datetime.now(UTC) - timedelta(weeks=52)

    return _run(store, pg_kwargs, end, feature_views, start_of, True, chunk_rows, progress)


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _run(store, pg_kwargs, end, names, start_of, dedup, chunk_rows, progress) -> WriteResult:
    import psycopg

    end = _aware(end)
    views = _views(store, names)
    client = redis_client_for(store)
    plans = [(fv, _aware(start_of(fv))) for fv in views]
    for _fv, start in plans:
        if start > end:
            raise ValueError(f"The given start_date {start} is greater than the given end_date {end}.")
    result = WriteResult(start=min((s for _, s in plans), default=end), end=end)
    try:
        with psycopg.connect(**pg_kwargs, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET jit = off")  # JIT compiles the scan for ~1 s and wins nothing on this query
            for fv, start in plans:
                previous = _mark_materializing(store, fv)
                try:
                    result.views.append(
                        write_view(
                            store,
                            conn,
                            fv,
                            start,
                            end,
                            client=client,
                            dedup=dedup,
                            chunk_rows=chunk_rows,
                            progress=progress,
                        )
                    )
                except Exception:
                    _restore_state(store, fv, previous)
                    raise
                _record(store, fv, start, end)
    finally:
        client.close()
    precompute = getattr(store, "_precompute_affected_services", None)
    if precompute and views:
        precompute([fv.name for fv in views])
    return result
