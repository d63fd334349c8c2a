"""Sign-in with limits: a growing delay and a temporary lockout after repeated failures.

Failures are counted per user name (as typed, normalised) and per client address, in
``loan_desk_signin_limits``; every attempt is recorded in ``loan_desk_signin_attempts``.
After the n-th failure in a row of a name, its next try must wait ``delay_s * 2**(n-1)``
seconds (at most ``max_delay_s``; an address climbs the same steps more slowly); the
``user_failures``-th failure locks the name (the ``client_failures``-th the address) for
``lockout_s``.  While locked, even the right password
is refused — and no bcrypt work is done for a refused attempt.  Unknown names are counted
and locked like real ones (and checked against a dummy hash), so the answers do not tell
which names exist.  A success clears the name's counter; failures older than the lockout
period are forgotten.  Admins list and lift lockouts with `loan-desk users lockouts` and
`loan-desk users unlock NAME` (or ``--client ADDR``).
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from functools import cache

from runtime import db
from runtime.errors import clip
from runtime.settings import Settings, _seconds
from runtime.users import NAME_RE, check_password, hash_password, normalise


@cache
def _dummy_hash() -> str:
    """A real bcrypt hash of a random password: an unknown name costs the same work as a known one."""
    return hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class SigninPolicy:
    """LOAN_DESK_SIGNIN_FAILURES, _CLIENT_FAILURES, _LOCKOUT_S, _DELAY_S, _MAX_DELAY_S override it."""

    user_failures: int = 5
    client_failures: int = 20
    lockout_s: float = 15 * 60
    delay_s: float = 1.0
    max_delay_s: float = 8.0

    @classmethod
    def from_env(cls) -> SigninPolicy:
        d = cls()

        def count(name: str, default: int) -> int:
            raw = os.environ.get(name)
            if not raw:
                return default
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 1000):
                raise ValueError(f"{name} must be a whole number from 1 to 1000, got {clip(raw)!r}")
            return int(raw)

        return cls(
            user_failures=count("LOAN_DESK_SIGNIN_FAILURES", d.user_failures),
            client_failures=count("LOAN_DESK_SIGNIN_CLIENT_FAILURES", d.client_failures),
            lockout_s=_seconds("LOAN_DESK_SIGNIN_LOCKOUT_S", d.lockout_s),
            delay_s=_seconds("LOAN_DESK_SIGNIN_DELAY_S", d.delay_s),
            max_delay_s=_seconds("LOAN_DESK_SIGNIN_MAX_DELAY_S", d.max_delay_s),
        )

    def delay_after(self, failures: int, kind: str = "user") -> float:
        """The wait before the next try after ``failures`` in a row.  An address (many people
        behind one office router) climbs the same steps, user_failures/client_failures as fast."""
        if kind == "client":
            failures = math.ceil(failures * self.user_failures / self.client_failures)
        return min(self.delay_s * 2 ** (failures - 1), self.max_delay_s)

    def limit(self, kind: str) -> int:
        return self.user_failures if kind == "user" else self.client_failures


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str = ""
    username: str = ""
    role: str = ""


WRONG = "Wrong user name or password."


def _wait_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    return f"{math.ceil(seconds / 60)} min"


def sign_in(settings: Settings, typed_name: str, password: str, client: str, policy: SigninPolicy) -> Outcome:
    """Check one sign-in attempt against the limits, then the password; record it either way."""
    if not typed_name or not password:
        return Outcome(False, "Enter your user name and password.")
    if "\x00" in typed_name or "\x00" in password:
        return Outcome(False, "The user name and password cannot contain NUL characters.")
    name = normalise(typed_name)
    key = name[:64]
    client = client[:64]
    keys = [("user", key), ("client", client)]
    with db.connection(settings) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO loan_desk_signin_limits (kind, key) VALUES ('user', %s), ('client', %s) "
            "ON CONFLICT DO NOTHING",
            [key, client],
        )
        # The rows stay locked until the attempt is recorded: parallel tries of one name or from one
        # address take turns, so none of them skips the delay or the count.
        rows = conn.execute(
            "SELECT kind, failures, extract(epoch FROM clock_timestamp() - last_failure), "
            "extract(epoch FROM next_allowed - clock_timestamp()), "
            "extract(epoch FROM locked_until - clock_timestamp()) "
            "FROM loan_desk_signin_limits WHERE (kind, key) IN (('user', %s), ('client', %s)) "
            "ORDER BY kind FOR UPDATE",
            [key, client],
        ).fetchall()
        state = {kind: (failures, since, wait, locked) for kind, failures, since, wait, locked in rows}

        def record(outcome: str) -> None:
            conn.execute(
                "INSERT INTO loan_desk_signin_attempts (username, client, outcome) VALUES (%s, %s, %s)",
                [key, client, outcome],
            )

        for kind in ("user", "client"):
            locked = state[kind][3]
            if locked is not None and locked > 0:
                record("locked")
                who = "this user name" if kind == "user" else "your address"
                return Outcome(
                    False,
                    f"Too many failed sign-ins for {who}: try again in {_wait_text(float(locked))} "
                    "(an administrator can lift the lock sooner).",
                )
        for kind in ("user", "client"):
            wait = state[kind][2]
            if wait is not None and wait > 0:
                record("too soon")
                return Outcome(
                    False, f"Please wait {_wait_text(float(wait))} before the next try (each failed try adds a wait)."
                )

        # Timestamps written after the bcrypt check use clock_timestamp(): now() is when the
        # transaction began, before the check's quarter of a second.
        rec = None
        if NAME_RE.match(name):
            rec = conn.execute("SELECT role, password_hash FROM loan_desk_users WHERE name = %s", [name]).fetchone()
        ok = check_password(password, rec[1] if rec else _dummy_hash()) and rec is not None
        if ok:
            record("ok")
            conn.execute("DELETE FROM loan_desk_signin_limits WHERE kind = 'user' AND key = %s", [key])
            conn.execute(  # forget counters nobody added to for a lockout period
                "DELETE FROM loan_desk_signin_limits WHERE coalesce(locked_until, '-infinity') < now() "
                "AND coalesce(last_failure, '-infinity') < now() - make_interval(secs => %s)",
                [policy.lockout_s],
            )
            return Outcome(True, username=name, role=rec[0])

        record("wrong password" if rec else "unknown user")
        message = WRONG
        for kind, k in keys:
            failures, since, _, _ = state[kind]
            if since is None or since > policy.lockout_s:
                failures = 0
            failures += 1
            if failures >= policy.limit(kind):
                conn.execute(
                    "UPDATE loan_desk_signin_limits SET failures = 0, last_failure = clock_timestamp(), "
                    "next_allowed = NULL, locked_until = clock_timestamp() + make_interval(secs => %s) "
                    "WHERE kind = %s AND key = %s",
                    [policy.lockout_s, kind, k],
                )
                who = "this user name" if kind == "user" else "your address"
                message = (
                    f"{WRONG} Too many failed sign-ins for {who}: try again in {_wait_text(policy.lockout_s)} "
                    "(an administrator can lift the lock sooner)."
                )
            else:
                delay = policy.delay_after(failures, kind)
                conn.execute(
                    "UPDATE loan_desk_signin_limits SET failures = %s, last_failure = clock_timestamp(), "
                    "next_allowed = clock_timestamp() + make_interval(secs => %s), locked_until = NULL "
                    "WHERE kind = %s AND key = %s",
                    [failures, delay, kind, k],
                )
        return Outcome(False, message)


def lockouts(settings: Settings) -> list[dict]:
    """Names and addresses that are locked now or have failures on record, most recent first."""
    with db.connection(settings) as conn:
        rows = conn.execute(
            "SELECT kind, key, failures, last_failure, locked_until, locked_until > now() "
            "FROM loan_desk_signin_limits WHERE locked_until > now() OR failures > 0 "
            "ORDER BY (locked_until > now()) DESC NULLS LAST, last_failure DESC NULLS LAST"
        ).fetchall()
    keys = ("kind", "key", "failures", "last_failure", "locked_until", "locked")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def unlock(settings: Settings, key: str, kind: str = "user") -> bool:
    """Lift the lock and clear the failures of a user name (or a client address); True if there was one."""
    if kind == "user":
        key = normalise(key)
    with db.connection(settings) as conn:
        cur = conn.execute(
            "DELETE FROM loan_desk_signin_limits WHERE kind = %s AND key = %s "
            "AND (failures > 0 OR locked_until > now() OR next_allowed > now())",
            [kind, key[:64]],
        )
        return cur.rowcount > 0
