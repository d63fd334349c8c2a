"""Review queue (underwriters, admins): referred decisions oldest first; approve or decline each
with a reason code and a note.  Nobody finalizes an application they submitted (maker-checker):
the page offers no form for it, and runtime.reviews.submit_review refuses it whatever the caller."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from model.reasons import WORDS
from pages._record import reasons_list
from pages._ui import ago, guarded, plain, require, settings, show_error
from runtime import reviews
from runtime.schema import masked_applicant

PAGE = 25


def _word(code: str | None) -> str:
    return WORDS.get(code, code).capitalize() if code else ""


def _pd(row: dict) -> str:
    return "no score" if row["probability"] is None else f"{row['probability']:.1%}"


def _short(items: list, key: str | None = None) -> str:
    texts = [i[key] if key else i for i in items or []]
    return "; ".join(texts)


def _queue(user: str) -> dict | None:
    """The queue table; returns the row picked in it (or None)."""
    pages = st.session_state.setdefault("ld_queue_pages", [None])
    rows = reviews.review_queue(settings(), limit=PAGE, after=pages[-1])
    total = reviews.pending_count(settings())
    st.markdown(
        f"**{total:,}** referral{'s' if total != 1 else ''} waiting, oldest first · page {len(pages)}"
        + (" · select a row to review it" if rows else "")
    )
    if not rows:
        st.caption("The queue is empty." if len(pages) == 1 else "No more referrals on this page.")
    now = datetime.now(UTC)
    table = pd.DataFrame(
        [
            {
                "id": r["id"],
                "waiting": ago((now - r["decided_at"]).total_seconds()),
                "PD": _pd(r),
                "amount": f"{r['loan_amnt']:,.0f}",
                "applicant": masked_applicant(r["applicant"]),
                "officer": r["username"] + (" (you)" if r["username"] == user else ""),
                "why referred": _short(r["refer_reasons"]),
                "principal reasons": _short(r["reasons"], "text"),
            }
            for r in rows
        ],
        columns=["id", "waiting", "PD", "amount", "applicant", "officer", "why referred", "principal reasons"],
    )
    picked = None
    if rows:
        event = st.dataframe(
            table,
            hide_index=True,
            on_select="rerun",
            selection_mode="single-row",
            key=f"ld_queue_table_{len(pages)}",
            column_config={
                "id": st.column_config.NumberColumn("id", format="%d", width="small"),
                "PD": st.column_config.TextColumn("PD", help="Probability of default", width="small"),
            },
        )
        chosen = event.selection.rows if event is not None else []
        if chosen:
            picked = rows[chosen[0]]
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button("Previous page", icon=":material/arrow_back:", disabled=len(pages) == 1, key="ld_queue_prev"):
        pages.pop()
        st.rerun()
    more = len(rows) == PAGE
    if c2.button("Next page", icon=":material/arrow_forward:", disabled=not more, key="ld_queue_next"):
        pages.append((rows[-1]["decided_at"], rows[-1]["id"]))
        st.rerun()
    if picked is None and "id" not in st.query_params:
        picked = next((r for r in rows if r["username"] != user), None)
    return picked


def _requested_id() -> int | None:
    raw = st.query_params.get("id")
    if raw is None:
        return None
    text = str(raw).strip()
    if text.isascii() and text.isdigit() and 0 < int(text) < 2**63:
        return int(text)
    st.error(f"“{plain(text, 40)}” is not a decision id (a whole number).", icon=":material/error:")
    return None


def _panel(decision_id: int, user: str, role: str) -> None:
    d = reviews.pending_decision(settings(), decision_id)
    if d is None:
        st.error(f"There is no decision #{decision_id}.", icon=":material/search_off:")
        return
    st.subheader(f"Decision #{decision_id}")
    st.markdown(
        f"Submitted by **{plain(d['username'])}** on {d['decided_at']:%Y-%m-%d %H:%M} UTC · applicant "
        f"`{masked_applicant(d['applicant'])}` · {_word(d['loan_intent'])} loan of **${d['loan_amnt']:,.0f}**, "
        f"income ${d['person_income']:,.0f} · probability of default **{_pd(d)}**"
        + (
            f" (cut-off {d['threshold']:.1%}, refer band {d['band'][0]:.1%}–{d['band'][1]:.1%})"
            if d.get("band") and d.get("threshold") is not None
            else ""
        )
        + f" · [open the full record](/decision?id={decision_id})"
    )
    info, act = st.columns([1.2, 1], gap="large")
    with info:
        for why in d.get("refer_reasons") or []:
            st.warning(plain(why), icon=":material/person_search:")
        if d.get("reasons"):
            st.markdown("**Principal reasons**")
            reasons_list(d["reasons"])
    with act:
        _verdict(d, decision_id, user, role)


def _verdict(d: dict, decision_id: int, user: str, role: str) -> None:
    if done := d.get("review"):
        why = reviews.reason_text(done["outcome"], done["reason_code"])
        st.info(
            f"Already decided: **{done['outcome']}** by {plain(done['reviewer'])} on "
            f"{done['reviewed_at']:%Y-%m-%d %H:%M} UTC ({plain(why)}).",
            icon=":material/how_to_reg:",
        )
        return
    if why := reviews.may_review(d, user, role):
        st.error(plain(why), icon=":material/block:")
        return
    k = f"ld_rv_{decision_id}"
    outcome = st.radio(
        "Verdict", ("approve", "decline"), horizontal=True, key=f"{k}_outcome", format_func=str.capitalize
    )
    codes = reviews.REASONS[outcome]
    code = st.selectbox(
        "Reason", list(codes), key=f"{k}_code_{outcome}", format_func=lambda c: f"{codes[c]} ({c})", index=None
    )
    note = st.text_area(
        "Note", key=f"{k}_note", max_chars=reviews.MAX_NOTE, placeholder="What you checked and what you relied on"
    )
    if st.button(f"Record: {outcome}", type="primary", icon=":material/gavel:", key=f"{k}_submit"):
        if code is None:
            st.error("Choose a reason.", icon=":material/edit_note:")
            return
        try:
            done = reviews.submit_review(settings(), decision_id, user, outcome, code, note)
        except reviews.ReviewError as exc:
            st.error(plain(exc), icon=":material/block:")
            return
        except Exception as exc:
            show_error(exc, "The review could not be recorded")
            return
        why = reviews.reason_text(done.outcome, done.reason_code)
        st.session_state["ld_review_notice"] = f"Decision #{decision_id}: {done.outcome} recorded ({why})."
        st.session_state.pop("ld_queue_pages", None)
        st.query_params.pop("id", None)
        st.rerun()


user, role = require("underwriter", "admin")
st.title(":material/how_to_reg: Review queue")
if notice := st.session_state.pop("ld_review_notice", None):
    st.success(plain(notice), icon=":material/check_circle:")
requested = _requested_id()
picked = None
with guarded("The review queue is unavailable"):
    picked = _queue(user)
with guarded("This referral is unavailable"):
    target = picked["id"] if picked is not None else requested
    if target is None:
        st.caption("Nothing to review: the queue is empty, or every referral in it is your own.")
    else:
        st.divider()
        _panel(target, user, role)
