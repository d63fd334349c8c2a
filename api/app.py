"""The Decision API: credit decisions for client systems (a loan origination system), no browser.

    POST /v1/decisions        decide an application (JSON), record it, return the decision (201)
    GET  /v1/decisions/{id}   a recorded decision (a client sees its own; an admin token, all)
    GET  /healthz             200 when Postgres and Valkey answer and a model is loaded, else 503
    GET  /docs, /openapi.json the OpenAPI description

Every decision goes through ``DecisionService.decide`` — the same code as the app's Apply page —
and into the decision trail as ``api:<client>``.  Nothing lives in the process between
requests (tokens and decisions are in Postgres, features in Valkey), so any number of
replicas can run behind a load balancer.  Every error is JSON ``{"error": "<one sentence>"}``
(422s add ``fields``); no stack trace reaches a client, and the applicant id is never logged
or sent back in clear text.

Run it with `uv run loan-desk api`; build it with ``create_app(settings)``.
"""

import logging
import math
import re
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import validation
from api.schemas import (
    ApplicationIn,
    DecisionOut,
    ErrorOut,
    FieldErrorsOut,
    HealthOut,
    RecordedDecisionOut,
)
from model.inference import (
    ApplicationError,
    Decision,
    DecisionService,
    ModelUnavailable,
    PolicyUnavailable,
    StoreUnavailable,
)
from runtime import decisions, health, tokens
from runtime.settings import Settings

log = logging.getLogger("loan_desk.api")
DRAIN_LIMIT = 1024 * 1024  # an oversized body is read (and dropped) up to this, so the 413 reaches the client
_ID = re.compile(r"[0-9]{1,18}")


class ApiError(Exception):
    """An answer other than success: its status, one sentence, and extra JSON fields."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra):
        self.status, self.message, self.headers, self.extra = status, message, headers, extra
        super().__init__(message)


def mask(dob_ssn: str | None) -> str:
    """``19630621_4278`` -> ``********_**78``: enough to tell two applicants of one client apart
    in a log of its own, nothing that identifies a person."""
    if not dob_ssn or len(dob_ssn) < 2:
        return "********_****"
    return "********_**" + dob_ssn[-2:]


def _plain(value):
    """A JSON-safe copy: numpy scalars to Python, datetimes to ISO 8601, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _features(rows) -> list[dict]:
    return [
        {
            "name": f["name"],
            "view": f["view"],
            "value": f["value"],
            "as_of": f.get("event_timestamp"),
            "status": f["status"],
        }
        for f in rows
    ]


def decision_body(decision_id: int, client: tokens.Client, d: Decision) -> dict:
    return _plain(
        {
            "id": decision_id,
            "client": client.name,
            "applicant": mask(d.application.dob_ssn),
            "outcome": d.outcome,
            "probability": d.probability,
            "cutoff": d.cutoff,
            "band": list(d.band) if d.band else None,
            "model_version": d.model_version,
            "policy_version": d.policy_version,
            "reasons": [r.as_dict() for r in d.reasons],
            "refer_reasons": d.refer_reasons,
            "features": _features(asdict(f) for f in d.features),
            "warnings": d.warnings,
            "latency_ms": d.latency_ms,
        }
    )


def recorded_body(row: dict) -> dict:
    inputs = dict(row["inputs"])
    applicant = mask(inputs.pop("dob_ssn", None))
    return _plain(
        {
            "id": row["id"],
            "decided_at": row["decided_at"],
            "decided_by": row["username"],
            "applicant": applicant,
            "inputs": inputs,
            "channel": row["channel"],
            "outcome": row["outcome"],
            "status": row["status"],
            "review": row.get("review"),
            "probability": row["probability"],
            "cutoff": row["threshold"],
            "model_version": row["model_version"],
            "policy_version": row["policy_version"],
            "reasons": row["reasons"],
            "refer_reasons": row["refer_reasons"],
            "features": _features(row["features"]),
            "latency_ms": row["latency_ms"],
        }
    )


def _error_json(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _service_for(settings: Settings) -> DecisionService:
    """The process-wide service when ``settings`` are the environment's, else one of their own."""
    try:
        same = settings == Settings.from_env()
    except ValueError:
        same = False
    return DecisionService.shared() if same else DecisionService(settings=settings)


ERRORS = {
    400: {"model": ErrorOut, "description": "The body is not JSON"},
    401: {"model": ErrorOut, "description": "Missing, unknown or revoked token"},
    413: {"model": ErrorOut, "description": f"The body is larger than {validation.MAX_BODY_BYTES // 1024} KiB"},
    415: {"model": ErrorOut, "description": "The body is not sent as application/json"},
    503: {"model": ErrorOut, "description": "Postgres, Valkey or the model is unavailable; try again"},
}


def create_app(settings: Settings | None = None, service: DecisionService | None = None) -> FastAPI:
    """The Decision API for ``settings`` (default: the environment's)."""
    settings = settings or Settings.from_env()
    service = service or _service_for(settings)

    @asynccontextmanager
    async def lifespan(_app):
        # Load the model and open the online store's connection before the first request needs them.
        threading.Thread(target=_warm, args=(service,), name="loan-desk-api-warm", daemon=True).start()
        yield

    app = FastAPI(
        title="Loan Desk Decision API",
        version="1",
        description=(
            "Credit decisions for client systems. Authenticate with `Authorization: Bearer <token>` "
            '(`uv run loan-desk tokens create NAME`). Every error is JSON `{"error": "..."}`.'
        ),
        lifespan=lifespan,
    )
    bearer = HTTPBearer(auto_error=False, description="A token from `uv run loan-desk tokens create NAME`")

    def _unavailable(exc: Exception, what: str) -> ApiError:
        msg = health.unavailable(exc, settings)
        if msg is None:
            raise exc
        return ApiError(503, f"{what}: {msg}.", headers={"Retry-After": "5"})

    def _refused(creds) -> ApiError:
        reason = "a valid" if creds else "an"
        return ApiError(
            401,
            f"Send {reason} API token as `Authorization: Bearer <token>` (missing, unknown and revoked tokens "
            "are refused).",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _authenticate(creds: HTTPAuthorizationCredentials | None) -> tokens.Client:
        """The client holding the token (one indexed query; nothing cached, so a revocation counts at once)."""
        if creds is None:
            raise _refused(creds)
        try:
            client = tokens.authenticate(settings, creds.credentials)
        except Exception as exc:
            raise _unavailable(exc, "The token cannot be checked now") from None
        if client is None:
            raise _refused(creds)
        return client

    Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

    # --- errors: always JSON, one sentence, no stack trace -----------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return _error_json(exc.status, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(validation.BodyError)
    async def _body_error(_request, exc: validation.BodyError):
        return _error_json(400, str(exc))

    @app.exception_handler(validation.FieldErrors)
    async def _field_errors(_request, exc: validation.FieldErrors):
        return _error_json(422, str(exc), fields=exc.fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            msg = f"There is no {request.method} {request.url.path[:60]}; see /docs for the routes."
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path[:60]}; see /docs."
        else:
            msg = f"The request failed with HTTP {exc.status_code}."
        return _error_json(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request, exc: RequestValidationError):
        return _error_json(422, "The request is not valid for this route; see /docs.")

    @app.exception_handler(Exception)
    async def _internal(_request, exc: Exception):
        log.error("internal error: %s", type(exc).__name__)
        return _error_json(500, "Internal error: the request was not completed; nothing was recorded.")

    # --- routes ----------------------------------------------------------------------------------
    @app.post(
        "/v1/decisions",
        status_code=201,
        response_model=DecisionOut,
        summary="Decide an application",
        responses={
            **ERRORS,
            422: {"model": FieldErrorsOut, "description": "Invalid application, with a message per field"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ApplicationIn.model_json_schema()}},
            }
        },
    )
    async def post_decision(request: Request, creds: Credentials):
        """Validate, decide and record one application. The decision is in the decision trail as
        `api:<client>` before this answers; its `id` is the one to keep."""
        if creds is None:
            raise _refused(creds)
        raw = await _read_body(request)
        # One hand-off to a worker thread for the blocking part: token check, parsing, decision, record.
        body = await run_in_threadpool(_decide, creds, raw)
        return JSONResponse(body, status_code=201, headers={"Location": f"/v1/decisions/{body['id']}"})

    def _decide(creds: HTTPAuthorizationCredentials, raw: bytes) -> dict:
        client = _authenticate(creds)
        fields = validation.application_fields(validation.decode(raw))
        try:
            decision = service.decide(fields)
        except ApplicationError as err:
            msgs = validation.field_messages(err.errors)
            raise ApiError(422, validation.invalid_sentence(msgs), fields=msgs) from None
        except (StoreUnavailable, ModelUnavailable, PolicyUnavailable) as err:
            raise ApiError(503, f"No decision can be made now: {err}.", headers={"Retry-After": "5"}) from None
        except Exception as exc:
            raise _unavailable(exc, "No decision can be made now") from None
        try:
            decision_id = decisions.record_decision(
                settings, client.username, decision, channel="api", client=client.name
            )
        except Exception as exc:
            raise _unavailable(exc, "The decision could not be recorded, so it is not valid") from None
        return decision_body(decision_id, client, decision)

    @app.get(
        "/v1/decisions/{decision_id}",
        response_model=RecordedDecisionOut,
        summary="A recorded decision",
        responses={**ERRORS, 404: {"model": ErrorOut, "description": "No such decision (for this client)"}},
    )
    def get_decision(decision_id: str, creds: Credentials):
        """A client sees the decisions made with its own token; an admin token sees every decision,
        the app's included."""
        client = _authenticate(creds)
        row = None
        if _ID.fullmatch(decision_id):
            try:
                row = decisions.decision_by_id(
                    settings, int(decision_id), username=None if client.is_admin else client.username
                )
            except Exception as exc:
                raise _unavailable(exc, "The decision trail cannot be read now") from None
        if row is None:
            raise ApiError(404, f"There is no decision {decision_id[:20]} for client {client.name}.")
        return JSONResponse(recorded_body(row))

    @app.get(
        "/healthz",
        response_model=HealthOut,
        summary="Whether this replica can decide",
        responses={503: {"model": HealthOut, "description": "Postgres, Valkey or the model is unavailable"}},
    )
    def healthz():
        """200 when Postgres and Valkey answer and a model is loaded; else 503 saying which is not.
        No token needed (for load balancers)."""
        problems = []
        pg = health.postgres(settings)
        vk = health.valkey(settings)
        try:
            model = service.metadata.get("model_version", "loaded")
        except ModelUnavailable as err:
            model, problem = None, str(err)
        else:
            problem = None
        for p in (pg, vk, problem):
            if p:
                problems.append(p)
        body = {
            "status": "unavailable" if problems else "ok",
            "postgres": "down" if pg else "ok",
            "valkey": "down" if vk else "ok",
            "model": model or "missing",
        }
        if problems:
            body["error"] = "; ".join(problems) + "."
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    return app


async def _read_body(request: Request) -> bytes:
    """The request body, within the limits: JSON content type (415) and at most 64 KiB (413)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "Send the application as JSON, with `Content-Type: application/json`.")
    limit = validation.MAX_BODY_BYTES
    too_large = ApiError(413, f"The body is larger than {limit // 1024} KiB; an application is far smaller.")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise ApiError(400, "The Content-Length header is not a number.")
        if int(declared) > DRAIN_LIMIT:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > DRAIN_LIMIT:
            break
    if len(body) > limit:
        raise too_large
    return bytes(body)


def _warm(service: DecisionService) -> None:
    try:
        service.warm()
    except Exception as exc:  # /healthz and the first request say what is wrong
        log.warning("warm-up incomplete: %s", type(exc).__name__)


def create_app_from_env() -> FastAPI:
    """For uvicorn's --factory (one app per worker process)."""
    return create_app()
