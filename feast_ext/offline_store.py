"""Feast's Postgres offline store with a faster point-in-time join.

Feast's own Postgres query joins every feature row in the TTL window to every entity row
through several CTEs; the planner estimates one row for them and picks nested loops (minutes
for 30k loans here).  This store answers the same question — per entity row and feature view,
the latest feature row with ``event_timestamp <= entity timestamp`` and within the TTL, ties
broken by the newest ``created_timestamp`` — with one ``LEFT JOIN LATERAL ... ORDER BY ...
LIMIT 1`` per view, which the (entity, event_timestamp DESC, created_timestamp DESC) index
answers with one index probe per row.  Results stream out with COPY and are parsed by Arrow.

Nothing global is changed: the only settings it touches are ``TimeZone = UTC`` and ``jit = off``
(compiling an index-probe query costs more than it saves), with SET LOCAL inside the query's
own transaction.  Requests it does not cover (on-demand views, the
non-entity date-range mode) go to Feast's own implementation unchanged.
"""

from __future__ import annotations

import contextlib
import io
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from feast.feature_view import FeatureView
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
)
from feast.infra.offline_stores.offline_store import RetrievalMetadata
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.type_map import pg_type_code_to_arrow
from psycopg import sql
from pydantic import Field, model_validator

ENTITY_TS = "event_timestamp"


class LoanDeskOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    type: Literal["feast_ext.offline_store.LoanDeskOfflineStore"] = "feast_ext.offline_store.LoanDeskOfflineStore"
    workers: int = Field(1, gt=0, le=64)
    """Connections a point-in-time join over a hash-partitioned table runs its per-partition
    queries on, at the same time (LOAN_DESK_MATERIALIZE_WORKERS)."""

    @model_validator(mode="before")
    @classmethod
    def _environment_is_set(cls, values):
        """The feast CLI in a terminal without Loan Desk's environment: say what to run, no traceback.

        feature_store.yaml fills its settings from ``${VAR}`` placeholders; os.path.expandvars
        leaves them as they are when the variables are not set.
        """
        if isinstance(values, dict) and any("${" in str(v) for v in values.values()):
            print(
                'feast: this terminal lacks Loan Desk\'s settings: run `eval "$(uv run loan-desk env)"` '
                "first (and `uv run loan-desk` once, if nothing is set up yet)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return values


TIMESTAMPTZ_OID = 1184


def _arrow_type(code: int) -> pa.DataType:
    if code == TIMESTAMPTZ_OID:
        return pa.timestamp("us", tz="UTC")
    name = pg_type_code_to_arrow(code)
    if isinstance(name, pa.DataType):
        return name
    return pa.type_for_alias(str(name))


@dataclass
class QueryPart:
    """One independent query of a point-in-time join: the entity rows of one partition (a frame
    copied into ``temp_table`` first, or a query) against that partition."""

    query: sql.Composable
    entity_frame: pd.DataFrame | None = None
    temp_table: str | None = None


class LateralRetrievalJob(PostgreSQLRetrievalJob):
    """Runs a point-in-time query; an entity DataFrame is copied into a temp table first.

    With ``parts`` (a hash-partitioned feature table), each part runs on its own connection,
    ``workers`` at a time, and the results are concatenated: each entity row is in exactly one
    part, so the rows are the whole query's (in another order)."""

    def __init__(
        self,
        query: sql.Composable,
        entity_frame: pd.DataFrame | None,
        temp_table: str | None,
        config,
        full_feature_names: bool,
        metadata: RetrievalMetadata,
        parts: list[QueryPart] | None = None,
        workers: int = 1,
    ):
        self._composed = query
        self._entity_frame = entity_frame
        self._temp_table = temp_table
        self._parts = parts or [QueryPart(query, entity_frame, temp_table)]
        self._workers = max(1, workers)

        @contextlib.contextmanager
        def generator() -> Iterator[str]:
            yield self._composed.as_string(None) if hasattr(self._composed, "as_string") else str(query)

        super().__init__(
            query=generator,
            config=config,
            full_feature_names=full_feature_names,
            on_demand_feature_views=[],
            metadata=metadata,
        )

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        if len(self._parts) == 1:
            return self._run(self._parts[0])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self._workers, len(self._parts)), thread_name_prefix="pit-join") as pool:
            tables = list(pool.map(self._run, self._parts))
        return pa.concat_tables(tables)

    def _run(self, part: QueryPart) -> pa.Table:
        with _get_conn(self.config.offline_store) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            # JIT compiling this index-probe query costs more than it saves (~0.15-0.3 s at 30k rows).
            cur.execute("SET LOCAL jit = off")
            if part.entity_frame is not None:
                _copy_entity_frame(cur, part.entity_frame, part.temp_table)
            cur.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(part.query))
            names = [c.name for c in cur.description]
            types = [_arrow_type(c.type_code) for c in cur.description]
            buf = io.BytesIO()
            copy_stmt = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(part.query)
            with cur.copy(copy_stmt) as copy:
                for block in copy:
                    buf.write(block)
        buf.seek(0)
        convert = pacsv.ConvertOptions(
            column_types=dict(zip(names, types, strict=True)),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        )
        if not buf.getbuffer().nbytes:
            return pa.table({n: pa.array([], type=t) for n, t in zip(names, types, strict=True)})
        table = pacsv.read_csv(
            buf,
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            convert_options=convert,
        )
        return table


def _copy_entity_frame(cur, frame: pd.DataFrame, table: str) -> None:
    cols = list(frame.columns)
    pg_types = []
    for c in cols:
        s = frame[c]
        if pd.api.types.is_datetime64_any_dtype(s):
            pg_types.append("timestamptz")
        elif pd.api.types.is_integer_dtype(s):
            pg_types.append("bigint")
        elif pd.api.types.is_float_dtype(s):
            pg_types.append("double precision")
        elif pd.api.types.is_bool_dtype(s):
            pg_types.append("boolean")
        else:
            pg_types.append("text")
    cur.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            sql.Identifier(table),
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(cols, pg_types, strict=True)
            ),
        )
    )
    frame = frame.copy()
    for c, t in zip(cols, pg_types, strict=True):
        if t == "timestamptz":
            ts = pd.to_datetime(frame[c], utc=True)
            frame[c] = ts
    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buf, pacsv.WriteOptions(include_header=False))
    with cur.copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(sql.Identifier(table))) as copy:
        copy.write(buf.getbuffer())
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def point_in_time_query(
    entity: sql.Composable,
    entity_columns: list[str],
    views: list[tuple[FeatureView, list[str]]],
    full_feature_names: bool,
    tables: dict[str, sql.Composable] | None = None,
) -> sql.Composed:
    """SELECT entity columns + each view's features as of each entity row's timestamp.

    ``tables`` replaces the source table of the views it names (one partition of it)."""
    tables = tables or {}
    select = [sql.SQL("e.{}").format(sql.Identifier(c)) for c in entity_columns]
    joins = []
    for i, (fv, features) in enumerate(views):
        alias = sql.Identifier(f"fv{i}")
        src = fv.batch_source
        ts, created = src.timestamp_field, src.created_timestamp_column
        reverse = {v: k for k, v in (src.field_mapping or {}).items()}
        join_map = fv.projection.join_key_map or {}
        conds = [
            sql.SQL("f.{} = e.{}").format(sql.Identifier(reverse.get(k, k)), sql.Identifier(join_map.get(k, k)))
            for k in fv.join_keys
        ]
        conds.append(sql.SQL("f.{} <= e.{}").format(sql.Identifier(ts), sql.Identifier(ENTITY_TS)))
        if fv.ttl and fv.ttl.total_seconds() > 0:
            conds.append(
                sql.SQL("f.{} >= e.{} - {} * interval '1 second'").format(
                    sql.Identifier(ts), sql.Identifier(ENTITY_TS), sql.Literal(int(fv.ttl.total_seconds()))
                )
            )
        order = [sql.SQL("f.{} DESC").format(sql.Identifier(ts))]
        if created:
            order.append(sql.SQL("f.{} DESC").format(sql.Identifier(created)))
        inner = sql.SQL(", ").join(
            sql.SQL("f.{} AS {}").format(sql.Identifier(reverse.get(name, name)), sql.Identifier(name))
            for name in features
        )
        joins.append(
            sql.SQL(
                "LEFT JOIN LATERAL (SELECT {inner} FROM {table} AS f WHERE {conds} "
                "ORDER BY {order} LIMIT 1) AS {a} ON TRUE"
            ).format(
                inner=inner,
                table=tables.get(fv.projection.name_to_use(), sql.SQL(src.get_table_query_string())),
                conds=sql.SQL(" AND ").join(conds),
                order=sql.SQL(", ").join(order),
                a=alias,
            )
        )
        for name in features:
            out = f"{fv.projection.name_to_use()}__{name}" if full_feature_names else name
            select.append(sql.SQL("{}.{} AS {}").format(alias, sql.Identifier(name), sql.Identifier(out)))
    return sql.SQL("SELECT {} FROM ({}) AS e {}").format(sql.SQL(", ").join(select), entity, sql.SQL(" ").join(joins))


class LoanDeskOfflineStore(PostgreSQLOfflineStore):
    @staticmethod
    def get_historical_features(
        config, feature_views, feature_refs, entity_df, registry, project, full_feature_names: bool = False, **kwargs
    ):
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        if entity_df is None or odfvs or kwargs.get("start_date") or kwargs.get("end_date"):
            return PostgreSQLOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names=full_feature_names,
                **kwargs,
            )
        by_view: dict[str, list[str]] = {}
        for ref in feature_refs:
            view, feat = ref.split(":", 1)
            by_view.setdefault(view, []).append(feat)
        views = [
            (fv, by_view[fv.projection.name_to_use()]) for fv in feature_views if fv.projection.name_to_use() in by_view
        ]

        frame, temp = None, None
        if isinstance(entity_df, pd.DataFrame):
            frame = entity_df
            temp = "entity_" + uuid.uuid4().hex[:12]
            entity = sql.SQL("SELECT * FROM {}").format(sql.Identifier(temp))
            columns = list(entity_df.columns)
            ts = pd.to_datetime(entity_df[ENTITY_TS], utc=True)
            span = (ts.min().to_pydatetime(), ts.max().to_pydatetime())
        else:
            entity = sql.SQL(entity_df)
            with _get_conn(config.offline_store) as conn, conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT * FROM ({}) AS e LIMIT 0").format(entity))
                columns = [c.name for c in cur.description]
                cur.execute(
                    sql.SQL("SELECT min({ts}), max({ts}) FROM ({e}) AS e").format(
                        ts=sql.Identifier(ENTITY_TS), e=entity
                    )
                )
                span = cur.fetchone()
        if ENTITY_TS not in columns:
            raise ValueError(f"the entity rows need an {ENTITY_TS!r} column")
        query = point_in_time_query(entity, columns, views, full_feature_names)
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in columns if c != ENTITY_TS],
            min_event_timestamp=span[0],
            max_event_timestamp=span[1],
        )
        with _get_conn(config.offline_store) as conn:
            parts = partition_parts(conn, entity, frame, temp, columns, views, full_feature_names)
        workers = getattr(config.offline_store, "workers", 1)
        return LateralRetrievalJob(query, frame, temp, config, full_feature_names, metadata, parts, workers)


def _partitioned_view(conn, views: list[tuple[FeatureView, list[str]]]):
    """The first view whose source table is hash-partitioned by the view's join key:
    (view, its HashPartitions, schema, the entity column holding the key), or None."""
    from runtime.partitions import hash_partitions

    for fv, _ in views:
        src = fv.batch_source
        text = src.get_table_query_string().strip() if hasattr(src, "get_table_query_string") else "("
        table = None if text.startswith("(") else text
        if not table or len(fv.join_keys) != 1:
            continue
        schema, _, name = table.rpartition(".")
        parts = hash_partitions(conn, name, schema or "public")
        key = fv.join_keys[0]
        reverse = {v: k for k, v in (src.field_mapping or {}).items()}
        if parts is not None and reverse.get(key, key) == parts.column:
            return fv, parts, schema or "public", (fv.projection.join_key_map or {}).get(key, key)
    return None


def partition_parts(
    conn,
    entity: sql.Composable,
    frame: pd.DataFrame | None,
    temp: str | None,
    columns: list[str],
    views: list[tuple[FeatureView, list[str]]],
    full_feature_names: bool,
) -> list[QueryPart] | None:
    """The join split by the hash partitions of one view's table (None when no view's table is
    hash-partitioned by its key): part ``i`` takes the entity rows whose key hashes to partition
    ``i`` and reads that partition directly (other views read their whole tables).  Postgres
    routes the keys itself: ``satisfies_hash_partition`` in the query for an entity query, a
    temporary table partitioned the same way for a DataFrame (runtime.partitions.route)."""
    from runtime.partitions import route

    found = _partitioned_view(conn, views)
    if found is None:
        return None
    fv, parts, schema, column = found
    if column not in columns:
        return None
    name = fv.projection.name_to_use()
    out = []
    if frame is None:
        parent = sql.Literal(f"{schema}.{parts.table}")
        for i, partition in enumerate(parts.names):
            mine = sql.SQL(
                "SELECT * FROM ({e}) AS e0 WHERE satisfies_hash_partition({parent}::regclass, {m}, {i}, e0.{c}::{t})"
            ).format(
                e=entity,
                parent=parent,
                m=sql.Literal(parts.modulus),
                i=sql.Literal(i),
                c=sql.Identifier(column),
                t=sql.SQL(parts.column_type),
            )
            tables = {name: sql.Identifier(schema, partition)}
            out.append(QueryPart(point_in_time_query(mine, columns, views, full_feature_names, tables)))
        return out
    keys = frame[column].astype(object).where(frame[column].notna(), None).tolist()
    where = route(conn, keys, parts.column_type, parts.modulus)
    for i, partition in enumerate(parts.names):
        sub = frame[where == i]
        if sub.empty and (out or i < len(parts.names) - 1):
            continue  # nothing to join here (the last part is kept when every other was empty)
        table = f"{temp}_{i}"
        mine = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
        tables = {name: sql.Identifier(schema, partition)}
        out.append(QueryPart(point_in_time_query(mine, columns, views, full_feature_names, tables), sub, table))
    return out
