"""Materialize (admins): how old the online data is, what a run would do, run it, see every run.

One run at a time across all sessions and processes: feast_ext.materialize takes a Postgres
advisory lock and records each run; this page starts it on a background thread and follows the
run's row in Postgres, so every admin (in any process) sees the same progress.  The page says
what a click will do before it is clicked (full refresh or incremental, the window, the new
offline rows), and reports a run as finished only once its row says so.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from feast_ext.materialize import AlreadyRunning, materialization_state, materialize, needs_full_refresh
from feast_ext.store import feature_store
from pages._ui import ago, current_user, explain, guarded, plain, require, settings, show_error
from runtime import db, explore
from runtime import runs as run_log
from runtime.dataset import data_state
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


@dataclass
class ViewPlan:
    name: str
    window_end: datetime | None  # end of its last materialized window (None: never)
    oldest: datetime | None
    newest: datetime | None
    online_newest: datetime | None  # the newest event time the online store can hold
    pending: int  # offline rows the next run writes
    entities: int  # distinct entities among them (what lands in the online store)


@dataclass
class Plan:
    """What a click on the button does now."""

    full: bool
    why: str
    start: datetime | None  # None: each view from its own last window end
    end: datetime
    ttl: timedelta | None
    views: list[ViewPlan] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(v.pending for v in self.views)

    @property
    def entities(self) -> int:
        return sum(v.entities for v in self.views)

    @property
    def anything_new(self) -> bool:
        return self.full or self.rows > 0


def _plan(s: Settings) -> Plan:
    d = _plan_fields(s)
    return Plan(**{**d, "views": [ViewPlan(**v) for v in d["views"]]})


@st.cache_data(ttl=10, show_spinner=False)
def _plan_fields(s: Settings) -> dict:
    """The plan as plain data (st.cache_data pickles it; classes of a page script do not pickle)."""
    store = feature_store(s)
    state = materialization_state(store)
    with db.connection(s) as conn:
        full = needs_full_refresh(store, conn)
    ttls = {fv.name: fv.ttl for fv in store.list_feature_views() if fv.ttl}
    longest = max(ttls.values(), default=None)
    now = datetime.now(UTC)
    start = (now - longest if longest else None) if full else None
    if not full:
        why = "incremental: each view from the end of its last window up to now"
    elif any(end is None for _, end in state.values()):
        why = "full refresh: the online store was never filled"
    else:
        loaded = data_state(s).loaded_at
        why = f"full refresh: the data was reloaded ({loaded:%Y-%m-%d %H:%M} UTC) after the last successful run"
    plan = Plan(full=full, why=why, start=start, end=now, ttl=longest)
    for name, (_, end) in sorted(state.items()):
        if name not in explore.VIEWS:
            continue
        w = explore.offline_window(s, name, start if full else end, now)
        # The online store holds what was materialized: rows up to the view's last window end.
        if full:
            online_newest = explore.offline_window(s, name, end, now)["online_newest"] if end else None
        else:
            online_newest = w["online_newest"]
        plan.views.append(
            ViewPlan(name, end, w["oldest"], w["newest"], online_newest, w["pending"], w["pending_entities"])
        )
    return asdict(plan)


@st.cache_data(ttl=30, show_spinner=False)
def _loaded_at(s: Settings) -> str:
    state = data_state(s)
    return state.loaded_at.isoformat() if state.loaded_at else ""


@st.cache_data(ttl=3600, show_spinner=False)
def _entities_in_window(s: Settings, stamp: str, start: datetime | None, end: datetime) -> int:
    """Cached per window and load: a finished run's count does not change until the data is reloaded."""
    return run_log.entities_in_window(s, start, end)


def _changes(s: Settings, runs: list[dict]) -> dict[int, int]:
    stamp = _loaded_at(s)
    return {i: _entities_in_window(s, stamp, a, b) for i, (a, b) in run_log.run_windows(s, runs).items()}


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if t else "—"


def _freshness(plan: Plan, last_success: dict | None) -> None:
    now = datetime.now(UTC)
    c = st.container(horizontal=True, gap="medium")
    for v in plan.views:
        c.metric(
            f"{v.name} data age",
            ago((now - v.online_newest).total_seconds()) if v.online_newest else "none online",
            help=f"How old the newest {v.name} row in the online store is (its event time): the freshest "
            "features a decision can read. Not the time since the last run.",
            width="content",
        )
    c.metric(
        "Last successful run",
        (ago((now - last_success["finished_at"]).total_seconds()) + " ago") if last_success else "never",
        help="Time since a materialization last finished; a run can succeed with no new data.",
        width="content",
    )
    c.metric(
        "Rows the next run reads",
        f"{plan.rows:,}",
        help="Offline rows in the next run's window: the new ones for an incremental run, all of them for a full "
        "refresh.",
        width="content",
    )
    table = pd.DataFrame(
        [
            {
                "feature view": v.name,
                "materialized up to": v.window_end,
                "newest data online": v.online_newest,
                "data age": ago((now - v.online_newest).total_seconds()) if v.online_newest else "no data online",
                "newest offline row": v.newest,
                "rows the next run reads": v.pending,
                "oldest offline row": v.oldest,
            }
            for v in plan.views
        ]
    )
    fmt = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "materialized up to": fmt,
            "newest data online": fmt,
            "newest offline row": fmt,
            "oldest offline row": fmt,
            "rows the next run reads": st.column_config.NumberColumn(format="localized"),
        },
    )


def _preview(plan: Plan) -> None:
    lines = [f"**Mode:** {plan.why}."]
    if plan.full:
        oldest = min((v.oldest for v in plan.views if v.oldest), default=None)
        first = "**Window:** "
        if plan.start is None:
            first += f"every row up to now ({_when(plan.end)} UTC)."
        else:
            first += (
                f"{_when(plan.start)} → {_when(plan.end)} UTC: now minus the longest feature TTL "
                f"({plan.ttl.days:,} days); an older row is past every view's TTL, so no lookup could use it."
            )
            if oldest is not None:
                first += (
                    f" The oldest offline row is {oldest:%Y-%m-%d}, so the window covers all of the data."
                    if oldest >= plan.start
                    else f" The oldest offline row is {oldest:%Y-%m-%d}; rows before {plan.start:%Y-%m-%d} stay out."
                )
        lines.append(first)
        lines.append(
            f"**Writes:** {plan.entities:,} entities (the latest of {plan.rows:,} offline rows each), "
            "replacing every online row of this project; entities no longer in the data are removed."
        )
    else:
        for v in plan.views:
            lines.append(
                f"**{plain(v.name)}:** {_when(v.window_end)} → {_when(plan.end)} UTC — "
                + (
                    f"{v.pending:,} new offline rows, {v.entities:,} entities to update."
                    if v.pending
                    else "nothing new."
                )
            )
        if not plan.anything_new:
            lines.append("Nothing new since the last window: a run would only move the window's end to now.")
    st.markdown("  \n".join(lines))


def _progress(s: Settings) -> bool:
    """Show the run in progress; True while one is running."""
    run = run_log.active_run(s)
    mine = runner()
    if run is None and not mine.busy():
        return False
    if run is None:
        st.progress(0.0, text="Starting a materialization…")
        return True
    elapsed = (datetime.now(UTC) - run["started_at"]).total_seconds()
    expected = st.session_state.get("ld_mat_expected", {})
    key = f"ld_mat_fraction_{run['id']}"  # a bar only moves forward
    fraction = run_log.progress_fraction(run["progress"], expected)
    st.session_state[key] = max(st.session_state.get(key, 0.0), fraction if fraction is not None else 0.0)
    st.progress(
        st.session_state[key],
        text=f"Materialization #{run['id']} — started by {plain(run['requested_by'], 40)} {ago(elapsed)} ago, "
        f"up to {run['window_end']:%Y-%m-%d %H:%M} UTC: {plain(run['progress'] or 'starting…', 200)}",
    )
    return True


def _history(s: Settings, runs: list[dict]) -> None:
    if not runs:
        st.caption("No runs yet.")
        return
    last = runs[0]
    if last["status"] == "failed":
        st.error(f"The last run (#{last['id']}) failed: {plain(last['error'] or '', 300)}", icon=":material/error:")
    changes = _changes(s, runs)
    table = pd.DataFrame(
        [
            {
                "run": r["id"],
                "who": plain(r["requested_by"], 40),
                "started (UTC)": f"{r['started_at']:%Y-%m-%d %H:%M}",
                "window": (f"{r['window_start']:%Y-%m-%d %H:%M}" if r["window_start"] else "since last run")
                + f" → {r['window_end']:%Y-%m-%d %H:%M}",
                "mode": plain(r["mode"] or ""),
                "entities written": "" if r["id"] not in changes else f"{changes[r['id']]:,}",
                "online keys after": "" if r["rows"] is None else f"{r['rows']:,}",
                "duration": "" if r["seconds"] is None else f"{r['seconds']:.1f} s",
                "result": plain(r["status"]),
                "error": plain(r["error"] or "", 300),
            }
            for r in runs
        ]
    ).set_index("run")
    st.table(table)
    st.caption(
        "Entities written: the entities with a row in the run's window (an incremental run's window starts where "
        "the run before it ended), counted on the offline tables as they are now. Online keys after: every key of "
        "this project in the online store when the run ended."
    )


def _outcome(s: Settings, user: str) -> None:
    """The run this session started, as its row in Postgres says (shown once, after it ended)."""
    after = st.session_state.pop("ld_mat_after", None)
    if after is None:
        return
    run = run_log.run_after(s, after, user)
    if run is None:
        st.error(f"The materialization did not start: {plain(runner().error or 'no run was recorded', 300)}")
    elif run["status"] == "succeeded":
        written = _changes(s, [run]).get(run["id"], 0)
        st.success(
            f"Materialization #{run['id']} complete ({plain(run['mode'] or '')}, {run['seconds']:.1f} s): "
            f"{written:,} entities written; {run['rows'] or 0:,} keys online.",
            icon=":material/check_circle:",
        )
    else:
        st.error(
            f"Materialization #{run['id']} {plain(run['status'])}: {plain(run['error'] or runner().error or '', 300)}",
            icon=":material/error:",
        )


require("admin")
st.title(":material/sync: Materialize")
user, role = current_user()
s = settings()

try:
    running_now = runner().busy() or run_log.active_run(s) is not None
    runs = run_log.materialize_runs(s, limit=25)
except Exception as exc:
    show_error(exc, "Cannot read the materialization runs")
    st.stop()
last_success = next((r for r in runs if r["status"] == "succeeded"), None)

plan = None
st.subheader("Online store")
with guarded("The online store's state is unavailable"):
    plan = _plan(s)
    _freshness(plan, last_success)

st.subheader("What a run does now")
if plan is not None:
    _preview(plan)
last_failed = bool(runs) and runs[0]["status"] == "failed"
label = "Run again (materialize up to now)" if last_failed else "Materialize up to now"
if st.button(
    label,
    type="primary" if plan is None or plan.anything_new or last_failed else "secondary",
    icon=":material/play_arrow:",
    key="ld_materialize",
    disabled=running_now,
    help=None if plan is None or plan.anything_new else "Nothing new to write; the window's end moves to now.",
):
    try:
        after = run_log.last_run_id(s)
        why_not = runner().start(s, user)
    except Exception as exc:
        show_error(exc, "The materialization could not start")
        why_not = ""
    if why_not:
        st.warning(plain(why_not), icon=":material/hourglass_top:")
    elif why_not is None:
        st.session_state["ld_mat_after"] = after
        st.session_state["ld_mat_expected"] = {v.name: v.entities for v in plan.views} if plan else {}
        st.rerun()


@st.fragment(run_every=1.0)
def _follow() -> None:
    try:
        still = _progress(s)
    except Exception as exc:
        show_error(exc, "Lost track of the materialization")
        return
    if not still:
        _plan_fields.clear()
        st.rerun(scope="app")


if running_now:
    _follow()
else:
    with guarded("Cannot read the run's result"):
        _outcome(s, user)

st.subheader("Runs")
with guarded("The run history is unavailable"):
    _history(s, runs)
