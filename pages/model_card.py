"""Model card: what the deployed model is, how well it does, and what it was trained on."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model.inference import LABELS, DecisionService
from pages._ui import plain, require, show_error

require()
st.title(":material/fact_check: Model card")

service = DecisionService.shared()
try:
    meta = service.metadata
except Exception as exc:
    show_error(exc, "No model to describe")
    st.stop()
if problem := service.model_problem:
    st.warning(str(problem), icon=":material/warning:")

m = meta.get("metrics", {})
st.markdown(
    f"**Version** `{meta.get('model_version', '?')}` · trained {meta.get('trained_at', '?')[:19].replace('T', ' ')} "
    f"UTC · feature service `{meta.get('feature_service', '?')}`"
)
cols = st.columns(6)
cols[0].metric("Test AUC", f"{m['auc']:.3f}" if "auc" in m else "—")
cols[1].metric("Bayes AUC", f"{m['bayes_auc']:.3f}" if "bayes_auc" in m else "—", help="AUC of the true risk")
cols[2].metric("Brier score", f"{m['brier']:.3f}" if "brier" in m else "—")
cols[3].metric("Accuracy at threshold", f"{m['accuracy_at_threshold']:.1%}" if "accuracy_at_threshold" in m else "—")
cols[4].metric("Default rate (test)", f"{m['default_rate_test']:.1%}" if "default_rate_test" in m else "—")
cols[5].metric("Approval rate (test)", f"{m['approval_rate_test']:.1%}" if "approval_rate_test" in m else "—")
st.caption(f"Threshold {meta.get('threshold', '?')}: {meta.get('threshold_rule', '')}")

left, right = st.columns(2, gap="large")
with left:
    cal = pd.DataFrame(m.get("calibration", []))
    if cal.empty:
        st.info("No calibration data in this model's metadata.")
    else:
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dash", "color": "#999"})
        )
        fig.add_trace(
            go.Scatter(
                x=cal["mean_predicted"],
                y=cal["observed_rate"],
                mode="lines+markers",
                name="model",
                marker={"size": [max(6, min(30, c**0.5 / 1.5)) for c in cal["count"]]},
                text=[f"{c:,} loans" for c in cal["count"]],
                hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{text}<extra></extra>",
            )
        )
        fig.update_layout(
            title="Calibration on the test period",
            xaxis_title="mean predicted probability of default",
            yaxis_title="observed default rate",
            height=430,
            margin={"l": 10, "r": 10, "t": 50, "b": 10},
        )
        st.plotly_chart(fig, key="ld_calibration")
with right:
    gain = meta.get("feature_importance_gain", {})
    if gain:
        imp = pd.Series(gain).sort_values()
        fig = go.Figure(
            go.Bar(x=imp.values, y=[LABELS.get(k, k.replace("_", " ")) for k in imp.index], orientation="h")
        )
        fig.update_layout(
            title="Feature importance (average gain)", height=560, margin={"l": 10, "r": 10, "t": 50, "b": 10}
        )
        st.plotly_chart(fig, key="ld_importance")

st.subheader("Training window")
w = meta.get("training_window", {})
rows = meta.get("rows", {})
st.dataframe(
    pd.DataFrame(
        [
            {
                "slice": "train + validation",
                "from": w.get("train_start"),
                "to": w.get("train_end"),
                "loans": rows.get("train", 0) + rows.get("validation", 0),
            },
            {
                "slice": "test (later in time)",
                "from": w.get("test_start"),
                "to": w.get("test_end"),
                "loans": rows.get("test"),
            },
        ]
    ),
    hide_index=True,
)


# --- data that teaches (issue #10 item 8): metadata["comparisons"], written by model/comparisons.py ---
def _auc(v) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "—"


def comparisons_section(meta: dict) -> None:
    cmp = meta.get("comparisons")
    if not cmp:
        return
    st.subheader("What the data teaches")
    notes = (meta.get("dataset") or {}).get("notes") or []
    order = [n for n in notes if "file order" in n]
    split = (
        "Test split: the latest loans by timestamp. "
        + (f"For this data the timestamps are not dates: {plain(order[0])}. " if order else "")
        + f"Random split beside it: {plain(cmp.get('random_split', {}).get('how', ''))}."
    )
    cols = st.columns(4)
    rs, base = cmp.get("random_split", {}), cmp.get("baseline", {})
    cols[0].metric("AUC, temporal split", _auc(rs.get("temporal_auc")))
    cols[1].metric("AUC, random split", _auc(rs.get("auc")))
    cols[2].metric("XGBoost", _auc(base.get("xgboost_auc")), help="test AUC, temporal split")
    cols[3].metric(
        "Logistic regression",
        _auc(base.get("logistic_regression_auc")),
        help=plain(base.get("logistic_regression", "")),
    )
    st.caption(split)
    left = cmp.get("left_out")
    if left:
        st.markdown(
            f"**Left out of this model:** {plain(', '.join(left.get('features', [])))} — {plain(left.get('why', ''))}. "
            f"With them: temporal AUC {_auc(left.get('temporal_auc_with_them'))}, "
            f"random split {_auc(left.get('random_split_auc_with_them'))}."
        )
    leak = cmp.get("leak", {})
    if "latest" in leak:
        pit, late = leak.get("point_in_time", {}), leak["latest"]
        fig = go.Figure()
        for name, vals, color in (
            ("point-in-time features (this model)", pit, "#2a7ab9"),
            ('"latest" features', late, "#d9822b"),
        ):
            fig.add_trace(
                go.Bar(
                    name=name,
                    x=["validation<br>(what its author sees)", "point-in-time test<br>(what production sees)"],
                    y=[vals.get("validation_auc"), vals.get("test_auc")],
                    marker_color=color,
                    text=[_auc(vals.get("validation_auc")), _auc(vals.get("test_auc"))],
                    textposition="outside",
                )
            )
        st.markdown("**The leak:** trained on each applicant's latest credit file, or on the file as of the loan")
        fig.update_layout(
            yaxis={"title": "AUC", "range": [0.5, 1.0]},
            xaxis={"tickangle": 0},
            barmode="group",
            height=380,
            margin={"l": 10, "r": 10, "t": 10, "b": 10},
            legend={"orientation": "h", "y": 1.12, "x": 0},
        )
        st.plotly_chart(fig, key="ld_leak")
        st.caption(
            f"“Latest” here: {plain(leak.get('how', ''))}. That snapshot is dated after the loan for "
            f"{leak.get('share_latest_after_loan', 0):.0%} of the training loans, so what followed a default is on it."
        )
    elif leak.get("skipped") or leak.get("error"):
        st.caption(plain(leak.get("skipped") or leak.get("error")))


comparisons_section(meta)
# --- end data that teaches ---

with st.expander("Training parameters, data and library versions"):
    st.json({"params": meta.get("params"), "dataset": meta.get("dataset"), "versions": meta.get("versions")})
