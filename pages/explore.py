"""Explore: the offline features in Postgres, summarized and bucketed in the database.

Only the open tab runs its queries (the tabs track their state and rerun on a switch), and each
query's result is cached until the data is reloaded (the cache key carries the load time) or an
hour has passed.  Applicant ids are shown masked (runtime.schema.masked_applicant): the pick
list shows masked labels and keeps the real id as its value, the typed id is a hidden field,
and every message and title echoes it masked.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import guarded, plain, require, settings, show_error
from runtime import explore as E
from runtime.dataset import data_state
from runtime.schema import masked_applicant
from runtime.settings import Settings

TTL = 3600  # the load time in every key makes a reload a new entry; the TTL only bounds memory
PLOT_CONFIG = {"displayModeBar": False, "responsive": True}  # no toolbar over the titles
TABS = ("Summary", "Histograms", "Drift over time", "By state", "Default rate", "One entity")
APPLICANT_ID = re.compile(r"\d{8}_\d{4}")


@st.cache_data(ttl=30, show_spinner=False)
def _loaded_at(s: Settings) -> str:
    """When the current data was loaded: part of every cache key below."""
    state = data_state(s)
    return state.loaded_at.isoformat() if state.loaded_at else ""


@st.cache_data(ttl=TTL, show_spinner=False)
def _states(s: Settings, stamp: str) -> list[str]:
    return E.states(s)


@st.cache_data(ttl=TTL, show_spinner=False)
def _cities(s: Settings, stamp: str, state: str | None) -> list[str]:
    return E.cities(s, state)


@st.cache_data(ttl=TTL, show_spinner=False)
def _bounds(s: Settings, stamp: str, view: str) -> dict:
    return E.feature_bounds(s, view)


@st.cache_data(ttl=TTL, show_spinner="Summarizing in Postgres…")
def _summary(s: Settings, stamp: str, view: str, f: E.Filters):
    return E.summary(s, view, f)


@st.cache_data(ttl=TTL, show_spinner=False)
def _histogram(s: Settings, stamp: str, view: str, feature: str, f: E.Filters, bins: int) -> pd.DataFrame:
    return E.histogram(s, view, feature, f, bins)


@st.cache_data(ttl=TTL, show_spinner="Computing quantiles in Postgres…")
def _drift(s: Settings, stamp: str, view: str, feature: str, f: E.Filters, grain: str) -> pd.DataFrame:
    return E.quantiles_over_time(s, view, feature, f, grain)


@st.cache_data(ttl=TTL, show_spinner="Grouping by state in Postgres…")
def _by_state(s: Settings, stamp: str, view: str, feature: str, f: E.Filters) -> pd.DataFrame:
    return E.by_state(s, view, feature, f)


@st.cache_data(ttl=TTL, show_spinner="Joining the loans to their features in Postgres…")
def _default_rate(s: Settings, stamp: str, view: str, feature: str, f: E.Filters, buckets: int) -> pd.DataFrame:
    return E.default_rate_by_bucket(s, view, feature, f, buckets)


@st.cache_data(ttl=TTL, show_spinner=False)
def _examples(s: Settings, stamp: str, view: str) -> list:
    return E.example_keys(s, view)


@st.cache_data(ttl=60, show_spinner=False)
def _history(s: Settings, view: str, key) -> pd.DataFrame:
    return E.entity_history(s, view, key)


@st.cache_data(ttl=60, show_spinner=False)
def _loans(s: Settings, key) -> pd.DataFrame:
    return E.applicant_loans(s, key)


@st.cache_data(ttl=60, show_spinner=False)
def _pit(s: Settings, view: str, key, as_of: datetime) -> dict:
    return E.point_in_time(s, view, key, as_of)


def _chart(fig: go.Figure, key: str, title: str | None = None, height: int = 300) -> None:
    """A Plotly chart without the toolbar, its title as text above it (nothing can cover it)."""
    if title:
        st.markdown(f"**{plain(title)}**")
    legend = any(t.showlegend is not False for t in fig.data) and len(fig.data) > 1
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30 if legend else 10, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        showlegend=legend,
    )
    st.plotly_chart(fig, key=key, config=PLOT_CONFIG)


def _metrics(*pairs: tuple[str, str], help: dict | None = None) -> None:
    """Metrics side by side that wrap on a narrow screen (columns would stack one per row)."""
    with st.container(horizontal=True, gap="medium"):
        for label, value in pairs:
            st.metric(label, value, width="content", help=(help or {}).get(label))


def _number(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:,.2f}"


def _filters(s: Settings, stamp: str, view: E.View) -> E.Filters:
    """Filters in an expander on the page (a sidebar would cover the page on a phone)."""
    with st.expander("Filters: state, city and value ranges", icon=":material/filter_list:", key="explore_filters"):
        c1, c2 = st.columns(2)
        state = c1.selectbox(
            "State", [None, *_states(s, stamp)], format_func=lambda v: "all states" if v is None else v
        )
        city = c2.selectbox(
            "City", [None, *_cities(s, stamp, state)], format_func=lambda v: "all cities" if v is None else v
        )
        chosen = st.multiselect("Value ranges on", view.features, key=f"ranges_{view.name}")
        bounds = _bounds(s, stamp, view.name)
        ranges = []
        for name in chosen:
            lo, hi = bounds[name]
            if lo is None or hi is None or hi <= lo:
                continue
            if float(lo).is_integer() and float(hi).is_integer():  # counts and amounts: whole steps
                lo, hi = int(lo), int(hi)
            a, b = st.slider(name, lo, hi, (lo, hi), key=f"r_{view.name}_{name}")
            ranges.append((name, a, b))
    f = E.Filters(ranges=tuple(ranges), state=state, city=city)
    active = [x for x in (state, city) if x] + [f"{n} {_number(a)}–{_number(b)}" for n, a, b in f.ranges]
    if active:
        st.caption("Filtered to " + plain(", ".join(active)))
    return f


def _summary_tab(s: Settings, stamp: str, view: E.View, f: E.Filters) -> None:
    head, stats = _summary(s, stamp, view.name, f)
    _metrics(
        ("Snapshot rows", f"{head['rows']:,}"),
        ("Entities" if view.entity != "dob_ssn" else "Applicants", f"{head['entities']:,}"),
        ("First snapshot", f"{head['first']:%Y-%m-%d}" if head["first"] else "—"),
        ("Last snapshot", f"{head['last']:%Y-%m-%d}" if head["last"] else "—"),
    )
    st.dataframe(
        stats,
        hide_index=True,
        column_config={
            "count": st.column_config.NumberColumn("rows with a value", format="localized"),
            "missing": st.column_config.NumberColumn("missing", format="localized", help="rows where it is empty"),
            "missing %": st.column_config.NumberColumn(format="%.2f %%"),
            **{c: st.column_config.NumberColumn(format="localized") for c in ("mean", "std", "min", "median")},
            **{c: st.column_config.NumberColumn(format="localized") for c in ("p95", "max")},
        },
    )
    missing = int(stats["missing"].sum())
    st.caption(
        f"Missing values: {missing:,} empty cells in {head['rows']:,} snapshot rows."
        if missing
        else f"Missing values: none — every feature has a value in all {head['rows']:,} snapshot rows. "
        "Loans without a snapshot in reach (the model sees no features) are counted under Default rate."
    )


def _histograms(s: Settings, stamp: str, view: E.View, f: E.Filters) -> None:
    bins = st.slider("Buckets", 10, 80, 30, step=5, key="bins")
    cols = st.columns(3)
    for i, name in enumerate(view.features):
        h = _histogram(s, stamp, view.name, name, f, bins)
        fig = go.Figure(
            go.Bar(
                x=(h["lo"] + h["hi"]) / 2,
                y=h["rows"],
                width=(h["hi"] - h["lo"]) * 0.95,
                hovertemplate="%{x:,.2f}: %{y:,} rows<extra></extra>",
            )
        )
        with cols[i % 3]:
            _chart(fig, f"hist_{name}", name, 240)


def _drift_tab(s: Settings, stamp: str, view: E.View, f: E.Filters) -> None:
    c1, c2 = st.columns([2, 3])
    feature = c1.selectbox("Feature", view.features, key=f"drift_feature_{view.name}")
    with c2:
        grain = st.segmented_control("Period", E.GRAINS, default="month", key="grain") or "month"
    df = _drift(s, stamp, view.name, feature, f, grain)
    if df.empty:
        st.info("No rows match the filters.")
        return
    x = df["period"]
    fig = go.Figure()
    for hi, lo, name, alpha in (("p90", "p10", "p10–p90", 0.15), ("p75", "p25", "p25–p75", 0.3)):
        edge = {"x": x, "mode": "lines", "line": {"width": 0}, "hoverinfo": "skip"}
        fig.add_trace(go.Scatter(y=df[hi], showlegend=False, **edge))
        fig.add_trace(go.Scatter(y=df[lo], fill="tonexty", fillcolor=f"rgba(31,119,180,{alpha})", name=name, **edge))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=df["p50"],
            name="median",
            mode="lines+markers",
            line={"color": "#1f77b4"},
            customdata=df[["p10", "p90", "rows"]],
            hovertemplate="%{x|%Y-%m-%d}: median %{y:,.2f}<br>p10 %{customdata[0]:,.2f} · p90 %{customdata[1]:,.2f}"
            "<br>%{customdata[2]:,} rows<extra></extra>",
        )
    )
    fig.add_trace(go.Scatter(x=x, y=df["mean"], name="mean", mode="lines", line={"color": "#d62728", "dash": "dot"}))
    _chart(fig, "drift", f"{feature}: quantiles per {grain}", 380)
    first, last = df.iloc[0], df.iloc[-1]
    st.caption(
        f"Median {_number(first['p50'])} in {first['period']:%Y-%m-%d} → {_number(last['p50'])} in "
        f"{last['period']:%Y-%m-%d}; p90 {_number(first['p90'])} → {_number(last['p90'])}. "
        f"Bands: the middle 80% and 50% of the snapshot values of each {grain}."
    )
    table = df.assign(period=df["period"].dt.strftime("%Y-%m-%d"))
    number = st.column_config.NumberColumn(format="localized")
    st.dataframe(table, hide_index=True, column_config={c: number for c in table.columns if c != "period"})


def _by_state_tab(s: Settings, stamp: str, view: E.View, f: E.Filters) -> None:
    feature = st.selectbox("Feature", view.features, key=f"state_feature_{view.name}")
    df = _by_state(s, stamp, view.name, feature, f)
    if df.empty:
        st.info("No rows match the filters.")
        return
    df = df.sort_values("mean")
    overall = (df["mean"] * df["rows"]).sum() / df["rows"].sum()
    # A dot per state on an axis that fits the means: bars from zero hid differences of a few percent.
    fig = go.Figure(
        go.Scatter(
            y=df["state"],
            x=df["mean"],
            mode="markers",
            marker={"color": "#1f77b4", "size": 9},
            customdata=df["rows"],
            hovertemplate="%{y}: mean %{x:,.2f}<br>%{customdata:,} rows<extra></extra>",
        )
    )
    fig.add_vline(x=overall, line_dash="dot", line_color="#d62728")
    fig.update_yaxes(type="category", tickfont={"size": 11}, showgrid=True, range=[-0.7, len(df) - 0.3])
    fig.update_xaxes(side="top")  # the scale stays in view above a long list
    where = "the state of the applicant's latest loan" if view.entity == "dob_ssn" else "the zipcode's state"
    _chart(fig, "by_state", f"Mean {feature} by state, sorted", 90 + 17 * len(df))
    st.caption(
        f"{len(df)} states, by {where}; dotted line: the mean over all of them ({_number(overall)}). "
        f"Highest: {df['state'].iloc[-1]} ({_number(df['mean'].iloc[-1])}), "
        f"lowest: {df['state'].iloc[0]} ({_number(df['mean'].iloc[0])})."
    )


def _bucket_label(lo, hi) -> str:
    if pd.isna(lo):
        return "no snapshot"
    return _number(lo) if lo == hi else f"{_number(lo)}–{_number(hi)}"


def _default_rate_tab(s: Settings, stamp: str, view: E.View, f: E.Filters) -> None:
    c1, c2 = st.columns([2, 3])
    feature = c1.selectbox("Feature", view.features, key=f"dr_feature_{view.name}")
    buckets = c2.segmented_control("Buckets (quantiles)", (5, 10, 20), default=10, key="dr_buckets") or 10
    df = _default_rate(s, stamp, view.name, feature, f, buckets)
    if df.empty:
        st.info("No loans match the filters.")
        return
    df = df.assign(bucket=[_bucket_label(lo, hi) for lo, hi in zip(df["lo"], df["hi"], strict=True)])
    loans, defaults = int(df["loans"].sum()), int(df["defaults"].sum())
    overall = defaults / loans
    no_snapshot = int(df.loc[df["lo"].isna(), "loans"].sum())
    _metrics(
        ("Loans", f"{loans:,}"),
        ("Default rate", f"{overall:.1%}"),
        ("Loans with no snapshot in reach", f"{no_snapshot:,}"),
        help={"Loans with no snapshot in reach": f"no snapshot within the view's TTL ({view.ttl.days} days)"},
    )
    fig = go.Figure(
        go.Bar(
            x=df["bucket"],
            y=df["rate"],
            customdata=df[["loans", "defaults"]],
            text=[f"{r:.0%}" for r in df["rate"]],
            textposition="outside",
            hovertemplate="%{x}: %{y:.1%} defaulted<br>%{customdata[1]:,} of %{customdata[0]:,} loans<extra></extra>",
        )
    )
    fig.add_hline(y=overall, line_dash="dot", line_color="#d62728")
    fig.update_xaxes(type="category", title=feature)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    _chart(fig, "default_rate", f"Default rate by {feature}", 360)
    entity = "applicant" if view.entity == "dob_ssn" else "zipcode"
    st.caption(
        f"Each loan in the loans table (loan_status 1 = defaulted) joined point in time to its {entity}'s latest "
        f"{view.name} snapshot at or before the loan's date, within the view's {view.ttl.days}-day TTL — the row "
        "a training set gets. Buckets are quantiles of those values (equal values stay in one bucket); the "
        "dotted line is the default rate of all these loans. Loans in the data, not decisions made in the app."
    )
    st.dataframe(
        df[["bucket", "loans", "defaults", "rate"]],
        hide_index=True,
        column_config={"rate": st.column_config.NumberColumn("default rate", format="percent")},
    )


def _masked_labels(keys: list) -> dict:
    """Masked labels for a pick list, made unique (two applicants can share a masked id)."""
    seen: dict[str, int] = {}
    labels = {}
    for k in keys:
        label = masked_applicant(k)
        seen[label] = seen.get(label, 0) + 1
        labels[k] = label if seen[label] == 1 else f"{label} ({seen[label]})"
    return labels


def _entity_tab(s: Settings, stamp: str, view: E.View) -> None:
    applicants = view.entity == "dob_ssn"
    examples = _examples(s, stamp, view.name)
    c1, c2 = st.columns([1, 1])
    with c1:
        if applicants:
            typed = st.text_input(
                "Applicant: date of birth and SSN last four (YYYYMMDD_NNNN)",
                key=f"entity_{view.name}",
                type="password",
                autocomplete="off",
                max_chars=64,
                help="Hidden as you type; shown masked once found.",
            )
            labels = _masked_labels(examples)
            picked = st.selectbox(
                "…or pick a recent applicant", examples, key=f"pick_{view.name}", format_func=labels.get
            )
        else:
            typed = st.text_input("Zipcode", key=f"entity_{view.name}", placeholder="type one", max_chars=64)
            picked = st.selectbox("…or pick a busy one", examples, key=f"pick_{view.name}")
    key = (typed or "").strip() or picked
    if key is None or key == "":
        st.info("No entity to show.")
        return
    if isinstance(key, str) and not key.isprintable():
        what = "applicant id" if applicants else "zipcode"
        st.error(f"The {what} you typed contains a NUL byte or another control character; type it again.")
        return
    if applicants and not APPLICANT_ID.fullmatch(str(key)):
        st.error(
            "An applicant id is the date of birth and the SSN's last four digits, YYYYMMDD_NNNN "
            "(8 digits, an underscore, 4 digits); what you typed is not in that form."
        )
        return
    shown_key = masked_applicant(key) if applicants else str(key)
    try:
        hist = _history(s, view.name, key)
    except ValueError:
        st.error(f"A zipcode is a number; you typed “{plain(key, 40)}”.")
        return
    if hist.empty:
        st.warning(f"No {view.name} snapshots for “{plain(shown_key, 40)}”.")
        return
    st.markdown(f"**{'Applicant' if applicants else 'Zipcode'} {plain(shown_key)}** · {len(hist):,} snapshots")
    with c2:
        d = st.date_input(
            "Point in time: what the model would have seen on", value=datetime.now(UTC).date(), key=f"pit_{view.name}"
        )
    as_of = datetime.combine(d, time(23, 59, 59), tzinfo=UTC)
    res = _pit(s, view.name, key, as_of)
    if res["row"] is None:
        st.warning(res["reason"], icon=":material/history_toggle_off:")
    else:
        st.success(f"On {d:%Y-%m-%d} a point-in-time join returns the {res['reason']}.", icon=":material/history:")
        st.dataframe(pd.DataFrame([res["row"]]), hide_index=True)
    shown = st.multiselect("Plot", view.features, default=list(view.features[:3]), key=f"plot_{view.name}")
    fig = go.Figure()
    for name in shown:
        fig.add_trace(
            go.Scatter(x=hist["event_timestamp"], y=hist[name], name=name, mode="lines+markers", line={"shape": "hv"})
        )
    fig.add_vline(x=as_of.timestamp() * 1000, line_dash="dot", line_color="#d62728")
    _chart(fig, "entity_history", f"{shown_key}: snapshots over time (dotted line: the chosen date)", 360)
    st.markdown("**Every snapshot**")
    st.dataframe(hist, hide_index=True)
    if applicants:
        loans = _loans(s, key)
        if not loans.empty:
            st.markdown("**Loans of this applicant**")
            st.dataframe(loans, hide_index=True)


require()
st.title(":material/query_stats: Explore offline features")
s = settings()
name = st.selectbox("Feature view", list(E.VIEWS), key="explore_view")
view = E.VIEWS[name]
try:
    stamp = _loaded_at(s)
    f = _filters(s, stamp, view)
except Exception as exc:
    show_error(exc, "The offline store (Postgres) is unavailable")
    st.stop()

# on_change="rerun": the tabs track which one is open, so only that one runs its queries.
tabs = dict(zip(TABS, st.tabs(TABS, key="explore_tab", on_change="rerun"), strict=True))
RENDER = {
    "Summary": ("Summary unavailable", lambda: _summary_tab(s, stamp, view, f)),
    "Histograms": ("Histograms unavailable", lambda: _histograms(s, stamp, view, f)),
    "Drift over time": ("Drift unavailable", lambda: _drift_tab(s, stamp, view, f)),
    "By state": ("By-state chart unavailable", lambda: _by_state_tab(s, stamp, view, f)),
    "Default rate": ("Default rates unavailable", lambda: _default_rate_tab(s, stamp, view, f)),
    "One entity": ("History unavailable", lambda: _entity_tab(s, stamp, view)),
}
for label, tab in tabs.items():
    if tab.open is False:  # None: this Streamlit does not track tabs, so every tab runs
        continue
    what, render = RENDER[label]
    with tab, guarded(what):
        render()
