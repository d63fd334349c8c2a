"""Users, server-side sessions and sign-in limits, against the tests' real Postgres."""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.conftest import run_cli

PASSWORD = "right-password-1"


@pytest.fixture()
def fresh(settings, pg):
    """A clean slate for the names these tests use, and no sign-in counters from earlier tests."""
    from runtime.migrations import migrate

    migrate(settings)
    pg.execute("DELETE FROM loan_desk_users WHERE name LIKE 's\\_%'")
    pg.execute("DELETE FROM loan_desk_signin_limits")
    return settings


def _policy(**kw):
    from runtime.signin import SigninPolicy

    return SigninPolicy(**{"delay_s": 0.2, "max_delay_s": 1.0, "lockout_s": 2.0, **kw})


# --- users -------------------------------------------------------------------------------------
def test_names_are_normalised_once_and_existing_users_are_never_changed_by_add(fresh, pg):
    from runtime.users import UserError, add_user, check_password, user_records

    assert add_user(fresh, "  S_Ann ", "admin", PASSWORD) == "s_ann"
    for same in ("s_ann", "S_ANN", " s_ann  "):
        with pytest.raises(UserError, match="already exists") as err:
            add_user(fresh, same, "officer", "another-password")
        assert "nothing changed" in str(err.value) and "users set s_ann" in str(err.value)
    rec = user_records(fresh)["s_ann"]
    assert rec["role"] == "admin" and check_password(PASSWORD, rec["password_hash"])  # not demoted, not replaced
    with pytest.raises(UserError, match="use lowercase letters"):
        add_user(fresh, "s bad name", "officer", PASSWORD)
    # A row stored before names were normalised still blocks its case variants.
    pg.execute("ALTER TABLE loan_desk_users DROP CONSTRAINT loan_desk_users_name_normalised")
    try:
        pg.execute("INSERT INTO loan_desk_users (name, role, password_hash) VALUES ('s_Legacy', 'officer', 'x')")
        with pytest.raises(UserError, match="'s_legacy' is the same name as 's_Legacy'"):
            add_user(fresh, "s_legacy", "admin", PASSWORD)
    finally:
        pg.execute("DELETE FROM loan_desk_users WHERE name = 's_Legacy'")
        pg.execute(
            "ALTER TABLE loan_desk_users ADD CONSTRAINT loan_desk_users_name_normalised "
            "CHECK (name = lower(btrim(name))) NOT VALID"
        )


def test_role_and_password_changes_are_explicit_say_what_changed_and_end_sessions(fresh):
    from runtime import sessions
    from runtime.users import UserError, add_user, set_password, set_role, user_records

    policy = sessions.SessionPolicy()
    add_user(fresh, "s_bob", "officer", PASSWORD)
    first = sessions.start(fresh, "s_bob", "10.0.0.1", policy)
    second = sessions.start(fresh, "s_bob", "10.0.0.2", policy)
    assert sessions.resume(fresh, first, policy)[0].role == "officer"

    assert set_role(fresh, "s_bob", "admin") == "user 's_bob': role officer → admin; 2 open sessions ended (signed out)"
    assert sessions.resume(fresh, first, policy) == (None, "role changed")
    assert sessions.resume(fresh, second, policy) == (None, "role changed")
    assert set_role(fresh, "s_bob", "admin") == "user 's_bob' already has the role admin; nothing changed"
    with pytest.raises(UserError, match=r"no user 'S_BOB'; did you mean 's_bob'\?"):
        set_role(fresh, "S_BOB", "officer")

    third = sessions.start(fresh, "s_bob", "10.0.0.1", policy)
    said = set_password(fresh, "s_bob", "new-password-2")
    assert said == "user 's_bob': password changed; 1 open session ended (signed out)"
    assert sessions.resume(fresh, third, policy) == (None, "password changed")
    assert user_records(fresh)["s_bob"]["role"] == "admin"
    with pytest.raises(UserError, match="at least 8"):
        set_password(fresh, "s_bob", "short")


def test_cli_users_add_set_passwd_lockouts_unlock(fresh, pg):
    r = run_cli("loan-desk", "users", "add", " S_Cli ", "--role", "admin", input="from-stdin-pw\n")
    assert r.returncode == 0 and "created user 's_cli' with role admin" in r.stderr, r.stderr
    r = run_cli("loan-desk", "users", "add", "S_CLI", "--role", "officer", env={"LOAN_DESK_PASSWORD": "other-pw-123"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "user 's_cli' already exists" in r.stderr and "nothing changed" in r.stderr
    assert "s_cli\tadmin" in run_cli("loan-desk", "users", "list").stdout  # not demoted
    r = run_cli("loan-desk", "users", "set", "s_cli", "--role", "officer")
    assert r.returncode == 0 and "role admin → officer" in r.stderr, r.stderr
    r = run_cli("loan-desk", "users", "passwd", "s_cli", input="brand-new-pw\n")
    assert r.returncode == 0 and "user 's_cli': password changed" in r.stderr, r.stderr
    r = run_cli("loan-desk", "users", "passwd", "s_nobody", input="brand-new-pw\n")
    assert r.returncode == 2 and "no user 's_nobody'" in r.stderr

    pg.execute(
        "INSERT INTO loan_desk_signin_limits (kind, key, failures, last_failure, locked_until) "
        "VALUES ('user', 's_cli', 0, now(), now() + interval '10 min'), ('client', '192.0.2.7', 3, now(), NULL)"
    )
    out = run_cli("loan-desk", "users", "lockouts").stdout
    assert "user\ts_cli\tlocked until" in out and "client\t192.0.2.7\tnot locked\t3" in out, out
    r = run_cli("loan-desk", "users", "unlock", "S_CLI")
    assert r.returncode == 0 and "user name 's_cli': lockout lifted" in r.stderr, r.stderr
    r = run_cli("loan-desk", "users", "unlock", "--client", "192.0.2.7")
    assert r.returncode == 0 and "lockout lifted" in r.stderr, r.stderr
    r = run_cli("loan-desk", "users", "unlock", "s_cli")
    assert r.returncode == 0 and "was not locked; nothing changed" in r.stderr
    assert "no lockouts" in run_cli("loan-desk", "users", "lockouts").stderr


# --- sessions ----------------------------------------------------------------------------------
def test_sessions_store_only_a_hash_and_end_on_logout_idle_and_max_age(fresh, pg):
    from runtime import sessions
    from runtime.users import add_user

    add_user(fresh, "s_sam", "officer", PASSWORD)
    policy = sessions.SessionPolicy(idle_s=1.0, max_s=60, touch_every_s=0.2)
    sid = sessions.start(fresh, "s_sam", "10.1.1.1", policy)
    assert len(sid) >= 40 and sessions.plausible(sid)
    stored = [bytes(h) for (h,) in pg.execute("SELECT id_hash FROM loan_desk_sessions WHERE username = 's_sam'")]
    assert stored == [hashlib.sha256(sid.encode()).digest()]  # only the hash of the id
    live, _ = sessions.resume(fresh, sid, policy)
    assert (live.username, live.role) == ("s_sam", "officer")

    time.sleep(0.6)
    assert sessions.resume(fresh, sid, policy)[0] is not None  # used: last_seen moves on
    time.sleep(0.6)
    assert sessions.resume(fresh, sid, policy)[0] is not None  # 1.2 s after the start, 0.6 s idle
    time.sleep(1.1)
    assert sessions.resume(fresh, sid, policy) == (None, "idle")
    assert sessions.resume(fresh, sid, policy) == (None, "idle")  # stays ended

    short = sessions.SessionPolicy(idle_s=60, max_s=1.0)
    sid2 = sessions.start(fresh, "s_sam", "10.1.1.1", short)
    time.sleep(1.1)
    assert sessions.resume(fresh, sid2, short) == (None, "expired")

    sid3 = sessions.start(fresh, "s_sam", "10.1.1.1", policy)
    assert sessions.end(fresh, sid3, "logout") and not sessions.end(fresh, sid3, "logout")
    assert sessions.resume(fresh, sid3, policy) == (None, "logout")
    assert sessions.resume(fresh, "not-a-session-id-of-ours-at-all-xyz", policy) == (None, None)
    assert sessions.resume(fresh, "bad\x00id", policy) == (None, None)  # never reaches Postgres
    rows = pg.execute(
        "SELECT ended_why FROM loan_desk_sessions WHERE username = 's_sam' ORDER BY created_at"
    ).fetchall()
    assert [r[0] for r in rows] == ["idle", "expired", "logout"]


def test_handoff_tokens_work_once():
    from runtime import sessions

    token = sessions.issue_handoff("the-session-id-0123456789")
    assert sessions.redeem_handoff(token) == "the-session-id-0123456789"
    assert sessions.redeem_handoff(token) is None
    assert sessions.redeem_handoff("made-up-token-0123456789") is None


def test_client_address():
    from runtime.sessions import client_address

    assert client_address("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_address("203.0.113.9", "198.51.100.1") == "203.0.113.9"  # a remote peer's header is ignored
    assert client_address(None) == "local"
    assert client_address("::1") == "::1"
    assert client_address("not an address") == "local"


# --- sign-in limits -----------------------------------------------------------------------------
def test_growing_delay_then_lockout_refuses_even_the_right_password_then_it_works(fresh, pg, monkeypatch):
    import runtime.signin as signin
    from runtime.users import add_user

    add_user(fresh, "s_eve", "officer", PASSWORD)
    policy = _policy(user_failures=3)
    checks = []
    real_check = signin.check_password
    monkeypatch.setattr(signin, "check_password", lambda p, h: checks.append(1) or real_check(p, h))
    client = "198.51.100.20"

    out = signin.sign_in(fresh, "s_eve", "wrong-1", client, policy)
    assert not out.ok and out.message == signin.WRONG
    out = signin.sign_in(fresh, "s_eve", PASSWORD, client, policy)  # at once: the delay is not over
    assert not out.ok and out.message.startswith("Please wait 1 s before the next try")
    assert len(checks) == 1  # no bcrypt for a refused try
    time.sleep(0.25)
    assert signin.sign_in(fresh, "s_eve", "wrong-2", client, policy).message == signin.WRONG
    time.sleep(0.45)  # the second delay is twice the first
    out = signin.sign_in(fresh, "s_eve", "wrong-3", client, policy)
    assert "Too many failed sign-ins for this user name: try again in 2 s" in out.message
    n = len(checks)
    out = signin.sign_in(fresh, "s_eve", PASSWORD, client, policy)  # the right password, but locked
    assert not out.ok and "Too many failed sign-ins for this user name" in out.message
    out = signin.sign_in(fresh, " S_EVE ", PASSWORD, "192.0.2.99", policy)  # from elsewhere too: it is the name
    assert not out.ok and "Too many failed sign-ins for this user name" in out.message
    assert len(checks) == n  # no bcrypt work while locked
    time.sleep(2.1)
    out = signin.sign_in(fresh, "s_eve", PASSWORD, client, policy)
    assert out.ok and (out.username, out.role) == ("s_eve", "officer")
    left = pg.execute("SELECT count(*) FROM loan_desk_signin_limits WHERE kind = 'user' AND key = 's_eve'")
    assert left.fetchone()[0] == 0  # a success clears the name's counter
    outcomes = [
        r[0]
        for r in pg.execute(
            "SELECT outcome FROM loan_desk_signin_attempts WHERE username = 's_eve' AND at > now() - interval '1 min' "
            "ORDER BY id"
        )
    ]
    assert outcomes[-7:] == ["wrong password", "too soon", "wrong password", "wrong password", "locked", "locked", "ok"]


def test_unknown_names_and_one_address_are_limited_too_and_an_admin_can_unlock(fresh, pg):
    import runtime.signin as signin
    from runtime.users import add_user

    add_user(fresh, "s_fay", "officer", PASSWORD)
    policy = _policy(user_failures=50, client_failures=3, delay_s=0.01, max_delay_s=0.01, lockout_s=600)
    client = "198.51.100.30"
    for i in range(3):  # three different unknown names from one address
        out = signin.sign_in(fresh, f"s_ghost{i}", "whatever-pw", client, policy)
        assert not out.ok
        time.sleep(0.03)
    assert "Too many failed sign-ins for your address" in out.message
    out = signin.sign_in(fresh, "s_fay", PASSWORD, client, policy)
    assert not out.ok and "your address" in out.message
    assert signin.sign_in(fresh, "s_fay", PASSWORD, "198.51.100.31", policy).ok  # another address is fine
    locked = {(r["kind"], r["key"]) for r in signin.lockouts(fresh) if r["locked"]}
    assert ("client", client) in locked
    assert signin.unlock(fresh, client, kind="client")
    assert signin.sign_in(fresh, "s_fay", PASSWORD, client, policy).ok
    unknown = pg.execute(
        "SELECT count(*) FROM loan_desk_signin_attempts WHERE username LIKE 's\\_ghost%' AND outcome = 'unknown user'"
    ).fetchone()[0]
    assert unknown >= 3


def test_nul_bytes_and_empty_fields_are_refused_with_a_sentence(fresh):
    import runtime.signin as signin

    policy = _policy()
    assert signin.sign_in(fresh, "s_x\x00", "pw", "local", policy).message.endswith("cannot contain NUL characters.")
    assert signin.sign_in(fresh, "", "pw", "local", policy).message == "Enter your user name and password."
