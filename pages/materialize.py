"""Materialize (admins): how far the online store lags, run materialize-incremental, see every run.

One run at a time across all sessions and processes: feast_ext.store.materialize takes a
Postgres advisory lock and records each run; this page starts it on a background thread and
follows the run's row in Postgres, so every admin (in any process) sees the same progress.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from feast_ext.materialize import AlreadyRunning, materialization_state, materialize
from feast_ext.store import feature_store
from pages._ui import ago, current_user, explain, guarded, plain, require, settings, show_error
from runtime import explore
from runtime import runs as run_log
from runtime.settings import Settings


class Runner:
    """This process's background materialization (at most one; the advisory lock covers other processes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.started_by: str | None = None

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, s: Settings, user: str) -> str | None:
        """Start a run; returns None, or why it did not start."""
        with self._lock:
            if self.busy():
                return f"A materialization is already running (started by {self.started_by})."
            if run_log.active_run(s) is not None:
                return "A materialization is already running."
            self.error, self.started_by = None, user
            self.thread = threading.Thread(target=self._run, args=(s, user), name="loan-desk-materialize", daemon=True)
            self.thread.start()
            return None

    def _run(self, s: Settings, user: str) -> None:
        try:
            materialize(s, requested_by=user, progress=lambda _msg: None)
        except AlreadyRunning:
            self.error = "A materialization is already running in another session or process."
        except Exception as exc:  # recorded in the runs table too; kept here for this page
            self.error = explain(exc)


@st.cache_resource
def runner() -> Runner:
    return Runner()


@st.cache_data(ttl=10, show_spinner=False)
def _lag(s: Settings) -> pd.DataFrame:
    state = materialization_state(feature_store(s))
    now = datetime.now(UTC)
    rows = []
    for view, (start, end) in sorted(state.items()):
        newest = explore.offline_newest(s, view, end) if view in explore.VIEWS else {"newest": None, "pending": None}
        rows.append(
            {
                "feature view": view,
                "last window start": start,
                "last window end": end,
                "online lags by": ago((now - end).total_seconds()) if end else "never materialized",
                "newest offline row": newest["newest"],
                "offline rows newer than the window": newest["pending"],
            }
        )
    return pd.DataFrame(rows)


def _history(s: Settings) -> None:
    runs = run_log.materialize_runs(s, limit=25)
    if not runs:
        st.caption("No runs yet.")
        return
    last = runs[0]
    if last["status"] == "failed":
        st.error(f"The last run (#{last['id']}) failed: {plain(last['error'] or '', 300)}", icon=":material/error:")
    table = pd.DataFrame(
        [
            {
                "run": r["id"],
                "who": plain(r["requested_by"], 40),
                "started (UTC)": f"{r['started_at']:%Y-%m-%d %H:%M:%S}",
                "window": (f"{r['window_start']:%Y-%m-%d %H:%M}" if r["window_start"] else "since last run")
                + f" → {r['window_end']:%Y-%m-%d %H:%M}",
                "mode": plain(r["mode"] or ""),
                "rows": "" if r["rows"] is None else f"{r['rows']:,}",
                "duration": "" if r["seconds"] is None else f"{r['seconds']:.1f} s",
                "result": plain(r["status"]),
                "error": plain(r["error"] or "", 300),
            }
            for r in runs
        ]
    ).set_index("run")
    st.table(table)


def _progress(s: Settings) -> bool:
    """Show the run in progress; True while one is running."""
    run = run_log.active_run(s)
    mine = runner()
    if run is None and not mine.busy():
        return False
    if run is None:
        st.info("Starting a materialization…", icon=":material/hourglass_top:")
        return True
    elapsed = (datetime.now(UTC) - run["started_at"]).total_seconds()
    st.info(
        f"Materialization #{run['id']} is running — started by **{plain(run['requested_by'], 40)}** "
        f"{ago(elapsed)} ago, up to {run['window_end']:%Y-%m-%d %H:%M} UTC. "
        f"Progress: {plain(run['progress'] or 'starting…', 200)}",
        icon=":material/sync:",
    )
    return True


require("admin")
st.title(":material/sync: Materialize")
user, role = current_user()
s = settings()

with guarded("The online store's state is unavailable"):
    st.subheader("Online store freshness")
    st.dataframe(
        _lag(s),
        hide_index=True,
        column_config={
            "last window start": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "last window end": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "newest offline row": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        },
    )

try:
    running_now = runner().busy() or run_log.active_run(s) is not None
except Exception as exc:
    show_error(exc, "Cannot tell whether a materialization is running")
    st.stop()

last_failed = False
with guarded():
    runs = run_log.materialize_runs(s, limit=1)
    last_failed = bool(runs) and runs[0]["status"] == "failed"

if st.button(
    "Run again (materialize up to now)" if last_failed else "Materialize up to now",
    type="primary",
    icon=":material/play_arrow:",
    key="ld_materialize",
):
    try:
        why_not = runner().start(s, user)
    except Exception as exc:
        show_error(exc, "The materialization could not start")
        why_not = ""
    if why_not:
        st.warning(plain(why_not), icon=":material/hourglass_top:")
    elif why_not is None:
        st.session_state["ld_mat_started"] = True
        st.rerun()


@st.fragment(run_every=1.0)
def _follow() -> None:
    try:
        still = _progress(s)
    except Exception as exc:
        show_error(exc, "Lost track of the materialization")
        return
    if not still:
        _lag.clear()
        st.rerun(scope="app")


if running_now:
    _follow()
elif st.session_state.pop("ld_mat_started", False):
    if runner().error:
        st.error(f"The materialization failed: {plain(runner().error, 300)}", icon=":material/error:")
    else:
        st.success("Materialization complete.", icon=":material/check_circle:")

st.subheader("Runs")
with guarded("The run history is unavailable"):
    _history(s)
