"""The Decision API, served by `loan-desk api` in a process of its own, over real HTTP.

Real Postgres and Valkey: decisions land in the decision trail, tokens are checked against
Postgres, and a second replica pointed at a closed Valkey port answers 503 with a sentence.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, age, run_cli

EXE = Path(sys.executable).parent / "loan-desk"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`loan-desk api` on a free port, its stderr in a file."""

    def __init__(self, log: Path, env: dict | None = None):
        self.port = _free_port()
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(EXE), "api", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.call("GET", "/healthz")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"loan-desk api did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def call(self, method: str, path: str, body=None, token: str | None = None, headers: dict | None = None):
        """(status, headers, parsed JSON or None, raw text) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)  # a busy machine warms slowly
        try:
            h = dict(headers or {})
            if token:
                h["Authorization"] = f"Bearer {token}"
            if body is not None and not isinstance(body, bytes):
                body = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed, text

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log_file.close()


@pytest.fixture(scope="module")
def clients(backbone, settings):
    from runtime.migrations import migrate
    from runtime.tokens import create_token

    migrate(settings)
    tag = uuid.uuid4().hex[:8]
    names = {"los": f"los-{tag}", "other": f"other-{tag}", "admin": f"audit-{tag}"}
    return {
        "names": names,
        "los": create_token(settings, names["los"]),
        "other": create_token(settings, names["other"]),
        "admin": create_token(settings, names["admin"], role="admin"),
    }


@pytest.fixture(scope="module")
def server(backbone, clients, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("api") / "api.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def application(app):
    return app


def _count(pg, username: str) -> int:
    return pg.execute("SELECT count(*) FROM loan_desk_decisions WHERE username = %s", [username]).fetchone()[0]


def _assert_error(status, body, text, expected: int) -> None:
    assert status == expected, text[:500]
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], text[:500]
    assert "Traceback" not in text and 'File "' not in text


def test_decision_is_made_recorded_with_the_client_name_and_readable_by_id(server, clients, application, pg, backbone):
    from model.inference import DecisionService

    name = clients["names"]["los"]
    before = _count(pg, f"api:{name}")
    status, headers, body, text = server.call("POST", "/v1/decisions", application, token=clients["los"])
    assert status == 201, text
    assert _count(pg, f"api:{name}") == before + 1
    assert headers["location"] == f"/v1/decisions/{body['id']}"
    assert body["client"] == name
    assert body["outcome"] in ("approve", "refer", "decline")
    lo, hi = body["band"]
    assert body["outcome"] == ("decline" if body["probability"] >= hi else body["outcome"])
    assert body["model_version"] == backbone["meta"]["model_version"] and "@" in body["policy_version"]
    assert len(body["reasons"]) <= 4 and all(r["contribution"] > 0 and r["text"] for r in body["reasons"])
    credit = [f for f in body["features"] if f["view"] == "credit_history"]
    assert credit and all(f["as_of"] and f["status"] == "ok" for f in credit)
    # The applicant id never comes back in clear text.
    assert application["dob_ssn"] not in text and body["applicant"].endswith(application["dob_ssn"][-2:])
    # The same decision as the in-process service's.
    same = DecisionService(settings=backbone["settings"]).decide(application)
    assert body["probability"] == pytest.approx(same.probability, abs=1e-9)

    row = pg.execute(
        "SELECT username, inputs->>'dob_ssn', probability, outcome FROM loan_desk_decisions WHERE id = %s",
        [body["id"]],
    ).fetchone()
    assert row == (f"api:{name}", application["dob_ssn"], pytest.approx(body["probability"]), body["outcome"])

    # The identity may also come as date_of_birth + ssn_last4 (strings), as on the form.
    key = application["dob_ssn"]
    split = {k: v for k, v in application.items() if k != "dob_ssn"}
    split |= {"date_of_birth": f"{key[:4]}-{key[4:6]}-{key[6:8]}", "ssn_last4": key[-4:]}
    status, _, again, text = server.call("POST", "/v1/decisions", split, token=clients["los"])
    assert status == 201 and again["probability"] == body["probability"] and again["id"] != body["id"], text
    status, _, err, text = server.call("POST", "/v1/decisions", {**split, "ssn_last4": 42}, token=clients["los"])
    _assert_error(status, err, text, 422)
    assert set(err["fields"]) == {"ssn_last4"} and "leading zeros" in err["fields"]["ssn_last4"]

    # By id: its own client and an admin see it; another client does not learn it exists.
    status, _, got, text = server.call("GET", f"/v1/decisions/{body['id']}", token=clients["los"])
    assert status == 200, text
    assert got["id"] == body["id"] and got["decided_by"] == f"api:{name}" and got["outcome"] == body["outcome"]
    assert got["inputs"]["loan_amnt"] == 9000 and "dob_ssn" not in got["inputs"]
    assert application["dob_ssn"] not in text
    assert got["features"][0]["as_of"]
    assert server.call("GET", f"/v1/decisions/{body['id']}", token=clients["admin"])[0] == 200
    status, _, other, text = server.call("GET", f"/v1/decisions/{body['id']}", token=clients["other"])
    _assert_error(status, other, text, 404)
    for missing in ("999999999999", "abc", "1" * 40):
        status, _, err, text = server.call("GET", f"/v1/decisions/{missing}", token=clients["admin"])
        _assert_error(status, err, text, 404)
    # Nothing of the applicant's identity in the server's log.
    assert application["dob_ssn"] not in server.log.read_text()


def test_invalid_fields_are_422_with_a_message_per_field_and_nothing_recorded(server, clients, application, pg):
    name = clients["names"]["los"]
    before = _count(pg, f"api:{name}")
    bad = {
        **application,
        "person_age": "abc",
        "zipcode": "\u0661\u0662\u0663",  # Arabic-Indic digits: not ASCII
        "loan_amnt": True,
        "loan_intent": "CAR",
        "person_home_ownership": ["RENT"],
        "extra_field": 1,
    }
    status, _, body, text = server.call("POST", "/v1/decisions", bad, token=clients["los"])
    _assert_error(status, body, text, 422)
    assert set(body["fields"]) == {
        "person_age",
        "zipcode",
        "loan_amnt",
        "loan_intent",
        "person_home_ownership",
        "extra_field",
    }
    assert "not true or false" in body["fields"]["loan_amnt"]

    # NaN, Infinity, 1e400 and 10**400 as JSON literals: per field, never a 500.
    raw = json.dumps({**application, "person_income": 0, "loan_int_rate": 0, "person_emp_length": 0, "loan_amnt": 0})
    raw = (
        raw.replace('"person_income": 0', '"person_income": NaN')
        .replace('"loan_int_rate": 0', '"loan_int_rate": Infinity')
        .replace('"person_emp_length": 0', '"person_emp_length": 1e400')
        .replace('"loan_amnt": 0', '"loan_amnt": 1' + "0" * 400)
    )
    status, _, body, text = server.call(
        "POST", "/v1/decisions", raw.encode(), token=clients["los"], headers={"Content-Type": "application/json"}
    )
    _assert_error(status, body, text, 422)
    assert body["fields"]["person_income"] == "must be a finite number"
    assert body["fields"]["loan_int_rate"] == "must be a finite number"
    assert body["fields"]["person_emp_length"] == "must be a finite number"
    assert body["fields"]["loan_amnt"].startswith("must be between")
    assert len(text) < 1000  # the 400-digit number is not echoed

    # Values the model refuses: the model's own messages; the identity is not echoed.
    wrong = {**application, "dob_ssn": "19631341_9876", "loan_amnt": 10**9, "person_income": "52000.50"}
    status, _, body, text = server.call("POST", "/v1/decisions", wrong, token=clients["los"])
    _assert_error(status, body, text, 422)
    assert body["fields"]["loan_amnt"].startswith("must be between 500")
    assert "not a real date" in body["fields"]["dob_ssn"] and "9876" not in text
    assert set(body["fields"]) == {"dob_ssn", "loan_amnt"}  # "52000.50" is a number

    status, _, body, text = server.call("POST", "/v1/decisions", {}, token=clients["los"])
    _assert_error(status, body, text, 422)
    assert body["fields"]["zipcode"] == "is required"
    assert _count(pg, f"api:{name}") == before


def test_tokens_missing_wrong_and_revoked_are_401(server, clients, application, settings):
    from runtime.tokens import create_token, revoke_token

    for headers in ({}, {"Authorization": "Bearer ldk_nothing"}, {"Authorization": f"Basic {clients['los']}"}):
        status, h, body, text = server.call("POST", "/v1/decisions", application, headers=headers)
        _assert_error(status, body, text, 401)
        assert h["www-authenticate"] == "Bearer"
    assert server.call("GET", "/v1/decisions/1", token=clients["los"] + "x")[0] == 401

    name = f"gone-{uuid.uuid4().hex[:8]}"
    token = create_token(settings, name)
    assert server.call("POST", "/v1/decisions", application, token=token)[0] == 201
    revoke_token(settings, name)  # at once, no restart
    status, _, body, text = server.call("POST", "/v1/decisions", application, token=token)
    _assert_error(status, body, text, 401)


def test_body_limits_and_malformed_bodies_are_json_errors(server, clients, application):
    t = clients["los"]
    big = json.dumps({**application, "pad": "x" * 70_000}).encode()
    cases = [
        (big, "application/json", 413),
        (json.dumps(application).encode(), "text/plain", 415),
        (json.dumps(application).encode(), None, 415),
        (b'{"zipcode": 7610', "application/json", 400),
        (b"", "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b"[" * 20_000 + b"]" * 20_000, "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'"an application"', "application/json; charset=utf-8", 422),
    ]
    for raw, ctype, expected in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        status, _, body, text = server.call("POST", "/v1/decisions", raw, token=t, headers=headers)
        _assert_error(status, body, text, expected)
        assert len(text) < 400, text
    status, _, body, text = server.call("POST", "/v1/decisions", b"[1, 2]", token=t, headers=headers)
    assert "JSON object" in body["error"]


def test_an_applicant_without_online_features_is_referred_and_recorded(server, clients, application, pg):
    name = clients["names"]["los"]
    before = _count(pg, f"api:{name}")
    unknown = {**application, "dob_ssn": "19700101_0001", "person_age": age("19700101_0001")}
    status, _, body, text = server.call("POST", "/v1/decisions", unknown, token=clients["los"])
    assert status == 201, text
    assert body["outcome"] == "refer" and body["probability"] is None
    assert body["refer_reasons"] == ["The applicant has no credit file in the online store"]
    assert "19700101" not in text
    assert _count(pg, f"api:{name}") == before + 1
    status, _, rec, text = server.call("GET", f"/v1/decisions/{body['id']}", token=clients["los"])
    assert status == 200 and rec["status"] == "pending" and rec["channel"] == "api", text


def test_health_openapi_and_unknown_routes(server):
    status, _, body, text = server.call("GET", "/healthz")
    assert status == 200, text
    assert body["status"] == "ok" and body["postgres"] == "ok" and body["valkey"] == "ok" and body["model"]

    status, _, schema, _ = server.call("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/decisions", "/v1/decisions/{decision_id}", "/healthz"} <= set(schema["paths"])
    post = schema["paths"]["/v1/decisions"]["post"]
    assert {"201", "401", "413", "415", "422", "503"} <= set(post["responses"])
    assert "zipcode" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert server.call("GET", "/docs")[0] == 200

    status, _, body, text = server.call("GET", "/v2/nothing")
    _assert_error(status, body, text, 404)
    status, _, body, text = server.call("DELETE", "/v1/decisions")
    _assert_error(status, body, text, 405)


def test_a_replica_without_valkey_says_so_with_503_and_serves_the_trail(
    server, clients, application, tmp_path, settings
):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    replica = Server(tmp_path / "replica.log", env={"REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    try:
        status, _, body, text = replica.call("GET", "/healthz")
        _assert_error(status, body, text, 503)
        assert body["valkey"] == "down" and body["postgres"] == "ok" and "Valkey" in body["error"]
        status, headers, body, text = replica.call("POST", "/v1/decisions", application, token=clients["los"])
        _assert_error(status, body, text, 503)
        assert "Valkey" in body["error"] and headers.get("retry-after")
        # Stateless: a decision made on one replica is read on another (the trail is in Postgres).
        made = server.call("POST", "/v1/decisions", application, token=clients["los"])[2]
        status, _, got, text = replica.call("GET", f"/v1/decisions/{made['id']}", token=clients["los"])
        assert status == 200 and got["probability"] == pytest.approx(made["probability"]), text
    finally:
        replica.stop()
    log = replica.log.read_text()
    assert "Traceback" not in log and application["dob_ssn"] not in log


def test_a_replica_started_without_postgres_serves_503_with_a_sentence(clients, application, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    replica = Server(tmp_path / "no-pg.log", env={"PGPORT": str(closed)})
    try:
        status, _, body, text = replica.call("GET", "/healthz")
        _assert_error(status, body, text, 503)
        assert body["postgres"] == "down" and body["valkey"] == "ok" and "Postgres" in body["error"]
        for method, path, payload in (("POST", "/v1/decisions", application), ("GET", "/v1/decisions/1", None)):
            status, headers, body, text = replica.call(method, path, payload, token=clients["los"])
            _assert_error(status, body, text, 503)
            assert "Postgres" in body["error"] and headers.get("retry-after")
    finally:
        replica.stop()
    log = replica.log.read_text()
    assert "serving anyway" in log and "Traceback" not in log


def test_tokens_cli_shows_a_token_once_and_stores_only_its_hash(backbone, pg):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    made = run_cli("loan-desk", "tokens", "create", name)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ldk_") and len(token) > 40 and "shown only this once" in made.stderr
    stored = pg.execute("SELECT token_hash, role FROM loan_desk_api_tokens WHERE name = %s", [name]).fetchone()
    assert bytes(stored[0]) == hashlib.sha256(token.encode()).digest() and stored[1] == "client"
    dump = pg.execute("SELECT row_to_json(t)::text FROM loan_desk_api_tokens t").fetchall()
    assert not any(token in r[0] or token[4:] in r[0] for r in dump)

    again = run_cli("loan-desk", "tokens", "create", name)
    assert again.returncode == 2 and "revoke it first" in again.stderr and "Traceback" not in again.stderr
    assert f"{name}\tclient\t" in run_cli("loan-desk", "tokens", "list").stdout
    assert run_cli("loan-desk", "tokens", "revoke", name).returncode == 0
    listed = [ln for ln in run_cli("loan-desk", "tokens", "list").stdout.splitlines() if ln.startswith(name)]
    assert listed and "revoked" in listed[0]
    missing = run_cli("loan-desk", "tokens", "revoke", "nobody-here")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no client named" in missing.stderr
    bad = run_cli("loan-desk", "tokens", "create", "Bad Name!")
    assert bad.returncode == 2 and "client name" in bad.stderr
    # A revoked client may get a new token.
    assert run_cli("loan-desk", "tokens", "create", name).returncode == 0
