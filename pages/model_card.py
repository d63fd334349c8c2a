"""Model card: what the deployed model is, how well it does, and what it was trained on."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model import bundles
from model.inference import LABELS, DecisionService
from pages._ui import guarded, plain, require, show_error

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


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


cols = st.columns(6)
cols[0].metric("Test AUC", _fmt(m.get("auc"), ".3f"))
cols[1].metric("Bayes AUC", _fmt(m.get("bayes_auc"), ".3f"), help="AUC of the true risk (synthetic data only)")
cols[2].metric("Calibration error", _fmt(m.get("calibration_error"), ".3f"), help="Σ share × |predicted − observed|")
cols[3].metric("Default rate (test)", _fmt(m.get("default_rate_test"), ".1%"))
cols[4].metric("Approved (test)", _fmt(m.get("approval_rate_test"), ".1%"), help="At the policy's cut-off")
cols[5].metric("Bad rate of approved", _fmt(m.get("bad_rate_approved_test"), ".1%"))
with guarded("The credit policy is unavailable"):
    policy = service.policy()
    cut = policy.cutoff(meta)
    lo, hi = policy.band(cut)
    st.caption(
        f"Credit policy `{policy.label}`: cut-off {cut:.1%} ({policy.method.replace('_', ' ')}, picked on the "
        f"policy slice); approve below {lo:.1%}, refer {lo:.1%}–{hi:.1%}, decline from {hi:.1%}. "
        f"{meta.get('protocol', '')}"
    )
challenger = bundles.challenger_version()
if challenger:
    try:
        cm = bundles.read_metadata(challenger).get("metrics", {})
        st.info(
            f"Challenger `{challenger}` scores every decision in the shadow (recorded, never the decision): "
            f"test AUC {_fmt(cm.get('auc'), '.3f')}, calibration error {_fmt(cm.get('calibration_error'), '.3f')}. "
            "`loan-desk models promote VERSION --reason …` makes it the champion.",
            icon=":material/compare_arrows:",
        )
    except Exception as exc:  # a broken challenger is the model's problem, not the card's
        show_error(exc, "The challenger cannot be described")

st.subheader("Input policy")
ip = meta.get("input_policy", {})
if ip:
    rows_ip = []
    for key, label in (
        ("default", "this model (no age, no area statistics)"),
        ("with_age_and_area", "with age and area statistics"),
    ):
        r = ip.get(key)
        if r:
            rows_ip.append(
                {
                    "inputs": label,
                    "features": r.get("features"),
                    "test AUC": _fmt(r.get("auc"), ".4f"),
                    "approved (test)": _fmt(r.get("approval_rate"), ".1%"),
                    "lowest age-band approval ratio": _fmt(r.get("min_age_band_ratio"), ".2f"),
                    "lowest state approval ratio": _fmt(r.get("min_state_ratio"), ".2f"),
                }
            )
    st.dataframe(pd.DataFrame(rows_ip), hide_index=True)
    st.caption(
        "Age is not scored (Regulation B 1002.6(b)(2): no negative value for an applicant aged 62 or older); the "
        "zipcode's area statistics are not scored (a neighbourhood, not the applicant: a redlining proxy). Both are "
        "still recorded for monitoring. Excluded here: "
        + ", ".join(f"`{f}`" for f in meta.get("excluded_inputs", []))
        + ". Monotone constraints: "
        + ", ".join(
            f"{LABELS.get(f, f.replace('_', ' '))} {'↑' if d > 0 else '↓'}"
            for f, d in meta.get("monotone_constraints", {}).items()
        )
        + " (↑ risk rises with it)."
    )
by_age = m.get("by_age_band")
if by_age:
    st.markdown("**Approval by age band at the cut-off (test slice)**")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "age band": r["group"],
                    "applications": r["n"],
                    "approval rate": f"{r['rate']:.1%}",
                    "ratio to the most-approved band": "—" if r["ratio"] is None else f"{r['ratio']:.2f}",
                    "95% interval": "—" if r["ratio"] is None else f"{r['ratio_low']:.2f}–{r['ratio_high']:.2f}",
                    "flag (< 0.8)": "FLAG" if r["flag"] else "",
                }
                for r in by_age
            ]
        ),
        hide_index=True,
    )

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
            title="Calibration on the test period (the fit-only model)",
            xaxis_title="mean predicted probability of default",
            yaxis_title="observed default rate",
            height=430,
            margin={"l": 10, "r": 10, "t": 50, "b": 10},
        )
        st.plotly_chart(fig, key="ld_calibration", config={"displayModeBar": False})
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
        st.plotly_chart(fig, key="ld_importance", config={"displayModeBar": False})

st.subheader("Training window")
w = meta.get("training_window", {})
rows = meta.get("rows", {})
st.dataframe(
    pd.DataFrame(
        [
            {
                "slice": "fit + validation + policy slice",
                "from": w.get("train_start"),
                "to": w.get("train_end"),
                "loans": sum(rows.get(k, 0) for k in ("train", "fit", "validation", "policy")),
            },
            {
                "slice": "test (later in time)",
                "from": w.get("test_start"),
                "to": w.get("test_end"),
                "loans": rows.get("test"),
            },
            {
                "slice": "release (refitted on all labelled loans)",
                "from": w.get("train_start"),
                "to": w.get("test_end"),
                "loans": rows.get("release"),
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
