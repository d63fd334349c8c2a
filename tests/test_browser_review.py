"""Review workflows in Chromium against `loan-desk serve`: refer → queue → an underwriter decides;
an officer cannot finalize their own referral (by the UI or by URL), nor can an admin who
submitted it; the history finds a decision and opens its record."""

from __future__ import annotations

import pytest

from tests.test_browser import (  # noqa: F401  (fixtures: the served app and the browser)
    ARTIFACTS,
    CHROMIUM,
    _expect_text,
    _login,
    _no_traceback,
    app_url,
    browser,
)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")

UNDERWRITER = ("b_uw", "underwriter-pass-123")
R_OFFICER, R_ADMIN = ("br_officer", "officer-pass-456"), ("br_admin", "admin-pass-456")


@pytest.fixture(scope="module")
def users(backbone, app_url):  # noqa: F811
    import psycopg

    from runtime.users import add_user

    s = backbone["settings"]
    with psycopg.connect(**s.pg_kwargs(), autocommit=True) as pg:
        pg.execute("DELETE FROM loan_desk_users WHERE name IN (%s, %s, %s)", [UNDERWRITER[0], R_OFFICER[0], R_ADMIN[0]])
        pg.execute("DELETE FROM loan_desk_signin_limits")
    add_user(s, UNDERWRITER[0], "underwriter", UNDERWRITER[1])
    add_user(s, R_OFFICER[0], "officer", R_OFFICER[1])
    add_user(s, R_ADMIN[0], "admin", R_ADMIN[1])
    return app_url


@pytest.fixture()
def pg(settings):
    import psycopg

    with psycopg.connect(**settings.pg_kwargs(), autocommit=True) as conn:
        yield conn


def _page(browser, width=1366, height=900):  # noqa: F811
    ctx = browser.new_context(viewport={"width": width, "height": height})
    p = ctx.new_page()
    p.set_default_timeout(60_000)
    return ctx, p


def _refer(url, browser, user, pg) -> int:  # noqa: F811
    """Sign in as ``user`` and submit an applicant with no credit file: a referral."""
    ctx, page = _page(browser)
    page.goto(url)
    _login(page, user)
    _expect_text(page, "New application")
    page.get_by_role("button", name="Fill with a sample applicant").click()
    page.wait_for_function(
        "['Zipcode', 'Interest rate (%)'].every(l => [...document.querySelectorAll('input')]"
        ".some(i => i.getAttribute('aria-label') === l && i.value))"
    )
    # Streamlit may still show the previous run's form while it reruns: wait for one.
    page.wait_for_function("document.querySelectorAll('input[aria-label=\"SSN last four\"]').length === 1")
    page.get_by_label("SSN last four").fill("0000")  # the sample's birth date with other digits: no credit file
    page.get_by_role("button", name="Decide").click()
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="REFER").first
    try:
        alert.wait_for(timeout=90_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "refer_missing.png"))
        shown = page.locator('[data-testid="stAlert"]').all_inner_texts()
        raise AssertionError(f"no referral after Decide; the page's messages: {shown}") from None
    assert "waiting in the review queue" in alert.inner_text()
    did = pg.execute("SELECT max(id) FROM loan_desk_decisions WHERE username = %s", [user[0]]).fetchone()[0]
    row = pg.execute("SELECT outcome, status FROM loan_desk_decisions WHERE id = %s", [did]).fetchone()
    assert row == ("refer", "pending")
    _no_traceback(page)
    ctx.close()
    return did


def test_refer_then_queue_then_underwriter_decides(users, browser, pg):  # noqa: F811
    did = _refer(users, browser, R_OFFICER, pg)
    ctx, page = _page(browser)
    page.goto(users)
    _login(page, UNDERWRITER)
    _expect_text(page, "Review queue")  # an underwriter lands on the queue
    _expect_text(page, "referrals waiting")
    page.goto(f"{users}/review?id={did}")
    _expect_text(page, f"Decision #{did}")
    page.locator('[data-testid="stAlert"]').filter(has_text="no credit file").first.wait_for()
    page.get_by_text("Decline", exact=True).click()
    page.get_by_role("button", name="Record: decline").wait_for()  # the rerun brought the decline reasons
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Reason").click()
    page.keyboard.type("Income could not")  # the list is long: filter it as a person would
    page.get_by_role("option", name="Income could not be verified (INCOME_UNVERIFIED)").click()
    page.get_by_label("Note").fill("No pay slips after two requests")
    page.get_by_role("button", name="Record: decline").click()
    _expect_text(page, f"Decision #{did}: decline recorded")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "review_done.png"))
    review = pg.execute(
        "SELECT reviewer, outcome, reason_code, note FROM loan_desk_reviews WHERE decision_id = %s", [did]
    ).fetchone()
    assert review == (UNDERWRITER[0], "decline", "INCOME_UNVERIFIED", "No pay slips after two requests")
    assert pg.execute("SELECT status FROM loan_desk_decisions WHERE id = %s", [did]).fetchone()[0] == "final"
    # A second try at the same referral is told who decided.
    page.goto(f"{users}/review?id={did}")
    _expect_text(page, f"Already decided: decline by {UNDERWRITER[0]}")
    assert page.get_by_role("button", name="Record: approve").count() == 0
    _no_traceback(page)
    ctx.close()
    # The officer sees the verdict on the record of their application.
    ctx, page = _page(browser)
    page.goto(f"{users}/decision?id={did}")
    _login(page, R_OFFICER)
    _expect_text(page, f"Decision #{did}")
    _expect_text(page, f"Reviewed: DECLINE by {UNDERWRITER[0]}")
    _no_traceback(page)
    ctx.close()


def test_nobody_finalizes_their_own_referral(users, browser, pg):  # noqa: F811
    mine = _refer(users, browser, R_OFFICER, pg)
    # An officer: the queue is not theirs, by the menu or by URL.
    ctx, page = _page(browser)
    page.goto(f"{users}/review?id={mine}")
    _login(page, R_OFFICER)
    _expect_text(page, "Your role may not open this page")
    assert "Review queue" not in page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert page.get_by_role("button", name="Record: approve").count() == 0
    _no_traceback(page)
    ctx.close()
    # An admin may review, but not what they submitted (maker-checker), in the list or by URL.
    own = _refer(users, browser, R_ADMIN, pg)
    ctx, page = _page(browser)
    page.goto(f"{users}/review?id={own}")
    _login(page, R_ADMIN)
    _expect_text(page, f"You submitted the application of decision #{own}")
    assert page.get_by_role("button", name="Record: approve").count() == 0
    page.screenshot(path=str(ARTIFACTS / "review_maker_checker.png"))
    _no_traceback(page)
    ctx.close()
    assert (
        pg.execute("SELECT count(*) FROM loan_desk_reviews WHERE decision_id IN (%s, %s)", [mine, own]).fetchone()[0]
        == 0
    )


def test_history_finds_a_decision_and_opens_its_record(users, browser, pg):  # noqa: F811
    did = pg.execute("SELECT max(id) FROM loan_desk_decisions").fetchone()[0]
    ctx, page = _page(browser)
    page.goto(f"{users}/history")
    _login(page, UNDERWRITER)
    _expect_text(page, "Decision history")
    page.get_by_label("Decision #").fill(str(did))
    page.get_by_role("button", name="Search").click()
    _expect_text(page, f"decision #{did}")
    link = page.get_by_role("link", name=f"Open decision #{did}")
    assert link.get_attribute("href").endswith(f"/decision?id={did}")
    with page.context.expect_page() as opened:  # Streamlit opens Markdown links in a new tab
        link.click()
    page = opened.value
    page.set_default_timeout(60_000)
    page.wait_for_url(f"**/decision?id={did}")
    _expect_text(page, f"Decision #{did}")
    _expect_text(page, "Online features the decision read")
    page.get_by_role("button", name="Replay this decision").click()
    _expect_text(page, "features")
    page.locator('[data-testid="stAlert"]').filter(has_text="point-in-time").first.wait_for()
    _no_traceback(page)
    # A bad id is one sentence, not a traceback.
    page.goto(f"{users}/decision?id=abc")
    _expect_text(page, "is not a decision id")
    page.goto(f"{users}/decision?id=999999999")
    _expect_text(page, "There is no decision #999999999")
    _no_traceback(page)
    ctx.close()
