"""Small helpers shared by the pages: settings, the signed-in user, errors shown without tracebacks,
and ``plain`` for any text that did not come from this code (names, labels, error messages).

st.markdown, st.error/info/warning/success, st.caption and st.table cells all render Markdown,
Streamlit's directives (``:red[...]``, ``:material/...:``) and LaTeX, so a run label like
``![i](http://host/track.png)`` would make every viewer's browser fetch that image.  ``plain``
backslash-escapes every ASCII punctuation character (CommonMark renders them literally) and
breaks what GitHub-flavoured Markdown would turn into links (``://``, ``www.``, ``@``) with
an invisible zero-width space.
"""

from __future__ import annotations

import logging
import re
import weakref
from contextlib import contextmanager

import streamlit as st

from runtime.settings import Settings

log = logging.getLogger("loan_desk.app")

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_ZWSP = "\u200b"


def plain(text: object, limit: int | None = None) -> str:
    """``text`` as Markdown that shows exactly these characters (cut to ``limit`` with "…")."""
    from runtime.errors import clip

    s = clip(text, limit) if limit else "".join(ch if ch.isprintable() else " " for ch in str(text))
    s = s.replace("://", f":/{_ZWSP}/").replace("www.", f"www{_ZWSP}.").replace("@", f"{_ZWSP}@")
    return _PUNCTUATION.sub(r"\\\1", s)


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


def ensure_navigation_v2() -> None:
    """Never let Streamlit's legacy pages/ folder mode run a page on its own.

    A fresh server whose first request names a page (e.g. /explore) runs pages/explore.py
    directly, without streamlit_app.py, until some run calls st.navigation.  Switch that mode
    off and rerun, so the entrypoint (sign-in, roles) always runs first.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - other Streamlit versions
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def require(*roles: str) -> tuple[str, str]:
    """(name, role) of the signed-in user; stops the page for anyone else."""
    ensure_navigation_v2()
    from runtime.db import page_run

    page_run()
    name, role = current_user()
    if not name:
        st.warning("Please sign in first.", icon=":material/lock:")
        st.stop()
    if roles and role not in roles:
        st.error(
            f"Your role may not open this page: it is for the role {' or '.join(roles)}, "
            f"and you are signed in as {plain(name)} ({plain(role)}). The menu on the left lists your pages.",
            icon=":material/block:",
        )
        st.stop()
    return name, role


def current_user() -> tuple[str, str]:
    """(name, role) of the signed-in user; the entrypoint only runs pages for signed-in users."""
    return st.session_state.get("ld_user", ""), st.session_state.get("ld_role", "")


def explain(exc: BaseException) -> str:
    from runtime.errors import explain as _explain

    try:
        return _explain(exc)
    except Exception:  # explaining must never fail in front of a user
        return type(exc).__name__


# The causes already shown in the current script run (Streamlit makes a new coordinator per run).
_shown_this_run: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _first_time_this_run(cause: str) -> bool:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        run = get_script_run_ctx().parallel_coordinator
        seen = _shown_this_run.setdefault(run, set())
    except Exception:  # another Streamlit version: show every message
        return True
    if cause in seen:
        return False
    seen.add(cause)
    return True


def show_error(exc: BaseException, what: str = "") -> None:
    """One sentence for the user; the full traceback goes to the server log only.  When the same
    cause (Postgres busy or away, say) was already shown in this run, the page shows it once."""
    log.warning("%s failed", what or "page", exc_info=exc)
    cause = explain(exc)
    if not _first_time_this_run(cause):
        return
    prefix = f"{what}: " if what else ""
    st.error(plain(prefix + cause), icon=":material/error:")


@contextmanager
def guarded(what: str = ""):
    """Show any exception as one message instead of letting it reach Streamlit's error box."""
    try:
        yield
    except Exception as exc:  # st.rerun/st.stop are BaseExceptions and pass through
        show_error(exc, what)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
