"""Explore: the offline features in Postgres, summarized and bucketed in the database."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages._ui import guarded, plain, require, settings, show_error
from runtime import explore as E
from runtime.settings import Settings

TTL = 300


@st.cache_data(ttl=TTL, show_spinner=False)
def _states(s: Settings) -> list[str]:
    return E.states(s)


@st.cache_data(ttl=TTL, show_spinner=False)
def _cities(s: Settings, state: str | None) -> list[str]:
    return E.cities(s, state)


@st.cache_data(ttl=TTL, show_spinner=False)
def _bounds(s: Settings, view: str) -> dict:
    return E.feature_bounds(s, view)


@st.cache_data(ttl=TTL, show_spinner="Summarizing in Postgres…")
def _summary(s: Settings, view: str, f: E.Filters):
    return E.summary(s, view, f)


@st.cache_data(ttl=TTL, show_spinner=False)
def _histogram(s: Settings, view: str, feature: str, f: E.Filters, bins: int) -> pd.DataFrame:
    return E.histogram(s, view, feature, f, bins)


@st.cache_data(ttl=TTL, show_spinner=False)
def _over_time(s: Settings, view: str, f: E.Filters, grain: str) -> pd.DataFrame:
    return E.snapshots_over_time(s, view, f, grain)


@st.cache_data(ttl=TTL, show_spinner=False)
def _by_state(s: Settings, view: str, feature: str, f: E.Filters) -> pd.DataFrame:
    return E.by_state(s, view, feature, f)


@st.cache_data(ttl=TTL, show_spinner=False)
def _examples(s: Settings, view: str) -> list:
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


def _layout(fig: go.Figure, title: str, height: int = 260) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10}, showlegend=False)
    return fig


def _filters(s: Settings, view: E.View) -> E.Filters:
    with st.sidebar:
        st.markdown("**Filters**")
        state = st.selectbox("State", [None, *_states(s)], format_func=lambda v: "all states" if v is None else v)
        city = st.selectbox("City", [None, *_cities(s, state)], format_func=lambda v: "all cities" if v is None else v)
        chosen = st.multiselect("Value ranges on", view.features, key=f"ranges_{view.name}")
        bounds = _bounds(s, view.name)
        ranges = []
        for name in chosen:
            lo, hi = bounds[name]
            if hi <= lo:
                continue
            a, b = st.slider(name, lo, hi, (lo, hi), key=f"r_{view.name}_{name}")
            ranges.append((name, a, b))
    return E.Filters(ranges=tuple(ranges), state=state, city=city)


def _summary_tab(s: Settings, view: E.View, f: E.Filters) -> None:
    head, stats = _summary(s, view.name, f)
    c = st.columns(4)
    c[0].metric("Snapshot rows", f"{head['rows']:,}")
    c[1].metric("Entities" if view.entity != "dob_ssn" else "Applicants", f"{head['entities']:,}")
    c[2].metric("First snapshot", f"{head['first']:%Y-%m-%d}" if head["first"] else "—")
    c[3].metric("Last snapshot", f"{head['last']:%Y-%m-%d}" if head["last"] else "—")
    st.dataframe(stats.round(2), hide_index=True)


def _histograms(s: Settings, view: E.View, f: E.Filters) -> None:
    bins = st.slider("Buckets", 10, 80, 30, step=5, key="bins")
    cols = st.columns(3)
    for i, name in enumerate(view.features):
        h = _histogram(s, view.name, name, f, bins)
        fig = go.Figure(go.Bar(x=(h["lo"] + h["hi"]) / 2, y=h["rows"], width=(h["hi"] - h["lo"]) * 0.95))
        with cols[i % 3]:
            st.plotly_chart(_layout(fig, name), key=f"hist_{name}")


def _over_time_tab(s: Settings, view: E.View, f: E.Filters) -> None:
    grain = st.segmented_control("Period", E.GRAINS, default="month", key="grain") or "month"
    df = _over_time(s, view.name, f, grain)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=df["period"], y=df["snapshots"], name="snapshots"))
    fig.add_trace(go.Scatter(x=df["period"], y=df["entities"], name="distinct entities", mode="lines+markers"))
    fig = _layout(fig, f"{view.name} snapshots per {grain}", 380)
    fig.update_layout(showlegend=True)
    st.plotly_chart(fig, key="over_time")


def _by_state_tab(s: Settings, view: E.View, f: E.Filters) -> None:
    feature = st.selectbox("Feature", view.features, key=f"state_feature_{view.name}")
    df = _by_state(s, view.name, feature, f)
    if df.empty:
        st.info("No rows match the filters.")
        return
    fig = go.Figure(
        go.Bar(
            x=df["state"],
            y=df["mean"],
            text=df["rows"],
            hovertemplate="%{x}: mean %{y:,.2f}<br>%{text:,} rows<extra></extra>",
        )
    )
    st.plotly_chart(_layout(fig, f"Mean {feature} by state", 380), key="by_state")


def _entity_tab(s: Settings, view: E.View) -> None:
    label = "Applicant (dob_ssn)" if view.entity == "dob_ssn" else "Zipcode"
    examples = _examples(s, view.name)
    c1, c2 = st.columns([1, 1])
    with c1:
        typed = st.text_input(
            f"{label}", key=f"entity_{view.name}", placeholder="type one, or pick below", max_chars=64
        )
        picked = st.selectbox("…or pick a recent one", examples, key=f"pick_{view.name}")
    key = (typed or "").strip() or picked
    if key is None or key == "":
        st.info("No entity to show.")
        return
    if isinstance(key, str) and not key.isprintable():
        st.error(f"The {label.lower()} you typed contains a NUL byte or another control character; type it again.")
        return
    try:
        hist = _history(s, view.name, key)
    except ValueError:
        st.error(
            f"{label} must be {'a number' if view.entity == 'zipcode' else 'YYYYMMDD_NNNN'}; "
            f"you typed “{plain(key, 40)}”."
        )
        return
    if hist.empty:
        st.warning(f"No {view.name} snapshots for “{plain(key, 40)}”.")
        return
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
    fig = _layout(fig, f"{key}: snapshots over time (dotted line: the chosen date)", 360)
    fig.update_layout(showlegend=True)
    st.plotly_chart(fig, key="entity_history")
    st.markdown("**Every snapshot**")
    st.dataframe(hist, hide_index=True)
    if view.entity == "dob_ssn":
        loans = _loans(s, key)
        if not loans.empty:
            st.markdown("**Loans of this applicant**")
            st.dataframe(loans, hide_index=True)


require()
st.title(":material/query_stats: Explore offline features")
s = settings()
name = st.sidebar.selectbox("Feature view", list(E.VIEWS), key="explore_view")
view = E.VIEWS[name]
try:
    f = _filters(s, view)
except Exception as exc:
    show_error(exc, "The offline store (Postgres) is unavailable")
    st.stop()

t1, t2, t3, t4, t5 = st.tabs(["Summary", "Histograms", "Over time", "By state", "One entity over time"])
with t1, guarded("Summary unavailable"):
    _summary_tab(s, view, f)
with t2, guarded("Histograms unavailable"):
    _histograms(s, view, f)
with t3, guarded("Snapshot counts unavailable"):
    _over_time_tab(s, view, f)
with t4, guarded("By-state chart unavailable"):
    _by_state_tab(s, view, f)
with t5, guarded("History unavailable"):
    _entity_tab(s, view)
