"""A reload is visible: after `loan-desk load` replaces the data, decisions on the old online
features (or with a model trained on the old data) are referred, not decided, until
materialize and train have run; `loan-desk load` says what to run next."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from tests.conftest import NAMES, claim_database, run_cli


@pytest.fixture(scope="module")
def scratch(settings, tmp_path_factory):
    from bootstrap.services import ensure_database

    s = dataclasses.replace(settings, pgdatabase=NAMES.reload_db, project=NAMES.project_for("reload"))
    claim_database(settings, s.pgdatabase)
    ensure_database(s)
    return s, tmp_path_factory.mktemp("reload-model")


def _application(s) -> dict:
    from model.inference import age_on
    from runtime import db

    with db.connect(s) as conn:
        row = conn.execute(
            "SELECT dob_ssn, zipcode, person_income, person_home_ownership, loan_intent, loan_int_rate FROM loans "
            "WHERE person_income BETWEEN 4000 AND 2000000 AND loan_int_rate BETWEEN 5 AND 25 "
            "ORDER BY event_timestamp DESC LIMIT 1"
        ).fetchone()
    age = age_on(datetime.strptime(row[0][:8], "%Y%m%d").date())
    keys = ("dob_ssn", "zipcode", "person_income", "person_home_ownership", "loan_intent", "loan_int_rate")
    return {**dict(zip(keys, row, strict=True)), "person_age": age, "person_emp_length": 0, "loan_amnt": 2000}


def test_decisions_are_referred_until_materialize_and_train_have_run(scratch):
    from bootstrap.load import LoadRequest, load
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, feature_store
    from model.inference import DecisionService
    from model.train import train

    s, model_dir = scratch
    load(s, LoadRequest(applicants=400, seed=5), force=True)
    apply(s)
    materialize(s, requested_by="t_reload", full=True)
    train(feature_store(s), s, out_dir=model_dir, compare=False)
    svc = DecisionService(settings=s, model_dir=model_dir)
    svc.DATA_STATE_TTL_S = 0  # read the state on every decision in this test
    app = _application(s)
    assert svc.decide(app).probability is not None

    env = {"PGDATABASE": s.pgdatabase, "LOAN_DESK_FEAST_PROJECT": s.project}
    out = run_cli("loan-desk", "load", "--applicants", "450", "--seed", "6", env=env)
    assert out.returncode == 0, out.stderr
    assert "next: `uv run loan-desk materialize` and `uv run loan-desk train`" in out.stderr

    d = svc.decide(app)  # the applicant of the old data, still in the old online store
    assert d.outcome == "refer" and d.probability is None
    (why,) = d.refer_reasons
    assert "`uv run loan-desk materialize` and `uv run loan-desk train` have run" in why
    assert "Refer the application to manual underwriting" in why
    assert app["dob_ssn"] not in why

    materialize(s, requested_by="t_reload")
    d = svc.decide(_application(s))
    assert d.outcome == "refer" and "until `uv run loan-desk train` has run" in d.refer_reasons[0]

    train(feature_store(s), s, out_dir=model_dir, compare=False)
    assert svc.decide(_application(s)).probability is not None
    assert svc.outdated_by_reload() == []
