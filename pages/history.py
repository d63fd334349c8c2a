"""Decision history: search recorded decisions, page through them, open a record, export CSV.

Officers see their own decisions; underwriters and admins see all of them."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime

import pandas as pd
import streamlit as st

from model.reasons import WORDS
from pages._ui import explain, guarded, plain, require, settings
from runtime import history
from runtime.schema import masked_applicant

ANY = "any"


def _word(code: str | None) -> str:
    return WORDS.get(code, code).capitalize() if code else ""


def _criteria_form(role: str) -> history.Criteria | None:
    """The filters; returns new criteria when searched (None otherwise, or when they are wrong)."""
    see_all = role in history.SEE_ALL
    current = st.session_state.get("ld_hist_criteria")
    label = "Search" + (f": {_describe(current)}" if current else "")
    with (
        st.expander(label, expanded=current is None, icon=":material/search:"),
        st.form("ld_history_search", border=False),
    ):
        c1, c2, c3 = st.columns(3)
        born = c1.date_input(
            "Applicant's date of birth",
            value=None,
            min_value=date(1900, 1, 1),
            max_value=datetime.now(UTC).date(),
            format="YYYY-MM-DD",
            key="h_born",
        )
        ssn = c2.text_input("SSN last four", max_chars=4, type="password", key="h_ssn", placeholder="NNNN")
        did = c3.text_input("Decision #", key="h_id", placeholder="e.g. 1042")
        c1, c2, c3, c4 = st.columns(4)
        since = c1.date_input("From", value=None, format="YYYY-MM-DD", key="h_from")
        until = c2.date_input("To", value=None, format="YYYY-MM-DD", key="h_to")
        outcome = c3.selectbox("Outcome", (ANY, *history.OUTCOMES), key="h_outcome")
        status = c4.selectbox(
            "Status",
            (ANY, *history.STATUSES),
            key="h_status",
            format_func=lambda s: {"pending": "pending review", "final": "final"}.get(s, s),
        )
        officer = None
        if see_all:
            officer = st.text_input("Officer (user name)", key="h_officer", placeholder="any officer")
        else:
            st.caption("You see the decisions you made.")
        searched = st.form_submit_button("Search", type="primary", icon=":material/search:")
    if not searched:
        return None
    did = (did or "").strip().lstrip("#")
    if did and not (did.isascii() and did.isdigit()):
        st.error(f"“{plain(did, 30)}” is not a decision id: a whole number, like 1042.", icon=":material/error:")
        return None
    try:
        c = history.Criteria(
            applicant=history.applicant_key(born, ssn),
            officer=officer or None,
            date_from=since,
            date_to=until,
            outcome=None if outcome == ANY else outcome,
            status=None if status == ANY else status,
            decision_id=int(did) if did else None,
        )
        c.check()
    except history.SearchError as exc:
        st.error(plain(exc), icon=":material/error:")
        return None
    return c


def _describe(c: history.Criteria) -> str:
    parts = []
    if c.applicant:
        parts.append(f"applicant {masked_applicant(c.applicant)}")
    if c.officer:
        parts.append(f"officer {c.officer}")
    if c.decision_id:
        parts.append(f"decision #{c.decision_id}")
    if c.outcome:
        parts.append(c.outcome)
    if c.status:
        parts.append(c.status)
    if c.date_from or c.date_to:
        parts.append(f"{c.date_from or '…'} to {c.date_to or '…'}")
    return ", ".join(parts) or "all decisions"


def _export(s, criteria, user, role) -> bytes:
    """The CSV (run by the download button when clicked): a failure becomes a one-line file."""
    try:
        return history.export_csv(s, criteria, user, role)[0]
    except Exception as exc:
        return f"export failed: {explain(exc)}\r\n".encode()


user, role = require()
st.title(":material/history: Decision history")
if (new := _criteria_form(role)) is not None:
    st.session_state["ld_hist_criteria"] = new
    st.session_state["ld_hist_pages"] = [None]
criteria = st.session_state.get("ld_hist_criteria", history.Criteria())
pages = st.session_state.setdefault("ld_hist_pages", [None])

with guarded("The decision history is unavailable"):
    page = history.search(settings(), criteria, user, role, after=pages[-1])
    n = page.matches
    shown = f"more than {history.COUNT_CAP:,}" if n > history.COUNT_CAP else f"{n:,}"
    st.markdown(f"**{shown}** decision{'s' if n != 1 else ''} · {plain(_describe(criteria))} · page {len(pages)}")
    if not page.rows:
        st.caption("Nothing matches.")
    else:
        table = pd.DataFrame(
            [
                {
                    "id": f"/decision?id={r['id']}",
                    "outcome": history.status_text(r),
                    "PD": "no score" if r["probability"] is None else f"{r['probability']:.1%}",
                    "amount": None if r["loan_amnt"] is None else f"{r['loan_amnt']:,.0f}",
                    "applicant": masked_applicant(r["applicant"]),
                    "decided (UTC)": f"{r['decided_at'].astimezone(UTC):%Y-%m-%d %H:%M}",
                    "officer": r["username"],
                    "purpose": _word(r["loan_intent"]),
                    "channel": r["channel"],
                }
                for r in page.rows
            ]
        )
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                "id": st.column_config.LinkColumn("id", display_text=r"id=(\d+)", width="small"),
                "PD": st.column_config.TextColumn("PD", help="Probability of default", width="small"),
            },
            key="ld_hist_table",
        )
    if len(page.rows) == 1 and page.next_after is None and not pages[:-1]:
        only = page.rows[0]["id"]
        st.markdown(f":material/receipt_long: [Open decision #{only}](/decision?id={only})")
    c1, c2, c3 = st.columns([1, 1, 2])
    if c1.button("Newer", icon=":material/arrow_back:", disabled=len(pages) == 1, key="ld_hist_prev"):
        pages.pop()
        st.rerun()
    if c2.button("Older", icon=":material/arrow_forward:", disabled=page.next_after is None, key="ld_hist_next"):
        pages.append(page.next_after)
        st.rerun()
    if page.rows:
        c3.download_button(
            f"CSV of the {shown} matches" if n <= history.EXPORT_LIMIT else f"CSV (first {history.EXPORT_LIMIT:,})",
            functools.partial(_export, settings(), criteria, user, role),
            file_name=f"loan-desk-decisions-{datetime.now(UTC):%Y%m%d-%H%M%S}.csv",
            mime="text/csv",
            icon=":material/download:",
            on_click="ignore",
            key="ld_hist_csv",
        )
    st.caption("Applicants are shown masked (birth year and the SSN's last two digits); the CSV masks them too.")
