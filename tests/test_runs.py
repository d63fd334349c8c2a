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


def test_an_incremental_run_with_nothing_new_reports_no_entities_written(backbone, pg):
    """The runs table records the online key total; the page reports what each window brought."""
    from datetime import timedelta

    from psycopg import sql

    from feast_ext.materialize import materialize
    from runtime import runs
    from runtime.explore import VIEWS

    s = backbone["settings"]
    first = materialize(s, requested_by="t_changes_1")
    second = materialize(s, requested_by="t_changes_2", end=first.end + timedelta(seconds=1))
    assert second.mode == "incremental"
    recent = runs.materialize_runs(s, limit=10)
    changes = runs.run_changes(s, recent)
    by_who = {r["requested_by"]: r for r in recent}
    assert by_who["t_changes_2"]["rows"] > 0  # what the job records: every key online
    assert changes[by_who["t_changes_2"]["id"]] == 0  # what it brought: nothing new
    # A full window counts every entity with a row in it.
    full = next(r for r in runs.materialize_runs(s, limit=100) if r["mode"] == "full")
    query = "SELECT count(DISTINCT {}) FROM {} WHERE event_timestamp > %s AND event_timestamp <= %s"
    expected = sum(
        pg.execute(
            sql.SQL(query).format(sql.Identifier(v.entity), sql.Identifier(v.table)),
            [full["window_start"], full["window_end"]],
        ).fetchone()[0]
        for v in VIEWS.values()
    )
    assert runs.run_changes(s, [full])[full["id"]] == expected > 0


def test_progress_fraction_follows_the_run_line():
    from runtime.runs import progress_fraction

    expected = {"zipcode_features": 1000, "credit_history": 3000}
    assert progress_fraction(None, expected) == 0.0
    assert progress_fraction("[1/2] materializing zipcode_features ...", expected) == 0.0
    assert progress_fraction("[1/2] zipcode_features: 500 rows written", expected) == pytest.approx(0.25)
    assert progress_fraction("[2/2] credit_history: 1,500 rows written", expected) == pytest.approx(0.75)
    assert progress_fraction("[2/2] credit_history: 9,000 rows written", expected) < 1.0  # more than expected
    assert progress_fraction("removed 12 online rows of entities no longer in the data", expected) is None
    assert progress_fraction("done", expected) == 1.0
