"""Read-only queries over the decision trail (loan_desk_decisions) for the monitoring page.

Every query takes a date range (UTC days, both ends included), filters ``decided_at`` on it
(the ``loan_desk_decisions_time`` index of migration 4) and aggregates in Postgres: the page
receives buckets and counts, never rows of decisions, so the answers stay small at a million
recorded decisions.  Values are psycopg parameters; nothing here returns an applicant id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from psycopg.types.json import Jsonb

from runtime import db
from runtime.settings import Settings

GRAINS = ("day", "week")
SCORE_BINS = 50
CALIBRATION_BINS = 10
# Age of the online row at decision time, in days: [lower, upper) and a label.
AGE_BUCKETS = (
    (0, 1, "< 1 day"),
    (1, 7, "1–7 days"),
    (7, 30, "7–30 days"),
    (30, 90, "30–90 days"),
    (90, 180, "90–180 days"),
    (180, 365, "180–365 days"),
    (365, None, "1 year or more"),
)
NO_ROW = "no row"

_RANGE = "d.decided_at >= %(start)s AND d.decided_at < %(end)s"
# The sections that open every recorded feature (state, drift, row age) read the range's newest
# SAMPLE decisions (by the decided_at index), so they answer in about a second at any volume.
SAMPLE = 20_000
_LATEST = (
    "(SELECT * FROM loan_desk_decisions d WHERE " + _RANGE + " ORDER BY d.decided_at DESC LIMIT " + str(SAMPLE) + ") d"
)
# A feature of the recorded features (a jsonb array of {name, view, value, event_timestamp, status}).
_STATE = "jsonb_path_query_first(d.features, '$[*] ? (@.name == \"state\").value') #>> '{}'"


@dataclass(frozen=True)
class Period:
    """UTC days ``first`` to ``last``, both included."""

    first: date
    last: date

    def __post_init__(self):
        if self.last < self.first:
            raise ValueError(f"the range ends ({self.last}) before it starts ({self.first})")

    @property
    def params(self) -> dict:
        return {
            "start": datetime.combine(self.first, time.min, UTC),
            "end": datetime.combine(self.last + timedelta(days=1), time.min, UTC),
        }

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def _rows(settings: Settings, query: str, params: dict) -> list[tuple]:
    with db.connection(settings) as conn:
        return conn.execute(query, params).fetchall()


def decided_range(settings: Settings) -> tuple[datetime, datetime] | None:
    """The first and last decided_at on record (two index lookups), or None without decisions."""
    with db.connection(settings) as conn:
        first = conn.execute("SELECT decided_at FROM loan_desk_decisions ORDER BY decided_at LIMIT 1").fetchone()
        last = conn.execute("SELECT decided_at FROM loan_desk_decisions ORDER BY decided_at DESC LIMIT 1").fetchone()
    return (first[0], last[0]) if first and last else None


def outcomes_over_time(settings: Settings, period: Period, grain: str = "day") -> list[dict]:
    """Decisions per day or week (UTC) and outcome: ``{bucket, outcome, n, scored, data_refer}``
    (``scored``: with a probability; ``data_refer``: referred without one, for missing, stale or
    reloaded data)."""
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {', '.join(GRAINS)}")
    rows = _rows(
        settings,
        "SELECT date_trunc(%(grain)s, d.decided_at AT TIME ZONE 'UTC') AS bucket, d.outcome, count(*), "
        "count(d.probability), count(*) FILTER (WHERE d.outcome = 'refer' AND d.probability IS NULL) "
        f"FROM loan_desk_decisions d WHERE {_RANGE} GROUP BY 1, 2 ORDER BY 1, 2",
        {**period.params, "grain": grain},
    )
    return [{"bucket": b, "outcome": o, "n": n, "scored": s, "data_refer": r} for b, o, n, s, r in rows]


def score_histogram(settings: Settings, period: Period, bins: int = SCORE_BINS) -> list[dict]:
    """Recorded probabilities of default in ``bins`` equal buckets of [0, 1]: ``{lo, hi, n}``."""
    rows = _rows(
        settings,
        "SELECT least(width_bucket(d.probability, 0, 1, %(bins)s), %(bins)s) AS b, count(*) "
        f"FROM loan_desk_decisions d WHERE {_RANGE} AND d.probability IS NOT NULL GROUP BY 1 ORDER BY 1",
        {**period.params, "bins": bins},
    )
    return [{"lo": (b - 1) / bins, "hi": b / bins, "n": n} for b, n in rows]


def cutoffs(settings: Settings, period: Period) -> list[dict]:
    """The cut-offs and refer bands the range's decisions were made with, latest first:
    ``{cutoff, band, n, last}`` (one row unless the policy or the model changed)."""
    rows = _rows(
        settings,
        "SELECT d.threshold, d.band, count(*), max(d.decided_at) FROM loan_desk_decisions d "
        f"WHERE {_RANGE} AND d.threshold IS NOT NULL GROUP BY 1, 2 ORDER BY 4 DESC",
        period.params,
    )
    return [{"cutoff": t, "band": tuple(b) if b else None, "n": n, "last": last} for t, b, n, last in rows]


def approvals_by_age(settings: Settings, period: Period) -> list[tuple[int | None, int, int]]:
    """(age from the recorded inputs, scored decisions, approved at the cut-off) per age.
    Approved at the cut-off: probability of default below the decision's own cut-off."""
    return _rows(
        settings,
        "SELECT (d.inputs->>'person_age')::int AS age, count(*), count(*) FILTER (WHERE d.probability < d.threshold) "
        f"FROM loan_desk_decisions d WHERE {_RANGE} AND d.probability IS NOT NULL AND d.threshold IS NOT NULL "
        "GROUP BY 1 ORDER BY 1",
        period.params,
    )


def approvals_by_state(settings: Settings, period: Period) -> list[tuple[str | None, int, int]]:
    """(state from the recorded zipcode features, scored decisions, approved at the cut-off)."""
    return _rows(
        settings,
        f"SELECT {_STATE} AS state, count(*), count(*) FILTER (WHERE d.probability < d.threshold) "
        f"FROM {_LATEST} WHERE d.probability IS NOT NULL AND d.threshold IS NOT NULL "
        "GROUP BY 1 ORDER BY 1",
        period.params,
    )


def feature_buckets(settings: Settings, period: Period, edges: dict[str, list[float]]) -> dict[str, dict]:
    """Recorded online features of the range's decisions in the buckets of ``edges`` (per
    feature: thresholds as width_bucket takes them).  Returns ``{feature: {bucket: n}}`` where
    bucket None counts values that were missing or stale (not used by the model, as in training)."""
    if not edges:
        return {}
    rows = _rows(
        settings,
        "WITH e AS (SELECT key AS name, ARRAY(SELECT jsonb_array_elements_text(value)::float8) AS edges "
        "           FROM jsonb_each(%(edges)s::jsonb)) "
        "SELECT e.name, CASE WHEN f->>'status' = 'ok' AND jsonb_typeof(f->'value') = 'number' "
        "                    THEN width_bucket((f->>'value')::float8, e.edges) END AS bucket, count(*) "
        f"FROM {_LATEST} CROSS JOIN LATERAL jsonb_array_elements(d.features) f "
        "JOIN e ON e.name = f->>'name' "
        "GROUP BY 1, 2",
        {**period.params, "edges": Jsonb({k: [float(x) for x in v] for k, v in edges.items()})},
    )
    out: dict[str, dict] = {name: {} for name in edges}
    for name, bucket, n in rows:
        out[name][bucket] = n
    return out


_ROW_AGE = (
    "CROSS JOIN (VALUES ('credit_history'), ('zipcode_features')) v(view) "
    "CROSS JOIN LATERAL (SELECT extract(epoch FROM d.decided_at - (jsonb_path_query_first(d.features, "
    "  '$[*] ? (@.view == $v).event_timestamp', jsonb_build_object('v', v.view)) #>> '{}')::timestamptz) "
    "  / 86400.0 AS days, "
    "  jsonb_path_exists(d.features, '$[*] ? (@.view == $v && @.status == \"stale\")', "
    "  jsonb_build_object('v', v.view)) AS stale) a "
)


def feature_age(settings: Settings, period: Period) -> list[dict]:
    """Age of each view's online row at decision time (decided_at - the row's event_timestamp):
    ``{view, bucket, n, stale}`` with the labels of AGE_BUCKETS (NO_ROW: the store had none),
    and ``stale`` the decisions whose row was older than the view's TTL (status 'stale').
    Decisions that read nothing (referred because the data was reloaded) are left out."""
    rows = _rows(
        settings,
        "SELECT v.view, width_bucket(a.days, %(bounds)s::float8[]) AS b, count(*), count(*) FILTER (WHERE a.stale) "
        f"FROM {_LATEST} {_ROW_AGE}"
        "WHERE jsonb_array_length(d.features) > 0 GROUP BY 1, 2",
        {**period.params, "bounds": [lo for lo, _, _ in AGE_BUCKETS[1:]]},
    )
    return [
        {"view": v, "bucket": NO_ROW if b is None else AGE_BUCKETS[b][2], "n": n, "stale": s} for v, b, n, s in rows
    ]


def feature_age_quantiles(settings: Settings, period: Period) -> dict[str, tuple[float, float]]:
    """Median and 90th percentile age in days of each view's online row at decision time."""
    rows = _rows(
        settings,
        "SELECT v.view, percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY a.days) "
        f"FROM {_LATEST} {_ROW_AGE}"
        "WHERE a.days IS NOT NULL GROUP BY 1",
        period.params,
    )
    return {v: (float(q[0]), float(q[1])) for v, q in rows}


def data_referrals(settings: Settings, period: Period) -> dict:
    """Decisions of the range referred because the data could not be scored (no probability),
    by cause: ``{total, data_refer, stale, missing, reloaded}``.  Stale: a row older than its
    view's TTL; missing: the online store had no row; reloaded: the data was replaced since the
    model or the online store (nothing read)."""
    row = _rows(
        settings,
        "SELECT count(*), count(*) FILTER (WHERE x.data), "
        "count(*) FILTER (WHERE x.data AND x.stale), "
        "count(*) FILTER (WHERE x.data AND NOT x.stale AND x.n > 0), "
        "count(*) FILTER (WHERE x.data AND x.n = 0) "
        "FROM (SELECT d.outcome = 'refer' AND d.probability IS NULL AS data, "
        "  jsonb_path_exists(d.features, '$[*] ? (@.status == \"stale\")') AS stale, "
        f"  jsonb_array_length(d.features) AS n FROM loan_desk_decisions d WHERE {_RANGE}) x",
        period.params,
    )[0]
    return dict(zip(("total", "data_refer", "stale", "missing", "reloaded"), row, strict=True))


def calibration(settings: Settings, period: Period, test_start: datetime | None, bins: int = CALIBRATION_BINS) -> dict:
    """Predicted against observed default for the range's scored decisions whose outcome is known.

    The join: a decision replays a loan of the ``loans`` table when it is the same applicant
    (dob_ssn) asking for the same amount with the same intent; the loan's ``loan_status`` is
    then the outcome of that very application.  With several such loans, the one dated nearest
    the decision.  Returns ``{scored, matched, in_test, bins: [{bin, lo, hi, n, predicted,
    observed, in_test}]}`` where ``in_test`` counts loans dated from ``test_start`` (the model's
    time-ordered holdout) on."""
    with db.connection(settings) as conn:
        if not conn.execute("SELECT to_regclass('public.loans') IS NOT NULL").fetchone()[0]:
            return {"scored": 0, "matched": 0, "in_test": 0, "bins": [], "no_loans": True}
        params = {**period.params, "bins": bins, "test_start": test_start}
        scored = conn.execute(
            f"SELECT count(*) FROM loan_desk_decisions d WHERE {_RANGE} AND d.probability IS NOT NULL", params
        ).fetchone()[0]
        rows = conn.execute(
            "WITH m AS ("
            " SELECT DISTINCT ON (d.id) d.probability, l.loan_status, l.event_timestamp AS loan_ts "
            " FROM loan_desk_decisions d JOIN loans l ON l.dob_ssn = d.applicant "
            "  AND l.loan_amnt = (d.inputs->>'loan_amnt')::float8 AND l.loan_intent = d.inputs->>'loan_intent' "
            f" WHERE {_RANGE} AND d.probability IS NOT NULL "
            " ORDER BY d.id, abs(extract(epoch FROM l.event_timestamp - d.decided_at))) "
            "SELECT least(width_bucket(probability, 0, 1, %(bins)s), %(bins)s) AS b, count(*), avg(probability), "
            "avg(loan_status::float8), count(*) FILTER (WHERE loan_ts >= %(test_start)s) "
            "FROM m GROUP BY 1 ORDER BY 1",
            params,
        ).fetchall()
    out = [
        {"bin": b, "lo": (b - 1) / bins, "hi": b / bins, "n": n, "predicted": p, "observed": o, "in_test": t}
        for b, n, p, o, t in rows
    ]
    return {
        "scored": scored,
        "matched": sum(r["n"] for r in out),
        "in_test": sum(r["in_test"] for r in out),
        "bins": out,
        "no_loans": False,
    }
