"""Loading: idempotence, clean replacement, the tutorial importer, bad input."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import psycopg
import pytest

from bootstrap.load import LoadError, LoadRequest, load
from bootstrap.services import ensure_database
from tests.conftest import TUTORIAL_DIR, run_cli


@pytest.fixture(scope="module")
def scratch(settings):
    """A database of this module's own, so replacing data does not disturb other tests."""
    s = dataclasses.replace(settings, pgdatabase=settings.pgdatabase + "_load")
    ensure_database(s)
    return s


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
