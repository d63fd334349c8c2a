"""The served app: Streamlit's st.App running streamlit_app.py, plus two routes for the session cookie.

A Streamlit script cannot set response headers, so it cannot set an HttpOnly cookie; st.App
(Streamlit >= 1.5x) can add routes next to Streamlit's own.  After a sign-in, the page posts
the single-use handoff token it was given to ``/ld/session/cookie``; this route trades it
for the session id (runtime/sessions.py) and sets ``loan_desk_session`` as HttpOnly,
SameSite=Strict, Path=/, for the session's maximum length (Secure when served over HTTPS).
``/ld/session/end`` (logout) ends that session in Postgres and deletes the cookie.  Both
accept only same-origin POSTs.

`loan-desk serve` runs this file (`streamlit run asgi.py`, which finds ``app``);
`streamlit run streamlit_app.py` still works, without these routes (sign-in then lasts for
the browser tab only).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import streamlit as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime import sessions
from runtime.settings import Settings

_settings: Settings | None = None


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return bool(origin and host) and urlsplit(origin).netloc == host


def _cookie(request: Request, value: str, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{sessions.COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"


async def set_cookie(request: Request) -> Response:
    if not _same_origin(request):
        return Response("cross-origin request refused", status_code=403)
    token = (await request.body())[:200].decode("ascii", "replace")
    session_id = sessions.redeem_handoff(token)
    if session_id is None:
        return Response("unknown or used token", status_code=400)
    policy = sessions.SessionPolicy.from_env()
    response = Response(status_code=204)
    response.headers.append("Set-Cookie", _cookie(request, session_id, int(policy.max_s)))
    response.headers["Cache-Control"] = "no-store"
    return response


async def end_cookie(request: Request) -> Response:
    if not _same_origin(request):
        return Response("cross-origin request refused", status_code=403)
    global _settings
    session_id = request.cookies.get(sessions.COOKIE)
    if sessions.plausible(session_id):
        from starlette.concurrency import run_in_threadpool

        try:
            _settings = _settings or Settings.from_env()
            await run_in_threadpool(sessions.end, _settings, session_id, "logout")
        except Exception:  # the page ended it already, or Postgres is away: the cookie still goes
            pass
    response = Response(status_code=204)
    response.headers.append("Set-Cookie", _cookie(request, "", 0))
    response.headers["Cache-Control"] = "no-store"
    return response


app = st.App(
    "streamlit_app.py",
    routes=[
        Route("/ld/session/cookie", set_cookie, methods=["POST"]),
        Route("/ld/session/end", end_cookie, methods=["POST"]),
    ],
)
