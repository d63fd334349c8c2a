"""The monitoring page in a real browser (Debian's Chromium, Playwright) against `loan-desk serve`,
over decisions made by DecisionService and recorded with record_decision."""

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
UNDERWRITER, OFFICER = ("m_underwriter", "under-pass-123"), ("m_officer", "officer-pass-123")
DECISIONS = 40
SECTIONS = (
    "Decisions over time",
    "Score distribution",
    "Approval ratio at the cut-off",
    "Feature drift against the training window",
    "Feature freshness",
    "Predicted against observed default",
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def recorded(backbone):
    """DECISIONS decisions replaying loans of the session's data (their outcomes are known)."""
    from model.inference import DecisionService
    from runtime import db
    from runtime.decisions import record_decision

    s = backbone["settings"]
    with db.connect(s) as conn:
        rows = conn.execute(
            "SELECT dob_ssn, zipcode, person_income, person_home_ownership, person_emp_length, loan_intent, "
            "loan_amnt, loan_int_rate FROM loans WHERE person_income BETWEEN 4000 AND 2000000 "
            "AND loan_amnt BETWEEN 500 AND 35000 AND loan_int_rate BETWEEN 5 AND 25 ORDER BY loan_id LIMIT %s",
            [DECISIONS],
        ).fetchall()
    names = ("dob_ssn", "zipcode", "person_income", "person_home_ownership", "person_emp_length")
    names += ("loan_intent", "loan_amnt", "loan_int_rate")
    service = DecisionService(settings=s)
    ids, applicants = [], []
    for row in rows:
        decision = service.decide(dict(zip(names, row, strict=True)))
        ids.append(record_decision(s, OFFICER[0], decision, channel="cli"))
        applicants.append(row[0])
    return {"ids": ids, "applicants": applicants}


@pytest.fixture(scope="module")
def app_url(backbone, recorded):
    import psycopg

    from runtime.users import add_user

    s = backbone["settings"]
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as pg:
        pg.execute("DELETE FROM loan_desk_users WHERE name IN (%s, %s)", [UNDERWRITER[0], OFFICER[0]])
        pg.execute("DELETE FROM loan_desk_signin_limits")
    add_user(s, UNDERWRITER[0], "underwriter", UNDERWRITER[1])
    add_user(s, OFFICER[0], "officer", OFFICER[1])
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "server_monitoring.log", "w")  # noqa: SIM115 - closed in teardown
    exe = Path(sys.executable).parent / "loan-desk"
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], cwd=ROOT, env=os.environ, stdout=log, stderr=log)
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
            pytest.fail(f"the app did not start; see {ARTIFACTS / 'server_monitoring.log'}")
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
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield b
        b.close()


def _open(browser, url: str, user: tuple[str, str], width: int = 1366, height: int = 900):
    ctx = browser.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/monitoring")
    page.get_by_label("User name").fill(user[0])
    page.get_by_label("Password", exact=True).fill(user[1])
    page.get_by_role("button", name="Log in").click()
    return ctx, page


@pytest.mark.parametrize("width,height", [(1366, 900), (390, 844)])
def test_monitoring_renders_from_recorded_decisions(app_url, browser, recorded, width, height):
    ctx, page = _open(browser, app_url, UNDERWRITER, width, height)
    try:
        page.get_by_role("heading", name="Monitoring").wait_for()
        for section in SECTIONS:
            page.get_by_role("heading", name=section).wait_for()
        # Six charts: outcomes, scores, age band, PSI, one feature's buckets, freshness, calibration
        # (the by-state chart needs 30 decisions in a state, which 40 decisions spread over 50 states lack).
        page.wait_for_function(
            "document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= 7", timeout=60_000
        )
        assert page.locator('[data-testid="stPlotlyChart"] .modebar-btn').count() == 0  # no toolbar over titles
        metrics = page.locator('[data-testid="stMetric"]').all_inner_texts()
        decided = next(m for m in metrics if m.startswith("Decisions"))
        assert int(decided.split("\n")[-1].replace(",", "")) >= DECISIONS
        known = next(m for m in metrics if m.startswith("With a known outcome"))
        assert int(known.split("\n")[-1].replace(",", "")) >= 1  # the decisions replay loans
        page.get_by_text("Left out:").first.wait_for()  # states with too few decisions are counted
        page.get_by_text("Dashed line: the latest cut-off").first.wait_for()
        assert page.locator('[data-testid="stException"]').count() == 0
        content = page.content()
        assert "Traceback" not in content
        assert not [a for a in recorded["applicants"] if a in content]  # no dob_ssn in clear
        page.set_viewport_size({"width": width, "height": 4200 if width > 800 else 9000})
        page.wait_for_timeout(2000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"monitoring_{width}.png"))
    finally:
        ctx.close()


def test_officer_is_refused(app_url, browser):
    ctx, page = _open(browser, app_url, OFFICER)
    try:
        page.get_by_text("Your role may not open this page").wait_for()
        assert page.get_by_role("heading", name="Decisions over time").count() == 0
        assert "Monitoring" not in page.locator('[data-testid="stSidebarNav"]').inner_text()
    finally:
        ctx.close()
