"""Pieces of a decision shared by the Apply page and the decision record page: the outcome
banner, the principal reasons, the contributions waterfall and the adverse-action notice."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from model.inference import LABELS
from model.reasons import BY_FEATURE, MEMBER_TEXT
from pages._ui import plain

OUTCOME_TEXT = {
    "approve": ("APPROVE", st.success, ":material/check_circle:"),
    "refer": ("REFER to an underwriter", st.warning, ":material/person_search:"),
    "decline": ("DECLINE", st.error, ":material/cancel:"),
}


def outcome_banner(
    outcome: str, probability, cutoff, band, decision_id: int | None = None, pending: bool = True
) -> None:
    word, show, icon = OUTCOME_TEXT[outcome]
    if probability is None:
        detail = "no score: the data it needs is missing or stale"
    else:
        lo, hi = band or (cutoff, cutoff)
        where = {
            "approve": f"below the refer band from {lo:.1%}",
            "refer": f"within the refer band {lo:.1%}–{hi:.1%}",
            "decline": f"at or above {hi:.1%}",
        }[outcome]
        detail = f"probability of default {probability:.1%}, {where} (cut-off {cutoff:.1%})"
    suffix = f" · decision #{decision_id}" if decision_id is not None else ""
    if outcome == "refer" and pending:
        suffix += " · waiting in the review queue"
    show(f"**{word}** — {detail}{suffix}", icon=icon)


def reasons_list(reasons: list[dict]) -> None:
    """The principal reasons as a numbered list: text, the applicant's value, its as-of date."""
    lines = []
    for i, r in enumerate(reasons, 1):
        as_of = f" (credit file as of {r['as_of']})" if r.get("as_of") else ""
        lines.append(f"{i}. {plain(r['text'])}: **{plain(r['value'])}**{plain(as_of)}")
    st.markdown("\n".join(lines) if lines else "_None: nothing raised the risk above the training average._")


def _label(feature: str) -> str:
    if feature in MEMBER_TEXT:
        return MEMBER_TEXT[feature]
    if feature in BY_FEATURE and len(BY_FEATURE[feature].features) == 1:
        return BY_FEATURE[feature].text
    return LABELS.get(feature, feature.replace("_", " ").capitalize())


def waterfall(contributions: dict, base_value: float, probability: float, cutoff: float | None) -> go.Figure:
    """From the training average's log-odds, each input moves this applicant's risk up (red) or
    down (green); the last bar is this applicant.  Values sit in the labels, not on the bars,
    so nothing collides whatever the bars' sizes."""
    items = sorted(
        ((k, v) for k, v in contributions.items() if not k.startswith("_")), key=lambda kv: abs(kv[1]), reverse=True
    )
    top, rest = items[:8], items[8:]
    labels = [f"{_label(k)}  {v:+.2f}" for k, v in top]
    values = [v for _, v in top]
    if rest:
        total = sum(v for _, v in rest)
        labels.append(f"{len(rest)} other inputs  {total:+.2f}")
        values.append(total)
    labels.append(f"This applicant: {probability:.1%}")
    values.append(0)
    fig = go.Figure(
        go.Waterfall(
            orientation="h",
            y=labels,
            x=values,
            base=base_value,
            measure=["relative"] * (len(values) - 1) + ["total"],
            increasing={"marker": {"color": "#d62728"}},
            decreasing={"marker": {"color": "#2ca02c"}},
            totals={"marker": {"color": "#1f77b4"}},
            connector={"line": {"color": "#999", "width": 1}},
            hovertemplate="%{y}<extra></extra>",
        )
    )
    if cutoff:
        fig.add_vline(x=math.log(cutoff / (1 - cutoff)), line_dash="dot", line_color="#555")
    fig.update_layout(
        yaxis={"autorange": "reversed", "automargin": True},
        xaxis_title=f"log-odds of default from the training average {base_value:+.2f} (dotted: cut-off)",
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        showlegend=False,
    )
    return fig


def notice_buttons(record: dict | None, key: str = "notice") -> None:
    """Download buttons for the adverse-action notice of a declined decision (PDF and HTML)."""
    if not record:
        return
    from runtime import notice

    doc = notice.notice_record(record)  # a referral declined on review counts as a decline
    if doc["outcome"] != "decline":
        return
    config = notice.load_config()
    c1, c2 = st.columns(2)
    c1.download_button(
        "Adverse-action notice (PDF)",
        notice.render_pdf(doc, config),
        file_name=notice.notice_filename(doc, "pdf"),
        mime="application/pdf",
        icon=":material/picture_as_pdf:",
        key=f"{key}_pdf",
    )
    c2.download_button(
        "Notice (HTML)",
        notice.render_html(doc, config),
        file_name=notice.notice_filename(doc, "html"),
        mime="text/html",
        icon=":material/description:",
        key=f"{key}_html",
    )
