"""5. App: cold start until the health endpoint answers, and the time from clicking "Decide" to the
decision on screen in headless Chromium (p50 of ROUNDS, warm).

Cold start is measured three ways: `uv run loan-desk` on fresh data (an empty database, Redis db
and home: generate, load, apply, materialize, train, serve), the same command again on that data
(everything already done), and the Streamlit server alone.  The UI rounds run against the
benchmark's own data (SMALL applicants) with a bench user of its own.  If the app, Chromium or
Playwright is missing, or the page does not behave as expected, the result is recorded as not
run, with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, SMALL, ensure_data, free_port, percentiles, record, say, start_app, stop_app

ROUNDS = int(os.environ.get("LOAN_DESK_BENCH_UI_ROUNDS", "20"))
CHROMIUM = os.environ.get("LOAN_DESK_CHROMIUM", "/usr/bin/chromium")
QUICK = {"rounds": 3, "fresh_start": False}
BENCH_USER = "bench_officer"
# The fresh start's own database, Redis db and home: emptied before it runs.
COLD_DB = os.environ.get("LOAN_DESK_BENCH_COLD_DB", "loan_desk_bench_cold")
COLD_REDIS = os.environ.get("LOAN_DESK_BENCH_COLD_REDIS_URL", "redis://127.0.0.1:6379/14")
COLD_PROJECT = "loan_desk_bench_cold"  # its online keys end with this: only they are cleared


def _not_run(reason: str) -> dict:
    say(f"app: not run: {reason}")
    figures = {"app_run": False, "app_not_run_reason": reason}
    record("app", figures, [("app benchmark", "not run"), ("reason", reason)], "App")
    return figures


def measure_fresh_start() -> dict:
    """`uv run loan-desk` on nothing (empty database, Redis db, home), then once more on what it made."""
    import dataclasses

    import psycopg
    from psycopg import sql

    from feast_ext.store import clear_online
    from runtime.settings import Settings, parse_redis_url

    cold = dataclasses.replace(Settings.from_env(), **parse_redis_url(COLD_REDIS), project=COLD_PROJECT)

    def empty() -> None:
        with psycopg.connect(**Settings.from_env().pg_kwargs("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(COLD_DB)))
        clear_online(cold)  # this run's project only, never the whole Redis db

    def seconds_to_healthy(cmd: list[str], env: dict, timeout: float) -> float:
        proc, seconds = start_app([*cmd, "--port", str(free_port())], env, timeout)
        stop_app(proc)
        return seconds

    empty()
    uv = shutil.which("uv")
    cmd = [uv, "run", "loan-desk"] if uv else [str(Path(sys.executable).with_name("loan-desk"))]
    out = {"fresh_start_command": " ".join(["uv run loan-desk"] if uv else cmd)}
    with tempfile.TemporaryDirectory(prefix="loan-desk-cold-") as home:
        env = {
            **os.environ,
            "PGDATABASE": COLD_DB,
            "REDIS_URL": COLD_REDIS,
            "LOAN_DESK_HOME": home,
            "LOAN_DESK_FEAST_PROJECT": COLD_PROJECT,
        }
        env.pop("LOAN_DESK_FEAST_REDIS", None)
        env.pop("LOAN_DESK_REGISTRY_URL", None)
        say(f"app: {out['fresh_start_command']} on fresh data (database {COLD_DB}) ...")
        out["fresh_start_s"] = seconds_to_healthy(cmd, env, timeout=900)
        say(f"app: fresh start healthy after {out['fresh_start_s']:.1f} s; once more on that data ...")
        out["restart_s"] = seconds_to_healthy(cmd, env, timeout=300)
    empty()
    return out


def run(rounds: int = ROUNDS, fresh_start: bool = True) -> dict:
    if not (ROOT / "streamlit_app.py").exists():
        return _not_run("streamlit_app.py does not exist yet")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return _not_run(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return _not_run("playwright is not installed (uv sync --dev)")

    cold = {}
    if fresh_start:  # first, on an idle machine: it loads and trains as a user's first start does
        try:
            cold = measure_fresh_start()
        except Exception as exc:
            cold = {"fresh_start_error": f"{exc}"[:500]}
            say(f"app: fresh start failed: {exc}")
    s = ensure_data(SMALL, materialized=True, trained=True)
    from runtime.users import add_user

    password = secrets.token_urlsafe(12)
    try:
        add_user(s, BENCH_USER, "officer", password)
    except Exception as exc:  # an older user of that name: replace it
        import psycopg

        with psycopg.connect(**s.pg_kwargs(), autocommit=True) as conn:
            conn.execute("DELETE FROM loan_desk_users WHERE name = %s", [BENCH_USER])
        try:
            add_user(s, BENCH_USER, "officer", password)
        except Exception:
            return _not_run(f"could not create the bench user: {exc}")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        proc, cold_s = start_app([sys.executable, "-m", "bootstrap.cli", "serve", "--port", str(port)])
    except RuntimeError as exc:
        return _not_run(f"the app did not start: {exc}")
    try:
        say(f"app: healthy after {cold_s:.2f} s")
        try:
            samples, first_page_s = _ui(url, password, rounds)
        except Exception as exc:
            figures = {"app_run": False, "app_cold_start_s": cold_s, "app_not_run_reason": f"UI: {exc}"[:500], **cold}
            record("app", figures, [("cold start s", cold_s), ("UI", f"failed: {exc}"[:200])], "App")
            return figures
    finally:
        stop_app(proc)
    p = percentiles(samples)
    figures = {
        "app_run": True,
        **cold,
        "app_cold_start_s": cold_s,
        "app_first_page_s": first_page_s,
        "ui_decision_p50_ms": p["p50_ms"],
        "ui_decision_p95_ms": p["p95_ms"],
        "ui_decision_rounds": len(samples),
        "targets": {"ui p50 <= 300 ms": p["p50_ms"] <= 300},
    }
    table = [
        ("measure", "value"),
        *(
            [
                (f"{cold['fresh_start_command']} on fresh data to /_stcore/health, s", cold["fresh_start_s"]),
                ("  the same again on that data, s", cold["restart_s"]),
            ]
            if "fresh_start_s" in cold
            else [("fresh start", cold.get("fresh_start_error", "not run"))]
        ),
        ("Streamlit server alone to /_stcore/health, s", cold_s),
        ("first page rendered after login, s", first_page_s),
        (f"submit -> decision shown, p50 ms ({len(samples)} rounds)", p["p50_ms"]),
        ("submit -> decision shown, p95 ms", p["p95_ms"]),
    ]
    record("app", figures, table, "App (headless Chromium)")
    return figures


def _ui(url: str, password: str, rounds: int) -> tuple[list[float], float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        t0 = time.perf_counter()
        page.goto(url)
        page.get_by_label("User name").fill(BENCH_USER)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("button", name="Fill with a sample applicant").wait_for(timeout=60_000)
        first_page_s = time.perf_counter() - t0
        page.get_by_role("button", name="Fill with a sample applicant").click()
        page.wait_for_timeout(500)
        samples = []
        # Every decision gets a new audit id, shown as the "Decision id" metric: the new id on
        # screen marks the moment this round's decision is displayed.
        current_id = """() => {
            const m = [...document.querySelectorAll('[data-testid="stMetric"]')]
                .find(e => e.innerText.includes('Decision id'));
            const v = m && m.querySelector('[data-testid="stMetricValue"]');
            return v ? v.innerText.trim() : null;
        }"""
        changed = f"(prev) => {{ const now = ({current_id})(); return now !== null && now !== prev; }}"
        for i in range(rounds + 2):  # two warm-up rounds
            before = page.evaluate(current_id)
            start = time.perf_counter()
            page.get_by_role("button", name="Decide").click()
            page.wait_for_function(changed, arg=before, timeout=30_000, polling="raf")
            elapsed = time.perf_counter() - start
            if i >= 2:
                samples.append(elapsed)
        browser.close()
    return samples, first_page_s
