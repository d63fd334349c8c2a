"""Page logic with streamlit.testing (AppTest), users, audit and the explore queries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _app(path: str, user: str | None = None, role: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / path), default_timeout=60)
    if user:
        at.session_state["ld_user"] = user
        at.session_state["ld_role"] = role
    return at


def _texts(at) -> str:
    """The page's messages, markdown and titles as a browser shows them (pages/_ui.plain undone)."""
    parts = [e.value for e in (*at.error, *at.warning, *at.info, *at.success)]
    parts += [m.value for m in at.markdown] + [t.value for t in at.title]
    return re.sub(r"\\(.)", r"\1", "\n".join(str(p) for p in parts)).replace("\u200b", "")


# --- users -----------------------------------------------------------------------------------
def test_users_are_stored_as_bcrypt_hashes(settings, pg):
    from runtime.users import add_user, check_password, list_users

    pg.execute("DELETE FROM loan_desk_users WHERE name = 't_clerk'")
    assert add_user(settings, "T_Clerk", "officer", "s3cret-pass") == "t_clerk"
    assert ("t_clerk", "officer") in list_users(settings)
    (h,) = pg.execute("SELECT password_hash FROM loan_desk_users WHERE name = 't_clerk'").fetchone()
    assert h.startswith("$2") and "s3cret-pass" not in h
    assert check_password("s3cret-pass", h) and not check_password("wrong", h)


def test_default_users_from_env_or_generated(settings, pg, monkeypatch):
    from runtime.users import ensure_default_users, user_records

    pg.execute("DELETE FROM loan_desk_users WHERE name IN ('admin', 'officer')")
    monkeypatch.setenv("LOAN_DESK_ADMIN_PASSWORD", "admin-from-env")
    monkeypatch.delenv("LOAN_DESK_OFFICER_PASSWORD", raising=False)
    lines = ensure_default_users(settings)
    assert any("LOAN_DESK_ADMIN_PASSWORD" in line for line in lines)
    generated = next(line for line in lines if "'officer'" in line).split("password: ")[1].split()[0]
    from runtime.users import check_password

    recs = user_records(settings)
    assert recs["admin"]["role"] == "admin" and check_password("admin-from-env", recs["admin"]["password_hash"])
    assert check_password(generated, recs["officer"]["password_hash"])
    assert not any("password:" in line for line in ensure_default_users(settings))  # printed once only


def test_cli_users_add_reads_stdin_and_env(settings, pg):
    pg.execute("DELETE FROM loan_desk_users WHERE name IN ('t_cli', 't_cli2', 't_cli3')")
    r = run_cli("loan-desk", "users", "add", "t_cli", "--role", "admin", input="from-stdin-pw\n")
    assert r.returncode == 0, r.stderr
    r = run_cli("loan-desk", "users", "add", "t_cli2", "--role", "officer", env={"LOAN_DESK_PASSWORD": "from-env-pw"})
    assert r.returncode == 0, r.stderr
    out = run_cli("loan-desk", "users", "list").stdout
    assert "t_cli\tadmin" in out and "t_cli2\tofficer" in out
    bad = run_cli("loan-desk", "users", "add", "t_cli3", "--role", "officer", input="short\n")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


# --- sign-in and navigation -----------------------------------------------------------------
def test_login_refuses_a_wrong_password_and_accepts_the_right_one(settings, pg):
    from runtime.users import add_user

    pg.execute("DELETE FROM loan_desk_users WHERE name = 't_login'")
    pg.execute("DELETE FROM loan_desk_signin_limits")
    add_user(settings, "t_login", "officer", "right-password")
    at = _app("streamlit_app.py").run()
    assert at.text_input(key="ld_login_name") is not None
    at.text_input(key="ld_login_name").input("t_login")
    at.text_input(key="ld_login_password").input("wrong-password")
    at.button[0].click().run()
    assert "Wrong user name or password." in _texts(at)
    assert "ld_user" not in at.session_state
    pg.execute("UPDATE loan_desk_signin_limits SET next_allowed = NULL")  # skip the wait after a failure
    at.text_input(key="ld_login_name").input("T_Login ")
    at.text_input(key="ld_login_password").input("right-password")
    at.button[0].click().run()
    assert at.session_state["ld_user"] == "t_login" and at.session_state["ld_role"] == "officer"
    session_id = at.session_state["ld_session"]
    row = pg.execute(
        "SELECT username, ended_at FROM loan_desk_sessions WHERE id_hash = sha256(%s::bytea)", [session_id.encode()]
    ).fetchone()
    assert row == ("t_login", None)
    # The sidebar shows the name as plain text; logging out ends the session in Postgres.
    assert any("t\\_login" in m.value for m in at.sidebar.markdown)
    at.sidebar.button(key="ld_logout").click().run()
    assert "ld_user" not in at.session_state and "You are signed out." in _texts(at)
    why = pg.execute(
        "SELECT ended_why FROM loan_desk_sessions WHERE id_hash = sha256(%s::bytea)", [session_id.encode()]
    ).fetchone()
    assert why == ("logout",)


def test_a_role_change_signs_the_open_page_out(settings, pg):
    from runtime.users import add_user, set_role

    pg.execute("DELETE FROM loan_desk_users WHERE name = 't_demoted'")
    pg.execute("DELETE FROM loan_desk_signin_limits")
    add_user(settings, "t_demoted", "admin", "right-password")
    at = _app("streamlit_app.py").run()
    at.text_input(key="ld_login_name").input("t_demoted")
    at.text_input(key="ld_login_password").input("right-password")
    at.button[0].click().run()
    assert at.session_state["ld_role"] == "admin"
    set_role(settings, "t_demoted", "officer")
    at.run()  # the next interaction
    assert "ld_user" not in at.session_state
    assert "Your session has ended (your role was changed)" in _texts(at)


def test_materialize_page_refuses_officers(settings):
    at = _app("pages/materialize.py", "someone", "officer").run()
    texts = _texts(at)
    assert "Your role may not open this page" in texts and "signed in as someone (officer)" in texts, texts
    assert not any(b.label.startswith("Materialize") for b in at.button)


def test_pages_refuse_anonymous_visitors(settings):
    for page in ("pages/apply.py", "pages/explore.py", "pages/model_card.py", "pages/materialize.py"):
        at = _app(page).run()
        assert "Please sign in first." in _texts(at), page
        assert not at.exception


# --- apply ----------------------------------------------------------------------------------
def test_apply_reports_an_unreachable_online_store_then_recovers(backbone, pg, monkeypatch):
    from model.inference import DecisionService, StoreUnavailable

    real = DecisionService(settings=backbone["settings"])
    calls = {"n": 0}

    class Flaky:
        def decide(self, raw):
            calls["n"] += 1
            if calls["n"] == 1:
                raise StoreUnavailable("the online store (Valkey) is unreachable: Connection refused")
            return real.decide(raw)

    monkeypatch.setattr(DecisionService, "shared", classmethod(lambda cls: Flaky()))
    before = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = 't_officer'").fetchone()[0]
    at = _app("pages/apply.py", "t_officer", "officer").run()
    next(b for b in at.button if b.label == "Fill with a sample applicant").click().run()
    next(b for b in at.button if b.label == "Decide").click().run()
    assert "online feature store is unreachable" in _texts(at)
    assert not at.exception
    next(b for b in at.button if b.label == "Decide").click().run()
    assert not at.exception
    text = _texts(at)
    assert any(word in text for word in ("**APPROVE**", "**REFER", "**DECLINE**"))
    n = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = 't_officer'").fetchone()[0]
    assert n == before + 1  # the failed attempt wrote nothing, the retry one row


def test_what_if_recomputes_without_recording(backbone, pg):
    from model.inference import DecisionService

    at = _app("pages/apply.py", "t_officer3", "officer").run()
    next(b for b in at.button if b.label == "Fill with a sample applicant").click().run()
    next(b for b in at.button if b.label == "Decide").click().run()
    assert not at.exception
    did, decided = at.session_state["ld_last_decision"]
    count = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = 't_officer3'").fetchone()[0]
    at.selectbox(key=f"wi_{did}_field").set_value("person_income").run()
    at.slider(key=f"wi_{did}_person_income").set_value(250_000).run()
    assert not at.exception
    metric = next(m for m in at.metric if "with Yearly income" in m.label)
    assert metric.label.endswith("= 250,000")
    expected = DecisionService(settings=backbone["settings"]).decide(
        {**decided.application.as_dict(), "person_income": 250_000}
    )
    assert metric.value == f"{expected.probability:.1%}"
    after = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = 't_officer3'").fetchone()[0]
    assert after == count  # a what-if is not a decision

    # The next applicant's what-if starts from their own values, not the previous decision's.
    at.slider(key=f"wi_{did}_person_income").set_value(120_000).run()
    next(b for b in at.button if b.label == "Decide").click().run()
    did2, again = at.session_state["ld_last_decision"]
    assert not at.exception and did2 != did
    at.selectbox(key=f"wi_{did2}_field").set_value("person_income").run()
    assert at.slider(key=f"wi_{did2}_person_income").value == int(round(again.application.person_income))
    labels = [m.label for m in at.metric if m.label.startswith("Probability of default with")]
    assert labels == [f"Probability of default with Yearly income = {int(round(again.application.person_income)):,}"]


def test_apply_shows_field_messages(backbone):
    at = _app("pages/apply.py", "t_officer2", "officer").run()
    next(b for b in at.button if b.label == "Decide").click().run()
    text = _texts(at)
    assert "Zipcode is required" in text and "Please correct the highlighted fields." in text
    assert not at.exception


# --- explore queries --------------------------------------------------------------------------
def test_explore_queries_are_parameterized(backbone):
    from runtime import explore as E

    s = backbone["settings"]
    head, stats = E.summary(s, "credit_history")
    assert head["rows"] > 0 and list(stats["feature"]) == list(E.VIEWS["credit_history"].features)
    evil = E.Filters(state="CA' OR '1'='1")
    assert E.summary(s, "credit_history", evil)[0]["rows"] == 0
    with pytest.raises(ValueError):
        E.histogram(s, "credit_history", "credit_card_due; DROP TABLE loans")
    with pytest.raises(ValueError):
        E.summary(s, "loans")
    state = E.states(s)[0]
    f = E.Filters(ranges=(("hard_pulls", 0, 2),), state=state)
    h = E.histogram(s, "credit_history", "hard_pulls", f, bins=5)
    assert h["rows"].sum() == E.summary(s, "credit_history", f)[0]["rows"]
    assert set(E.by_state(s, "credit_history", "hard_pulls", f)["state"]) <= {state}


def test_drift_quantiles_and_default_rates_add_up(backbone, pg):
    from runtime import explore as E

    s = backbone["settings"]
    drift = E.quantiles_over_time(s, "credit_history", "credit_card_due", grain="quarter")
    assert drift["rows"].sum() == E.summary(s, "credit_history")[0]["rows"]
    assert (drift["p10"] <= drift["p50"]).all() and (drift["p50"] <= drift["p90"]).all()
    with pytest.raises(ValueError):
        E.quantiles_over_time(s, "credit_history", "credit_card_due", grain="minute; DROP TABLE loans")
    loans, defaults = pg.execute("SELECT count(*), sum(loan_status) FROM loans").fetchone()
    for view, feature in (("credit_history", "missed_payments_2y"), ("zipcode_features", "population")):
        rates = E.default_rate_by_bucket(s, view, feature, buckets=5)
        assert rates["loans"].sum() == loans and rates["defaults"].sum() == defaults, view
        assert rates["rate"].between(0, 1).all()
        known = rates.dropna(subset=["lo"])
        assert (known["lo"].iloc[1:].to_numpy() > known["hi"].iloc[:-1].to_numpy()).all()  # disjoint, in order
    # A range filter keeps only loans whose joined value is in the range.
    f = E.Filters(ranges=(("missed_payments_2y", 1, 2),))
    rates = E.default_rate_by_bucket(s, "credit_history", "missed_payments_2y", f)
    assert set(rates["lo"]) <= {1.0, 2.0} and rates["loans"].sum() < loans


def test_point_in_time_respects_the_ttl(backbone):
    from datetime import timedelta

    from runtime import explore as E

    s = backbone["settings"]
    key = E.example_keys(s, "credit_history", 1)[0]
    hist = E.entity_history(s, "credit_history", key)
    first = hist["event_timestamp"].iloc[0].to_pydatetime()
    assert E.point_in_time(s, "credit_history", key, first - timedelta(seconds=1))["row"] is None
    assert E.point_in_time(s, "credit_history", key, first)["row"]["event_timestamp"] == first
    last = hist["event_timestamp"].iloc[-1].to_pydatetime()
    assert E.point_in_time(s, "credit_history", key, last + timedelta(days=181))["row"] is None


def test_pages_show_postgres_down_without_traceback(backbone, monkeypatch):
    import dataclasses
    import socket

    import pages._ui

    with socket.socket() as sock:  # a port where nothing listens: a real refused connection
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = dataclasses.replace(backbone["settings"], pgport=port)
    monkeypatch.setattr(pages._ui, "settings", lambda: down)
    for page, role in (("pages/explore.py", "officer"), ("pages/materialize.py", "admin")):
        at = _app(page, "t_user", role).run()
        assert not at.exception, page
        assert "Postgres" in _texts(at) and "not reachable" in _texts(at), page


def test_explore_refuses_nul_bytes_and_echoes_input_cut_short(backbone):
    at = _app("pages/explore.py", "t_user", "officer").run()
    assert not at.exception
    at.session_state["explore_tab"] = "One entity"  # the tab that asks for an entity
    at.run()
    box = at.text_input(key="entity_credit_history")
    box.input("19800101\x00_1234").run()
    text = _texts(at)
    assert "contains a NUL byte or another control character" in text, text
    assert "PostgreSQL" not in text and "0x00" not in text
    # An applicant id that is not YYYYMMDD_NNNN: said so, and what was typed is not echoed.
    box = at.text_input(key="entity_credit_history")
    box.input("**bold** 19800101_1234").run()
    text = _texts(at)
    assert "not in that form" in text and "19800101_1234" not in text, text
    # An unknown applicant: echoed masked.
    at.text_input(key="entity_credit_history").input("18000101_1234").run()
    text = _texts(at)
    assert "No credit_history snapshots for “1800****_**34”." in text, text
    assert "18000101_1234" not in text
    # A zipcode is echoed as typed (literal, cut at 40).
    at.selectbox(key="explore_view").set_value("zipcode_features").run()
    at.text_input(key="entity_zipcode_features").input("**bold** " + "x" * 50).run()
    text = _texts(at)
    assert "A zipcode is a number; you typed “**bold** " + "x" * 31 + "…”." in text, text


def test_explore_pick_list_shows_masked_ids_and_keeps_the_real_one(backbone):
    from runtime import explore as E
    from runtime.schema import masked_applicant

    keys = E.example_keys(backbone["settings"], "credit_history")
    at = _app("pages/explore.py", "t_user", "officer")
    at.session_state["explore_tab"] = "One entity"
    at.run()
    assert not at.exception
    pick = at.selectbox(key="pick_credit_history")
    assert pick.options[0] == masked_applicant(keys[0]) and keys[0] not in pick.options
    assert pick.value == keys[0]  # the real id, for the queries
    text = _texts(at)
    assert f"Applicant {masked_applicant(keys[0])}" in text, text
    assert not any(k in text for k in keys)


def test_run_history_shows_labels_as_plain_text(backbone, pg):
    from pages._ui import plain

    evil = "**x** ![i](http://127.0.0.1:9/track.png) :red[y]"
    pg.execute(
        "INSERT INTO loan_desk_materialize_runs (requested_by, window_end, status, error, finished_at) "
        "VALUES (%s, now(), 'failed', %s, now())",
        [evil, "bad ![e](http://127.0.0.1:9/e.png)"],
    )
    try:
        at = _app("pages/materialize.py", "t_admin", "admin").run()
        assert not at.exception
        cells = at.table[-1].value
        assert plain(evil, 40) in list(cells["who"]), cells["who"]
        assert "failed: bad ![e](http://127.0.0.1:9/e.png)" in _texts(at)  # shown literally
        assert not any("![" in e.value for e in at.error)  # as escaped Markdown, never as an image
    finally:
        pg.execute("DELETE FROM loan_desk_materialize_runs WHERE requested_by = %s", [evil])


def test_admins_see_and_lift_lockouts_on_the_users_page(settings, pg):
    from runtime.migrations import migrate

    migrate(settings)
    pg.execute("DELETE FROM loan_desk_signin_limits")
    pg.execute(
        "INSERT INTO loan_desk_signin_limits (kind, key, failures, last_failure, locked_until) "
        "VALUES ('user', 't_locked_out', 0, now(), now() + interval '10 min')"
    )
    officer = _app("pages/users.py", "t_user", "officer").run()
    assert "Your role may not open this page" in _texts(officer)
    at = _app("pages/users.py", "t_admin", "admin").run()
    assert not at.exception
    assert "t_locked_out" in at.dataframe[1].value["name or address"].tolist()
    at.button(key="ld_unlock").click().run()
    assert "the lock is lifted" in _texts(at), _texts(at)
    left = pg.execute("SELECT count(*) FROM loan_desk_signin_limits WHERE key = 't_locked_out'").fetchone()[0]
    assert left == 0
    assert "No lockouts" in "\n".join(c.value for c in at.caption)
