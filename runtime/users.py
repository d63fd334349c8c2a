"""App users: names, roles and bcrypt password hashes in Postgres, plus the login cookie key.

Passwords never leave this module in clear text except once, when ``ensure_default_users``
generates one for a fresh install and returns it to be printed.  The key that signs the
login cookie is generated per install into ``home()/cookie_key`` (git-ignored, mode 0600).
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import sys
from pathlib import Path

import bcrypt

from runtime import db
from runtime.settings import Settings, home

ROLES = ("officer", "admin")
MIN_PASSWORD = 8
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DEFAULT_USERS = (("admin", "admin", "LOAN_DESK_ADMIN_PASSWORD"), ("officer", "officer", "LOAN_DESK_OFFICER_PASSWORD"))


class UserError(ValueError):
    """Bad user name, role or password."""


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def check_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:
        return False


def _validate(name: str, role: str, password: str) -> str:
    name = name.strip().lower()
    if not NAME_RE.match(name):
        raise UserError(f"user name {name!r}: use lowercase letters, digits, '.', '_' or '-' (up to 63)")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > 72:
        raise UserError("the password must have at most 72 bytes (bcrypt's limit)")
    return name


def add_user(settings: Settings, name: str, role: str, password: str) -> None:
    """Create the user, or update the role and password of an existing one."""
    name = _validate(name, role, password)
    with db.connection(settings) as conn:
        conn.execute(
            "INSERT INTO loan_desk_users (name, role, password_hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, "
            "updated_at = now()",
            [name, role, hash_password(password)],
        )


def list_users(settings: Settings) -> list[tuple[str, str]]:
    with db.connection(settings) as conn:
        return [(n, r) for n, r in conn.execute("SELECT name, role FROM loan_desk_users ORDER BY name")]


def user_records(settings: Settings) -> dict[str, dict]:
    """Every user as {name: {"role", "password_hash"}} (for the login check)."""
    with db.connection(settings) as conn:
        rows = conn.execute("SELECT name, role, password_hash FROM loan_desk_users").fetchall()
    return {n: {"role": r, "password_hash": h} for n, r, h in rows}


def authenticator_credentials(settings: Settings) -> dict:
    """The users in streamlit-authenticator's credentials format (hashes only, auto_hash off)."""
    return {
        "usernames": {
            name: {"name": name, "password": rec["password_hash"], "roles": [rec["role"]], "email": None}
            for name, rec in user_records(settings).items()
        }
    }


def role_of(settings: Settings, name: str) -> str | None:
    with db.connection(settings) as conn:
        row = conn.execute("SELECT role FROM loan_desk_users WHERE name = %s", [name]).fetchone()
    return row[0] if row else None


def read_password() -> str:
    """The password for `loan-desk users add`: LOAN_DESK_PASSWORD, a prompt, or stdin's first line."""
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
    cookie_key()
    with db.connection(settings) as conn:
        existing = {n for (n,) in conn.execute("SELECT name FROM loan_desk_users")}
    for name, role, env in DEFAULT_USERS:
        if name in existing:
            continue
        password = os.environ.get(env)
        if password:
            add_user(settings, name, role, password)
            lines.append(f"created user {name!r} (role {role}) with the password from {env}")
        else:
            password = secrets.token_urlsafe(12)
            add_user(settings, name, role, password)
            lines.append(
                f"created user {name!r} (role {role}) with password: {password}   "
                f"(shown once; change it with `uv run loan-desk users add {name} --role {role}`)"
            )
    if not lines:
        lines.append("users: " + ", ".join(f"{n} ({r})" for n, r in list_users(settings)))
    return lines


def cookie_key_path() -> Path:
    return home() / "cookie_key"


def cookie_key() -> str:
    """The per-install secret that signs login cookies; created on first use, never committed."""
    path = cookie_key_path()
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
