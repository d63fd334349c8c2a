"""The inference module: decisions, every error path, recovery, concurrency, run.py."""

from __future__ import annotations

import dataclasses
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from model.features import CREDIT_FEATURES
from model.inference import (
    ApplicationError,
    DecisionService,
    ModelUnavailable,
    StoreUnavailable,
    parse_application,
)
from model.policy import load_policy
from model.reasons import CATALOGUE, MEMBER_TEXT
from tests.conftest import age, run_cli


@pytest.fixture(scope="module")
def service(backbone):
    return DecisionService(settings=backbone["settings"])


def test_decision_has_outcome_reasons_features_and_versions(service, app, backbone):
    d = service.decide(app)
    lo, hi = d.band
    assert lo <= d.cutoff <= hi
    assert d.outcome == ("decline" if d.probability >= hi else "refer" if d.probability >= lo else d.outcome)
    # XGBoost's contributions add up to the model's log-odds; the model scores neither age nor area statistics.
    import math

    logit = math.log(d.probability / (1 - d.probability))
    assert sum(d.contributions.values()) + d.base_value == pytest.approx(logit, abs=1e-3)
    assert not {"person_age", "avg_wage_zip", "population", "total_wages", "tax_returns_filed"} & set(d.contributions)
    assert {f.view for f in d.features} == {"credit_history", "zipcode_features"}
    assert all(f.event_timestamp is not None and f.status == "ok" for f in d.features)
    assert d.model_version == backbone["meta"]["model_version"]
    assert d.policy_version.startswith(load_policy().version + "@")


def test_a_decline_gives_at_most_four_plain_reasons_that_raised_risk(service, app):
    d = service.decide({**app, "loan_amnt": 35000, "loan_int_rate": 24.0, "person_income": 9000})
    assert d.outcome == "decline"
    assert 1 <= len(d.reasons) <= 4
    assert all(r.contribution > 0 for r in d.reasons)
    assert [r.contribution for r in d.reasons] == sorted((r.contribution for r in d.reasons), reverse=True)
    catalogue = {e.text for e in CATALOGUE} | set(MEMBER_TEXT.values())
    for r in d.reasons:
        assert r.text in catalogue and "_" not in r.text  # plain language, never a raw column name
        assert r.feature not in ("person_age", "avg_wage_zip", "population", "total_wages", "tax_returns_filed")
        assert r.value and "_" not in r.value
        if r.feature in CREDIT_FEATURES:
            assert r.as_of is not None
    assert "Loan amount is high relative to income" in [r.text for r in d.reasons]


def test_what_changes_the_probability(service, app):
    low = service.decide({**app, "loan_amnt": 1000, "loan_int_rate": 6.0})
    high = service.decide({**app, "loan_amnt": 35000, "loan_int_rate": 23.0})
    assert high.probability > low.probability


def test_date_of_birth_and_ssn_instead_of_the_key(service, app):
    born = datetime.strptime(app["dob_ssn"][:8], "%Y%m%d").date()
    other = {k: v for k, v in app.items() if k != "dob_ssn"}
    d = service.decide({**other, "date_of_birth": born.isoformat(), "ssn_last4": app["dob_ssn"][-4:]})
    assert d.application.dob_ssn == app["dob_ssn"]


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"loan_amnt": 100_000}, "loan_amnt", "between 500 and 35,000"),
        ({"loan_amnt": "lots"}, "loan_amnt", "must be a number"),
        ({"person_emp_length": 240}, "person_emp_length", "between 0 and 60"),
        ({"person_home_ownership": "CASTLE"}, "person_home_ownership", "must be one of"),
        ({"loan_intent": ""}, "loan_intent", "is required"),
        ({"zipcode": "ABCDE"}, "zipcode", "zipcode"),
        ({"dob_ssn": "1990-01-01"}, "dob_ssn", "YYYYMMDD_NNNN"),
        ({"dob_ssn": "19901340_1234"}, "dob_ssn", "not a real date"),
        ({"person_age": 5}, "person_age", "between 18 and 100"),
        ({"person_income": float("nan")}, "person_income", "finite"),
    ],
)
def test_bad_input_is_refused_with_a_message_per_field(service, app, change, field, text):
    with pytest.raises(ApplicationError) as err:
        service.decide({**app, **change})
    assert text in err.value.errors[field]


def test_age_must_match_the_date_of_birth(app):
    with pytest.raises(ApplicationError) as err:
        parse_application({**app, "person_age": age(app["dob_ssn"]) + 10})
    assert "does not match" in err.value.errors["person_age"]


def test_an_unknown_applicant_is_referred_with_the_reason(service, app):
    d = service.decide({**app, "dob_ssn": "19700101_0000", "person_age": age("19700101_0000")})
    assert d.outcome == "refer" and d.probability is None and d.reasons == []
    assert d.refer_reasons == ["The applicant has no credit file in the online store"]
    assert "19700101" not in str(d.refer_reasons) and "0000" not in str(d.refer_reasons)  # no dob_ssn in clear


def test_a_zipcode_without_statistics_does_not_stop_a_decision(service, app):
    # The model does not score the zipcode's area statistics: their absence is a warning, not a referral.
    d = service.decide({**app, "zipcode": 7})
    assert d.probability is not None and d.outcome in ("approve", "refer", "decline")
    assert "Zipcode 00007 has no statistics in the online store" in d.warnings


STALE_KEY = "19510302_0917"


@pytest.fixture()
def stale_applicant(service, app, pg, redis_client):
    """An applicant whose only credit file is written (offline and online) by the test."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from psycopg import sql

    from model.features import CREDIT_FEATURES

    assert pg.execute("SELECT count(*) FROM credit_history WHERE dob_ssn = %s", [STALE_KEY]).fetchone()[0] == 0
    store = service.store

    def write(ts: datetime, values: dict[str, int]) -> None:
        row = {"dob_ssn": STALE_KEY, **values, "event_timestamp": ts, "created_timestamp": datetime.now(UTC)}
        query = sql.SQL("INSERT INTO credit_history ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, row)), sql.SQL(", ").join(sql.Placeholder() * len(row))
        )
        pg.execute(query, list(row.values()))
        store.write_to_online_store("credit_history", pd.DataFrame([row]))

    values = {c: 100 * (i + 1) for i, c in enumerate(CREDIT_FEATURES)}
    try:
        yield {**app, "dob_ssn": STALE_KEY, "person_age": age(STALE_KEY)}, write, values
    finally:
        pg.execute("DELETE FROM credit_history WHERE dob_ssn = %s", [STALE_KEY])
        ek = EntityKey(join_keys=["dob_ssn"], entity_values=[Value(string_val=STALE_KEY)])
        redis_client.delete(_redis_key(store.project, ek, store.config.entity_key_serialization_version))


def _pit(store, zipcode: int, at: list[datetime]):
    entity = pd.DataFrame({"dob_ssn": [STALE_KEY] * len(at), "zipcode": [zipcode] * len(at), "event_timestamp": at})
    feats = ["credit_history:credit_card_due", "credit_history:bankruptcies"]
    df = store.get_historical_features(entity_df=entity, features=feats).to_df()
    return df.sort_values("event_timestamp").reset_index(drop=True)


def test_a_credit_file_older_than_its_ttl_counts_as_missing_as_in_training(service, stale_applicant):
    application, write, values = stale_applicant
    now = datetime.now(UTC)
    old = now - timedelta(days=200)  # the view's TTL is 180 days
    write(old, values)
    d = service.decide(application)
    assert d.outcome == "refer" and d.probability is None
    msg = " ".join(d.refer_reasons)
    assert f"credit file is as of {old:%Y-%m-%d}, older than the 180-day TTL" in msg
    stale = [f for f in d.features if f.view == "credit_history"]
    assert all(f.status == "stale" for f in stale)
    assert abs((stale[0].event_timestamp - old).total_seconds()) < 1
    assert STALE_KEY not in msg and STALE_KEY[:8] not in msg
    # The point-in-time join gives NaN for the same relation (as of now: the file is 200 days old),
    # and the values when the file was younger than the TTL (as of 100 days after it).
    pit = _pit(service.store, application["zipcode"], [old + timedelta(days=100), now])
    assert pit.loc[0, "credit_card_due"] == values["credit_card_due"]
    assert pit.loc[1, ["credit_card_due", "bankruptcies"]].isna().all()

    # A file within the TTL: decided on, in serving and in the join alike.
    fresh = now - timedelta(days=170)
    write(fresh, {**values, "credit_card_due": 4242})
    d = service.decide(application)
    used = {f.name: f for f in d.features if f.view == "credit_history"}
    assert used["credit_card_due"].value == 4242 and used["credit_card_due"].status == "ok"
    assert _pit(service.store, application["zipcode"], [now]).loc[0, "credit_card_due"] == 4242


def test_no_trained_model(backbone, tmp_path, app):
    svc = DecisionService(settings=backbone["settings"], model_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no trained model .* run `uv run loan-desk train`"):
        svc.decide(app)
    # The layout of earlier versions (bare model.json + metadata.json) is not used: retrain.
    (tmp_path / "model.json").write_text("{broken")
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="earlier Loan Desk version .* loan-desk train"):
        DecisionService(settings=backbone["settings"], model_dir=tmp_path).decide(app)


class Proxy:
    """A TCP proxy in front of the real Redis that the test can stop, hang and restart."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.mode = "forward"  # forward | hang | refuse
        self.conns: list[socket.socket] = []
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            self.conns.append(client)
            if self.mode == "forward":
                upstream = socket.create_connection(self.target)
                self.conns.append(upstream)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while data := a.recv(65536):
                if self.mode != "forward":
                    return  # swallow: the caller waits for an answer that never comes
                b.sendall(data)
        except OSError:
            pass

    def cut(self, mode: str):
        self.mode = mode
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns.clear()


def test_store_down_hung_and_back_without_restart(backbone, app):
    from feast_ext.store import feature_store

    s = backbone["settings"]
    proxy = Proxy((s.redis_host, s.redis_port))
    svc = DecisionService(store=feature_store(dataclasses.replace(s, redis_port=proxy.port)))
    assert svc.decide(app).probability > 0

    proxy.cut("refuse")
    with pytest.raises(StoreUnavailable, match="unreachable"):
        svc.decide(app)

    proxy.mode = "hang"  # accepts, never answers: the socket timeout must end the wait
    t0 = datetime.now(UTC)
    with pytest.raises(StoreUnavailable):
        svc.decide(app)
    assert (datetime.now(UTC) - t0).total_seconds() < 5

    proxy.cut("forward")
    assert svc.decide(app).probability > 0  # recovered, same service object


def test_concurrent_decisions_agree(service, app):
    expected = service.decide(app).probability
    variants = [{**app, "loan_amnt": 1000 + 500 * (i % 10)} for i in range(80)]
    serial = [service.decide(v).probability for v in variants]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda v: service.decide(v).probability, variants))
    assert parallel == serial
    assert service.decide(app).probability == expected


def test_run_py_prints_the_application_features_and_decision(backbone):
    out = run_cli("python", "run.py")
    assert out.returncode == 0, out.stderr
    assert "Application:" in out.stdout and "credit_history:credit_card_due" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert last in ("loan approved!", "loan rejected!", "loan referred to an underwriter")
