"""Loan Desk web app: sign-in, role-based navigation, then the page the URL names.

Run it with `uv run loan-desk` (services, data, model and default users first) or, once those
exist, `uv run loan-desk serve` (which serves asgi.py: this script plus the cookie routes).

Sign-in (runtime/signin.py) checks the bcrypt hash in loan_desk_users behind per-name and
per-address limits, then starts a server-side session (runtime/sessions.py): the browser gets
an opaque random id in the HttpOnly cookie ``loan_desk_session`` (set by asgi.py's route from
a single-use handoff token), Postgres keeps its hash.  Every run of this script checks that
the session is still live — logout, a password or role change, idleness and the maximum
length end it — so an old cookie signs nobody in.  Before sign-in every page is registered
(hidden) so the URL's page stays selected; after sign-in st.navigation lists only the pages
of the user's role; the others stay registered but hidden, and each page checks the role
itself (pages/_ui.require), so their URL shows a refusal that says why.
"""

from __future__ import annotations

import json

import streamlit as st

st.set_page_config(page_title="Loan Desk", page_icon=":material/account_balance:", layout="wide")

from pages._ui import ensure_navigation_v2, explain, plain, settings  # noqa: E402
from runtime import sessions  # noqa: E402
from runtime.signin import SigninPolicy, sign_in  # noqa: E402

ensure_navigation_v2()

PAGES = {  # url path: (file, title, icon, roles)
    "apply": ("pages/apply.py", "Apply", ":material/request_quote:", ("officer", "admin")),
    "batch": ("pages/batch.py", "Batch scoring", ":material/table_view:", ("officer", "admin")),
    "review": ("pages/review.py", "Review queue", ":material/how_to_reg:", ("underwriter", "admin")),
    "history": ("pages/history.py", "Decision history", ":material/history:", ("officer", "underwriter", "admin")),
    "decision": (
        "pages/decision.py",
        "Decision record",
        ":material/receipt_long:",
        ("officer", "underwriter", "admin"),
    ),
    "explore": ("pages/explore.py", "Explore features", ":material/query_stats:", ("officer", "underwriter", "admin")),
    "model_card": ("pages/model_card.py", "Model card", ":material/fact_check:", ("officer", "underwriter", "admin")),
    "monitoring": ("pages/monitoring.py", "Monitoring", ":material/monitoring:", ("underwriter", "admin")),
    "materialize": ("pages/materialize.py", "Materialize", ":material/sync:", ("admin",)),
    "users": ("pages/users.py", "Users", ":material/group:", ("admin",)),
}


@st.cache_resource
def _page_objects() -> dict:
    """Each page twice: listed in the menu, and hidden (reachable by URL, not listed)."""
    return {
        (key, visibility): st.Page(
            path, title=title, icon=icon, url_path=key, default=(key == "apply"), visibility=visibility
        )
        for key, (path, title, icon, _) in PAGES.items()
        for visibility in ("visible", "hidden")
    }


def _pages_for(role: str | None) -> list:
    """The menu of a role: its own pages listed; the others hidden, so that their URL opens the
    page's own refusal (it checks the role) instead of Streamlit's "Page not found"."""
    pages = _page_objects()
    return [pages[k, "visible" if role in roles else "hidden"] for k, (_, _, _, roles) in PAGES.items()]


# --- sessions -----------------------------------------------------------------------------------
SIGNED_IN_KEYS = ("ld_user", "ld_role", "ld_session", "ld_last_decision")


@st.cache_resource
def _policies() -> tuple[sessions.SessionPolicy, SigninPolicy]:
    return sessions.SessionPolicy.from_env(), SigninPolicy.from_env()


def _text(value) -> str | None:
    """A value from st.context (request data: a string, or nothing)."""
    return value if isinstance(value, str) else None


def _client() -> str:
    return sessions.client_address(_text(st.context.ip_address), _text(st.context.headers.get("X-Forwarded-For")))


def _forget(notice: str | None = None) -> None:
    for key in SIGNED_IN_KEYS:
        st.session_state.pop(key, None)
    if notice:
        st.session_state["ld_login_notice"] = notice


def _check_session() -> None:
    """Every run: the signed-in session must still be live in Postgres (a new browser session
    resumes the one its cookie names).  Anything else signs this browser session out."""
    policy = _policies()[0]
    session_id = st.session_state.get("ld_session")
    from_cookie = session_id is None
    if from_cookie:
        st.session_state.pop("ld_user", None)  # only a live session signs anyone in
        session_id = _text(st.context.cookies.get(sessions.COOKIE))
        if not session_id or st.session_state.get("ld_cookie_checked") == session_id:
            return
        st.session_state["ld_cookie_checked"] = session_id  # a dead cookie is looked up once
    try:
        live, why = sessions.resume(settings(), session_id, policy)
    except Exception as exc:  # fail closed: no session check, no page
        _forget(f"Your session could not be checked: {explain(exc)}")
        return
    if live is None:
        _forget(None if from_cookie and why is None else sessions.describe_end(why))
        st.session_state["ld_clear_cookie"] = True
        return
    st.session_state.update(ld_user=live.username, ld_role=live.role, ld_session=session_id)


def _cookie_script(token: str | None) -> str:
    """POST the handoff token (or the logout) to asgi.py's route; it sets (or deletes) the HttpOnly cookie."""
    if token is None:
        call = 'fetch("/ld/session/end", {method: "POST", credentials: "same-origin"})'
    else:
        call = f'fetch("/ld/session/cookie", {{method: "POST", credentials: "same-origin", body: {json.dumps(token)}}})'
    return f"<script>{call}.catch(() => {{}});</script>"


# --- sign-in ------------------------------------------------------------------------------------
def _login() -> None:
    """Form callback: runs before the script, so the very run the click starts is signed in."""
    typed = st.session_state.get("ld_login_name") or ""
    password = st.session_state.get("ld_login_password") or ""
    st.session_state["ld_login_password"] = ""
    session_policy, signin_policy = _policies()
    client = _client()
    try:
        outcome = sign_in(settings(), typed, password, client, signin_policy)
        session_id = sessions.start(settings(), outcome.username, client, session_policy) if outcome.ok else None
    except Exception as exc:
        st.session_state["ld_login_error"] = f"Sign-in is unavailable: {explain(exc)}"
        return
    if not outcome.ok:
        st.session_state["ld_login_error"] = outcome.message
        return
    for key in ("ld_login_error", "ld_login_notice", "ld_cookie_checked"):
        st.session_state.pop(key, None)
    st.session_state.update(ld_user=outcome.username, ld_role=outcome.role, ld_session=session_id)
    st.session_state["ld_set_cookie"] = sessions.issue_handoff(session_id)


def _logout() -> None:
    notice = "You are signed out."
    try:
        sessions.end(settings(), st.session_state.get("ld_session"), "logout")
    except Exception as exc:
        notice = (
            f"You are signed out in this browser, but the session could not be ended on the server "
            f"({explain(exc)}); it ends by itself after {_policies()[0].idle_s / 60:.0f} min without use."
        )
    _forget(notice)
    st.session_state["ld_clear_cookie"] = True
    # This browser session keeps seeing the cookie it connected with: it is dead now, don't look it up.
    st.session_state["ld_cookie_checked"] = _text(st.context.cookies.get(sessions.COOKIE))


# Signed out, the sidebar has nothing to show (it stays open after a logout otherwise).
_NO_SIDEBAR = '<style>section[data-testid="stSidebar"], [data-testid="stExpandSidebarButton"] {display: none}</style>'


def _login_page(requested) -> None:
    if st.session_state.pop("ld_clear_cookie", False):
        st.html(_cookie_script(None), unsafe_allow_javascript=True)
    st.html(_NO_SIDEBAR)
    _, mid, _ = st.columns([1, 1.2, 1])
    with mid:
        st.title(":material/account_balance: Loan Desk")
        st.caption("Real-time credit decisions. Sign in to continue.")
        if notice := st.session_state.pop("ld_login_notice", None):
            st.info(plain(notice), icon=":material/logout:")
        if requested is not None and requested.url_path not in ("", "apply"):
            st.info(f"Sign in to open **{plain(requested.title)}**.", icon=":material/lock:")
        with st.form("login", border=True):
            st.text_input("User name", key="ld_login_name", autocomplete="username", max_chars=200)
            st.text_input(
                "Password", type="password", key="ld_login_password", autocomplete="current-password", max_chars=200
            )
            st.form_submit_button("Log in", type="primary", on_click=_login, width="stretch")
        if msg := st.session_state.pop("ld_login_error", None):
            st.error(plain(msg), icon=":material/block:")


def _startup_problem() -> str | None:
    """What to run first, when the services or the users are not there yet."""
    from runtime.users import list_users

    try:
        if not list_users(settings()):
            return (
                "No users yet. Run `uv run loan-desk` (it creates the users `admin` and `officer` and prints "
                "their passwords) or `uv run loan-desk users add NAME --role admin`."
            )
    except Exception as exc:
        return f"Loan Desk cannot start: {explain(exc)}. Run `uv run loan-desk` first."
    return None


@st.cache_resource(show_spinner=False)
def _warm_up() -> None:
    """Load the model and connect the online store in the background, once per server, from the
    first page view on (the sign-in page included), so the first decision is quick."""
    import threading

    def work() -> None:
        try:
            from model.inference import DecisionService

            DecisionService.shared().warm()
        except Exception:  # the apply page reports problems when it is used
            pass

    threading.Thread(target=work, name="loan-desk-warm-up", daemon=True).start()


def main() -> None:
    from runtime.db import page_run

    page_run()
    _check_session()
    user, role = st.session_state.get("ld_user"), st.session_state.get("ld_role")
    if not user:
        # Every page registered but hidden: the URL's page stays selected through sign-in.
        requested = st.navigation([p for (_, vis), p in _page_objects().items() if vis == "visible"], position="hidden")
        if problem := _startup_problem():
            st.error(problem, icon=":material/error:")
            return
        _login_page(requested)
        _warm_up()  # after the sign-in form is out: it warms up while the officer types
        return
    page = st.navigation(_pages_for(role))
    if page.title == PAGES["apply"][1] and role not in PAGES["apply"][3]:
        st.switch_page(_page_objects()["review", "visible"])  # an underwriter's home is the review queue
    if token := st.session_state.pop("ld_set_cookie", None):
        st.html(_cookie_script(token), unsafe_allow_javascript=True)
    with st.sidebar:
        st.markdown(f":material/person: **{plain(user)}** · {plain(role)}")
        st.button("Log out", on_click=_logout, icon=":material/logout:", key="ld_logout")
    try:
        page.run()
    finally:
        _warm_up()  # (once per server) after the page, so it does not slow the page down


main()
