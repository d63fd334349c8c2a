"""Users (admins): who may sign in, who is locked out (lift it), and the open sessions.

Adding users and changing roles or passwords stay on the command line (`loan-desk users ...`),
where the password never passes through a browser.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._ui import guarded, plain, require, settings, show_error
from runtime import sessions, signin
from runtime.users import list_users

require("admin")
st.title(":material/group: Users")
s = settings()

with guarded("The users are unavailable"):
    st.dataframe(pd.DataFrame(list_users(s), columns=["user", "role"]), hide_index=True)
    st.caption(
        "Add a user with `loan-desk users add NAME --role officer|underwriter|admin`; change one with "
        "`loan-desk users set NAME --role ROLE` or `loan-desk users passwd NAME` (both sign that user out)."
    )

st.subheader("Sign-in lockouts")
if notice := st.session_state.pop("ld_unlock_notice", None):
    st.success(notice, icon=":material/lock_open:")
try:
    rows = signin.lockouts(s)
except Exception as exc:
    show_error(exc, "The lockouts are unavailable")
    rows = None
if rows is not None and not rows:
    st.caption("No lockouts, and no failed sign-ins on record.")
elif rows:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "kind": "user name" if r["kind"] == "user" else "address",
                    "name or address": r["key"],
                    "locked until (UTC)": f"{r['locked_until']:%Y-%m-%d %H:%M:%S}" if r["locked"] else "not locked",
                    "failures in a row": r["failures"],
                    "last failure (UTC)": f"{r['last_failure']:%Y-%m-%d %H:%M:%S}" if r["last_failure"] else "",
                }
                for r in rows
            ]
        ),
        hide_index=True,
    )
    choices = {(r["kind"], r["key"]): r for r in rows}
    picked = st.selectbox(
        "Lift the lock of",
        list(choices),
        format_func=lambda k: f"{'user name' if k[0] == 'user' else 'address'} {k[1][:64]}",
        key="ld_unlock_pick",
    )
    if st.button("Lift the lock and clear the failures", icon=":material/lock_open:", key="ld_unlock"):
        try:
            done = signin.unlock(s, picked[1], kind=picked[0])
        except Exception as exc:
            show_error(exc, "The lock could not be lifted")
        else:
            what = f"{'User name' if picked[0] == 'user' else 'Address'} “{plain(picked[1], 64)}”"
            st.session_state["ld_unlock_notice"] = (
                f"{what}: the lock is lifted and its failures cleared." if done else f"{what} was not locked any more."
            )
            st.rerun()

st.subheader("Open sessions")
with guarded("The sessions are unavailable"):
    open_now = sessions.open_sessions(s)
    if not open_now:
        st.caption("No open sessions.")
    else:
        st.dataframe(pd.DataFrame(open_now), hide_index=True)
