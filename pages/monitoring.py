"""Monitoring: what the recorded decisions say about the model in use.

Decisions and approval rate over time, the score distribution against the cut-off, approval
ratios by age band and by state at the cut-off, feature drift (PSI) against the training window,
the age of the online data at decision time, and predicted against observed default where the
outcome is known.  Every figure is aggregated in Postgres (runtime/monitoring.py) over the date
range chosen at the top; nothing here shows an applicant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model import bundles, groups
from model import monitoring as M
from model.inference import LABELS
from pages._ui import guarded, plain, require, settings, show_error
from runtime import monitoring as Q

require("underwriter", "admin")
st.title(":material/monitoring: Monitoring")

CHART = {"displayModeBar": False}
COLORS = {"approve": "#2e7d32", "refer": "#f9a825", "decline": "#c62828"}
STATUS_COLORS = {"stable": "#2e7d32", "watch": "#f9a825", "shifted": "#c62828", "n/a": "#9e9e9e"}
CACHE_S = 60


def _layout(fig: go.Figure, title: str, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        height=height,
        margin={"l": 10, "r": 10, "t": 48, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        **kw,
    )
    return fig


def _label(feature: str) -> str:
    return LABELS.get(feature, feature.replace("_", " "))


# --- cached reads (one minute; the range is part of the key) -------------------------------------
@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _decided_range():
    return Q.decided_range(settings())


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _over_time(p: Q.Period, grain: str) -> pd.DataFrame:
    return pd.DataFrame(
        Q.outcomes_over_time(settings(), p, grain), columns=["bucket", "outcome", "n", "scored", "data_refer"]
    )


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _scores(p: Q.Period):
    return Q.score_histogram(settings(), p), Q.cutoffs(settings(), p)


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _ratios(p: Q.Period):
    return M.age_band_ratios(Q.approvals_by_age(settings(), p)), M.state_ratios(Q.approvals_by_state(settings(), p))


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _drift(p: Q.Period, version: str | None):
    meta = bundles.read_metadata(version) if version else {}
    return M.feature_drift(settings(), p, meta)


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _freshness(p: Q.Period):
    return Q.feature_age(settings(), p), Q.feature_age_quantiles(settings(), p), Q.data_referrals(settings(), p)


@st.cache_data(ttl=CACHE_S, show_spinner=False)
def _calibration(p: Q.Period, test_start: str | None):
    start = datetime.fromisoformat(test_start) if test_start else None
    return Q.calibration(settings(), p, start)


# --- the range ------------------------------------------------------------------------------------
try:
    span = _decided_range()
except Exception as exc:
    show_error(exc, "The decision trail cannot be read")
    st.stop()
if span is None:
    st.info("No decisions are recorded yet: decide an application on the Apply page first.", icon=":material/info:")
    st.stop()

first_day, last_day = span[0].astimezone(UTC).date(), span[1].astimezone(UTC).date()
today = datetime.now(UTC).date()
default_from = max(first_day, last_day - timedelta(days=29))
c1, c2 = st.columns([3, 2])
with c1:
    chosen = st.date_input(
        "Decisions from – to (UTC days)",
        value=(default_from, last_day),
        min_value=first_day,
        max_value=max(last_day, today),
        key="mon_range",
        help=f"Decisions are on record from {first_day} to {last_day}.",
    )
with c2:
    grain = st.segmented_control("Per", Q.GRAINS, default="day", key="mon_grain") or "day"
if not isinstance(chosen, tuple | list) or len(chosen) != 2:
    st.info("Pick the last day of the range too.", icon=":material/date_range:")
    st.stop()
period = Q.Period(chosen[0], chosen[1])
version = bundles.current_version()
meta = bundles.current_metadata() or {}
st.caption(
    f"{period.first} to {period.last} ({period.days} days) · current model {plain(version or 'none')} · "
    f"figures refresh every {CACHE_S} s"
)

# --- 1. decisions and approval rate over time -----------------------------------------------------
st.subheader("Decisions over time")
with guarded("Decisions over time"):
    df = _over_time(period, grain)
    if df.empty:
        st.info("No decisions in this range.")
    else:
        by = df.pivot_table(index="bucket", columns="outcome", values="n", aggfunc="sum", fill_value=0)
        # Days (or weeks) as categories: one bar per period, labelled by its first day.
        by.index = [f"{b:%Y-%m-%d}" if grain == "day" else f"week of {b:%Y-%m-%d}" for b in by.index]
        for o in COLORS:
            if o not in by:
                by[o] = 0
        total = int(by.sum().sum())
        m = st.columns(4)
        m[0].metric("Decisions", f"{total:,}")
        for i, o in enumerate(COLORS, start=1):
            m[i].metric(f"{o.capitalize()}", f"{by[o].sum() / total:.1%}", help=f"{int(by[o].sum()):,} decisions")
        fig = go.Figure()
        for o, color in COLORS.items():
            fig.add_trace(go.Bar(x=by.index, y=by[o], name=o, marker_color=color))
        rate = by["approve"] / by.sum(axis=1)
        fig.add_trace(
            go.Scatter(
                x=by.index,
                y=rate,
                name="approval rate",
                yaxis="y2",
                mode="lines+markers",
                line={"color": "#0d47a1", "width": 3},
                marker={"size": 9, "line": {"color": "white", "width": 1.5}},
                hovertemplate="%{y:.1%}<extra>approval rate</extra>",
            )
        )
        _layout(
            fig,
            f"Decisions per {grain} by outcome, and the approval rate",
            barmode="stack",
            yaxis={"title": "decisions"},
            xaxis={"type": "category"},
            yaxis2={
                "overlaying": "y",
                "side": "right",
                "range": [0, 1],
                "tickformat": ".0%",
                "dtick": 0.25,
                "showgrid": False,
                "title": "approval rate",
            },
        )
        st.plotly_chart(fig, config=CHART, key="mon_over_time")

# --- 2. score distribution -----------------------------------------------------------------------
st.subheader("Score distribution")
with guarded("Score distribution"):
    hist, cuts = _scores(period)
    if not hist:
        st.info("No scored decisions in this range (referrals for missing data have no probability).")
    else:
        h = pd.DataFrame(hist)
        fig = go.Figure(
            go.Bar(
                x=(h["lo"] + h["hi"]) / 2,
                y=h["n"],
                width=(h["hi"] - h["lo"]) * 0.95,
                marker_color="#607d8b",
                name="decisions",
                hovertemplate="%{x:.0%}: %{y:,} decisions<extra></extra>",
            )
        )
        if cuts:
            cur = cuts[0]
            if cur["band"]:
                fig.add_vrect(
                    x0=cur["band"][0], x1=cur["band"][1], fillcolor=COLORS["refer"], opacity=0.18, line_width=0
                )
            fig.add_vline(x=cur["cutoff"], line={"color": COLORS["decline"], "dash": "dash"})
        _layout(
            fig,
            "Recorded probabilities of default",
            xaxis={"title": "probability of default", "tickformat": ".0%", "range": [0, max(0.5, h["hi"].max())]},
            yaxis={"title": "decisions"},
            showlegend=False,
        )
        st.plotly_chart(fig, config=CHART, key="mon_scores")
        if cuts:
            cur = cuts[0]
            band = f", refer band {cur['band'][0]:.1%}–{cur['band'][1]:.1%} (shaded)" if cur["band"] else ""
            st.caption(f"Dashed line: the latest cut-off {cur['cutoff']:.1%}{band}.")
            if len(cuts) > 1:
                st.caption(
                    f"The range's decisions were made with {len(cuts)} different cut-offs or bands: "
                    + "; ".join(f"{c['cutoff']:.1%} ({c['n']:,} decisions)" for c in cuts[:5])
                )


# --- 3. approval ratios --------------------------------------------------------------------------
def _ratio_chart(rows: list[dict], title: str, key: str, horizontal: bool) -> None:
    shown = [r for r in rows if r["ratio"] is not None]
    if not shown:
        st.info(f"No group has {groups.MIN_GROUP} scored decisions yet in this range.")
        return
    names = [r["group"] for r in shown]
    ratios = [r["ratio"] for r in shown]
    err_hi = [r["ratio_high"] - r["ratio"] for r in shown]
    err_lo = [r["ratio"] - r["ratio_low"] for r in shown]
    colors = [COLORS["decline"] if r["flag"] else "#1565c0" for r in shown]
    text = [f"{r['ratio']:.2f}{' ⚑' if r['flag'] else ''}" for r in shown]
    custom = [[r["n"], r["rate"]] for r in shown]
    tip = "%{customdata[0]:,} decisions, approval %{customdata[1]:.1%}<extra></extra>"
    if horizontal:
        bar = go.Bar(
            y=names,
            x=ratios,
            orientation="h",
            marker_color=colors,
            error_x={"type": "data", "array": err_hi, "arrayminus": err_lo, "color": "#555"},
            text=text,
            textposition="inside",
            insidetextanchor="start",
            customdata=custom,
            hovertemplate="%{y}: ratio %{x:.2f}<br>" + tip,
        )
        fig = go.Figure(bar)
        fig.add_vline(x=groups.FLAG_BELOW, line={"color": COLORS["decline"], "dash": "dot"})
        _layout(
            fig,
            title,
            height=max(260, 60 + 26 * len(shown)),
            xaxis={"title": "ratio to the most-approved state", "range": [0, 1.25]},
            yaxis={"autorange": "reversed", "type": "category"},
            showlegend=False,
        )
    else:
        bar = go.Bar(
            x=names,
            y=ratios,
            marker_color=colors,
            error_y={"type": "data", "array": err_hi, "arrayminus": err_lo, "color": "#555"},
            text=text,
            textposition="inside",
            customdata=custom,
            hovertemplate="%{x}: ratio %{y:.2f}<br>" + tip,
        )
        fig = go.Figure(bar)
        fig.add_hline(y=groups.FLAG_BELOW, line={"color": COLORS["decline"], "dash": "dot"})
        _layout(fig, title, yaxis={"title": "ratio to the most-approved band", "range": [0, 1.25]}, showlegend=False)
    st.plotly_chart(fig, config=CHART, key=key)


def _ratio_table(rows: list[dict], group: str) -> None:
    table = pd.DataFrame(
        [
            {
                group: r["group"],
                "decisions": r["n"],
                "approved": r["approved"],
                "approval rate": f"{r['rate']:.1%} ({r['rate_low']:.1%}–{r['rate_high']:.1%})",
                "ratio (95% interval)": (
                    f"{r['ratio']:.2f} ({r['ratio_low']:.2f}–{r['ratio_high']:.2f})" if r["ratio"] is not None else "—"
                ),
                "flag": "under 0.8" if r["flag"] else ("too few" if r["ratio"] is None else ""),
            }
            for r in rows
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")


def _flags(rows: list[dict], what: str) -> None:
    flagged = [r["group"] for r in rows if r["flag"]]
    if flagged:
        st.warning(
            f"Approval ratio under {groups.FLAG_BELOW} for {what} {', '.join(plain(g) for g in flagged)}: "
            "a flag to investigate, not a verdict (see the intervals).",
            icon=":material/flag:",
        )


st.subheader("Approval ratio at the cut-off")
st.caption(
    "Approval rate of a group ÷ that of the most-approved group, among scored decisions, approved meaning a "
    f"probability of default below the decision's cut-off (the refer band ignored). Under {groups.FLAG_BELOW} "
    "(the four-fifths convention) is flagged in red; whiskers are 95% Wilson intervals; groups with fewer than "
    f"{groups.MIN_GROUP} decisions get no ratio. By age: every decision of the range; by state: the range's newest "
    f"{Q.SAMPLE:,} (the state is read from each decision's recorded features)."
)
with guarded("Approval ratios"):
    by_age, (by_state, left_out) = _ratios(period)
    left, right = st.columns(2, gap="large")
    with left:
        _ratio_chart(by_age, "By age band (age from the recorded application)", "mon_age", horizontal=False)
        _flags(by_age, "age band")
    with right:
        _ratio_chart(by_state, "By state (from the recorded zipcode features)", "mon_state", horizontal=True)
        _flags(by_state, "state")
        if left_out["decisions"]:
            st.caption(
                f"Left out: {left_out['states']} states with fewer than {M.MIN_STATE_DECISIONS} scored decisions "
                f"each, and decisions without a state — {left_out['decisions']:,} decisions in all."
            )
    _ratio_table(by_age, "age band")
    if by_state:
        with st.expander("By state, as a table"):
            _ratio_table(by_state, "state")

# --- 4. population stability index ---------------------------------------------------------------
st.subheader("Feature drift against the training window")
window = meta.get("training_window") or {}
st.caption(
    "Population stability index of each online feature the current model scores: the recorded values of the "
    f"range's newest {Q.SAMPLE:,} decisions against the training loans' deciles"
    + (f" ({window.get('train_start', '')[:10]} to {window.get('test_end', '')[:10]})" if window else "")
    + f", missing values a bucket of their own. Under {M.PSI_STABLE} stable, {M.PSI_STABLE}–{M.PSI_SHIFTED} watch, "
    f"over {M.PSI_SHIFTED} shifted."
)
with guarded("Feature drift"):
    drift = _drift(period, version)
    if not version:
        st.info("No current model: train one (`uv run loan-desk train`) to have a reference.")
    elif not drift:
        st.info("The current model scores no online feature.")
    else:
        measured = [d for d in drift if d.psi is not None]
        left, right = st.columns(2, gap="large")
        with left:
            if measured:
                fig = go.Figure(
                    go.Bar(
                        y=[_label(d.feature) for d in measured],
                        x=[d.psi for d in measured],
                        orientation="h",
                        marker_color=[STATUS_COLORS[d.status] for d in measured],
                        text=[f"{d.psi:.3f}" for d in measured],
                        textposition="outside",
                        hovertemplate="%{y}: PSI %{x:.3f}<extra></extra>",
                    )
                )
                for x in (M.PSI_STABLE, M.PSI_SHIFTED):
                    fig.add_vline(x=x, line={"color": "#777", "dash": "dot"})
                top = max(max(d.psi for d in measured) * 1.25, M.PSI_SHIFTED * 1.2)
                _layout(
                    fig,
                    "PSI per feature",
                    height=max(260, 70 + 28 * len(measured)),
                    xaxis={"title": "PSI", "range": [0, top]},
                    yaxis={"autorange": "reversed", "type": "category"},
                    showlegend=False,
                )
                st.plotly_chart(fig, config=CHART, key="mon_psi")
            else:
                st.info("No decision in this range read these features.")
        with right:
            table = pd.DataFrame(
                [
                    {
                        "feature": _label(d.feature),
                        "PSI": round(d.psi, 3) if d.psi is not None else None,
                        "status": d.status,
                        "decisions": d.decisions,
                        "missing (train → now)": (
                            f"{d.expected_missing:.1%} → {d.actual_missing:.1%}" if d.actual else "—"
                        ),
                        "note": d.note,
                    }
                    for d in drift
                ]
            )
            st.dataframe(table, hide_index=True, width="stretch")
        choices = [d for d in measured]
        if choices:
            pick = st.selectbox(
                "Buckets of one feature", choices, format_func=lambda d: _label(d.feature), key="mon_psi_feature"
            )
            fig = go.Figure()
            fig.add_trace(go.Bar(x=pick.labels, y=pick.expected, name="training loans", marker_color="#90a4ae"))
            fig.add_trace(go.Bar(x=pick.labels, y=pick.actual, name="decisions in range", marker_color="#1565c0"))
            _layout(
                fig,
                f"{_label(pick.feature)}: share per training decile bucket",
                height=320,
                barmode="group",
                yaxis={"tickformat": ".0%"},
                xaxis={"type": "category"},
            )
            st.plotly_chart(fig, config=CHART, key="mon_psi_buckets")

# --- 5. feature freshness ------------------------------------------------------------------------
st.subheader("Feature freshness")
st.caption(
    "Age of the online row each decision read: the decision time minus the row's event timestamp (the "
    "credit file's snapshot, the zipcode's statistics), over the range's newest "
    f"{Q.SAMPLE:,} decisions. A row older than its view's TTL counts as missing."
)
with guarded("Feature freshness"):
    ages, quantiles, refs = _freshness(period)
    m = st.columns(4)
    for i, view in enumerate(("credit_history", "zipcode_features")):
        med, p90 = quantiles.get(view, (None, None))
        m[i].metric(
            f"{view.replace('_', ' ')}: median age",
            f"{med:,.0f} days" if med is not None else "—",
            help=f"90th percentile {p90:,.0f} days" if p90 is not None else None,
        )
    total = refs["total"] or 0
    m[2].metric(
        "Referred for data",
        f"{refs['data_refer'] / total:.1%}" if total else "—",
        help="Referrals without a probability: missing, stale or reloaded data",
    )
    m[3].metric(
        "Of which stale", f"{refs['stale']:,}", help=f"missing {refs['missing']:,} · reloaded {refs['reloaded']:,}"
    )
    if ages:
        a = pd.DataFrame(ages)
        order = [b[2] for b in Q.AGE_BUCKETS] + [Q.NO_ROW]
        fig = go.Figure()
        palette = ["#0d47a1", "#1565c0", "#1e88e5", "#42a5f5", "#64b5f6", "#90caf9", "#bbdefb", "#9e9e9e"]
        for label, color in zip(order, palette, strict=True):
            part = a[a["bucket"] == label]
            if part.empty:
                continue
            n = part.groupby("view")["n"].sum()
            fig.add_trace(
                go.Bar(
                    y=[v.replace("_", " ") for v in n.index],
                    x=n.values,
                    name=label,
                    orientation="h",
                    marker_color=color,
                    hovertemplate="%{y}: %{x:,} decisions<extra>" + label + "</extra>",
                )
            )
        _layout(
            fig, "Age of the online row at decision time", height=300, barmode="stack", xaxis={"title": "decisions"}
        )
        fig.update_layout(legend={"y": -0.3, "yanchor": "top", "x": 0, "xanchor": "left"}, margin={"b": 60})
        st.plotly_chart(fig, config=CHART, key="mon_freshness")
        stale = a.groupby("view")["stale"].sum()
        if stale.sum():
            st.caption(
                "Stale at decision time (not used): "
                + ", ".join(f"{v.replace('_', ' ')} {int(s):,}" for v, s in stale.items() if s)
            )

# --- 6. predicted against observed ---------------------------------------------------------------
st.subheader("Predicted against observed default")
st.caption(
    "Outcomes come from the loans table (Feast's offline source). The applicants decided here are the loans' own "
    "applicants, so a decision's outcome is known when it replays a recorded loan: the same applicant asking for "
    "the same amount with the same intent; that loan's status is the outcome of that application (the loan dated "
    "nearest the decision when there are several). Other decisions have no outcome and are left out. The "
    "decision read today's online features, not those of the loan date, and the released model was refitted on "
    "every labelled loan, so this checks the live pipeline (features, model, policy, records) — it is not a "
    "fresh out-of-sample validation; the model card's test metrics are."
)
with guarded("Predicted against observed default"):
    cal = _calibration(period, window.get("test_start"))
    summary = M.calibration_summary(cal)
    m = st.columns(4)
    m[0].metric("Scored decisions", f"{cal['scored']:,}")
    m[1].metric(
        "With a known outcome",
        f"{cal['matched']:,}",
        help=f"{cal['in_test']:,} of them are loans of the model's test period "
        f"(from {window.get('test_start', '?')[:10]})",
    )
    m[2].metric(
        "Predicted / observed",
        f"{summary['predicted']:.1%} / {summary['observed']:.1%}" if summary["n"] else "—",
    )
    m[3].metric(
        "Calibration error",
        f"{summary['ece']:.3f}" if summary["ece"] is not None else "—",
        help="|predicted − observed| per bin, weighted by decisions",
    )
    if cal.get("no_loans"):
        st.info("There is no loans table in this database, so no outcome is known.")
    elif not cal["bins"]:
        st.info("No decision in this range replays a recorded loan, so no outcome is known yet.")
    else:
        b = pd.DataFrame(cal["bins"])
        left, right = st.columns([3, 2], gap="large")
        with left:
            fig = go.Figure()
            fig.add_trace(
                go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dash", "color": "#999"})
            )
            fig.add_trace(
                go.Scatter(
                    x=b["predicted"],
                    y=b["observed"],
                    mode="lines+markers",
                    name="decisions",
                    marker={"size": [max(7, min(28, n**0.5 * 1.5)) for n in b["n"]], "color": "#1565c0"},
                    customdata=b["n"],
                    hovertemplate="predicted %{x:.1%}<br>observed %{y:.1%}<br>%{customdata:,} decisions<extra></extra>",
                )
            )
            top = min(1.0, max(0.5, float(b["predicted"].max()) * 1.2, float(b["observed"].max()) * 1.1))
            _layout(
                fig,
                "Calibration: predicted against observed default",
                height=380,
                xaxis={"title": "mean predicted probability", "tickformat": ".0%", "range": [0, top]},
                yaxis={"title": "observed default rate", "tickformat": ".0%", "range": [0, top]},
            )
            st.plotly_chart(fig, config=CHART, key="mon_calibration")
        with right:
            st.dataframe(
                pd.DataFrame(
                    {
                        "bin": [f"{lo:.0%}–{hi:.0%}" for lo, hi in zip(b["lo"], b["hi"], strict=True)],
                        "decisions": b["n"],
                        "predicted": [f"{v:.1%}" for v in b["predicted"]],
                        "observed": [f"{v:.1%}" for v in b["observed"]],
                    }
                ),
                hide_index=True,
                width="stretch",
            )
