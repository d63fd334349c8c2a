"""Honest run states: a materialization whose process is gone shows as interrupted, and an error
that could not be recorded when it happened is recorded by the next run."""

from __future__ import annotations

import time

import psycopg
import pytest

from runtime.runs import LOCK_KEY


def _lock_params():
    return [(LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF]


def test_a_run_whose_backend_died_shows_as_interrupted_then_is_settled(backbone, pg):
    """A real fault: a session takes the lock and records a running run, then its backend is killed."""
    from feast_ext.materialize import materialize
    from runtime import runs

    s = backbone["settings"]
    victim = psycopg.connect(**s.pg_kwargs(), autocommit=True)
    assert victim.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]
    run_id = victim.execute(
        "INSERT INTO loan_desk_materialize_runs (requested_by, window_end, progress) "
        "VALUES ('t_killed', now(), '[1/2] credit_history: 2,000 rows written') RETURNING id"
    ).fetchone()[0]
    assert next(r for r in runs.materialize_runs(s) if r["id"] == run_id)["status"] == "running"
    pid = victim.info.backend_pid
    pg.execute("SELECT pg_terminate_backend(%s)", [pid])
    victim.close()
    for _ in range(100):  # pg_terminate_backend only signals; wait until the backend has exited
        if not pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            break
        time.sleep(0.05)

    shown = next(r for r in runs.materialize_runs(s) if r["id"] == run_id)
    assert shown["status"] == "interrupted"
    assert "next run completes it" in shown["error"]
    assert shown["progress"].endswith("2,000 rows written")  # what it had written
    assert runs.active_run(s) is None

    materialize(s, requested_by="t_after")
    stored = pg.execute("SELECT status, finished_at FROM loan_desk_materialize_runs WHERE id = %s", [run_id]).fetchone()
    assert stored[0] == "interrupted" and stored[1] is not None


def test_an_error_lost_with_the_connection_is_recorded_by_the_next_run(backbone, pg):
    """The run's own connection is terminated mid-run: its error cannot be written then, and is later."""
    from feast_ext.materialize import materialize

    s = backbone["settings"]
    state = {"killed": False}

    def progress(msg: str) -> None:
        if not state["killed"]:
            state["killed"] = True
            pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                _lock_params(),
            )

    with pytest.raises(psycopg.OperationalError):
        materialize(s, requested_by="t_lost", progress=progress)
    run_id, status = pg.execute(
        "SELECT id, status FROM loan_desk_materialize_runs WHERE requested_by = 't_lost' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert status == "running"  # nothing could be written; the page shows it as interrupted meanwhile

    materialize(s, requested_by="t_next")
    status, error = pg.execute(
        "SELECT status, error FROM loan_desk_materialize_runs WHERE id = %s", [run_id]
    ).fetchone()
    assert status == "failed"
    assert "recorded by the next run" in error and "terminating connection" in error
