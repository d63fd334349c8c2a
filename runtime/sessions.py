"""Server-side sign-in sessions: an opaque random id in the browser, the session in Postgres.

The cookie ``loan_desk_session`` holds 32 random bytes (URL-safe base64) and nothing else:
no name, no role, no signature to forge.  Postgres keeps only the id's SHA-256
(``loan_desk_sessions.id_hash``) with the user, the client address, when it started, when it
was last seen, when it expires at the latest, and — once over — when and why it ended.  A
session ends on logout, on a password or role change of its user, after ``idle_s`` without
a request (default 30 min) and ``max_s`` after sign-in at the latest (default and maximum 8 h);
an ended session never comes back, whatever the browser still holds.

Writing the cookie: Streamlit scripts cannot set response headers, so the cookie is set by
the app's own route (``asgi.py``, ``POST /ld/session/cookie``) as HttpOnly, SameSite=Strict.
The script hands the browser a one-time *handoff* token (60 s, single use, this process's
memory only) that the route exchanges for the session id, so the id itself is never in the
page.  Reading it back needs no route: st.context.cookies carries it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from runtime import db
from runtime.settings import Settings, _seconds

COOKIE = "loan_desk_session"
MAX_SESSION_S = 8 * 3600
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives: LOAN_DESK_SESSION_IDLE_S, LOAN_DESK_SESSION_MAX_S override it."""

    idle_s: float = 30 * 60
    max_s: float = MAX_SESSION_S
    touch_every_s: float = 30.0  # last_seen is written at most this often (idle is checked every request)

    @classmethod
    def from_env(cls) -> SessionPolicy:
        d = cls()
        max_s = _seconds("LOAN_DESK_SESSION_MAX_S", d.max_s)
        if max_s > MAX_SESSION_S:
            raise ValueError(f"LOAN_DESK_SESSION_MAX_S may be at most {MAX_SESSION_S} (8 h), got {max_s:g}")
        idle_s = min(_seconds("LOAN_DESK_SESSION_IDLE_S", d.idle_s), max_s)
        return cls(idle_s=idle_s, max_s=max_s, touch_every_s=min(d.touch_every_s, idle_s / 4))


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    created_at: datetime
    expires_at: datetime


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def plausible(session_id: str | None) -> bool:
    """Only ids of the shape this module makes are looked up (a cookie is user input)."""
    return bool(session_id) and bool(_ID_RE.match(session_id))


def start(settings: Settings, username: str, client: str, policy: SessionPolicy) -> str:
    """A new session for ``username``; returns the id for the cookie (stored nowhere else)."""
    session_id = secrets.token_urlsafe(32)
    with db.connection(settings) as conn:
        conn.execute(
            "INSERT INTO loan_desk_sessions (id_hash, username, client, expires_at) "
            "VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
            [_hash(session_id), username, client[:64], policy.max_s],
        )
    return session_id


def resume(settings: Settings, session_id: str | None, policy: SessionPolicy) -> tuple[Session | None, str | None]:
    """(the live session, None), or (None, why it is not live: None when there is no such session)."""
    if not plausible(session_id):
        return None, None
    h = _hash(session_id)
    with db.connection(settings) as conn:
        row = conn.execute(
            "SELECT s.username, u.role, s.created_at, s.expires_at, s.ended_why, "
            "extract(epoch FROM now() - s.last_seen), now() >= s.expires_at "
            "FROM loan_desk_sessions s JOIN loan_desk_users u ON u.name = s.username WHERE s.id_hash = %s",
            [h],
        ).fetchone()
        if row is None:
            return None, None
        username, role, created, expires, ended_why, idle_for, expired = row
        if ended_why is not None:
            return None, ended_why
        why = "expired" if expired else "idle" if idle_for >= policy.idle_s else None
        if why:
            _end(conn, h, why)
            return None, why
        if idle_for >= policy.touch_every_s:
            conn.execute("UPDATE loan_desk_sessions SET last_seen = now() WHERE id_hash = %s AND ended_at IS NULL", [h])
    return Session(username, role, created, expires), None


def end(settings: Settings, session_id: str | None, why: str = "logout") -> bool:
    """End one session (logout); True if it was live."""
    if not plausible(session_id):
        return False
    with db.connection(settings) as conn:
        return _end(conn, _hash(session_id), why)


def _end(conn, h: bytes, why: str) -> bool:
    cur = conn.execute(
        "UPDATE loan_desk_sessions SET ended_at = now(), ended_why = %s WHERE id_hash = %s AND ended_at IS NULL",
        [why, h],
    )
    return cur.rowcount > 0


def end_user_sessions(conn, username: str, why: str) -> int:
    """End every live session of ``username`` (inside the caller's transaction); returns how many."""
    cur = conn.execute(
        "UPDATE loan_desk_sessions SET ended_at = now(), ended_why = %s WHERE username = %s AND ended_at IS NULL",
        [why, username],
    )
    return cur.rowcount


def open_sessions(settings: Settings) -> list[dict]:
    """Sessions not ended and not past their absolute expiry (idle ones end on their next request)."""
    with db.connection(settings) as conn:
        rows = conn.execute(
            "SELECT username, client, created_at, last_seen, expires_at FROM loan_desk_sessions "
            "WHERE ended_at IS NULL AND expires_at > now() ORDER BY username, created_at"
        ).fetchall()
    keys = ("username", "client", "created_at", "last_seen", "expires_at")
    return [dict(zip(keys, r, strict=True)) for r in rows]


WHY = {
    "logout": "you logged out",
    "idle": "it was idle for too long",
    "expired": "it reached its maximum length",
    "password changed": "your password was changed",
    "role changed": "your role was changed",
}


def describe_end(why: str | None) -> str:
    """A sentence for the sign-in page when a remembered session is over."""
    if why is None:
        return "Your session is no longer valid. Please sign in again."
    return f"Your session has ended ({WHY.get(why, why)}). Please sign in again."


# --- the cookie handoff (this process only) --------------------------------------------------
HANDOFF_S = 60.0
_handoffs: dict[bytes, tuple[str, float]] = {}
_handoffs_lock = threading.Lock()


def issue_handoff(session_id: str) -> str:
    """A single-use token the browser trades for the HttpOnly cookie (asgi.py)."""
    token = secrets.token_urlsafe(24)
    now = time.monotonic()
    with _handoffs_lock:
        for k in [k for k, (_, exp) in _handoffs.items() if exp < now]:
            del _handoffs[k]
        _handoffs[_hash(token)] = (session_id, now + HANDOFF_S)
    return token


def redeem_handoff(token: str) -> str | None:
    """The session id of a fresh, unused handoff token; None otherwise. Each token works once."""
    if not plausible(token):
        return None
    with _handoffs_lock:
        found = _handoffs.pop(_hash(token), None)
    if found is None or found[1] < time.monotonic():
        return None
    return found[0]


# --- the client's address ------------------------------------------------------------------
def client_address(peer: str | None, forwarded_for: str | None = None) -> str:
    """The address sign-in limits count against.

    The peer address of the browser's connection, without IPv4-mapped IPv6 dressing.  When the
    peer is this machine (a reverse proxy on the same host, or a local browser) and the request
    carries X-Forwarded-For, its last entry — the address the proxy itself saw — is used
    instead; a remote peer's X-Forwarded-For is ignored (anyone can send one).  Unknown: "local".
    """

    def clean(raw: str | None) -> str | None:
        if not raw:
            return None
        raw = raw.strip()
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return str(ip)

    ip = clean(peer)
    if ip is None or ipaddress.ip_address(ip).is_loopback:
        hop = clean((forwarded_for or "").split(",")[-1]) if os.environ.get("LOAN_DESK_TRUST_LOCAL_PROXY") else None
        return hop or ip or "local"
    return ip
