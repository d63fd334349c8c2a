"""Take the README's screenshots (docs/*.png) of the running app, in headless Chromium.

    uv run loan-desk --no-serve          # data, features, model (once)
    uv run python docs/screenshots.py    # serves the app, signs in, captures each page

It uses the same settings as `loan-desk` (PG*, REDIS_URL, LOAN_DESK_HOME), adds a temporary
admin user for the run and removes it afterwards.  The decision it makes is recorded in the
audit table like any other (user `docs_screens`).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import free_port, start_app, stop_app  # noqa: E402  (the app as a server)

OUT = ROOT / "docs"
CHROMIUM = os.environ.get("LOAN_DESK_CHROMIUM", "/usr/bin/chromium")
USER = "docs_screens"


def _shot(page, name: str, height: int) -> None:
    # Streamlit scrolls inside its own container: a viewport as tall as the page shows all of it.
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(1500)  # charts re-layout and finish their transitions
    page.screenshot(path=str(OUT / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})
    print(f"wrote docs/{name}.png", file=sys.stderr)


def _settled(page, charts: int = 0) -> None:
    """Wait until the script run has finished (no running indicator) and ``charts`` Plotly charts are drawn."""
    if charts:
        page.wait_for_function(
            f"document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length >= {charts}"
        )
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")


def _phone_shot(page, name: str, height: int) -> None:
    page.set_viewport_size({"width": 390, "height": height})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(OUT / f"{name}.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    print(f"wrote docs/{name}.png", file=sys.stderr)


def capture(url: str, password: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_label("User name").wait_for()
        _shot(page, "login", 800)
        page.get_by_label("User name").fill(USER)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Log in").click()

        page.get_by_role("button", name="Fill with a sample applicant").click()
        page.wait_for_function(
            "['Zipcode', 'Interest rate (%)'].every(l => [...document.querySelectorAll('input')]"
            ".some(i => i.getAttribute('aria-label') === l && i.value))"
        )
        page.get_by_role("button", name="Decide").click()
        page.get_by_text("Details: contributions and features").click()
        page.locator('[data-testid="stPlotlyChart"] .waterfalllayer .point').first.wait_for()
        page.get_by_text("Your recent decisions").wait_for()
        _shot(page, "apply", 2600)

        page.get_by_role("link", name="Explore features").click()
        page.get_by_text("Snapshot rows").first.wait_for()
        page.get_by_role("tab", name="Default rate").click()
        page.get_by_text("Default rate by credit_card_due").first.wait_for()
        _settled(page, charts=1)
        _shot(page, "explore", 1500)

        page.get_by_role("link", name="Materialize").click()
        page.get_by_text("Mode:").first.wait_for()
        _settled(page)
        _shot(page, "materialize", 1400)
        page.get_by_role("link", name="Model card").click()
        page.get_by_text("Feature importance").first.wait_for()
        _shot(page, "model_card", 1900)

        page.get_by_role("link", name="Users").click()
        page.get_by_text("Sign-in lockouts").first.wait_for()
        _shot(page, "users", 1200)

        # A phone: the apply page after a decision, at 390 x 844.
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
        phone.set_default_timeout(60_000)
        phone.goto(url)
        phone.get_by_label("User name").fill(USER)
        phone.get_by_label("Password", exact=True).fill(password)
        phone.get_by_role("button", name="Log in").click()
        phone.get_by_role("button", name="Fill with a sample applicant").click()
        phone.wait_for_function(
            "['Zipcode', 'Interest rate (%)'].every(l => [...document.querySelectorAll('input')]"
            ".some(i => i.getAttribute('aria-label') === l && i.value))"
        )
        phone.get_by_role("button", name="Decide").click()
        phone.get_by_text("Your recent decisions").wait_for()
        _phone_shot(phone, "apply_phone", 4200)

        # Explore and Materialize on the phone: the filters are on the page, not in a sidebar over it.
        phone.goto(f"{url}/explore")
        phone.get_by_text("Snapshot rows").first.wait_for()
        phone.get_by_role("tab", name="By state").click()
        phone.get_by_text("Mean credit_card_due by state").first.wait_for()
        _settled(phone, charts=1)
        _phone_shot(phone, "explore_phone", 1900)
        phone.goto(f"{url}/materialize")
        phone.get_by_text("Mode:").first.wait_for()
        _settled(phone)
        _phone_shot(phone, "materialize_phone", 2000)
        _batch(page, phone, url)
        browser.close()


def _batch_csv() -> bytes:
    """300 recent applicants of the loaded data, a formula cell and a mistyped row."""
    import csv
    import io

    import psycopg

    from runtime.settings import Settings

    cols = (
        "dob_ssn, zipcode, person_income, person_home_ownership, person_emp_length, loan_intent, loan_amnt, "
        "loan_int_rate"
    )
    with psycopg.connect(**Settings.from_env().pg_kwargs()) as conn:
        rows = conn.execute(
            f"SELECT {cols} FROM loans WHERE person_income BETWEEN 4000 AND 2000000 "
            "AND loan_amnt BETWEEN 500 AND 35000 AND loan_int_rate BETWEEN 5 AND 25 ORDER BY loan_id DESC LIMIT 300"
        ).fetchall()
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols.split(", "))
    w.writerows(rows[:3])
    w.writerow(["=cmd|' /C calc'!A0", "12345", "50000", "RENT", "3", "MEDICAL", "5000", "10"])
    w.writerow([rows[3][0], "0213x", "lots", "RENT", "3", "MEDICAL", "5000", "10"])
    w.writerows(rows[3:])
    return buf.getvalue().encode()


def _batch(page, phone, url: str) -> None:
    """The batch page after scoring a file, on a laptop and on a phone (each scores it, as a new batch)."""
    data = _batch_csv()
    for p in (phone, page):  # the laptop's shot shows a warm service's time
        p.goto(f"{url}/batch")
        p.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
            {"name": "campaign.csv", "mimeType": "text/csv", "buffer": data}
        )
        p.get_by_text("campaign.csv").first.wait_for()
        p.get_by_text("Score it again").click()  # the same file as an earlier run of this script
        p.get_by_role("button", name="Score the file").click()
        p.get_by_role("button", name="Download the results (CSV)").wait_for(timeout=300_000)
    _shot(page, "batch", 1250)
    phone.set_viewport_size({"width": 390, "height": 2000})
    phone.wait_for_timeout(1500)
    phone.screenshot(path=str(OUT / "batch_phone.png"))
    print("wrote docs/batch_phone.png", file=sys.stderr)


def main() -> int:
    import psycopg

    from runtime.settings import Settings
    from runtime.users import add_user

    s = Settings.from_env()
    password = secrets.token_urlsafe(16)
    try:
        with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
            conn.execute("DELETE FROM loan_desk_users WHERE name = %s", [USER])
        add_user(s, USER, "admin", password)
    except Exception as exc:
        from runtime.errors import explain

        print(
            f"cannot add the temporary user: {explain(exc)}; run `uv run loan-desk --no-serve` first", file=sys.stderr
        )
        return 1
    port = free_port()
    exe = Path(sys.executable).parent / "loan-desk"
    try:
        try:
            proc, _ = start_app([str(exe), "serve", "--port", str(port)])
        except RuntimeError as exc:
            print(f"the app did not start ({exc}); run `uv run loan-desk --no-serve` first", file=sys.stderr)
            return 1
        try:
            capture(f"http://127.0.0.1:{port}", password)
        finally:
            stop_app(proc)
    finally:
        with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
            conn.execute("DELETE FROM loan_desk_users WHERE name = %s", [USER])
    return 0


if __name__ == "__main__":
    sys.exit(main())
