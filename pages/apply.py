"""Apply: an officer enters an application and gets a recorded, explained decision."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from model.features import APPLICATION_FIELDS, HOME_OWNERSHIP, LOAN_INTENTS
from model.inference import (
    LABELS,
    LIMITS,
    ApplicationError,
    DecisionService,
    MissingFeatures,
    ModelUnavailable,
    StoreUnavailable,
    age_on,
)
from pages._ui import current_user, explain, guarded, plain, require, settings, show_error
from runtime import decisions as audit
from runtime import explore
from runtime.schema import masked_applicant

# The form: who (zipcode, date of birth, SSN digits), then the model's application fields.
FIELDS = ("zipcode", "date_of_birth", "ssn_last4", *APPLICATION_FIELDS)
WHAT_IF = ("loan_amnt", "loan_int_rate", "person_income", "person_emp_length", "loan_intent", "person_home_ownership")
STATUS_MARK = {"ok": "ok", "missing": "MISSING"}


def _fill_sample() -> None:
    """Prefill the form with the latest loan's applicant (a real credit file in the store)."""
    try:
        row = explore.sample_application(settings())
    except Exception as exc:
        st.session_state["ld_apply_notice"] = f"No sample available: {explain(exc)}"
        return
    if not row:
        st.session_state["ld_apply_notice"] = "No loans in Postgres to take a sample from."
        return
    born = datetime.strptime(row["dob_ssn"][:8], "%Y%m%d").date()
    st.session_state.update(
        {
            "f_zipcode": f"{row['zipcode']:05d}",
            "f_date_of_birth": born,
            "f_ssn_last4": row["dob_ssn"][-4:],
            "f_person_age": age_on(born),
            "f_person_income": int(row["person_income"]),
            "f_person_home_ownership": row["person_home_ownership"],
            "f_person_emp_length": float(min(row["person_emp_length"], LIMITS["person_emp_length"][1])),
            "f_loan_intent": row["loan_intent"],
            "f_loan_amnt": int(row["loan_amnt"]),
            "f_loan_int_rate": float(row["loan_int_rate"]),
        }
    )


def _form() -> tuple[bool, dict, dict]:
    """The application form; returns (submitted, raw values, a placeholder per field for its message)."""
    holes = {}
    with st.form("application", border=True):
        c1, c2 = st.columns(2)
        with c1:
            st.text_input("Zipcode", key="f_zipcode", max_chars=5, placeholder="e.g. 02438")
            holes["zipcode"] = st.empty()
            st.date_input(
                "Date of birth",
                key="f_date_of_birth",
                value=None,
                min_value=date(1900, 1, 1),
                max_value=datetime.now(UTC).date(),
                format="YYYY-MM-DD",
            )
            holes["date_of_birth"] = st.empty()
            st.text_input("SSN last four", key="f_ssn_last4", max_chars=4, placeholder="NNNN")
            holes["ssn_last4"] = st.empty()
            holes["dob_ssn"] = st.empty()
            lo, hi = LIMITS["person_age"]
            st.number_input("Age", key="f_person_age", min_value=lo, max_value=hi, value=None, step=1)
            holes["person_age"] = st.empty()
            lo, hi = LIMITS["person_income"]
            st.number_input(
                "Yearly income ($)", key="f_person_income", min_value=lo, max_value=hi, value=None, step=1000
            )
            holes["person_income"] = st.empty()
        with c2:
            st.selectbox("Home ownership", HOME_OWNERSHIP, key="f_person_home_ownership", index=None)
            holes["person_home_ownership"] = st.empty()
            lo, hi = LIMITS["person_emp_length"]
            st.number_input(
                "Employment length (years)",
                key="f_person_emp_length",
                min_value=float(lo),
                max_value=float(hi),
                value=None,
                step=0.5,
            )
            holes["person_emp_length"] = st.empty()
            st.selectbox("Loan intent", LOAN_INTENTS, key="f_loan_intent", index=None)
            holes["loan_intent"] = st.empty()
            lo, hi = LIMITS["loan_amnt"]
            st.number_input("Loan amount ($)", key="f_loan_amnt", min_value=lo, max_value=hi, value=None, step=500)
            holes["loan_amnt"] = st.empty()
            lo, hi = LIMITS["loan_int_rate"]
            st.number_input(
                "Interest rate (%)", key="f_loan_int_rate", min_value=lo, max_value=hi, value=None, step=0.1
            )
            holes["loan_int_rate"] = st.empty()
        submitted = st.form_submit_button("Decide", type="primary", icon=":material/gavel:")
    raw = {k: st.session_state.get(f"f_{k}") for k in FIELDS}
    return submitted, raw, holes


def _decide(raw: dict, holes: dict) -> None:
    user, _ = current_user()
    try:
        decision = DecisionService.shared().decide(raw)
    except ApplicationError as err:
        for key, msg in err.errors.items():
            target = holes.get(key) or holes["dob_ssn"]
            target.error(plain(f"{LABELS.get(key, key)} {msg}"), icon=":material/error:")
        st.session_state["ld_last_decision"] = None
        st.error("Please correct the highlighted fields.", icon=":material/edit_note:")
        return
    except MissingFeatures as err:
        st.session_state["ld_last_decision"] = None
        st.warning(plain(err), icon=":material/person_search:")
        return
    except StoreUnavailable as err:
        st.session_state["ld_last_decision"] = None
        st.error(
            f"The online feature store is unreachable, so no decision can be made right now. "
            f"Try again in a moment. ({plain(err)})",
            icon=":material/cloud_off:",
        )
        return
    except ModelUnavailable as err:
        st.session_state["ld_last_decision"] = None
        st.error(plain(err), icon=":material/model_training:")
        return
    except Exception as exc:
        st.session_state["ld_last_decision"] = None
        show_error(exc, "The decision failed")
        return
    try:
        decision_id = audit.record_decision(settings(), user, decision)
    except Exception as exc:
        st.session_state["ld_last_decision"] = None
        show_error(exc, "The decision could not be written to the audit table, so it is not valid")
        return
    st.session_state["ld_last_decision"] = (decision_id, decision)


def _waterfall(decision) -> go.Figure:
    """Bars start at the model's baseline log-odds; each feature moves it; the last bar is this applicant."""
    items = sorted(decision.contributions.items(), key=lambda kv: abs(kv[1]), reverse=True)
    top, rest = items[:10], items[10:]
    labels = [LABELS.get(k, k.replace("_", " ")) for k, _ in top]
    values = [v for _, v in top]
    if rest:
        labels.append(f"{len(rest)} other features")
        values.append(sum(v for _, v in rest))
    labels.append("this applicant")
    values.append(0)
    measures = ["relative"] * (len(values) - 1) + ["total"]
    fig = go.Figure(
        go.Waterfall(
            orientation="h",
            y=labels,
            x=values,
            base=decision.base_value,
            measure=measures,
            text=[f"{v:+.2f}" for v in values[:-1]] + [f"{decision.probability:.1%}"],
            textposition="outside",
            cliponaxis=False,
            increasing={"marker": {"color": "#d62728"}},
            decreasing={"marker": {"color": "#2ca02c"}},
            totals={"marker": {"color": "#1f77b4"}},
            connector={"line": {"color": "#999", "width": 1}},
        )
    )
    cut = math.log(decision.threshold / (1 - decision.threshold))
    fig.add_vline(
        x=cut,
        line_dash="dot",
        line_color="#555",
        annotation_text=f"threshold {decision.threshold:.1%}",
        annotation_position="top",  # above the bars, never over one
    )
    fig.update_layout(
        title=f"Why: log-odds of default, from the baseline {decision.base_value:+.2f}",
        yaxis={"autorange": "reversed"},
        xaxis_title="log-odds of default (red raises risk, green lowers it)",
        height=460,
        margin={"l": 10, "r": 60, "t": 50, "b": 10},
        showlegend=False,
    )
    return fig


def _show(decision_id: int, decision) -> None:
    approved = decision.decision == "approve"
    (st.success if approved else st.error)(
        f"**{'APPROVE' if approved else 'REJECT'}** — probability of default {decision.probability:.1%} "
        f"({'below' if approved else 'at or above'} the threshold {decision.threshold:.1%})",
        icon=":material/check_circle:" if approved else ":material/cancel:",
    )
    m1, m2, m3 = st.columns(3)
    m1.metric("Probability of default", f"{decision.probability:.1%}")
    m2.metric("Threshold", f"{decision.threshold:.1%}")
    m3.metric("Decision id", f"#{decision_id}")
    st.caption(f"Model version `{decision.model_version}` · answered in {decision.latency_ms:.0f} ms · recorded")
    for w in decision.warnings:
        st.warning(w, icon=":material/schedule:")
    st.plotly_chart(_waterfall(decision), key="ld_waterfall")
    reasons = pd.DataFrame(
        [
            {
                "feature": LABELS.get(r.feature, r.feature),
                "value": str(r.value),
                "effect": r.direction,
                "log-odds": round(r.contribution, 3),
            }
            for r in decision.reasons
        ]
    )
    st.markdown("**Main reasons**")
    st.dataframe(reasons, hide_index=True)
    feats = pd.DataFrame(
        [
            {
                "feature": f.name,
                "freshness": STATUS_MARK.get(f.status, f.status),
                "value": "" if f.value is None else str(f.value),
                "as of": f.event_timestamp,
                "view": f.view,
            }
            for f in decision.features
        ]
    )
    flagged = [f.name for f in decision.features if f.status != "ok"]
    st.markdown("**Features used** (from the online store)")
    if flagged:
        st.warning(f"Missing: {', '.join(flagged)}", icon=":material/warning:")
    st.dataframe(feats, hide_index=True, column_config={"as of": st.column_config.DatetimeColumn(format="iso8601")})


@st.fragment
def _what_if(decision) -> None:
    st.markdown("**What if?** Change one input and see the probability move (not recorded).")
    app = decision.application.as_dict()
    field = st.selectbox("Input", WHAT_IF, format_func=lambda k: LABELS.get(k, k), key="wi_field")
    current = app[field]
    if field == "loan_intent":
        value = st.selectbox("New value", LOAN_INTENTS, index=LOAN_INTENTS.index(current), key="wi_intent")
    elif field == "person_home_ownership":
        value = st.selectbox("New value", HOME_OWNERSHIP, index=HOME_OWNERSHIP.index(current), key="wi_own")
    elif field in ("loan_amnt", "person_income"):  # whole dollars
        lo, hi = LIMITS[field]
        step = {"loan_amnt": 500, "person_income": 1000}[field]
        value = st.slider("New value", int(lo), int(hi), int(round(current)), step=step, key=f"wi_{field}")
    else:
        lo, hi = LIMITS[field]
        step = {"loan_int_rate": 0.1, "person_emp_length": 0.5}[field]
        value = st.slider("New value", float(lo), float(hi), float(current), step=step, key=f"wi_{field}")
    try:
        other = DecisionService.shared().decide({**app, field: value})
    except Exception as exc:
        st.info(f"No what-if result: {explain(exc)}", icon=":material/info:")
        return
    delta = other.probability - decision.probability
    shown = value if isinstance(value, str) else f"{value:,}"
    st.metric(
        f"Probability of default with {LABELS.get(field, field)} = {shown}",
        f"{other.probability:.1%}",
        delta=f"{delta:+.1%}",
        delta_color="inverse",
    )
    st.caption(f"Would be: **{other.decision}**")


def _recent() -> None:
    user, _ = current_user()
    st.subheader("Your recent decisions")
    with guarded("Recent decisions are unavailable"):
        rows = audit.recent_decisions(settings(), user, limit=20)
        if not rows:
            st.caption("No decisions yet.")
            return
        table = pd.DataFrame(
            [
                {
                    "decision id": r["id"],
                    "decided at (UTC)": f"{r['decided_at']:%Y-%m-%d %H:%M:%S}",
                    "applicant": masked_applicant(r["applicant"]),
                    "zipcode": f"{r['zipcode']:05d}",
                    "amount": f"{r['loan_amnt']:,.0f}",
                    "intent": r["loan_intent"],
                    "probability of default": f"{r['probability']:.1%}",
                    "decision": r["decision"],
                    "model version": r["model_version"],
                }
                for r in rows
            ]
        ).set_index("decision id")
        st.table(table)


def _reload_notice() -> None:
    """Say so before anyone types, when a load replaced the data since the online store or the model."""
    try:
        steps = DecisionService.shared().outdated_by_reload()
    except Exception:  # no model yet and the like: deciding says what is wrong
        return
    if steps:
        state = DecisionService.shared().data_state()
        st.warning(
            f"The data was reloaded on {state.loaded_at:%Y-%m-%d %H:%M} UTC. Until "
            + " and ".join(f"`{c}`" for c in steps)
            + " have run, applications are referred to manual underwriting, not decided.",
            icon=":material/sync_problem:",
        )


require()
st.title(":material/request_quote: New application")
_reload_notice()
left, right = st.columns([1, 1.3], gap="large")
with left:
    st.button("Fill with a sample applicant", on_click=_fill_sample, icon=":material/person_add:")
    if notice := st.session_state.pop("ld_apply_notice", None):
        st.info(notice)
    submitted, raw, holes = _form()
    if submitted:
        _decide(raw, holes)
with right:
    last = st.session_state.get("ld_last_decision")
    if last:
        _show(*last)
        _what_if(last[1])
    else:
        st.info("Fill in the application and press **Decide**.", icon=":material/info:")
_recent()
