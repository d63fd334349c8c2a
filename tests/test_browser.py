"""The app in a real browser: Debian's Chromium driven by Playwright, against `loan-desk serve`.

The server is started by the same console command users run, with the tests' database, Redis
db and data folder.  Screenshots land in test-artifacts/ (the README's images in docs/ are
copies of them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
OFFICER, ADMIN = ("b_officer", "officer-pass-123"), ("b_admin", "admin-pass-123")
LOCKED = ("b_locked", "locked-pass-123")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


# Sign-in limits of the served app: the default five failures, short waits so the tests are quick.
LOCKOUT_S = 6
SERVER_ENV = {"LOAN_DESK_SIGNIN_LOCKOUT_S": str(LOCKOUT_S), "LOAN_DESK_SIGNIN_DELAY_S": "0.3"}


@pytest.fixture(scope="module")
def app_url(backbone):
    import psycopg

    from runtime.users import add_user

    s = backbone["settings"]
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as pg:
        pg.execute("DELETE FROM loan_desk_users WHERE name IN (%s, %s, %s)", [OFFICER[0], ADMIN[0], LOCKED[0]])
        pg.execute("DELETE FROM loan_desk_signin_limits")
    add_user(s, *OFFICER[:1], "officer", OFFICER[1])
    add_user(s, *ADMIN[:1], "admin", ADMIN[1])
    add_user(s, *LOCKED[:1], "officer", LOCKED[1])
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")  # noqa: SIM115 - closed in teardown
    exe = Path(sys.executable).parent / "loan-desk"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], cwd=ROOT, env={**os.environ, **SERVER_ENV}, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start; see {ARTIFACTS / 'server.log'}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()


def _shot(page, name: str, height: int = 1900) -> None:
    """Streamlit scrolls inside its own container, so a tall viewport shows the whole page."""
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(1500)  # let charts re-layout and finish their transitions
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def _no_traceback(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.content()


def _login(page, user: tuple[str, str]) -> None:
    page.get_by_label("User name").fill(user[0])
    page.get_by_label("Password", exact=True).fill(user[1])
    page.get_by_role("button", name="Log in").click()  # one click, never two


def _expect_text(page, text: str, timeout: float = 30_000) -> None:
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout)


def test_wrong_password_is_refused(app_url, page):
    page.goto(app_url)
    page.get_by_label("User name").wait_for()
    _shot(page, "login", 800)
    _login(page, (OFFICER[0], "not-the-password"))
    _expect_text(page, "Wrong user name or password")
    assert page.get_by_role("button", name="Log in").is_visible()
    assert page.get_by_text("New application").count() == 0
    _no_traceback(page)


def test_deep_link_lands_after_first_click_login_and_explore_renders(app_url, page):
    page.goto(f"{app_url}/explore")
    page.get_by_label("User name").wait_for()
    _expect_text(page, "Sign in to open Explore features")
    _login(page, OFFICER)
    _expect_text(page, "Explore offline features")
    assert page.url.rstrip("/").endswith("/explore")
    _expect_text(page, "Snapshot rows", 60_000)
    page.get_by_role("tab", name="Histograms").click()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= 9", timeout=60_000
    )
    _shot(page, "explore")
    # Only the open tab runs: after switching, the nine histograms are gone and one chart is left.
    page.get_by_role("tab", name="By state").click()
    _expect_text(page, "Mean credit_card_due by state", 60_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length === 1", timeout=60_000)
    assert page.locator('[data-testid="stPlotlyChart"] .modebar').count() == 0  # no toolbar over the titles
    page.get_by_role("tab", name="Drift over time").click()
    _expect_text(page, "credit_card_due: quantiles per month", 60_000)
    page.get_by_role("tab", name="Default rate").click()
    _expect_text(page, "Default rate by credit_card_due", 60_000)
    _expect_text(page, "joined point in time")
    _no_traceback(page)


def test_explore_shows_applicant_ids_masked(app_url, page, backbone):
    from runtime import explore as E
    from runtime.schema import masked_applicant

    keys = E.example_keys(backbone["settings"], "credit_history")
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{app_url}/explore")
    _login(page, OFFICER)
    _expect_text(page, "Snapshot rows", 60_000)
    page.get_by_role("tab", name="One entity").click()
    _expect_text(page, f"Applicant {masked_applicant(keys[0])}", 60_000)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
    _shots(page, "explore_entity")
    page.get_by_label("…or pick a recent applicant").click()  # open the list: every label masked
    page.get_by_role("option").first.wait_for()
    options = page.get_by_role("option").all_inner_texts()
    assert options and all(re.fullmatch(r"\d{4}\*{4}_\*{2}\d{2}( \(\d+\))?", o) for o in options), options
    page.keyboard.press("Escape")
    typed = page.get_by_label("Applicant: date of birth and SSN last four (YYYYMMDD_NNNN)", exact=True)
    assert typed.get_attribute("type") == "password"
    typed.fill("18000101_1234")
    typed.press("Enter")
    _expect_text(page, "No credit_history snapshots for “1800****_**34”.")
    html = page.content()
    assert not any(k in html for k in keys)  # not in a label, a title, a message or the page's data
    assert "18000101_1234" not in page.inner_text("body")
    _no_traceback(page)


def test_officer_decides_and_sees_it_in_recent_decisions(app_url, page, pg):
    before = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = %s", [OFFICER[0]]).fetchone()[0]
    page.goto(app_url)
    _login(page, OFFICER)
    _expect_text(page, "New application")
    # Submitting the empty form shows messages next to the fields.
    page.get_by_role("button", name="Decide").click()
    _expect_text(page, "Please correct the highlighted fields")
    _expect_text(page, "Zipcode is required")
    page.get_by_role("button", name="Fill with a sample applicant").click()
    page.wait_for_function(
        "['Zipcode', 'Interest rate (%)'].every(l => [...document.querySelectorAll('input')]"
        ".some(i => i.getAttribute('aria-label') === l && i.value))"
    )
    page.get_by_role("button", name="Decide").click()
    # The verdict is an alert ("APPROVE — probability of default …"); the recent-decisions table
    # has a column of that name too, so wait for the alert itself, and say what the page showed.
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="probability of default").first
    try:
        alert.wait_for(timeout=60_000)
    except Exception:
        shown = page.locator('[data-testid="stAlert"]').all_inner_texts()
        _shot(page, "apply_no_verdict")
        raise AssertionError(f"no verdict after Decide; the page's messages: {shown}") from None
    verdict = alert.inner_text()
    assert any(word in verdict for word in ("APPROVE", "REFER", "DECLINE"))
    page.get_by_text("Details: contributions and features").click()
    page.locator('[data-testid="stPlotlyChart"] .waterfalllayer .point').first.wait_for(timeout=30_000)
    _expect_text(page, "Your recent decisions")
    after = pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = %s", [OFFICER[0]]).fetchone()[0]
    assert after == before + 1
    row_id = pg.execute("SELECT max(id) FROM loan_desk_decisions WHERE username = %s", [OFFICER[0]]).fetchone()[0]
    _expect_text(page, f"#{row_id}")  # the decision id shown with the result is the audit row
    recent = page.locator('[data-testid="stTable"]').last
    recent.wait_for()
    assert str(row_id) in recent.inner_text()
    _shot(page, "apply", 2600)
    _no_traceback(page)


def test_officer_cannot_open_materialize_by_url(app_url, page):
    page.goto(app_url)
    _login(page, OFFICER)
    _expect_text(page, "New application")
    nav = page.locator('[data-testid="stSidebarNav"]')
    assert "Materialize" not in nav.inner_text()
    _wait_for_session_cookie(page)
    page.goto(f"{app_url}/materialize")  # a new browser session: signed in again from the cookie
    _expect_text(page, "Your role may not open this page")
    assert "Page not found" not in page.inner_text("body")
    assert "Materialize" not in page.locator('[data-testid="stSidebarNav"]').inner_text()
    _shot(page, "officer_on_materialize")
    assert page.get_by_text("What a run does now").count() == 0
    assert page.get_by_role("button", name="Materialize up to now").count() == 0
    _no_traceback(page)


def test_model_card(app_url, page):
    page.goto(f"{app_url}/model_card")
    _login(page, OFFICER)
    _expect_text(page, "Input policy", 60_000)
    _expect_text(page, "Age is not scored")  # the input policy's caption (its table is drawn on a canvas)
    page.get_by_text("Training window").first.scroll_into_view_if_needed(timeout=60_000)
    _expect_text(page, "Calibration on the test period", 90_000)
    _expect_text(page, "Feature importance", 90_000)
    _shot(page, "model_card")
    _no_traceback(page)


def test_admin_materializes_and_sees_the_run(app_url, page, pg):
    before = pg.execute("SELECT coalesce(max(id), 0) FROM loan_desk_materialize_runs").fetchone()[0]
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{app_url}/materialize")
    _login(page, ADMIN)
    _expect_text(page, "What a run does now")
    _expect_text(page, "Mode:", 60_000)  # the preview: the mode, the window and the rows, before the click
    preview = page.get_by_text("Mode:").first.locator("xpath=..").inner_text()
    assert "incremental" in preview or "full refresh" in preview, preview
    _expect_text(page, "data age")
    _shots(page, "materialize_preview")
    page.get_by_role("button", name="Materialize up to now").click()
    done = page.locator('[data-testid="stAlert"]').filter(has_text="complete").first
    done.wait_for(timeout=180_000)
    row = pg.execute(
        "SELECT id, status, mode FROM loan_desk_materialize_runs WHERE requested_by = %s AND id > %s "
        "ORDER BY id LIMIT 1",
        [ADMIN[0], before],
    ).fetchone()
    assert row is not None and row[1] == "succeeded"
    assert f"Materialization #{row[0]} complete ({row[2]}" in done.inner_text()
    # The history, re-read after the run, says the same: the run's row is there and succeeded.
    runs = page.locator('[data-testid="stTable"]').last
    page.wait_for_function(
        "([id, who]) => [...document.querySelectorAll('[data-testid=\"stTable\"] tr')].some("
        "tr => tr.innerText.startsWith(id) && tr.innerText.includes(who) && tr.innerText.includes('succeeded'))",
        arg=[str(row[0]), ADMIN[0]],
        timeout=60_000,
    )
    assert "running" not in runs.inner_text()
    _shot(page, "materialize")
    _shots(page, "materialize_done")
    _no_traceback(page)


def _wait_for_session_cookie(page) -> dict:
    deadline = time.time() + 10
    while time.time() < deadline:
        found = [c for c in page.context.cookies() if c["name"] == "loan_desk_session"]
        if found:
            return found[0]
        page.wait_for_timeout(100)
    raise AssertionError("no loan_desk_session cookie after sign-in")


def _shots(page, name: str) -> None:
    """The page at a laptop's size and a phone's (test-artifacts/NAME-1366.png, NAME-390.png)."""
    for width, height in ((1366, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"))
    page.set_viewport_size({"width": 1366, "height": 900})


def test_the_session_cookie_is_opaque_httponly_and_strict(app_url, page):
    page.goto(app_url)
    _login(page, OFFICER)
    _expect_text(page, "New application")
    cookie = _wait_for_session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert "loan_desk_session" not in page.evaluate("document.cookie")  # out of reach of page scripts
    assert OFFICER[0] not in cookie["value"] and "." not in cookie["value"]  # no name, no signed claims
    assert 0 < cookie["expires"] - time.time() <= 8 * 3600 + 60
    page.reload()  # a new browser session resumes the server-side session
    _expect_text(page, "New application")
    _no_traceback(page)


def test_logout_ends_the_session_so_a_saved_cookie_signs_nobody_in(app_url, browser, page, pg):
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(app_url)
    page.get_by_label("User name").wait_for()
    _shots(page, "login")
    _login(page, ADMIN)
    _expect_text(page, "New application")
    _wait_for_session_cookie(page)
    saved = page.context.storage_state()  # what a thief would copy: the cookie before logout
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("User name").wait_for()
    _expect_text(page, "You are signed out.")
    _shots(page, "logged_out")
    deadline = time.time() + 10
    while any(c["name"] == "loan_desk_session" for c in page.context.cookies()) and time.time() < deadline:
        page.wait_for_timeout(100)
    assert not any(c["name"] == "loan_desk_session" for c in page.context.cookies())  # deleted by the route
    (ended,) = pg.execute(
        "SELECT count(*) FROM loan_desk_sessions WHERE username = %s AND ended_why = 'logout'", [ADMIN[0]]
    ).fetchone()
    assert ended >= 1
    # A fresh browser with the saved cookie: not signed in, and told why.
    thief = browser.new_context(storage_state=saved, viewport={"width": 1366, "height": 900})
    try:
        other = thief.new_page()
        other.goto(app_url)
        other.get_by_label("User name").wait_for()
        _expect_text(other, "Your session has ended (you logged out)")
        assert other.get_by_text("New application").count() == 0
        _shots(other, "saved_cookie_after_logout")
        other.goto(f"{app_url}/materialize")
        other.get_by_label("User name").wait_for()
        assert other.get_by_text("What a run does now").count() == 0
        _no_traceback(other)
    finally:
        thief.close()


def test_lockout_after_repeated_failures_then_the_password_works_again(app_url, page, pg):
    def attempts() -> int:
        sql = "SELECT count(*) FROM loan_desk_signin_attempts WHERE username = %s"
        return pg.execute(sql, [LOCKED[0]]).fetchone()[0]

    def try_once(password: str) -> None:
        """One click, and wait until the server has recorded that attempt (the old message stays meanwhile)."""
        before = attempts()
        _login(page, (LOCKED[0], password))
        deadline = time.time() + 30
        while attempts() == before and time.time() < deadline:
            page.wait_for_timeout(100)
        page.wait_for_timeout(500)

    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(app_url)
    page.get_by_label("User name").wait_for()
    for attempt in range(1, 6):
        try_once(f"not-it-{attempt}")
        expected = "Too many failed sign-ins for this user name" if attempt == 5 else "Wrong user name or password"
        _expect_text(page, expected)
        if attempt == 1:
            _shots(page, "wrong_password")
        if attempt < 5:
            page.wait_for_timeout(int(0.3 * 2 ** (attempt - 1) * 1000) + 150)  # the growing wait
    _shots(page, "locked_out")
    # The right password while locked: refused, and no session started.
    try_once(LOCKED[1])
    _expect_text(page, "Too many failed sign-ins for this user name")
    assert page.get_by_text("New application").count() == 0
    outcomes = [
        r[0]
        for r in pg.execute(
            "SELECT outcome FROM loan_desk_signin_attempts WHERE username = %s ORDER BY id DESC LIMIT 6", [LOCKED[0]]
        )
    ]
    assert outcomes == ["locked"] + ["wrong password"] * 5, outcomes
    page.wait_for_timeout(LOCKOUT_S * 1000)  # the lockout ends by itself
    _login(page, LOCKED)
    _expect_text(page, "New application")
    _shots(page, "signed_in_after_lockout")
    _no_traceback(page)


def test_run_labels_render_as_text_and_fetch_nothing(app_url, page, pg):
    import http.server
    import threading

    hits = []

    class Tracker(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tracker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    evil = f"**x** ![i](http://127.0.0.1:{server.server_port}/track.png)"
    pg.execute(
        "INSERT INTO loan_desk_materialize_runs (requested_by, window_end, status, finished_at) "
        "VALUES (%s, now(), 'succeeded', now())",
        [evil],
    )
    try:
        page.goto(f"{app_url}/materialize")
        _login(page, ADMIN)
        _expect_text(page, "What a run does now")
        runs = page.locator('[data-testid="stTable"]').last
        runs.wait_for()
        page.wait_for_timeout(1500)
        shown = runs.inner_text().replace("\u200b", "")
        assert "**x** ![i](http://127.0.0.1:" in shown, shown
        assert runs.locator("img").count() == 0 and runs.locator("a").count() == 0
        assert hits == []  # the browser fetched nothing from the label
        _no_traceback(page)
    finally:
        server.shutdown()
        pg.execute("DELETE FROM loan_desk_materialize_runs WHERE requested_by = %s", [evil])
