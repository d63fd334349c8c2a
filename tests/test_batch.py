"""Batch scoring and `loan-desk decide`: decide_many against decide, CSV edge cases, recorded
batches, a batch that fails midway, and the two CLI commands — on real Postgres and Valkey."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import tracemalloc
import uuid
from datetime import datetime

import psycopg
import pytest

from model.batch import COLUMNS, REQUIRED, AlreadyScored, BatchInputError, neutralize, score_csv
from model.inference import ApplicationError, DecisionService
from runtime import audit
from runtime.batches import batch_by_id
from tests.conftest import run_cli

FIELDS = ("dob_ssn", *REQUIRED)  # the columns the scorer needs, in its order
UNKNOWN = "19800101_0000"  # no credit file: referred, not decided on NaN


@pytest.fixture(scope="module")
def service(backbone):
    s = DecisionService(settings=backbone["settings"])
    s.warm()
    return s


@pytest.fixture(scope="module")
def loans(backbone) -> list[dict]:
    """Real applicants of the session's data, within the model's ranges."""
    s = backbone["settings"]
    with psycopg.connect(**s.pg_kwargs()) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(FIELDS)} FROM loans WHERE person_income BETWEEN 4000 AND 2000000 "
            "AND loan_amnt BETWEEN 500 AND 35000 AND loan_int_rate BETWEEN 5 AND 25 "
            "AND dob_ssn < '2007' AND dob_ssn > '1930' AND person_emp_length <= "
            "date_part('year', age(to_date(left(dob_ssn, 8), 'YYYYMMDD'))) - 14 ORDER BY loan_id LIMIT 400"
        ).fetchall()
    return [dict(zip(FIELDS, r, strict=True)) for r in rows]


def _csv(rows: list[list], header=FIELDS, bom: bool = False, newline: str = "\r\n") -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=newline)
    w.writerow(header)
    w.writerows(rows)
    return (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8")


def _score(settings, service, data: bytes, name: str, **kw):
    """Score ``data``; ``again`` defaults to True (the suite's database outlives a run, and the
    same file scored by an earlier run would be refused)."""
    kw.setdefault("again", True)
    sink = io.StringIO(newline="")
    summary = score_csv(settings, io.BytesIO(data), sink, username="h_batch", filename=name, service=service, **kw)
    return summary, list(csv.DictReader(io.StringIO(sink.getvalue())))


def _recorded(pg, batch_id: int) -> list[tuple]:
    return pg.execute(
        "SELECT id, channel, username, outcome FROM loan_desk_decisions WHERE batch_id = %s ORDER BY id", [batch_id]
    ).fetchall()


# --- decide_many ------------------------------------------------------------------------------------
def test_read_many_gives_what_read_gives(service, loans):
    reader = service.reader()
    pairs = [(a["dob_ssn"], a["zipcode"]) for a in loans[:120]] + [(UNKNOWN, loans[0]["zipcode"]), (UNKNOWN, 99999)]
    many = reader.read_many(pairs, chunk=50)  # three round trips, keys repeated across and within chunks
    assert many == [reader.read(*p) for p in pairs]
    assert many[-1] == (None, None) and many[-2][0] is None and many[-2][1] is not None


def test_decide_many_equals_decide_row_by_row(service, loans):
    rows: list[dict] = []
    for i, a in enumerate(loans[:300]):
        app = dict(a)
        if i % 25 == 3:
            app["dob_ssn"] = UNKNOWN  # missing credit file: refer with the reason
        elif i % 25 == 7:
            app["zipcode"] = "abc"  # invalid: an ApplicationError in its place
        elif i % 25 == 11:
            app.pop("loan_amnt")
            app["loan_int_rate"] = "99"
        elif i % 25 == 13:
            born = datetime.strptime(app.pop("dob_ssn")[:8], "%Y%m%d").date()
            app |= {"date_of_birth": born.isoformat(), "ssn_last4": a["dob_ssn"][-4:]}
        rows.append(app)
    many = service.decide_many(rows, chunk=64)
    assert len(many) == len(rows)
    kinds = set()
    for raw, got in zip(rows, many, strict=True):
        try:
            want = service.decide(raw)
        except ApplicationError as err:
            assert isinstance(got, ApplicationError) and got.errors == err.errors
            kinds.add("error")
            continue
        assert not isinstance(got, ApplicationError)
        kinds.add(got.outcome)
        assert got.outcome == want.outcome
        assert got.probability == want.probability  # the same float, not merely close
        assert [r.as_dict() for r in got.reasons] == [r.as_dict() for r in want.reasons]
        assert got.refer_reasons == want.refer_reasons
        assert got.contributions == want.contributions and got.base_value == want.base_value
        assert got.challenger == want.challenger
        assert [(f.name, f.value, f.status) for f in got.features] == [
            (f.name, f.value, f.status) for f in want.features
        ]
        assert (got.model_version, got.policy_version, got.cutoff) == (
            want.model_version,
            want.policy_version,
            want.cutoff,
        )
    assert {"error", "refer", "approve", "decline"} <= kinds
    unknown = next(d for r, d in zip(rows, many, strict=True) if r.get("dob_ssn") == UNKNOWN)
    assert unknown.outcome == "refer" and unknown.probability is None and "no credit file" in unknown.refer_reasons[0]


def test_decide_many_scores_the_challenger_in_the_shadow_as_decide_does(backbone, loans, tmp_path):
    """A challenger bundle (the champion's booster under another version): each row's shadow
    score from the batch pass is the one decide() records for that row."""
    from model import bundles

    champion = bundles.current_version()
    raw = (bundles.bundle_path(champion) / bundles.MODEL_FILE).read_bytes()
    meta = bundles.read_metadata(champion)
    bundles.publish(raw, dict(meta), tmp_path)
    bundles.write_bundle(raw, {**meta, "model_version": f"{champion}-challenger"}, tmp_path)
    bundles.set_challenger(f"{champion}-challenger", tmp_path)
    svc = DecisionService(settings=backbone["settings"], model_dir=tmp_path)
    rows = loans[200:260]
    many = svc.decide_many(rows, chunk=25)
    shadows = [d.challenger for d in many]
    assert all(c and c["model_version"] == f"{champion}-challenger" for c in shadows)
    assert len({c["probability"] for c in shadows}) > 10  # one per row, not one for all
    assert shadows == [svc.decide(a).challenger for a in rows]


# --- CSV batches --------------------------------------------------------------------------------------
def test_bom_crlf_and_birth_date_columns_are_scored_and_recorded_as_one_batch(backbone, service, loans, pg):
    s = backbone["settings"]
    header = ("Date_of_Birth", " ssn_last4 ", *FIELDS[1:], "person_age", "notes")  # any case, spaces, extra column
    rows = []
    for a in loans[:40]:
        born = datetime.strptime(a["dob_ssn"][:8], "%Y%m%d").date()
        rows.append([born.isoformat(), a["dob_ssn"][-4:], *(a[f] for f in FIELDS[1:]), "", "=ignored"])
    rows.insert(5, [""] * len(header))  # a blank line is skipped
    data = _csv(rows, header, bom=True)
    summary, out = _score(s, service, data, "bom.csv", chunk=16)
    assert summary.status == "done", summary.failure
    assert (summary.rows, summary.scored, summary.errors) == (40, 40, 0)
    assert [int(r["row"]) for r in out] == [i for i in range(2, 43) if i != 7]  # the header is line 1
    assert list(out[0]) == list(COLUMNS)
    recorded = _recorded(pg, summary.batch_id)
    assert len(recorded) == 40 and {r[1] for r in recorded} == {"batch"} and {r[2] for r in recorded} == {"h_batch"}
    assert sorted(int(r["decision_id"]) for r in out) == [r[0] for r in recorded]
    assert all(re.fullmatch(r"\d{4}\*{4}_\*{2}\d{2}", r["applicant"]) for r in out)
    assert not any(a["dob_ssn"] in str(out) for a in loans[:40])
    row = batch_by_id(s, summary.batch_id)
    assert (row["rows"], row["scored"], row["errors"], row["status"], row["recorded_through"]) == (
        40,
        40,
        0,
        "done",
        42,
    )
    verified = audit.verify(s, audit.DECISIONS)  # the batch's records are sealed onto the chain
    assert verified.ok, verified.problems
    declined = next(r for r in out if r["outcome"] == "decline")
    assert declined["reason_1"] and ": " in declined["reason_1"] and declined["probability"]


def test_missing_columns_are_named_in_one_message_and_nothing_is_recorded(backbone, service, pg):
    before = pg.execute("SELECT count(*) FROM loan_desk_batches").fetchone()[0]
    data = _csv([["x"] * 6], ("dob_ssn", "zipcode", "person_income", "loan_intent", "loan_amnt", "loan_int_rate"))
    with pytest.raises(BatchInputError) as err:
        _score(backbone["settings"], service, data, "cols.csv")
    assert "person_home_ownership, person_emp_length" in str(err.value)
    data = _csv([["1"] * 7], FIELDS[1:])
    with pytest.raises(BatchInputError, match="dob_ssn, or date_of_birth and ssn_last4"):
        _score(backbone["settings"], service, data, "noid.csv")
    for bad, text in ((b"", "empty"), (b"dob_ssn,zipcode\n\xff\xfe\n", "not UTF-8")):
        with pytest.raises(BatchInputError, match=text):
            _score(backbone["settings"], service, bad, "bad.csv")
    assert pg.execute("SELECT count(*) FROM loan_desk_batches").fetchone()[0] == before


def test_wrong_types_and_formula_cells_are_row_errors_and_the_export_is_neutralized(backbone, service, loans, pg):
    good = [[a[f] for f in FIELDS] for a in loans[40:43]]
    bad = [
        [loans[43]["dob_ssn"], "abc", "lots", "RENT", "3", "MEDICAL", "5000", "10"],
        ["=cmd|' /C calc'!A0", "12345", "50000", "RENT", "3", "MEDICAL", "5000", "10"],
        [loans[44]["dob_ssn"], "12345", "50000", "RENT", "3", "@SUM(A1:A9)", "5000", "10"],
        [loans[45]["dob_ssn"], "12345", "-50000", "+RENT", "3", "MEDICAL", "5000", "10"],
        ["", "12345", "50000", "RENT", "3", "MEDICAL", "5000", "10"],
        [loans[46]["dob_ssn"], "12345", "50000", "RENT", "3", "MEDICAL", "5000", "10", "extra"],
    ]
    summary, out = _score(backbone["settings"], service, _csv(good + bad), "types.csv")
    assert (summary.rows, summary.scored, summary.errors, summary.status) == (9, 3, 6, "done")
    errors = {int(r["row"]): r["error"] for r in out if r["error"]}
    assert "Zipcode must be a US zipcode" in errors[5] and "Yearly income must be a number" in errors[5]
    assert "Applicant ID looks like a spreadsheet formula" in errors[6]
    assert "Loan intent looks like a spreadsheet formula" in errors[7]
    assert "Yearly income must be between" in errors[8] and "Home ownership must be one of" in errors[8]
    assert errors[9] == "Applicant ID is required"
    assert "9 cells but the header names 8" in errors[10]
    assert len(_recorded(pg, summary.batch_id)) == 3
    for r in out:
        for v in r.values():
            assert not v.startswith(("=", "+", "-", "@")), v
    assert neutralize("=1+2") == "'=1+2" and neutralize("-3") == "'-3" and neutralize("@x") == "'@x"
    assert neutralize("plain") == "plain" and neutralize(None) == ""


def test_the_same_file_again_is_refused_unless_asked(backbone, service, loans, pg):
    s = backbone["settings"]
    ref = uuid.uuid4().hex  # an ignored column: a file no earlier run has scored
    data = _csv([[a[f] for f in FIELDS] + [ref] for a in loans[50:55]], (*FIELDS, "ref"))
    first, _ = _score(s, service, data, "twice.csv", again=False)
    with pytest.raises(AlreadyScored, match=f"batch #{first.batch_id}"):
        _score(s, service, data, "twice-renamed.csv", again=False)
    assert len(_recorded(pg, first.batch_id)) == 5
    again, out = _score(s, service, data, "twice.csv", again=True)
    assert again.batch_id != first.batch_id and again.scored == 5 and len(out) == 5


def test_a_batch_that_fails_midway_says_which_rows_were_recorded(backbone, service, loans, pg, settings):
    """Postgres refuses the second chunk (the decisions table is locked past the lock timeout):
    the first chunk stays recorded, the second is not half-recorded, the batch says failed."""
    data = _csv([[a[f] for f in FIELDS] for a in loans[60:90]])
    locker = psycopg.connect(**settings.pg_kwargs())
    locked = threading.Event()

    def progress(line: int, lines: int) -> None:
        if not locked.is_set():
            locker.execute("LOCK TABLE loan_desk_decisions IN ACCESS EXCLUSIVE MODE")
            locked.set()

    try:
        summary, out = _score(settings, service, data, "fails.csv", chunk=10, progress=progress)
    finally:
        locker.rollback()
        locker.close()
    assert summary.status == "failed" and "busy" in summary.failure
    assert (summary.rows, summary.scored, summary.recorded_through) == (10, 10, 11)
    assert len(_recorded(pg, summary.batch_id)) == 10
    assert [int(r["row"]) for r in out] == list(range(2, 12))
    row = batch_by_id(settings, summary.batch_id)
    assert (row["status"], row["scored"], row["recorded_through"]) == ("failed", 10, 11) and row["error"]
    assert "lines up to 11" in summary.describe()


def test_a_100k_row_file_streams_in_bounded_memory(backbone, service, loans, pg, tmp_path):
    """100,000 rows (99,900 with a wrong type, 100 real applications): per-row errors, streamed
    from disk to disk; Python's peak allocation stays far below the file's size times a few."""
    path, out_path = tmp_path / "big.csv", tmp_path / "big-out.csv"
    good = [[a[f] for f in FIELDS] for a in loans[100:200]]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for i in range(100_000):
            if i % 1000 == 0:
                w.writerow(good[i // 1000])
            else:
                w.writerow([f"19900101_{i % 10000:04d}", "0213x", "52000", "RENT", "3", "MEDICAL", "9000", "12.5"])
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open(path, "rb") as src, open(out_path, "w", newline="", encoding="utf-8") as sink:
            summary = score_csv(
                backbone["settings"], src, sink, username="h_batch", filename="big.csv", service=service, again=True
            )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (summary.rows, summary.scored, summary.errors, summary.status) == (100_000, 100, 99_900, "done")
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
    with open(out_path, encoding="utf-8") as f:
        assert sum(1 for _ in f) == 100_001
    assert len(_recorded(pg, summary.batch_id)) == 100


# --- the CLI ---------------------------------------------------------------------------------------
def test_cli_decide_jsonl_round_trip_with_bad_lines(backbone, loans, pg):
    a, b = loans[300], loans[301]
    born = datetime.strptime(b["dob_ssn"][:8], "%Y%m%d").date()
    b_split = {k: v for k, v in b.items() if k != "dob_ssn"} | {
        "date_of_birth": born.isoformat(),
        "ssn_last4": b["dob_ssn"][-4:],
    }
    lines = [
        json.dumps(a),
        "{not json",
        "",
        "[1, 2]",
        json.dumps({**a, "zipcode": "", "loan_amnt": "lots"}),
        json.dumps(b_split),
        json.dumps({**a, "dob_ssn": UNKNOWN}),
    ]
    before = pg.execute("SELECT coalesce(max(id), 0) FROM loan_desk_decisions").fetchone()[0]
    res = run_cli("loan-desk", "decide", "--user", "h_cli", input="\n".join(lines) + "\n")
    assert res.returncode == 1, res.stderr  # some lines had errors
    assert "Traceback" not in res.stderr and "3 decided and recorded for h_cli, 3 with errors" in res.stderr
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 4, 5, 6, 7]
    ok = out[0]
    assert set(ok) >= {"id", "outcome", "probability", "reasons", "model_version", "policy_version"}
    assert ok["outcome"] in ("approve", "refer", "decline") and 0 < ok["probability"] < 1
    for r in ok["reasons"]:
        assert set(r) == {"text", "feature", "value", "contribution", "as_of"}
    assert out[1]["error"].startswith("not valid JSON") and "fields" not in out[1]
    assert "JSON object" in out[2]["error"]
    assert out[3]["fields"] == {
        "zipcode": "Zipcode is required",
        "loan_amnt": "Loan amount must be a number written with the digits 0-9, got 'lots'",
    }
    assert out[4]["outcome"] in ("approve", "refer", "decline")
    assert out[5]["outcome"] == "refer" and out[5]["probability"] is None and out[5]["refer_reasons"]
    for secret in (a["dob_ssn"], b["dob_ssn"], UNKNOWN):
        assert secret not in res.stdout and secret not in res.stderr
    rows = pg.execute(
        "SELECT id, channel, username FROM loan_desk_decisions WHERE id > %s ORDER BY id", [before]
    ).fetchall()
    assert [r[0] for r in rows] == [o["id"] for o in out if "id" in o]
    assert {(r[1], r[2]) for r in rows} == {("cli", "h_cli")}


def test_cli_score_writes_the_output_file_and_refuses_a_second_run(backbone, loans, tmp_path, pg):
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    ref = uuid.uuid4().hex  # an ignored column: a file no earlier run has scored
    src.write_bytes(_csv([[a[f] for f in FIELDS] + [ref] for a in loans[310:330]] + [["x"] * 9], (*FIELDS, "ref")))
    res = run_cli("loan-desk", "score", str(src), "-o", str(dst), "--user", "h_score")
    assert res.returncode == 0, res.stderr
    assert "21 rows, 20 scored and recorded" in res.stderr and "1 with errors" in res.stderr
    out = list(csv.DictReader(dst.open(encoding="utf-8", newline="")))
    assert len(out) == 21 and out[-1]["error"] and all(r["decision_id"] for r in out[:20])
    batch = int(res.stderr.split("batch #")[1].split(":")[0])
    assert pg.execute(
        "SELECT rows, scored, errors, status, username FROM loan_desk_batches WHERE id = %s", [batch]
    ).fetchone() == (21, 20, 1, "done", "h_score")
    again = run_cli("loan-desk", "score", str(src), "-o", str(tmp_path / "out2.csv"))
    assert again.returncode == 2 and f"was scored as batch #{batch}" in again.stderr and "--again" in again.stderr
    missing = run_cli("loan-desk", "score", str(tmp_path / "nope.csv"), "-o", str(dst))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nope.csv" in missing.stderr
