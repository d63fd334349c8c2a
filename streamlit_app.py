"""Loan Desk web app: sign-in, role-based navigation, then the page the URL names.

Run it with `uv run loan-desk` (services, data, model and default users first) or, once those
exist, `uv run loan-desk serve` / `streamlit run streamlit_app.py`.

Sign-in uses streamlit-authenticator's AuthenticationController (bcrypt hashes from the
loan_desk_users table) behind a plain form.  Its cookie component (extra-streamlit-components'
CookieManager) is not mounted: it reruns the script while it loads, which swallowed the first
Login click and dropped the page of a freshly typed URL.  Instead the signed-in user lives in
st.session_state, and a signed session cookie (HS256, the per-install key) is written with a
one-off script after login and read back from the request headers (st.context.cookies) when a
new browser session starts.  Before sign-in every page is registered (hidden) so the URL's page
stays selected; after sign-in st.navigation lists only the pages of the user's role; the others
stay registered but hidden, and each page checks the role itself (pages/_ui.require), so their
URL shows a refusal that says why.
"""

from __future__ import annotations

import hashlib
import json
import time

import streamlit as st

st.set_page_config(page_title="Loan Desk", page_icon=":material/account_balance:", layout="wide")

from pages._ui import ensure_navigation_v2, explain, settings  # noqa: E402

ensure_navigation_v2()

COOKIE = "loan_desk_session"
SESSION_HOURS = 8
PAGES = {  # url path: (file, title, icon, roles)
    "apply": ("pages/apply.py", "Apply", ":material/request_quote:", ("officer", "admin")),
    "explore": ("pages/explore.py", "Explore features", ":material/query_stats:", ("officer", "admin")),
    "model_card": ("pages/model_card.py", "Model card", ":material/fact_check:", ("officer", "admin")),
    "materialize": ("pages/materialize.py", "Materialize", ":material/sync:", ("admin",)),
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


# --- session cookie -----------------------------------------------------------------------------
def _fingerprint(password_hash: str) -> str:
    """Changes when the password changes, so a new password ends every older session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _token(name: str, password_hash: str) -> str:
    import jwt

    from runtime.users import cookie_key

    claims = {"sub": name, "pwh": _fingerprint(password_hash), "exp": int(time.time()) + SESSION_HOURS * 3600}
    return jwt.encode(claims, cookie_key(), algorithm="HS256")


def _restore_from_cookie() -> None:
    """A new browser session with a valid cookie starts signed in (checked against the users table)."""
    if st.session_state.get("ld_user") or st.session_state.get("ld_signed_out"):
        return
    raw = st.context.cookies.get(COOKIE)
    if not raw:
        return
    import jwt

    from runtime.users import cookie_key, user_records

    try:
        claims = jwt.decode(raw, cookie_key(), algorithms=["HS256"])
        rec = user_records(settings()).get(claims.get("sub", ""))
    except Exception:  # expired, forged, or Postgres down: sign in again
        return
    if rec and claims.get("pwh") == _fingerprint(rec["password_hash"]):
        st.session_state["ld_user"], st.session_state["ld_role"] = claims["sub"], rec["role"]


def _cookie_script(value: str | None) -> str:
    if value is None:
        body = f"{COOKIE}=; Max-Age=0; Path=/; SameSite=Strict"
    else:
        body = f"{COOKIE}={value}; Max-Age={SESSION_HOURS * 3600}; Path=/; SameSite=Strict"
    return f"<script>document.cookie = {json.dumps(body)};</script>"


# --- sign-in ------------------------------------------------------------------------------------
def _login() -> None:
    """Form callback: runs before the script, so the very run the click starts is signed in."""
    from streamlit_authenticator.controllers import AuthenticationController

    from runtime.users import authenticator_credentials, cookie_key

    name = (st.session_state.get("ld_login_name") or "").strip().lower()
    password = st.session_state.get("ld_login_password") or ""
    st.session_state["ld_login_password"] = ""
    if not name or not password:
        st.session_state["ld_login_error"] = "Enter your user name and password."
        return
    try:
        creds = authenticator_credentials(settings())
        ctrl = AuthenticationController(credentials=creds, auto_hash=False, secret_key=cookie_key())
        ok = ctrl.login(name, password)
    except Exception as exc:
        st.session_state["ld_login_error"] = f"Sign-in is unavailable: {explain(exc)}"
        return
    if not ok:
        st.session_state["ld_login_error"] = "Wrong user name or password."
        return
    rec = creds["usernames"][name]
    st.session_state.pop("ld_login_error", None)
    st.session_state.pop("ld_signed_out", None)
    st.session_state["ld_user"], st.session_state["ld_role"] = name, rec["roles"][0]
    st.session_state["ld_set_cookie"] = _token(name, rec["password"])


def _logout() -> None:
    for key in ("ld_user", "ld_role", "ld_last_decision", "authentication_status", "username", "name", "roles"):
        st.session_state.pop(key, None)
    st.session_state["ld_signed_out"] = True
    st.session_state["ld_clear_cookie"] = True


def _login_page(requested) -> None:
    if st.session_state.pop("ld_clear_cookie", False):
        st.html(_cookie_script(None), unsafe_allow_javascript=True)
    _, mid, _ = st.columns([1, 1.2, 1])
    with mid:
        st.title(":material/account_balance: Loan Desk")
        st.caption("Real-time credit decisions. Sign in to continue.")
        if requested is not None and requested.url_path not in ("", "apply"):
            st.info(f"Sign in to open **{requested.title}**.", icon=":material/lock:")
        with st.form("login", border=True):
            st.text_input("User name", key="ld_login_name", autocomplete="username")
            st.text_input("Password", type="password", key="ld_login_password", autocomplete="current-password")
            st.form_submit_button("Log in", type="primary", on_click=_login, width="stretch")
        if msg := st.session_state.pop("ld_login_error", None):
            st.error(msg, icon=":material/block:")


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
    _restore_from_cookie()
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
    if token := st.session_state.pop("ld_set_cookie", None):
        st.html(_cookie_script(token), unsafe_allow_javascript=True)
    with st.sidebar:
        st.markdown(f":material/person: **{user}** · {role}")
        st.button("Log out", on_click=_logout, icon=":material/logout:", key="ld_logout")
    try:
        page.run()
    finally:
        _warm_up()  # (once per server) after the page, so it does not slow the page down


main()
