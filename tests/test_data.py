"""Loading: idempotence, clean replacement, the tutorial importer, bad input."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import psycopg
import pytest

from bootstrap.load import LoadError, LoadRequest, load
from bootstrap.services import ensure_database
from tests.conftest import NAMES, TUTORIAL_DIR, claim_database, drop_database, run_cli


@pytest.fixture(scope="module")
def scratch(settings):
    """A database of this module's own (made afresh, dropped at the end), so replacing data
    does not disturb other tests."""
    s = dataclasses.replace(settings, pgdatabase=NAMES.load_db)
    claim_database(settings, s.pgdatabase, fresh=True)
    ensure_database(s)
    yield s
    drop_database(settings, s.pgdatabase)


def _counts(s) -> dict:
    with psycopg.connect(**s.pg_kwargs()) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("loans", "credit_history", "zipcode_features")
        }


def _checksum(s) -> str:
    with psycopg.connect(**s.pg_kwargs()) as conn:
        return conn.execute(
            "SELECT md5(string_agg(dob_ssn || event_timestamp::text || credit_card_due, ',' "
            "ORDER BY dob_ssn, event_timestamp)) FROM credit_history"
        ).fetchone()[0]


def test_load_is_idempotent_and_replaces_cleanly(scratch):
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    changed, _ = load(scratch, LoadRequest(applicants=500, seed=3, as_of=as_of))
    assert changed
    first, digest = _counts(scratch), _checksum(scratch)
    assert first["loans"] == 500 and first["credit_history"] == 500 * 8

    changed, msg = load(scratch, LoadRequest(applicants=500, seed=3, as_of=as_of))
    assert not changed and "already loaded" in msg
    assert _counts(scratch) == first and _checksum(scratch) == digest

    # Forced reload of the same request gives the same rows (the generator is seeded).
    load(scratch, LoadRequest(applicants=500, seed=3, as_of=as_of), force=True)
    assert _counts(scratch) == first and _checksum(scratch) == digest

    changed, msg = load(scratch, LoadRequest(applicants=800, seed=3, as_of=as_of))
    assert changed and msg.startswith("replaced synthetic data (500 applicants")
    assert _counts(scratch)["loans"] == 800


def test_bad_input_changes_nothing(scratch, tmp_path):
    before, digest = _counts(scratch), _checksum(scratch)
    with pytest.raises(LoadError, match="loan_table.parquet is missing"):
        load(scratch, LoadRequest(source="tutorial", data_dir=tmp_path))
    (tmp_path / "loan_table.parquet").write_bytes(b"not parquet")
    (tmp_path / "zipcode_table.parquet").write_bytes(b"not parquet")
    with pytest.raises(LoadError, match="could not read"):
        load(scratch, LoadRequest(source="tutorial", data_dir=tmp_path))
    with pytest.raises(LoadError, match="between 1 and"):
        load(scratch, LoadRequest(applicants=0))
    assert _counts(scratch) == before and _checksum(scratch) == digest


def test_cli_bad_input_is_one_clear_line(scratch):
    env = {"PGDATABASE": scratch.pgdatabase}
    out = run_cli("loan-desk", "load", "--source", "tutorial", "--data-dir", "/no/such/folder", env=env)
    assert out.returncode == 2
    assert "is not a folder" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("loan-desk", "load", "--applicants", "-5", env=env)
    assert out.returncode == 2 and "between 1 and" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not TUTORIAL_DIR.is_dir(), reason=f"the tutorial's data folder {TUTORIAL_DIR} is absent")
def test_tutorial_importer_on_the_real_files(scratch):
    import pandas as pd

    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    changed, msg = load(scratch, LoadRequest(source="tutorial", data_dir=TUTORIAL_DIR, as_of=as_of))
    assert changed
    loans = pd.read_parquet(TUTORIAL_DIR / "loan_table.parquet")
    zips = pd.read_parquet(TUTORIAL_DIR / "zipcode_table.parquet")
    counts = _counts(scratch)
    assert counts["loans"] == len(loans)
    assert counts["zipcode_features"] == len(zips)
    with psycopg.connect(**scratch.pg_kwargs()) as conn:
        info = conn.execute("SELECT info FROM loan_desk_dataset").fetchone()[0]
        applicants = conn.execute("SELECT count(DISTINCT dob_ssn) FROM credit_history").fetchone()[0]
        newest = conn.execute("SELECT max(event_timestamp) FROM loans").fetchone()[0]
        shift = newest - loans["event_timestamp"].max().to_pydatetime()
        # Loan fields are the file's, unchanged.
        row = conn.execute(
            "SELECT loan_amnt, loan_int_rate, loan_status, event_timestamp FROM loans WHERE loan_id = %s",
            [int(loans.loan_id.iloc[0])],
        ).fetchone()
    if not (TUTORIAL_DIR / "credit_history.parquet").exists():
        assert applicants == loans["dob_ssn"].nunique()
        assert any("synthesized" in n for n in info["notes"])
    assert newest.date() <= as_of.date() and (as_of - newest).days < 2
    first = loans.iloc[0]
    assert row[:3] == (first.loan_amnt, pytest.approx(first.loan_int_rate), first.loan_status)
    assert row[3] - first.event_timestamp.to_pydatetime() == shift
    # Importing the same folder again is a no-op.
    changed, msg = load(scratch, LoadRequest(source="tutorial", data_dir=TUTORIAL_DIR, as_of=as_of))
    assert not changed


# --- reloading while others read ------------------------------------------------------------
PIT_SQL = """
SELECT l.loan_id, c.credit_card_due
FROM (SELECT loan_id, dob_ssn, event_timestamp FROM loans ORDER BY loan_id LIMIT 50) AS l
LEFT JOIN LATERAL (
    SELECT credit_card_due FROM credit_history f
    WHERE f.dob_ssn = l.dob_ssn AND f.event_timestamp <= l.event_timestamp
    ORDER BY f.event_timestamp DESC, f.created_timestamp DESC LIMIT 1) AS c ON TRUE
"""


def _tables_left(s) -> list[str]:
    from bootstrap.load import leftover_tables

    with psycopg.connect(**s.pg_kwargs()) as conn:
        return leftover_tables(conn)


def test_readers_never_wait_for_a_reload(scratch):
    """A reader counting credit_history and running a point-in-time join in a loop during a
    reload of 20k applicants: no query waits for the COPY, each sees the old or the new data."""
    import re
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    from tests.conftest import ROOT

    load(scratch, LoadRequest(applicants=5_000, seed=5), force=True)
    old, new = 5_000 * 8, 20_000 * 8
    stop = threading.Event()
    reads: list[tuple[float, int, int, int]] = []  # (seconds, credit rows, PIT rows, PIT matches)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with psycopg.connect(**scratch.pg_kwargs(), autocommit=True) as conn:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    n = conn.execute("SELECT count(*) FROM credit_history").fetchone()[0]
                    t1 = time.perf_counter()
                    pit = conn.execute(PIT_SQL).fetchall()
                    t2 = time.perf_counter()
                    reads.append((t1 - t0, n, 0, 0))
                    reads.append((t2 - t1, 0, len(pit), sum(r[1] is not None for r in pit)))
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.3)
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "loan-desk"), "load", "--applicants", "20000", "--seed", "6"],
            cwd=ROOT,
            env={**__import__("os").environ, "PGDATABASE": scratch.pgdatabase},
            capture_output=True,
            text=True,
            timeout=600,
        )
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, proc.stderr
    assert not errors, errors
    copy_s = float(re.search(r"COPY\+index ([\d.]+) s", proc.stderr).group(1))
    counts = [r[1] for r in reads if r[1]]
    assert set(counts) == {old, new}, set(counts)  # both generations seen, nothing else
    assert counts.index(new) > 5  # the reader was reading while the load ran
    assert all(r[2] == 50 and r[3] > 0 for r in reads if r[2] or not r[1])  # joins never came back empty
    longest = max(r[0] for r in reads)
    assert longest < 1.0 and longest < copy_s / 2, (longest, copy_s)
    assert _tables_left(scratch) == []


def _load_in_thread(s, req):
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = load(s, req, force=True)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _loader_pid(conn, query_prefix: str, timeout: float = 120) -> int:
    """The backend of the load (application_name 'loan-desk load') in this connection's database
    once it runs ``query_prefix``."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "  # never another run's load
            "AND application_name = 'loan-desk load' AND query LIKE %s",
            [query_prefix + "%"],
        ).fetchone()
        if row:
            return row[0]
        time.sleep(0.01)
    raise AssertionError(f"the load never ran {query_prefix!r}")


def test_a_load_killed_mid_copy_or_mid_switch_leaves_the_old_data(scratch):
    """The loading backend terminated during the COPY, then during the switch (while a reader's
    open transaction keeps the switch retrying): the old data stays live, no table is left."""
    import time

    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    load(scratch, LoadRequest(applicants=700, seed=4, as_of=as_of), force=True)
    before, digest = _counts(scratch), _checksum(scratch)
    with psycopg.connect(**scratch.pg_kwargs(), autocommit=True) as admin:
        thread, outcome = _load_in_thread(scratch, LoadRequest(applicants=30_000, seed=9, as_of=as_of))
        pid = _loader_pid(admin, "COPY")
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        thread.join()
        assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
        assert _counts(scratch) == before and _checksum(scratch) == digest
        assert _tables_left(scratch) == []  # the staging tables went with the transaction

        # A reader holds the live tables: the switch waits (retrying); the backend is killed then.
        with psycopg.connect(**scratch.pg_kwargs()) as reader:
            reader.execute("SELECT count(*) FROM credit_history").fetchone()
            thread, outcome = _load_in_thread(scratch, LoadRequest(applicants=900, seed=9, as_of=as_of))
            pid = _loader_pid(admin, "LOCK TABLE")
            time.sleep(0.6)  # past one lock timeout: the switch is retrying
            assert thread.is_alive()
            assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
            thread.join()
            reader.rollback()
        assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
        assert _counts(scratch) == before and _checksum(scratch) == digest
        assert _tables_left(scratch) == []

        # The same, with the reader finishing after a while: the switch then goes through.
        with psycopg.connect(**scratch.pg_kwargs()) as reader:
            reader.execute("SELECT count(*) FROM credit_history").fetchone()
            thread, outcome = _load_in_thread(scratch, LoadRequest(applicants=900, seed=9, as_of=as_of))
            _loader_pid(admin, "LOCK TABLE")
            time.sleep(1.0)
            assert thread.is_alive()
            reader.rollback()
            thread.join()
        changed, msg = outcome["result"]
        assert changed and msg.startswith("replaced synthetic data (700 applicants")
        assert _counts(scratch)["loans"] == 900


def test_the_next_load_drops_what_an_interrupted_one_left(scratch):
    """Tables of an older generation left behind (a crash between the switch and the drop)."""
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    load(scratch, LoadRequest(applicants=300, seed=2, as_of=as_of), force=True)
    with psycopg.connect(**scratch.pg_kwargs(), autocommit=True) as conn:
        conn.execute("CREATE TABLE credit_history__old_0badc0de AS SELECT * FROM credit_history")
        conn.execute("CREATE TABLE loans__staging_0badc0de (loan_id bigint)")
        conn.execute("CREATE TABLE loans__kept (x int)")  # not a load's name: left alone
    assert _tables_left(scratch) == ["credit_history__old_0badc0de", "loans__staging_0badc0de"]
    changed, _ = load(scratch, LoadRequest(applicants=300, seed=2, as_of=as_of))
    assert not changed  # the same data: still a no-op, and the leftovers are gone
    assert _tables_left(scratch) == []
    with psycopg.connect(**scratch.pg_kwargs(), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('loans__kept') IS NOT NULL").fetchone()[0]
        conn.execute("DROP TABLE loans__kept")
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        pkey = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'loans'::regclass").fetchone()[0]
    assert {"credit_history_pit", "credit_history_ts", "zipcode_features_pit", "loans_ts", "loans_pkey"} <= names
    assert pkey == "loans_pkey"
