"""Several views' online rows for one entity each, in one pipelined round trip, as Feast reads them.

``OnlineReader`` uses the online store object Feast configured from feature_store.yaml: Feast
builds the keys, the hash field names (``_versioned_fv_name``: with the registry's
``enable_online_feature_view_versioning`` a view at version N is stored as ``<view>_vN``), runs
the HMGETs with the socket timeouts of the connection string, and decodes the values.
``FeatureStore.get_online_features`` does the same plus generic request handling that costs
about a millisecond per call; the tests check that both agree, with versioning on and off.

On a Valkey/Redis Cluster (``redis_type: redis_cluster``) Feast's client is redis-py's
``RedisCluster``: the keys of one read usually live on different nodes, and its non-transactional
pipeline sends each HMGET to the primary owning the key's slot (one round trip per node, in
parallel), following MOVED/ASK and refreshing its slot map.  Redirections that do not settle,
a cluster that is down, or a node that does not answer within the socket timeout (after a bounded
number of retries, ``runtime.settings.REDIS_CLUSTER_RETRIES``) raise ``error`` with a readable
sentence; key bytes never appear in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


class OnlineStoreUnavailable(RuntimeError):
    """The online store cannot be read (unreachable, timing out, or the views are not registered)."""


class OnlineReader:
    """``read(v1, v2, ...)``: for each of ``views`` (in order), (values by feature, event time) or None;
    ``read_many([(v1, v2), ...])`` the same for many rows, one round trip per chunk.

    ``error`` is the exception class raised when the online store cannot answer.
    """

    def __init__(self, store, views: Sequence[str], error: type[Exception] = OnlineStoreUnavailable):
        from feast.infra.online_stores.redis import _versioned_fv_name
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.value_type import ValueType

        self._EntityKey, self._Value = EntityKey, Value
        self._error = error
        self.config = store.config
        self.online = store._get_provider().online_store
        registered = {fv.name: fv for fv in store.list_feature_views()}
        missing = set(views) - set(registered)
        if missing:
            raise error(f"feature views {', '.join(sorted(missing))} are not registered: run `uv run loan-desk apply`")
        self.views = list(views)
        self.ttl = {name: fv.ttl or timedelta(days=36500) for name, fv in registered.items()}
        attrs = {ValueType.STRING: "string_val", ValueType.INT64: "int64_val", ValueType.INT32: "int32_val"}
        self._plan = []
        for name in self.views:
            fv = registered[name]
            (entity,) = fv.entity_columns  # one join key per view
            stored_as = _versioned_fv_name(fv, self.config)
            requested, fields = self.online._generate_hset_keys_for_features(fv, None, fv_name_override=stored_as)
            value_type = entity.dtype.to_value_type()
            self._plan.append((entity.name, attrs.get(value_type), value_type, stored_as, requested, fields))
        self._configured = None

    def _key(self, join_key: str, attr: str | None, value_type, value) -> bytes:
        if attr is not None:
            v = self._Value(**{attr: value})
        else:
            from feast.type_map import python_values_to_proto_values

            v = python_values_to_proto_values([value], value_type)[0]
        ek = self._EntityKey(join_keys=[join_key], entity_values=[v])
        return self.online._generate_redis_keys_for_entities(self.config, [ek])[0]

    def read(self, *entity_values) -> tuple[tuple[dict, datetime] | None, ...]:
        """One entity value per view; a view without a row for its entity gives None."""
        if len(entity_values) != len(self._plan):
            raise TypeError(f"read() takes one entity value per view ({', '.join(self.views)})")
        return self.read_many([entity_values])[0]

    def read_many(self, rows: Sequence[Sequence], chunk: int = 500) -> list[tuple[tuple[dict, datetime] | None, ...]]:
        """``read`` for many entity tuples: one pipelined round trip per ``chunk`` rows, each
        distinct key fetched once (a batch's applicants often share a zipcode).  Returns one
        tuple per row, in order, exactly as ``read`` gives it."""
        out: list[tuple] = []
        for start in range(0, len(rows), max(1, chunk)):
            part = rows[start : start + max(1, chunk)]
            keys: dict[tuple[int, bytes], int] = {}  # (view, key) -> index in commands
            commands = []
            slots = []
            for values in part:
                if len(values) != len(self._plan):
                    raise TypeError(f"read_many() takes one entity value per view ({', '.join(self.views)})")
                row_slots = []
                for i, ((join_key, attr, vt, _, _, fields), value) in enumerate(zip(self._plan, values, strict=True)):
                    key = self._key(join_key, attr, vt, value)
                    at = keys.get((i, key))
                    if at is None:
                        at = keys[i, key] = len(commands)
                        commands.append((key, fields))
                    row_slots.append(at)
                slots.append(row_slots)
            replies = self._fetch(commands)
            decoded: dict[int, tuple | None] = {}
            for row_slots in slots:
                row = []
                for (_, _, _, stored_as, requested, _), at in zip(self._plan, row_slots, strict=True):
                    if at not in decoded:
                        decoded[at] = self._decode(replies[at], stored_as, requested)
                    row.append(decoded[at])
                out.append(tuple(row))
        return out

    def _decode(self, values, stored_as: str, requested) -> tuple[dict, datetime] | None:
        if values[-1] is None:  # no timestamp field: Feast never wrote this entity
            return None
        ts, protos = self.online._get_features_for_entity(values, stored_as, list(requested))
        decoded = {}
        for name, proto in (protos or {}).items():
            kind = proto.WhichOneof("val")
            decoded[name] = getattr(proto, kind) if kind else None
        return decoded, ts

    def _fetch(self, commands: list) -> list:
        """The HMGETs in one pipeline; an unreachable or failing store raises ``error``."""
        import redis

        try:
            self._prepare_client()
            return self.online._read_hash_fields(self.config, commands)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            from runtime.errors import redis_problem

            tls = bool(getattr(self.config.online_store, "connection_string", "").count("ssl=true"))
            problem = redis_problem(exc, tls)
            if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
                if problem.startswith("is not reachable"):
                    problem = "is unreachable" + problem[len("is not reachable") :]
                raise self._error(f"the online store (Valkey) {problem}") from None
            if isinstance(exc, redis.exceptions.ResponseError) and problem and problem.startswith("is not"):
                problem = None  # a plain error reply, not an outage
            raise self._error(
                f"the online store (Valkey) {problem or 'answered with an error: ' + _clean(exc)}"
            ) from None

    def _prepare_client(self) -> None:
        """At most one quick retry: redis-py's default (3 retries with seconds of backoff) would
        hold a decision for several seconds on a hung Valkey.  One retry still reconnects
        transparently after Valkey restarts, so the service recovers without a restart.

        A cluster client gets ``REDIS_CLUSTER_RETRIES`` retries with a short constant pause: each
        refreshes the slot map, which is what lets reads resume on their own after a failover."""
        client = self.online._get_client(self.config.online_store)
        if client is not self._configured:
            from redis.backoff import ConstantBackoff, NoBackoff
            from redis.cluster import RedisCluster
            from redis.retry import Retry

            from runtime.settings import REDIS_CLUSTER_BACKOFF_S, REDIS_CLUSTER_RETRIES

            if isinstance(client, RedisCluster):
                client.set_retry(Retry(ConstantBackoff(REDIS_CLUSTER_BACKOFF_S), REDIS_CLUSTER_RETRIES))
            else:
                client.set_retry(Retry(NoBackoff(), 1))
            self._configured = client


def _clean(exc: BaseException) -> str:
    """The error's first line without the pipeline command redis-py quotes (it holds key bytes)."""
    import re

    text = re.sub(r"Command # ?\d+ \(.*?\) of pipeline caused error: ", "", str(exc), flags=re.S).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]
