"""The app in a real browser: Debian's Chromium driven by Playwright, against `loan-desk serve`.

The server is started by the same console command users run, with the tests' database, Redis
db and data folder.  Screenshots land in test-artifacts/ (the README's images in docs/ are
copies of them).
"""

from __future__ import annotations

import os
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

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def app_url(backbone):
    from runtime.users import add_user

    s = backbone["settings"]
    add_user(s, *OFFICER[:1], "officer", OFFICER[1])
    add_user(s, *ADMIN[:1], "admin", ADMIN[1])
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "server.log", "w")  # noqa: SIM115 - closed in teardown
    exe = Path(sys.executable).parent / "loan-desk"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=log
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
    page.get_by_role("tab", name="By state").click()
    _expect_text(page, "Mean credit_card_due by state", 60_000)
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
        "[...document.querySelectorAll('input')].some(i => i.getAttribute('aria-label') === 'Zipcode' && i.value)"
    )
    page.get_by_role("button", name="Decide").click()
    page.get_by_text("probability of default").first.wait_for(timeout=30_000)
    verdict = page.locator('[data-testid="stAlert"]').filter(has_text="probability of default").first.inner_text()
    assert "APPROVE" in verdict or "REJECT" in verdict
    page.locator('[data-testid="stPlotlyChart"] .waterfalllayer .point').first.wait_for(timeout=30_000)
    _expect_text(page, "Features used")
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
    page.wait_for_function("document.cookie.includes('loan_desk_session=')", timeout=10_000)
    page.goto(f"{app_url}/materialize")  # a new browser session: signed in again from the cookie
    _expect_text(page, "Your role may not open this page")
    assert "Page not found" not in page.inner_text("body")
    assert "Materialize" not in page.locator('[data-testid="stSidebarNav"]').inner_text()
    _shot(page, "officer_on_materialize")
    assert page.get_by_text("Online store freshness").count() == 0
    assert page.get_by_role("button", name="Materialize up to now").count() == 0
    _no_traceback(page)


def test_model_card(app_url, page):
    page.goto(f"{app_url}/model_card")
    _login(page, OFFICER)
    _expect_text(page, "Calibration on the test period")
    _expect_text(page, "Feature importance")
    _expect_text(page, "Training window")
    _shot(page, "model_card")
    _no_traceback(page)


def test_admin_materializes_and_sees_the_run(app_url, page, pg):
    page.goto(f"{app_url}/materialize")
    _login(page, ADMIN)
    _expect_text(page, "Online store freshness")
    page.get_by_role("button", name="Materialize up to now").click()
    _expect_text(page, "Materialization complete", 180_000)
    row = pg.execute(
        "SELECT status, rows FROM loan_desk_materialize_runs WHERE requested_by = %s ORDER BY id DESC LIMIT 1",
        [ADMIN[0]],
    ).fetchone()
    assert row is not None and row[0] == "succeeded"
    runs = page.locator('[data-testid="stTable"]').last
    runs.wait_for()
    history = runs.inner_text()
    assert ADMIN[0] in history and "succeeded" in history
    _shot(page, "materialize")
    _no_traceback(page)


def test_logout(app_url, page):
    page.goto(app_url)
    _login(page, ADMIN)
    _expect_text(page, "New application")
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("User name").wait_for()
    page.reload()  # the cookie is gone too
    page.get_by_label("User name").wait_for()
