"""The decision record (/decision?id=N): everything recorded about one decision, its review,
the adverse-action notice of a decline, and a replay (score again with the recorded model;
re-read the features point-in-time from the offline store as of the decision's time)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from model.inference import LABELS
from model.reasons import WORDS
from model.replay import ReplayError, reread, rescore
from pages._record import notice_buttons, outcome_banner, reasons_list
from pages._ui import explain, guarded, plain, require, settings, show_error
from runtime import decisions as audit
from runtime.reviews import reason_text
from runtime.schema import masked_applicant


def _height(rows: int) -> int:
    """A table tall enough for all its rows (35 px each, plus the header)."""
    return 35 * (rows + 1) + 3


STATUS_MARK = {"ok": "ok", "missing": "MISSING", "stale": "STALE (not used)"}
SEE_ALL = ("underwriter", "admin")


def _decision_id() -> int | None:
    raw = st.query_params.get("id")
    if raw is None or not str(raw).strip():
        st.info(
            "Open a decision from the history or the review queue, or give its number below.", icon=":material/info:"
        )
    else:
        text = str(raw).strip()
        if text.isascii() and text.isdigit() and 0 < int(text) < 2**63:
            return int(text)
        st.error(
            f"“{plain(text, 40)}” is not a decision id: a decision id is a whole number, as in /decision?id=42.",
            icon=":material/error:",
        )
    with st.form("ld_open_decision", border=False):
        typed = st.number_input("Decision #", min_value=1, step=1, value=None, key="ld_open_id")
        if st.form_submit_button("Open", icon=":material/open_in_new:") and typed:
            st.query_params["id"] = str(int(typed))
            st.rerun()
    return None


def _value(name: str, value) -> str:
    if value is None:
        return "—"
    if name == "dob_ssn":
        return masked_applicant(value)
    if name == "zipcode":
        return f"{int(value):05d}"
    if name in ("person_home_ownership", "loan_intent"):
        return f"{WORDS.get(value, value).capitalize()} ({value})"
    if name in ("person_income", "loan_amnt"):
        return f"${value:,.0f}"
    if name == "loan_int_rate":
        return f"{value:.2f}%"
    return str(value)


def _inputs(record: dict) -> None:
    st.markdown("**Inputs**")
    inputs = record.get("inputs") or {}
    rows = [
        {"input": "Applicant (masked)" if k == "dob_ssn" else LABELS.get(k, k), "value": _value(k, v)}
        for k, v in inputs.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=_height(len(rows)))


def _features(record: dict) -> None:
    st.markdown("**Online features the decision read**")
    feats = record.get("features") or []
    if not feats:
        st.caption("None were read (the decision was referred before reading the online store).")
        return
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "feature": f["name"],
                    "view": f["view"],
                    "value": "" if f.get("value") is None else str(f["value"]),
                    "as of (UTC)": (f.get("event_timestamp") or "")[:19].replace("T", " "),
                    "status": STATUS_MARK.get(f.get("status"), f.get("status")),
                }
                for f in feats
            ]
        ),
        hide_index=True,
        width="stretch",
        height=_height(len(feats)),
    )


def _versions(record: dict) -> None:
    band = record.get("band")
    cutoff = record.get("threshold")
    facts = {
        "Decided (UTC)": f"{record['decided_at']:%Y-%m-%d %H:%M:%S}",
        "Officer": record["username"],
        "Channel": record["channel"] + (f" · client {record['client']}" if record.get("client") else ""),
        "Batch": f"#{record['batch_id']}" if record.get("batch_id") else "—",
        "Probability of default": "—" if record["probability"] is None else f"{record['probability']:.4%}",
        "Cut-off": "—" if cutoff is None else f"{cutoff:.2%}",
        "Refer band": "—" if not band else f"{band[0]:.2%} – {band[1]:.2%}",
        "Model version": record.get("model_version") or "—",
        "Policy version": record.get("policy_version") or "—",
        "Latency": "—" if record.get("latency_ms") is None else f"{record['latency_ms']:.0f} ms",
    }
    c = record.get("challenger")
    if c:
        facts["Challenger (shadow)"] = (
            f"{c['model_version']}: {c['probability']:.2%} → {c['outcome']}"
            if "probability" in c
            else f"{c.get('model_version')}: not scored ({c.get('error', '')})"
        )
    else:
        facts["Challenger (shadow)"] = "none"
    st.markdown("**Record**")
    st.dataframe(
        pd.DataFrame({"": list(facts), "value": list(facts.values())}),
        hide_index=True,
        width="stretch",
        height=_height(len(facts)),
    )


def _review(record: dict) -> None:
    if record["outcome"] != "refer":
        return
    review = record.get("review")
    if review is None:
        if st.session_state.get("ld_role") in SEE_ALL:
            st.markdown(f":material/how_to_reg: [Review it](/review?id={record['id']})")
        st.info(
            "Waiting in the review queue: an underwriter (not the officer who submitted it) "
            "will approve or decline it.",
            icon=":material/hourglass_top:",
        )
        return
    show = st.success if review["outcome"] == "approve" else st.error
    note = f" — “{plain(review['note'], 300)}”" if review.get("note") else ""
    show(
        f"**Reviewed: {review['outcome'].upper()}** by {plain(review['reviewer'])} on "
        f"{review['reviewed_at']:%Y-%m-%d %H:%M} UTC · reason: "
        f"{plain(reason_text(review['outcome'], review['reason_code']))} ({plain(review['reason_code'])}){note}",
        icon=":material/how_to_reg:",
    )


def _replay(record: dict) -> None:
    st.subheader("Replay")
    st.caption(
        "Scores the recorded inputs and features again with the recorded model version, and re-reads the "
        "features from the offline store as they were at the decision's time (point-in-time join)."
    )
    key = f"ld_replay_{record['id']}"
    if not st.button("Replay this decision", icon=":material/replay:", key=f"{key}_btn") and not st.session_state.get(
        key
    ):
        return
    st.session_state[key] = True
    try:
        r = rescore(record)
    except ReplayError as exc:
        st.info(plain(exc), icon=":material/info:")
    except Exception as exc:
        show_error(exc, "The decision could not be scored again")
    else:
        show = st.success if r.equal else st.error
        show(
            f"**Score {'reproduced' if r.equal else 'NOT reproduced'}** with model {plain(r.model_version)}: "
            f"recorded {r.recorded:.12f}, replayed {r.replayed:.12f} (difference {r.difference:.1e}, "
            f"tolerance 1e-9)",
            icon=":material/check_circle:" if r.equal else ":material/error:",
        )
    try:
        checks = reread(settings(), record)
    except ReplayError as exc:
        st.info(plain(exc), icon=":material/info:")
        return
    except Exception as exc:
        st.error(plain(f"The offline store could not be read as of the decision's time: {explain(exc)}"))
        return
    differ = [c for c in checks if not c.same]
    if differ:
        st.warning(
            f"{len(differ)} of {len(checks)} features differ between the online store (used by the decision) and "
            "the offline store as of the decision's time: "
            + ", ".join(plain(c.name) for c in differ)
            + ". A snapshot loaded after the last materialization, or an online row past its TTL, explains this.",
            icon=":material/difference:",
        )
    else:
        st.success(
            f"All {len(checks)} features the decision read online equal the offline store's point-in-time values "
            f"as of {record['decided_at']:%Y-%m-%d %H:%M:%S} UTC.",
            icon=":material/check_circle:",
        )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "feature": c.name,
                    "online (used)": "" if c.online is None else str(c.online),
                    "online status": STATUS_MARK.get(c.online_status, c.online_status),
                    "offline as of decision": "" if c.offline is None else str(c.offline),
                    "same": "yes" if c.same else "DIFFERENT",
                }
                for c in checks
            ]
        ),
        hide_index=True,
        width="stretch",
        height=_height(len(checks)),
    )


user, role = require()
decision_id = _decision_id()
if decision_id is None:
    st.stop()
st.title(f":material/receipt_long: Decision #{decision_id}")
record = None
with guarded("The decision record is unavailable"):
    record = audit.decision_by_id(settings(), decision_id, username=None if role in SEE_ALL else user)
    if record is None:
        st.error(
            f"There is no decision #{decision_id}"
            + ("" if role in SEE_ALL else " among yours (officers open only the decisions they made)")
            + ".",
            icon=":material/search_off:",
        )
if record is None:
    st.stop()

left, right = st.columns([1.1, 1], gap="large")
with left:
    outcome_banner(
        record["outcome"], record["probability"], record["threshold"], record.get("band"), decision_id, pending=False
    )
    _review(record)
    for why in record.get("refer_reasons") or []:
        st.warning(plain(why), icon=":material/person_search:")
    if record.get("reasons"):
        st.markdown("**Principal reasons**")
        reasons_list(record["reasons"])
    if record["outcome"] == "decline" or (record.get("review") or {}).get("outcome") == "decline":
        with guarded("The adverse-action notice is unavailable"):
            notice_buttons(record, key=f"notice_{decision_id}")
    _inputs(record)
with right:
    _versions(record)
_features(record)
_replay(record)
