"""The Spark profile: the Parquet export, and Feast's Spark offline store and materialization
engine over it, give the Postgres path's training set and online values.

One Spark session (local mode, 1 GB driver) serves the module; the last test stops it midway
through a materialization. The Spark profile's Feast projects share the tests' Redis db with
the Postgres path: their online keys end with their own project names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from bootstrap.export import ExportError, export_parquet
from feast_ext import spark
from feast_ext.spark import EXPORT_TABLES, MANIFEST
from model.features import CREDIT_FEATURES, ONLINE_REFS
from runtime.settings import FEATURE_REPO
from tests.conftest import run_cli

SPARK_PROJECT = "credit_scoring_spark_t"


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def profiles(backbone, tmp_path_factory):
    """(Postgres settings, Spark settings) over an export of the tests' data; Spark running."""
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, clear_online

    pg = backbone["settings"]
    # The Postgres path's online values, whatever earlier tests did to them.
    materialize(pg, requested_by="tests", full=True)
    target = tmp_path_factory.mktemp("spark") / "export"
    export_parquet(pg, target, progress=_quiet)
    sp = dataclasses.replace(pg, offline="spark", export_dir=str(target), project=SPARK_PROJECT)
    apply(sp)
    t0 = time.perf_counter()
    spark.session(sp)
    print(f"Spark session started in {time.perf_counter() - t0:.1f} s")
    yield pg, sp
    spark.stop(jvm=True)
    clear_online(sp)


def _pg_frame(pg, sql: str) -> pd.DataFrame:
    cur = pg.execute(sql)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


# --- the export -------------------------------------------------------------------------------
def test_export_holds_every_row_with_utc_timestamps_by_month(profiles, pg):
    _, sp = profiles
    root = Path(sp.export_location())
    assert root.is_symlink() and os.readlink(root).startswith("export.v-")
    assert root.resolve().stat().st_mode & 0o077 == 0  # personal data: the owner's only
    manifest = json.loads((root / MANIFEST).read_text())
    keys = {"credit_history": ["dob_ssn", "event_timestamp"], "zipcode_features": ["zipcode"], "loans": ["loan_id"]}
    for table in EXPORT_TABLES:
        data = ds.dataset(root / table, format="parquet", partitioning="hive")
        assert str(data.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
        got = data.to_table().to_pandas()
        want = _pg_frame(pg, f"SELECT * FROM {table}")
        assert manifest["tables"][table]["rows"] == len(want) == len(got)
        # Each row sits in the folder of its event's UTC month.
        months = got["event_timestamp"].dt.strftime("%Y-%m")
        assert (got["event_month"].astype(str) == months).all()
        got = got.drop(columns="event_month")[list(want.columns)]
        order = keys[table] + ["created_timestamp"]
        got = got.sort_values(order, kind="stable").reset_index(drop=True)
        want = want.sort_values(order, kind="stable").reset_index(drop=True)
        for col in ("event_timestamp", "created_timestamp"):
            want[col] = pd.to_datetime(want[col], utc=True)
            assert (got[col] == want[col]).all(), (table, col)
            got[col] = want[col]  # equal above; Parquet's microseconds vs pandas' nanoseconds aside
        pd.testing.assert_frame_equal(got, want, check_dtype=False, check_datetimelike_compat=True)


def test_reexport_swaps_the_whole_export_in_one_step(profiles, tmp_path):
    pg, _ = profiles
    target = tmp_path / "exp"
    export_parquet(pg, target, progress=_quiet)
    first = os.readlink(target)
    before = (target / MANIFEST).read_text()
    seen = []

    def halfway(_msg: str) -> None:
        # A table of the new export is written: readers of DIR still get the previous one, whole.
        seen.append((os.readlink(target), (target / MANIFEST).read_text()))
        assert all((target / t).is_dir() for t in EXPORT_TABLES)

    export_parquet(pg, target, progress=halfway)
    assert seen and all(link == first and text == before for link, text in seen)
    second = os.readlink(target)
    assert second != first
    assert not (tmp_path / first).exists()  # the previous version is gone once replaced
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["exp", second]

    def fail_after_the_first_table(_msg: str) -> None:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        export_parquet(pg, target, progress=fail_after_the_first_table)
    assert os.readlink(target) == second  # nothing changed, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["exp", second]


def test_a_folder_the_export_cannot_use_is_refused(profiles, tmp_path):
    pg, _ = profiles
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me too")
    for target, words in ((afile, "is a file"), (afile / "sub", "is a file"), (busy, "other files in it")):
        with pytest.raises(ExportError, match=words):
            export_parquet(pg, target, progress=_quiet)
    assert afile.read_text() == "keep me" and (busy / "notes.txt").read_text() == "keep me too"

    if os.geteuid() == 0:  # root writes anywhere a mode allows: /sys refuses even root
        locked = Path("/sys/loan-desk-export-test")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        locked = tmp_path / "ro" / "export"
    for target, words in ((afile, "is a file, not a folder"), (locked, "cannot write in")):
        out = run_cli("loan-desk", "export", "--parquet", str(target), timeout=120)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("loan-desk: error:") and words in lines[0], out.stderr
    assert afile.read_text() == "keep me"


# --- Feast over the export --------------------------------------------------------------------
def test_both_profiles_register_the_same_views(profiles):
    from feast_ext.store import feature_store

    pg, sp = profiles
    pg_views = {fv.name: fv for fv in feature_store(pg).list_feature_views()}
    sp_views = {fv.name: fv for fv in feature_store(sp).list_feature_views()}
    assert set(pg_views) == set(sp_views) == {"credit_history", "zipcode_features"}
    for name, a in pg_views.items():
        b = sp_views[name]
        assert (a.entities, a.ttl, a.online, a.tags) == (b.entities, b.ttl, b.online, b.tags)
        assert [(f.name, f.dtype) for f in a.features] == [(f.name, f.dtype) for f in b.features]
        assert type(b.batch_source).__name__ == "SparkSource"
        assert b.batch_source.path == f"{sp.export_location()}/{name}"
        assert b.batch_source.date_partition_column == "event_month"

    # Spark's Python workers run this virtualenv's interpreter, whatever `python3` is on PATH.
    assert spark.session(sp).sparkContext.pythonExec == sys.executable

    # The feast CLI in a terminal, after `eval "$(loan-desk env)"` under the Spark profile, reads
    # feature_store.spark.yaml and the same definitions over the export: nothing to create or
    # delete (Feast's plan always lists views as updated: their sources' registry timestamps).
    out = run_cli("feast", "plan", "--skip-source-validation", cwd=FEATURE_REPO, env=sp.feast_env(), timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"Using project name {sp.project}" in out.stdout
    assert "Created" not in out.stdout and "Deleted" not in out.stdout, out.stdout[-2000:]
    assert f'path: "{sp.export_location()}/credit_history"' in out.stdout


def _assert_same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert sorted(a.columns) == sorted(b.columns)
    assert len(a) == len(b)
    a = a.sort_values("loan_id").reset_index(drop=True)
    b = b.sort_values("loan_id").reset_index(drop=True)[list(a.columns)]
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_datetime64_any_dtype(x):
            assert str(x.dt.tz) == str(y.dt.tz) == "UTC", col
            assert (x == y).all(), col
        elif pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            np.testing.assert_array_equal(x.to_numpy(dtype="float64"), y.to_numpy(dtype="float64"), err_msg=col)
        else:
            norm = lambda s: [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in s]  # noqa: E731
            assert norm(x) == norm(y), col


def test_spark_training_set_equals_the_postgres_one(profiles, tmp_path, monkeypatch):
    """`loan-desk train` under the Spark profile: the same training set, value for value, and
    the same booster, byte for byte."""
    import model.train as training
    from feast_ext.store import feature_store

    pg, sp = profiles
    frames = []

    def keep(store, entity_sql):  # the real join; the frame is kept to compare
        frames.append(real(store, entity_sql))
        return frames[-1]

    real = training.training_frame
    monkeypatch.setattr(training, "training_frame", keep)
    t0 = time.perf_counter()
    meta_sp = training.train(feature_store(sp), sp, out_dir=tmp_path / "spark", compare=False)
    join_s = meta_sp["point_in_time_join_seconds"]
    print(f"training through Spark: {time.perf_counter() - t0:.1f} s (join {join_s:.1f} s)")
    meta_pg = training.train(feature_store(pg), pg, out_dir=tmp_path / "postgres", compare=False)
    got, want = frames
    assert len(want) >= 3000
    _assert_same_frames(want, got)
    booster_sp = Path(meta_sp["written_to"]) / "model.json"
    assert booster_sp.read_bytes() == (Path(meta_pg["written_to"]) / "model.json").read_bytes()
    assert meta_sp["metrics"]["auc"] == meta_pg["metrics"]["auc"]

    # Entity rows 300 days after the loans: many credit files are past the view's TTL by then,
    # so the two joins must also agree on which rows come back empty (NaN).
    cols = "loan_id, dob_ssn, zipcode, loan_status"
    loans = f"parquet.`{sp.export_location()}/loans`"
    with spark.job_errors("the training set"):
        got = real(
            feature_store(sp), f"SELECT {cols}, event_timestamp + INTERVAL 300 DAYS AS event_timestamp FROM {loans}"
        )
    want = real(
        feature_store(pg), f"SELECT {cols}, event_timestamp + interval '300 days' AS event_timestamp FROM loans"
    )
    assert want["credit_card_due"].isna().any() and want["credit_card_due"].notna().any()
    _assert_same_frames(want, got)


def _online_hashes(settings, project: str) -> dict[bytes, dict]:
    """Every online row of a project, keyed by its entity key without the project name."""
    import redis

    r = redis.Redis.from_url(settings.redis_url)
    suffix = project.encode()
    keys = [k for k in r.scan_iter(match=b"*" + suffix, count=10_000) if k.endswith(suffix)]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    return {k[: -len(suffix)]: h for k, h in zip(keys, pipe.execute(), strict=True)}


def test_spark_materialization_writes_the_postgres_online_values(profiles, pg):
    from feast_ext.materialize import materialize
    from feast_ext.online_reader import OnlineReader
    from feast_ext.store import feature_store

    pg_settings, sp = profiles
    t0 = time.perf_counter()
    res = materialize(sp, requested_by="tests", full=True, progress=_quiet)
    print(f"Spark materialization: {res.rows:,} entities in {time.perf_counter() - t0:.1f} s")

    # Byte for byte: every entity's Redis hash (values and timestamps) equals the Postgres path's.
    want, got = _online_hashes(pg_settings, pg_settings.project), _online_hashes(sp, sp.project)
    assert len(want) == res.rows >= 4000
    assert got == want

    # Through Feast's API and the inference module's reader.
    pg_store, sp_store = feature_store(pg_settings), feature_store(sp)
    applicants = [r[0] for r in pg.execute("SELECT DISTINCT dob_ssn FROM credit_history ORDER BY 1").fetchall()]
    zipcodes = [r[0] for r in pg.execute("SELECT DISTINCT zipcode FROM zipcode_features ORDER BY 1").fetchall()]
    credit_refs = [r for r in ONLINE_REFS if r.startswith("credit_history:")]
    zip_refs = [r for r in ONLINE_REFS if r.startswith("zipcode_features:")]
    for refs, rows in (
        (credit_refs, [{"dob_ssn": a} for a in applicants]),
        (zip_refs, [{"zipcode": int(z)} for z in zipcodes]),
    ):
        a = pg_store.get_online_features(features=refs, entity_rows=rows).to_dict()
        b = sp_store.get_online_features(features=refs, entity_rows=rows).to_dict()
        assert a == b
        assert sum(v is not None for v in a[refs[0].split(":")[1]]) > len(rows) // 2
    views = ("credit_history", "zipcode_features")
    pg_reader, sp_reader = OnlineReader(pg_store, views), OnlineReader(sp_store, views)
    loans = pg.execute("SELECT dob_ssn, zipcode FROM loans ORDER BY loan_id LIMIT 300").fetchall()
    for dob_ssn, zipcode in loans:
        assert sp_reader.read(dob_ssn, int(zipcode)) == pg_reader.read(dob_ssn, int(zipcode))


# --- a Spark job stopped midway (last: it stops the module's Spark) --------------------------------
SENTINEL_TS = datetime(2001, 1, 1, tzinfo=UTC)


def test_a_spark_job_stopped_midway(profiles, pg):
    """Stopping Spark while Feast's Spark engine materializes: one sentence; the registry's
    materialized windows do not move; each applicant's online row is its previous row or its
    new row, whole (one HSET per entity). The engine writes from its Spark tasks as each
    finishes, so what was written before the stop stays: no all-or-nothing across entities.
    Running it again completes it."""
    import redis

    from feast_ext.materialize import materialization_state
    from feast_ext.online_reader import OnlineReader
    from feast_ext.store import clear_online, feature_store

    _, sp = profiles
    store = feature_store(sp)
    windows = materialization_state(store)
    # The previous values: every applicant's credit row set to -1, dated 2001.
    clear_online(sp)
    applicants = [r[0] for r in pg.execute("SELECT DISTINCT dob_ssn FROM credit_history ORDER BY 1").fetchall()]
    previous = pd.DataFrame({"dob_ssn": applicants})
    for col in CREDIT_FEATURES:
        previous[col] = -1
    previous["event_timestamp"] = SENTINEL_TS
    previous["created_timestamp"] = SENTINEL_TS
    store.write_to_online_store("credit_history", previous)

    # A cheap probe of the credit rows' timestamps (one pipelined HGET per applicant).
    reader, r = OnlineReader(store, ("credit_history",)), redis.Redis.from_url(sp.redis_url)
    keys = [reader._key("dob_ssn", "string_val", None, a) for a in applicants]

    def stamps() -> list:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, b"_ts:credit_history")
        return pipe.execute()

    before = stamps()
    assert None not in before

    def written() -> int:
        return sum(a != b for a, b in zip(stamps(), before, strict=True))

    since, end = datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with spark.job_errors("materializing credit_history"):
                store.materialize(start_date=since, end_date=end, feature_views=["credit_history"])
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            errors.append(exc)

    session = spark.session(sp)
    # Four write tasks rather than one (Spark would merge the small shuffle partitions), so a
    # stop can land between them.
    session.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    sc = session.sparkContext
    worker = threading.Thread(target=run)
    worker.start()
    # Stop Spark once the first rows are online (or 60 s after its first stage started).
    deadline = time.monotonic() + 180
    while worker.is_alive() and time.monotonic() < deadline and not sc.statusTracker().getActiveStageIds():
        time.sleep(0.02)
    until = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < until and not written():
        time.sleep(0.005)
    assert worker.is_alive(), "the materialization ended before it could be stopped"
    spark.stop()
    worker.join(180)
    assert not worker.is_alive()

    # One clear sentence (what `loan-desk materialize` prints and records as the run's error).
    assert len(errors) == 1 and isinstance(errors[0], spark.SparkJobFailed), errors
    message = str(errors[0])
    assert "\n" not in message and "stopped before it finished" in message and len(message) < 500, message
    assert materialization_state(feature_store(sp)) == windows  # no window recorded for the stopped run

    # Each applicant's row is whole: the previous one or the new one (the latest snapshot).
    latest = {
        row[0]: row[1:]
        for row in pg.execute(
            "SELECT DISTINCT ON (dob_ssn) dob_ssn, " + ", ".join(CREDIT_FEATURES) + " FROM credit_history "
            "ORDER BY dob_ssn, event_timestamp DESC, created_timestamp DESC"
        ).fetchall()
    }
    refs = [f"credit_history:{c}" for c in CREDIT_FEATURES]
    rows_of = [{"dob_ssn": a} for a in applicants]

    def online_rows() -> list[tuple]:
        got = store.get_online_features(features=refs, entity_rows=rows_of).to_dict()
        return [tuple(got[c][i] for c in CREDIT_FEATURES) for i in range(len(applicants))]

    rows = online_rows()
    kept = sum(row == (-1,) * len(CREDIT_FEATURES) for row in rows)
    new = sum(row == tuple(latest[a]) for a, row in zip(applicants, rows, strict=True))
    print(f"stopped midway: {kept:,} previous rows kept, {new:,} new rows written, of {len(applicants):,}: {message}")
    assert kept + new == len(applicants)

    # Again, with Spark started afresh: every row new, the window recorded.
    spark.session(sp)
    with spark.job_errors("materializing credit_history"):
        store.materialize(start_date=since, end_date=end, feature_views=["credit_history"])
    assert online_rows() == [tuple(latest[a]) for a in applicants]
    assert materialization_state(feature_store(sp))["credit_history"][1] == end
