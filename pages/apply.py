"""Apply: an officer enters an application and gets a recorded, explained decision."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import streamlit as st

from model.features import APPLICATION_FIELDS, HOME_OWNERSHIP, LOAN_INTENTS
from model.inference import (
    LABELS,
    LIMITS,
    ApplicationError,
    DecisionService,
    ModelUnavailable,
    PolicyUnavailable,
    StoreUnavailable,
)
from model.reasons import WORDS
from pages._record import notice_buttons, outcome_banner, reasons_list, waterfall
from pages._ui import current_user, explain, guarded, plain, require, settings, show_error
from runtime import decisions as audit
from runtime import explore
from runtime.schema import masked_applicant

# The form: who (zipcode, date of birth, SSN digits), then the application (age comes from the birth date).
FIELDS = ("zipcode", "date_of_birth", "ssn_last4", *(f for f in APPLICATION_FIELDS if f != "person_age"))
WHAT_IF = ("loan_amnt", "loan_int_rate", "person_income", "person_emp_length", "loan_intent", "person_home_ownership")
STATUS_MARK = {"ok": "ok", "missing": "MISSING", "stale": "STALE (not used)"}


def _word(code: str | None) -> str:
    return WORDS.get(code, code).capitalize() if code else ""


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
            "f_person_income": int(row["person_income"]),
            "f_person_home_ownership": row["person_home_ownership"],
            "f_person_emp_length": float(min(row["person_emp_length"], LIMITS["person_emp_length"][1])),
            "f_loan_intent": row["loan_intent"],
            "f_loan_amnt": int(row["loan_amnt"]),
            "f_loan_int_rate": float(row["loan_int_rate"]),
        }
    )


def _form(width: int = 3) -> tuple[bool, dict, dict]:
    """The application form (``width`` fields a row); returns (submitted, raw values, a placeholder per
    field for its message)."""
    holes = {}
    with st.form("application", border=True):
        st.markdown("**Applicant**")
        c1, c2, c3 = _row(width)
        with c1:
            st.text_input("Zipcode", key="f_zipcode", max_chars=5, placeholder="e.g. 02438")
            holes["zipcode"] = st.empty()
        with c2:
            st.date_input(
                "Date of birth",
                key="f_date_of_birth",
                value=None,
                min_value=date(1900, 1, 1),
                max_value=datetime.now(UTC).date(),
                format="YYYY-MM-DD",
            )
            holes["date_of_birth"] = st.empty()
            holes["person_age"] = st.empty()
        with c3:
            st.text_input("SSN last four", key="f_ssn_last4", max_chars=4, placeholder="NNNN", type="password")
            holes["ssn_last4"] = st.empty()
        holes["dob_ssn"] = st.empty()
        c1, c2, c3 = _row(width)
        with c1:
            lo, hi = LIMITS["person_income"]
            st.number_input(
                "Yearly income ($)", key="f_person_income", min_value=lo, max_value=hi, value=None, step=1000
            )
            holes["person_income"] = st.empty()
        with c2:
            st.selectbox("Home ownership", HOME_OWNERSHIP, key="f_person_home_ownership", index=None, format_func=_word)
            holes["person_home_ownership"] = st.empty()
        with c3:
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
        st.markdown("**Loan**")
        c1, c2, c3 = _row(width)
        with c1:
            st.selectbox("Purpose", LOAN_INTENTS, key="f_loan_intent", index=None, format_func=_word)
            holes["loan_intent"] = st.empty()
        with c2:
            lo, hi = LIMITS["loan_amnt"]
            st.number_input("Loan amount ($)", key="f_loan_amnt", min_value=lo, max_value=hi, value=None, step=500)
            holes["loan_amnt"] = st.empty()
        with c3:
            lo, hi = LIMITS["loan_int_rate"]
            st.number_input(
                "Interest rate (%)", key="f_loan_int_rate", min_value=lo, max_value=hi, value=None, step=0.1
            )
            holes["loan_int_rate"] = st.empty()
        submitted = st.form_submit_button("Decide", type="primary", icon=":material/gavel:")
    raw = {k: st.session_state.get(f"f_{k}") for k in FIELDS}
    return submitted, raw, holes


def _row(width: int):
    """Three field slots: side by side when the form has the page's width, else two a row."""
    if width >= 3:
        return st.columns(3)
    a, b = st.columns(2)
    return a, b, a


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
    except StoreUnavailable as err:
        st.session_state["ld_last_decision"] = None
        st.error(
            f"The online feature store is unreachable, so no decision can be made right now. "
            f"Try again in a moment. ({plain(err)})",
            icon=":material/cloud_off:",
        )
        return
    except (ModelUnavailable, PolicyUnavailable) as err:
        st.session_state["ld_last_decision"] = None
        st.error(plain(err), icon=":material/model_training:")
        return
    except Exception as exc:
        st.session_state["ld_last_decision"] = None
        show_error(exc, "The decision failed")
        return
    try:
        decision_id = audit.record_decision(settings(), user, decision, channel="app")
    except Exception as exc:
        st.session_state["ld_last_decision"] = None
        show_error(exc, "The decision could not be written to the audit table, so it is not valid")
        return
    st.session_state["ld_last_decision"] = (decision_id, decision)


def _show(decision_id: int, decision) -> None:
    outcome_banner(decision.outcome, decision.probability, decision.cutoff, decision.band, decision_id)
    m1, m2, m3 = st.columns(3)
    m1.metric("Probability of default", "—" if decision.probability is None else f"{decision.probability:.1%}")
    m2.metric("Cut-off", "—" if decision.cutoff is None else f"{decision.cutoff:.1%}")
    m3.metric("Decision id", f"#{decision_id}")
    for why in decision.refer_reasons:
        st.warning(plain(why), icon=":material/person_search:")
    if decision.reasons:
        st.markdown(
            "**Principal reasons**" + (" (for the adverse-action notice)" if decision.outcome == "decline" else "")
        )
        reasons_list([r.as_dict() for r in decision.reasons])
    if decision.outcome == "decline":
        with guarded("The adverse-action notice is unavailable"):
            notice_buttons(audit.decision_by_id(settings(), decision_id))
    st.caption(
        f"Decision #{decision_id} · model `{decision.model_version}` · policy `{decision.policy_version}` · "
        f"answered in {decision.latency_ms:.0f} ms · recorded · [open the record](/decision?id={decision_id})"
    )
    for w in decision.warnings:
        st.warning(plain(w), icon=":material/schedule:")
    with st.expander("Details: contributions and features"):
        if decision.contributions:
            st.plotly_chart(
                waterfall(decision.contributions, decision.base_value, decision.probability, decision.cutoff),
                key="ld_waterfall",
                config={"displayModeBar": False},
            )
        feats = pd.DataFrame(
            [
                {
                    "feature": f.name,
                    "value": "" if f.value is None else str(f.value),
                    "as of": f.event_timestamp,
                    "status": STATUS_MARK.get(f.status, f.status),
                }
                for f in decision.features
            ]
        )
        st.dataframe(feats, hide_index=True, column_config={"as of": st.column_config.DatetimeColumn(format="iso8601")})
        if decision.challenger:
            c = decision.challenger
            st.caption(
                f"Challenger `{c['model_version']}` in the shadow (recorded, not the decision): "
                + (f"{c['probability']:.1%} → {c['outcome']}" if "probability" in c else f"not scored: {c['error']}")
            )


@st.fragment
def _what_if(decision_id: int, decision) -> None:
    if decision.probability is None:
        return
    st.markdown("**What if?** Change one input and see the probability move (not recorded).")
    app = decision.application.as_dict()
    # Keys carry the decision id: a new decision starts every control from its own values.
    k = f"wi_{decision_id}"
    field = st.selectbox("Input", WHAT_IF, format_func=lambda f: LABELS.get(f, f), key=f"{k}_field")
    current = app[field]
    if field == "loan_intent":
        value = st.selectbox(
            "New value", LOAN_INTENTS, index=LOAN_INTENTS.index(current), key=f"{k}_intent", format_func=_word
        )
    elif field == "person_home_ownership":
        value = st.selectbox(
            "New value", HOME_OWNERSHIP, index=HOME_OWNERSHIP.index(current), key=f"{k}_own", format_func=_word
        )
    elif field in ("loan_amnt", "person_income"):  # whole dollars
        lo, hi = LIMITS[field]
        step = {"loan_amnt": 500, "person_income": 1000}[field]
        value = st.slider("New value", int(lo), int(hi), int(round(current)), step=step, key=f"{k}_{field}")
    else:
        lo, hi = LIMITS[field]
        step = {"loan_int_rate": 0.1, "person_emp_length": 0.5}[field]
        value = st.slider("New value", float(lo), float(hi), float(current), step=step, key=f"{k}_{field}")
    try:
        other = DecisionService.shared().decide({**app, field: value})
    except Exception as exc:
        st.info(f"No what-if result: {explain(exc)}", icon=":material/info:")
        return
    if other.probability is None:
        st.info(plain("No what-if result: " + "; ".join(other.refer_reasons)), icon=":material/info:")
        return
    delta = other.probability - decision.probability
    shown = _word(value) if isinstance(value, str) else f"{value:,}"
    st.metric(
        f"Probability of default with {LABELS.get(field, field)} = {shown}",
        f"{other.probability:.1%}",
        delta=f"{delta:+.1%}",
        delta_color="inverse",
    )
    st.caption(f"Would be: **{other.outcome}**")


def _recent() -> None:
    user, _ = current_user()
    st.subheader("Your recent decisions")
    with guarded("Recent decisions are unavailable"):
        rows = audit.recent_decisions(settings(), user, limit=20)
        if not rows:
            st.caption("No decisions yet.")
            return
        # The columns that matter come first: on a phone only the first few fit.
        table = pd.DataFrame(
            [
                {
                    "id": f"[{r['id']}](/decision?id={r['id']})",
                    "outcome": _status(r),
                    "PD": "—" if r["probability"] is None else f"{r['probability']:.1%}",
                    "amount": f"{r['loan_amnt']:,.0f}",
                    "applicant": masked_applicant(r["applicant"]),
                    "decided (UTC)": f"{r['decided_at']:%Y-%m-%d %H:%M}",
                    "purpose": _word(r["loan_intent"]),
                    "zipcode": f"{r['zipcode']:05d}",
                }
                for r in rows
            ]
        ).set_index("id")
        st.table(table)
        st.caption("PD: probability of default. Click an id for the decision record.")


def _status(r: dict) -> str:
    if r["outcome"] != "refer":
        return r["outcome"]
    if r.get("review_outcome"):
        return f"refer → {r['review_outcome']}"
    return "refer (pending)"


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


require("officer", "admin")
st.title(":material/request_quote: New application")
_reload_notice()
last = st.session_state.get("ld_last_decision")
if last:
    left, right = st.columns([1, 1.2], gap="large")
else:
    left, right = st.container(), None
with left:
    st.button("Fill with a sample applicant", on_click=_fill_sample, icon=":material/person_add:")
    if notice := st.session_state.pop("ld_apply_notice", None):
        st.info(notice)
    submitted, raw, holes = _form(2 if last else 3)
    if submitted:
        _decide(raw, holes)
        if st.session_state.get("ld_last_decision") and not last:
            st.rerun()  # the first decision: the form moves left, the decision shows beside it
        last = st.session_state.get("ld_last_decision")
if right is not None:
    with right:
        if last:
            _show(*last)
            _what_if(*last)
_recent()
