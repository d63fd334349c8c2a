"""Model card: what the deployed model is, how well it does, and what it was trained on."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model.inference import LABELS, DecisionService
from pages._ui import require, show_error

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
with st.expander("Training parameters, data and library versions"):
    st.json({"params": meta.get("params"), "dataset": meta.get("dataset"), "versions": meta.get("versions")})
