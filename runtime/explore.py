"""Read-only queries over the offline features in Postgres, for the explore and materialize pages.

Every query is composed with ``psycopg.sql`` (identifiers from a fixed allow-list, values as
parameters) and aggregates in Postgres: the pages receive summaries, histogram buckets and
single rows, never whole tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from runtime import db
from runtime import schema as F
from runtime.settings import Settings


@dataclass(frozen=True)
class View:
    name: str
    table: str
    entity: str
    features: tuple[str, ...]
    ttl: timedelta
    text: tuple[str, ...] = ()


VIEWS = {
    "credit_history": View("credit_history", "credit_history", "dob_ssn", F.CREDIT_FEATURES, timedelta(days=180)),
    "zipcode_features": View(
        "zipcode_features", "zipcode_features", "zipcode", F.ZIPCODE_FEATURES, timedelta(days=3650), F.ZIPCODE_TEXT
    ),
}
GRAINS = ("day", "week", "month", "quarter", "year")


@dataclass(frozen=True)
class Filters:
    """Value ranges on the view's own features, plus the applicant's or zipcode's state and city."""

    ranges: tuple[tuple[str, float, float], ...] = ()
    state: str | None = None
    city: str | None = None


def _view(name: str) -> View:
    try:
        return VIEWS[name]
    except KeyError:
        raise ValueError(f"unknown feature view {name!r}; choose one of {', '.join(VIEWS)}") from None


def _conn(settings: Settings):
    return db.connection(settings)


def _col(view: View, name: str) -> sql.Composable:
    if name not in view.features and name not in view.text and name not in (view.entity, "event_timestamp"):
        raise ValueError(f"{name!r} is not a column of {view.name}")
    return sql.Identifier("t", name)


def _where(view: View, filters: Filters | None) -> tuple[sql.Composable, list]:
    """WHERE clause over alias ``t`` and its parameters."""
    filters = filters or Filters()
    parts: list[sql.Composable] = []
    params: list = []
    for name, lo, hi in filters.ranges:
        if name not in view.features:
            raise ValueError(f"{name!r} is not a feature of {view.name}")
        parts.append(sql.SQL("{} BETWEEN %s AND %s").format(_col(view, name)))
        params += [lo, hi]
    if filters.state or filters.city:
        place = []
        place_params = []
        if filters.state:
            place.append(sql.SQL("z.state = %s"))
            place_params.append(filters.state)
        if filters.city:
            place.append(sql.SQL("z.city = %s"))
            place_params.append(filters.city)
        cond = sql.SQL(" AND ").join(place)
        if view.name == "zipcode_features":
            parts.append(sql.SQL("t.zipcode IN (SELECT z.zipcode FROM zipcode_features z WHERE {})").format(cond))
        else:  # an applicant's place: the zipcodes of their loans
            parts.append(
                sql.SQL(
                    "t.dob_ssn IN (SELECT l.dob_ssn FROM loans l JOIN zipcode_features z ON z.zipcode = l.zipcode "
                    "WHERE {})"
                ).format(cond)
            )
        params += place_params
    if not parts:
        return sql.SQL("TRUE"), []
    return sql.SQL(" AND ").join(parts), params


def _frame(conn: psycopg.Connection, query: sql.Composable, params: list) -> pd.DataFrame:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query, params).fetchall()
    return pd.DataFrame(rows, columns=[d.name for d in cur.description] if cur.description else None)


# --- filter choices -------------------------------------------------------------------------
def states(settings: Settings) -> list[str]:
    with _conn(settings) as conn:
        return [s for (s,) in conn.execute("SELECT DISTINCT state FROM zipcode_features ORDER BY state")]


def cities(settings: Settings, state: str | None) -> list[str]:
    with _conn(settings) as conn:
        rows = conn.execute(
            "SELECT DISTINCT city FROM zipcode_features WHERE (%s::text IS NULL OR state = %s) ORDER BY city",
            [state, state],
        )
        return [c for (c,) in rows]


def feature_bounds(settings: Settings, view_name: str) -> dict[str, tuple[float, float]]:
    """Min and max of every feature of the view (for range sliders)."""
    view = _view(view_name)
    cols = sql.SQL(", ").join(
        sql.SQL("min({c})::float8, max({c})::float8").format(c=_col(view, f)) for f in view.features
    )
    with _conn(settings) as conn:
        row = conn.execute(sql.SQL("SELECT {} FROM {} AS t").format(cols, sql.Identifier(view.table))).fetchone()
    return {f: (row[2 * i], row[2 * i + 1]) for i, f in enumerate(view.features)}


# --- summaries ------------------------------------------------------------------------------
def summary(settings: Settings, view_name: str, filters: Filters | None = None) -> tuple[dict, pd.DataFrame]:
    """({rows, entities, first, last}, one row of statistics per feature)."""
    view = _view(view_name)
    where, params = _where(view, filters)
    stats = []
    for f in view.features:
        c = _col(view, f)
        stats.append(
            sql.SQL(
                "count({c}), avg({c})::float8, stddev({c})::float8, min({c})::float8, "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY {c}), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY {c}), max({c})::float8"
            ).format(c=c)
        )
    query = sql.SQL(
        "SELECT count(*), count(DISTINCT {e}), min(t.event_timestamp), max(t.event_timestamp), {s} "
        "FROM {t} AS t WHERE {w}"
    ).format(e=_col(view, view.entity), s=sql.SQL(", ").join(stats), t=sql.Identifier(view.table), w=where)
    with _conn(settings) as conn:
        row = conn.execute(query, params).fetchone()
    head = {"rows": row[0], "entities": row[1], "first": row[2], "last": row[3]}
    names = ("count", "mean", "std", "min", "median", "p95", "max")
    table = []
    for i, f in enumerate(view.features):
        vals = dict(zip(names, row[4 + i * len(names) : 4 + (i + 1) * len(names)], strict=True))
        missing = head["rows"] - vals["count"]
        table.append(
            {
                "feature": f,
                **vals,
                "missing": missing,
                "missing %": 100.0 * missing / head["rows"] if head["rows"] else 0.0,
            }
        )
    return head, pd.DataFrame(table)


def histogram(
    settings: Settings, view_name: str, feature: str, filters: Filters | None = None, bins: int = 30
) -> pd.DataFrame:
    """Equal-width buckets between the filtered min and max: columns lo, hi, rows."""
    view = _view(view_name)
    bins = max(2, min(int(bins), 200))
    where, params = _where(view, filters)
    query = sql.SQL(
        "WITH f AS (SELECT {c}::float8 AS v FROM {t} AS t WHERE {w}), "
        "b AS (SELECT min(v) AS lo, CASE WHEN max(v) > min(v) THEN max(v) ELSE min(v) + 1 END AS hi FROM f) "
        "SELECT b.lo, b.hi, least(width_bucket(f.v, b.lo, b.hi, %s), %s) AS bucket, count(*) AS rows "
        "FROM f, b WHERE f.v IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 3"
    ).format(c=_col(view, feature), t=sql.Identifier(view.table), w=where)
    with _conn(settings) as conn:
        rows = conn.execute(query, [*params, bins, bins]).fetchall()
    if not rows:
        return pd.DataFrame(columns=["lo", "hi", "rows"])
    lo, hi = rows[0][0], rows[0][1]
    width = (hi - lo) / bins
    return pd.DataFrame(
        [{"lo": lo + (b - 1) * width, "hi": lo + b * width, "rows": n} for _, _, b, n in rows],
    )


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def quantiles_over_time(
    settings: Settings, view_name: str, feature: str, filters: Filters | None = None, grain: str = "month"
) -> pd.DataFrame:
    """How one feature's values drift: per period, its rows, mean and quantiles (p10, p25, p50, p75, p90).

    Columns: period, rows, entities, mean, p10, p25, p50, p75, p90 (nulls are left out of the
    quantiles and the mean, and counted in ``missing``)."""
    view = _view(view_name)
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {', '.join(GRAINS)}")
    where, params = _where(view, filters)
    query = sql.SQL(
        "SELECT date_trunc(%s, t.event_timestamp) AS period, count(*) AS rows, count(DISTINCT {e}) AS entities, "
        "count(*) - count({c}) AS missing, avg({c})::float8 AS mean, "
        "percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY {c}) AS q "
        "FROM {t} AS t WHERE {w} GROUP BY 1 ORDER BY 1"
    ).format(e=_col(view, view.entity), c=_col(view, feature), t=sql.Identifier(view.table), w=where)
    with _conn(settings) as conn:
        df = _frame(conn, query, [grain, list(QUANTILES), *params])
    names = [f"p{round(q * 100)}" for q in QUANTILES]
    if df.empty:
        return pd.DataFrame(columns=["period", "rows", "entities", "missing", "mean", *names])
    quantiles = pd.DataFrame([q or [None] * len(QUANTILES) for q in df.pop("q")], columns=names, dtype="float64")
    return pd.concat([df, quantiles], axis=1)


def by_state(settings: Settings, view_name: str, feature: str, filters: Filters | None = None) -> pd.DataFrame:
    """Per state: rows, entities and the feature's mean; columns state, rows, entities, mean."""
    view = _view(view_name)
    where, params = _where(view, filters)
    if view.name == "zipcode_features":
        place = sql.SQL("t.state")
        joins = sql.SQL("")
    else:  # the state of the zipcode of the applicant's latest loan
        place = sql.SQL("z.state")
        joins = sql.SQL(
            "JOIN (SELECT DISTINCT ON (dob_ssn) dob_ssn, zipcode FROM loans ORDER BY dob_ssn, event_timestamp DESC) l "
            "ON l.dob_ssn = t.dob_ssn "
            "JOIN (SELECT DISTINCT ON (zipcode) zipcode, state FROM zipcode_features "
            "ORDER BY zipcode, event_timestamp DESC) z ON z.zipcode = l.zipcode"
        )
    query = sql.SQL(
        "SELECT {p} AS state, count(*) AS rows, count(DISTINCT {e}) AS entities, avg({c})::float8 AS mean "
        "FROM {t} AS t {j} WHERE {w} GROUP BY 1 ORDER BY 1"
    ).format(p=place, e=_col(view, view.entity), c=_col(view, feature), t=sql.Identifier(view.table), j=joins, w=where)
    with _conn(settings) as conn:
        return _frame(conn, query, params)


def default_rate_by_bucket(
    settings: Settings, view_name: str, feature: str, filters: Filters | None = None, buckets: int = 10
) -> pd.DataFrame:
    """Default rate of the loans by bucket of one feature, as a point-in-time join sees it.

    Each loan (the ``loans`` table, ``loan_status`` 1 = defaulted) is joined to the latest
    snapshot of its applicant (or zipcode) at or before the loan's date and within the view's
    TTL — the row a training set gets.  Buckets are quantiles of the joined values (by percent
    rank, so ties stay together: a feature with few distinct values gets a bucket per value, and
    a feature that is mostly 0 gets a bucket of its zeros); loans with no
    snapshot in reach form their own bucket (``lo`` and ``hi`` empty).  The filters apply to
    the joined snapshot (value ranges) and to the loan's applicant or zipcode (state, city).

    Columns: bucket (0.. ; NULL for no snapshot), lo, hi, loans, defaults, rate.
    """
    view = _view(view_name)
    buckets = max(2, min(int(buckets), 50))
    where, params = _where(view, filters)
    key = sql.Identifier(view.entity)
    cols = sql.SQL(", ").join(sql.Identifier("c", f) for f in view.features)
    query = sql.SQL(
        "WITH j AS ("
        " SELECT {v}::float8 AS v, t.loan_status FROM ("
        "  SELECT l.{k}, l.loan_status, s.* FROM loans l LEFT JOIN LATERAL ("
        "   SELECT {cols} FROM {tbl} AS c WHERE c.{k} = l.{k} AND c.event_timestamp <= l.event_timestamp"
        "   AND c.event_timestamp >= l.event_timestamp - %s::interval"
        "   ORDER BY c.event_timestamp DESC, c.created_timestamp DESC LIMIT 1) s ON TRUE) AS t"
        " WHERE {w}), "
        "r AS (SELECT v, loan_status, least(floor(percent_rank() OVER (ORDER BY v) * %s), %s - 1) AS b "
        " FROM j WHERE v IS NOT NULL) "
        "SELECT b AS bucket, min(v) AS lo, max(v) AS hi, count(*) AS loans, sum(loan_status)::bigint AS defaults "
        "FROM r GROUP BY 1 "
        "UNION ALL SELECT NULL, NULL, NULL, count(*), sum(loan_status)::bigint FROM j WHERE v IS NULL "
        "HAVING count(*) > 0 "
        "ORDER BY 1 NULLS LAST"
    ).format(v=_col(view, feature), k=key, cols=cols, tbl=sql.Identifier(view.table), w=where)
    with _conn(settings) as conn:
        df = _frame(conn, query, [view.ttl, *params, buckets, buckets])
    if df.empty:
        return pd.DataFrame(columns=["bucket", "lo", "hi", "loans", "defaults", "rate"])
    df["rate"] = df["defaults"] / df["loans"]
    return df


# --- one entity over time -------------------------------------------------------------------
def entity_history(settings: Settings, view_name: str, key: str | int) -> pd.DataFrame:
    """Every snapshot of one applicant (or zipcode), oldest first."""
    view = _view(view_name)
    cols = sql.SQL(", ").join(_col(view, c) for c in (*view.text, *view.features))
    query = sql.SQL(
        "SELECT t.event_timestamp, t.created_timestamp, {cols} FROM {t} AS t WHERE {e} = %s "
        "ORDER BY t.event_timestamp, t.created_timestamp"
    ).format(cols=cols, t=sql.Identifier(view.table), e=_col(view, view.entity))
    with _conn(settings) as conn:
        return _frame(conn, query, [_key(view, key)])


def point_in_time(settings: Settings, view_name: str, key: str | int, as_of: datetime) -> dict:
    """What a point-in-time join at ``as_of`` returns: the latest snapshot at or before it within the TTL.

    Returns {"row": dict | None, "reason": str}.
    """
    view = _view(view_name)
    cols = sql.SQL(", ").join(_col(view, c) for c in (*view.text, *view.features))
    query = sql.SQL(
        "SELECT t.event_timestamp, t.created_timestamp, {cols} FROM {t} AS t WHERE {e} = %s "
        "AND t.event_timestamp <= %s ORDER BY t.event_timestamp DESC, t.created_timestamp DESC LIMIT 1"
    ).format(cols=cols, t=sql.Identifier(view.table), e=_col(view, view.entity))
    with _conn(settings) as conn:
        row = conn.cursor(row_factory=dict_row).execute(query, [_key(view, key), as_of]).fetchone()
    if row is None:
        return {"row": None, "reason": f"no {view.name} snapshot at or before {as_of:%Y-%m-%d %H:%M}"}
    age = as_of - row["event_timestamp"]
    if age > view.ttl:
        return {
            "row": None,
            "reason": f"the latest snapshot ({row['event_timestamp']:%Y-%m-%d}) is {age.days} days old, beyond "
            f"the view's {view.ttl.days}-day TTL: the model would have seen no {view.name} features",
        }
    return {"row": row, "reason": f"snapshot of {row['event_timestamp']:%Y-%m-%d %H:%M}, {age.days} days old"}


def _key(view: View, key: str | int):
    if view.entity == "zipcode":
        return int(key)
    return str(key).strip()


def applicant_loans(settings: Settings, dob_ssn: str) -> pd.DataFrame:
    with _conn(settings) as conn:
        return _frame(
            conn,
            sql.SQL(
                "SELECT event_timestamp, zipcode, loan_amnt, loan_intent, loan_int_rate, loan_status "
                "FROM loans WHERE dob_ssn = %s ORDER BY event_timestamp"
            ),
            [dob_ssn],
        )


def example_keys(settings: Settings, view_name: str, limit: int = 25) -> list:
    """A few entity keys to pick from (the applicants of the latest loans, or the busiest zipcodes)."""
    view = _view(view_name)
    with _conn(settings) as conn:
        if view.name == "credit_history":
            rows = conn.execute(
                "SELECT dob_ssn FROM (SELECT dob_ssn, max(event_timestamp) AS ts FROM loans "
                "GROUP BY dob_ssn ORDER BY ts DESC LIMIT %s) x",
                [limit],
            )
        else:
            rows = conn.execute(
                "SELECT zipcode FROM loans GROUP BY zipcode ORDER BY count(*) DESC, zipcode LIMIT %s", [limit]
            )
        return [k for (k,) in rows]


def sample_application(settings: Settings) -> dict | None:
    """The latest loan within the model's ranges, as a new application (to prefill the form)."""
    with _conn(settings) as conn:
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT dob_ssn, zipcode, person_income, person_home_ownership, person_emp_length, loan_intent, "
                "loan_amnt, loan_int_rate FROM loans WHERE person_income BETWEEN %s AND %s "
                "AND loan_amnt BETWEEN %s AND %s AND loan_int_rate BETWEEN %s AND %s "
                "ORDER BY event_timestamp DESC, loan_id LIMIT 1",
                [*F.LIMITS["person_income"], *F.LIMITS["loan_amnt"], *F.LIMITS["loan_int_rate"]],
            )
            .fetchone()
        )
    return row


# --- offline freshness (for the materialize page) -------------------------------------------
def offline_window(settings: Settings, view_name: str, since: datetime | None, until: datetime) -> dict:
    """The offline table against a materialization window ending at ``since``, up to ``until``.

    Returns {oldest, newest: the table's first and last event times; online_newest: the newest
    event time at or before ``since`` (the newest data the online store can hold); pending and
    pending_entities: the rows (and distinct entities) in (since, until], what an incremental run
    would write; None as ``since`` means never materialized (everything up to ``until``)}.
    """
    view = _view(view_name)
    query = sql.SQL(
        "SELECT min(t.event_timestamp), max(t.event_timestamp), "
        "max(t.event_timestamp) FILTER (WHERE t.event_timestamp <= %s), "
        "count(*) FILTER (WHERE (%s::timestamptz IS NULL OR t.event_timestamp > %s) AND t.event_timestamp <= %s), "
        "count(DISTINCT {e}) FILTER (WHERE (%s::timestamptz IS NULL OR t.event_timestamp > %s) "
        "AND t.event_timestamp <= %s) FROM {t} AS t"
    ).format(e=_col(view, view.entity), t=sql.Identifier(view.table))
    with _conn(settings) as conn:
        row = conn.execute(query, [since, since, since, until, since, since, until]).fetchone()
    oldest, newest, online_newest, pending, entities = row
    return {
        "oldest": oldest,
        "newest": newest,
        "online_newest": online_newest,
        "pending": pending,
        "pending_entities": entities,
    }
