"""App users: names, roles and bcrypt password hashes in Postgres.

A name is normalised once, when the user is created (surrounding spaces stripped,
lowercase), and every later lookup matches the stored name exactly.  Creating never
changes an existing user: a changed role or password is its own, explicit step
(``set_role``, ``set_password``), says what changed, and ends that user's sessions.
Passwords never leave this module in clear text except once, when
``ensure_default_users`` generates one for a fresh install and returns it to be printed.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import sys

import bcrypt

from runtime import db
from runtime.errors import clip
from runtime.settings import Settings

ROLES = ("officer", "underwriter", "admin")
MIN_PASSWORD = 8
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DEFAULT_USERS = (("admin", "admin", "LOAN_DESK_ADMIN_PASSWORD"), ("officer", "officer", "LOAN_DESK_OFFICER_PASSWORD"))


class UserError(ValueError):
    """Bad user name, role or password, or a user that does not exist / already exists."""


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def check_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:
        return False


def normalise(name: str) -> str:
    """The one normalisation of a user name: surrounding spaces stripped, lowercase."""
    return name.strip().lower()


def _valid_name(name: str) -> str:
    stored = normalise(name)
    if not NAME_RE.match(stored):
        raise UserError(
            f"user name {clip(name)!r}: use lowercase letters, digits, '.', '_' or '-' (up to 63), "
            "starting with a letter or digit"
        )
    return stored


def _valid_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {clip(role)!r}")
    return role


def _valid_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > 72:
        raise UserError("the password must have at most 72 bytes (bcrypt's limit)")
    if "\x00" in password:
        raise UserError("the password cannot contain NUL characters")
    return password


def add_user(settings: Settings, name: str, role: str, password: str) -> str:
    """Create a new user; returns the name as stored. An existing name (in any case or spacing) is refused."""
    stored = _valid_name(name)
    _valid_role(role)
    _valid_password(password)
    import psycopg

    with db.connection(settings) as conn, conn.transaction():
        same = conn.execute(
            "SELECT name, role FROM loan_desk_users WHERE lower(btrim(name)) = %s ORDER BY name LIMIT 1", [stored]
        ).fetchone()
        if same:
            raise UserError(_exists(name, stored, *same))
        try:
            conn.execute(
                "INSERT INTO loan_desk_users (name, role, password_hash) VALUES (%s, %s, %s)",
                [stored, role, hash_password(password)],
            )
        except psycopg.errors.UniqueViolation:  # created meanwhile by another process
            raise UserError(_exists(name, stored, stored, role)) from None
    return stored


def _exists(typed: str, stored: str, existing: str, role: str) -> str:
    same_as = f" ({clip(typed)!r} is the same name as {existing!r})" if typed != existing else ""
    return (
        f"user {existing!r} already exists{same_as}, with role {role}; nothing changed. "
        f"Change it with `loan-desk users set {existing} --role ROLE` or `loan-desk users passwd {existing}`"
    )


def _lookup(conn, name: str, *, lock: bool = False) -> tuple[str, str]:
    """(name, role) of the user stored exactly as ``name``; UserError (with a hint) otherwise."""
    row = conn.execute(
        "SELECT name, role FROM loan_desk_users WHERE name = %s" + (" FOR UPDATE" if lock else ""), [name]
    ).fetchone()
    if row:
        return row
    near = conn.execute(
        "SELECT name FROM loan_desk_users WHERE lower(btrim(name)) = lower(btrim(%s)) LIMIT 1", [name]
    ).fetchone()
    hint = f"; did you mean {near[0]!r}? (names are stored in lowercase)" if near else ""
    raise UserError(f"no user {clip(name)!r}{hint}")


def set_role(settings: Settings, name: str, role: str) -> str:
    """Change a user's role; returns what changed (one sentence). Ends the user's sessions."""
    from runtime.sessions import end_user_sessions

    _valid_role(role)
    with db.connection(settings) as conn, conn.transaction():
        stored, old = _lookup(conn, name, lock=True)
        if old == role:
            return f"user {stored!r} already has the role {role}; nothing changed"
        conn.execute("UPDATE loan_desk_users SET role = %s, updated_at = now() WHERE name = %s", [role, stored])
        ended = end_user_sessions(conn, stored, "role changed")
    return f"user {stored!r}: role {old} → {role}; {_sessions_ended(ended)}"


def set_password(settings: Settings, name: str, password: str) -> str:
    """Change a user's password; returns what changed. Ends the user's sessions."""
    from runtime.sessions import end_user_sessions

    _valid_password(password)
    with db.connection(settings) as conn, conn.transaction():
        stored, _ = _lookup(conn, name, lock=True)
        conn.execute(
            "UPDATE loan_desk_users SET password_hash = %s, updated_at = now() WHERE name = %s",
            [hash_password(password), stored],
        )
        ended = end_user_sessions(conn, stored, "password changed")
    return f"user {stored!r}: password changed; {_sessions_ended(ended)}"


def _sessions_ended(n: int) -> str:
    return "no open session" if n == 0 else f"{n} open session{'s' if n > 1 else ''} ended (signed out)"


def list_users(settings: Settings) -> list[tuple[str, str]]:
    with db.connection(settings) as conn:
        return [(n, r) for n, r in conn.execute("SELECT name, role FROM loan_desk_users ORDER BY name")]


def user_records(settings: Settings) -> dict[str, dict]:
    """Every user as {name: {"role", "password_hash"}}."""
    with db.connection(settings) as conn:
        rows = conn.execute("SELECT name, role, password_hash FROM loan_desk_users").fetchall()
    return {n: {"role": r, "password_hash": h} for n, r, h in rows}


def role_of(settings: Settings, name: str) -> str | None:
    with db.connection(settings) as conn:
        row = conn.execute("SELECT role FROM loan_desk_users WHERE name = %s", [name]).fetchone()
    return row[0] if row else None


def read_password() -> str:
    """A password for the CLI: LOAN_DESK_PASSWORD, a prompt (twice), or stdin's first line."""
    env = os.environ.get("LOAN_DESK_PASSWORD")
    if env:
        return env
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise UserError("the two passwords differ")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise UserError("no password: pipe it on stdin or set LOAN_DESK_PASSWORD")
    return line


def ensure_default_users(settings: Settings) -> list[str]:
    """First start: create `admin` and `officer`; returns lines to print (a generated password once)."""
    lines = []
    with db.connection(settings) as conn:
        existing = {n for (n,) in conn.execute("SELECT name FROM loan_desk_users")}
    for name, role, env in DEFAULT_USERS:
        if name in existing:
            continue
        password = os.environ.get(env)
        generated = not password
        password = password or secrets.token_urlsafe(12)
        try:
            add_user(settings, name, role, password)
        except UserError as exc:
            if "already exists" not in str(exc):
                raise
            continue  # another process created it meanwhile
        if not generated:
            lines.append(f"created user {name!r} (role {role}) with the password from {env}")
        else:
            lines.append(
                f"created user {name!r} (role {role}) with password: {password}   "
                f"(shown once; change it with `uv run loan-desk users passwd {name}`)"
            )
    if not lines:
        lines.append("users: " + ", ".join(f"{n} ({r})" for n, r in list_users(settings)))
    return lines
