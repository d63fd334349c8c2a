"""Faults injected for real: a table locked by another session, and a network path that stops
forwarding on open connections (tests/tcp_proxy.py).  Each must turn into one sentence within
seconds, change nothing, and leave the page and the CLI working once the fault is gone.

The bounds asserted here are loose (three times what the settings allow): they prove that the
wait is bounded at all, where it used to last as long as the fault; the measured figures are in
the README.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent


def _app(path: str, user: str, role: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / path), default_timeout=120)
    at.session_state["ld_user"] = user
    at.session_state["ld_role"] = role
    return at


def _unescape(text: str) -> str:
    """What the browser shows of pages/_ui.plain's Markdown."""
    return re.sub(r"\\(.)", r"\1", text).replace("\u200b", "")


def _alerts(at) -> list[str]:
    """Error messages on the page (a REJECT verdict is shown with st.error too, and is not one)."""
    texts = [_unescape(str(e.value)) for e in at.error]
    return [t for t in texts if "probability of default" not in t]


def _button(at, label: str):
    return next(b for b in at.button if b.label == label)


def _decisions(pg, user: str) -> int:
    return pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = %s", [user]).fetchone()[0]


def test_decide_while_the_audit_table_is_locked_is_refused_in_seconds(backbone, pg):
    import psycopg

    s = backbone["settings"]
    at = _app("pages/apply.py", "t_locked", "officer").run()
    _button(at, "Fill with a sample applicant").click().run()
    _button(at, "Decide").click().run()  # warm: model loaded, pool open
    assert not at.exception and not _alerts(at), _alerts(at)
    before = _decisions(pg, "t_locked")
    with psycopg.connect(**s.pg_kwargs()) as locker:  # another session, in a transaction
        locker.execute("LOCK TABLE loan_desk_decisions IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        _button(at, "Decide").click().run()
        waited = time.perf_counter() - started
        alerts = _alerts(at)
        locker.rollback()
    print(f"locked table: Decide answered in {waited:.2f} s: {alerts}")
    assert not at.exception
    assert len(alerts) == 1, alerts  # one sentence, not one per query
    assert "Postgres is busy" in alerts[0] and "not valid" in alerts[0] and "try again" in alerts[0], alerts
    assert "not reachable" not in alerts[0]
    assert waited < 3 * s.timeouts.lock_s, waited
    assert at.session_state["ld_last_decision"] is None  # nothing shown as decided
    assert _decisions(pg, "t_locked") == before  # nothing half-recorded
    _button(at, "Decide").click().run()  # the lock is gone: it works again
    assert not _alerts(at) and _decisions(pg, "t_locked") == before + 1


def test_a_stalled_network_path_fails_in_seconds_and_recovers(backbone, pg, monkeypatch):
    import pages._ui
    from runtime import db

    s = backbone["settings"]
    limit = 3 * (s.timeouts.reply_s + s.timeouts.connect_s)
    with TcpProxy(s.pghost, s.pgport) as proxy:
        through = dataclasses.replace(s, pgport=proxy.port)
        monkeypatch.setattr(pages._ui, "settings", lambda: through)

        # The apply page: its pool holds open connections through the proxy when the path stalls.
        at = _app("pages/apply.py", "t_stalled", "officer").run()
        _button(at, "Fill with a sample applicant").click().run()
        assert not _alerts(at)
        before = _decisions(pg, "t_stalled")
        proxy.blackhole()
        started = time.perf_counter()
        _button(at, "Decide").click().run()
        waited = time.perf_counter() - started
        alerts = _alerts(at)
        print(f"stalled path: Decide answered in {waited:.2f} s: {alerts}")
        assert not at.exception
        assert len(alerts) == 1 and "Postgres" in alerts[0] and "not valid" in alerts[0], alerts
        assert waited < limit, waited
        assert _decisions(pg, "t_stalled") == before
        proxy.forward()
        time.sleep(db.FAILURE_MEMORY_S)
        _button(at, "Decide").click().run()
        assert not _alerts(at), _alerts(at)
        assert _decisions(pg, "t_stalled") == before + 1  # no restart needed

        # A connection of its own (the CLI's and the jobs' path), stalled in the middle of its work.
        with db.connect(through) as conn:
            conn.execute("SELECT 1")
            proxy.blackhole()
            started = time.perf_counter()
            with pytest.raises(db.ServerStalled, match="stopped answering"):
                conn.execute("SELECT 2")
            waited = time.perf_counter() - started
            print(f"stalled path: an open connection's query failed after {waited:.2f} s")
            assert waited < limit, waited
            assert conn.closed  # never reused
        proxy.forward()
        with db.connect(through) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)

        # The CLI while the path is stalled, then once it forwards again.
        proxy.blackhole()
        env = {"PGPORT": str(proxy.port)}
        started = time.perf_counter()
        r = run_cli("loan-desk", "users", "list", env=env, timeout=120)
        waited = time.perf_counter() - started
        print(f"stalled path: `loan-desk users list` exited after {waited:.2f} s: {r.stderr.strip()[-300:]}")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("loan-desk: error: Postgres") and "not reachable" in last, r.stderr
        assert waited < limit + 10, waited  # + the command's own start
        proxy.forward()
        r = run_cli("loan-desk", "users", "list", env=env, timeout=120)
        assert r.returncode == 0, r.stderr


def test_a_slow_query_is_not_mistaken_for_a_stall(settings):
    """Waits longer than reply_s go on while Postgres is working on the request."""
    from runtime import db

    started = time.perf_counter()
    with db.connect(settings) as conn:
        assert conn.execute("SELECT pg_sleep(%s), 7", [2.5 * settings.timeouts.reply_s]).fetchone()[1] == 7
    assert time.perf_counter() - started >= 2.5 * settings.timeouts.reply_s
    with db.connection(settings) as conn:
        assert conn.execute("SELECT count(*) FROM generate_series(1, 200000)").fetchone() == (200000,)
