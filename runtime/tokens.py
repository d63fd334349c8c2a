"""Bearer tokens of the client systems that call the Decision API.

A token is ``ldk_`` followed by 32 random bytes (URL-safe base64).  It is shown once, when it
is created; Postgres keeps only its SHA-256, so a copy of the database cannot be used to call
the API.  A 32-byte random secret needs no salt or slow hash: nobody can guess it, and a hash
lookup costs one indexed query per request, on any replica (nothing is cached in a process,
so a revoked token stops working at once everywhere).

Roles: ``client`` sees the decisions it made; ``admin`` sees every decision.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from runtime import db
from runtime.settings import Settings

PREFIX = "ldk_"
ROLES = ("client", "admin")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_TOKEN_LENGTH = 200


class TokenError(ValueError):
    """Bad client name, a name already in use, or no such client."""


@dataclass(frozen=True)
class Client:
    name: str
    role: str

    @property
    def username(self) -> str:
        """The name its decisions carry in the decision trail."""
        return f"api:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _name(name: str) -> str:
    clean = name.strip().lower()
    if not NAME_RE.match(clean):
        raise TokenError(f"client name {name[:40]!r}: use lowercase letters, digits, '.', '_' or '-' (up to 63)")
    return clean


def create_token(settings: Settings, name: str, role: str = "client") -> str:
    """A new token for client ``name``; returns it (the only time it exists in clear text).

    A client with a token that is still valid must be revoked first; a revoked client's name
    may be given a new token (its decisions keep the same name in the trail)."""
    name = _name(name)
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, got {role[:20]!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    with db.connection(settings) as conn:
        row = conn.execute(
            "INSERT INTO loan_desk_api_tokens (name, token_hash, role) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash, role = EXCLUDED.role, "
            "created_at = now(), revoked_at = NULL WHERE loan_desk_api_tokens.revoked_at IS NOT NULL "
            "RETURNING name",
            [name, _hash(token), role],
        ).fetchone()
    if row is None:
        raise TokenError(
            f"client {name!r} already has a valid token; revoke it first with `uv run loan-desk tokens revoke {name}`"
        )
    return token


def revoke_token(settings: Settings, name: str) -> None:
    name = _name(name)
    with db.connection(settings) as conn:
        row = conn.execute(
            "UPDATE loan_desk_api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = %s RETURNING name",
            [name],
        ).fetchone()
    if row is None:
        raise TokenError(f"no client named {name!r}; see `uv run loan-desk tokens list`")


def list_tokens(settings: Settings) -> list[TokenInfo]:
    with db.connection(settings) as conn:
        rows = conn.execute(
            "SELECT name, role, created_at, revoked_at FROM loan_desk_api_tokens ORDER BY name"
        ).fetchall()
    return [TokenInfo(*r) for r in rows]


def authenticate(settings: Settings, token: str | None) -> Client | None:
    """The client holding ``token``, or None when it is missing, unknown or revoked."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.startswith(PREFIX) or not token.isascii():
        return None
    with db.connection(settings) as conn:
        row = conn.execute(
            "SELECT name, role FROM loan_desk_api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
            [_hash(token)],
        ).fetchone()
    return Client(*row) if row else None
