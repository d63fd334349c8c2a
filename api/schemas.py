"""The shapes of the Decision API's bodies, for the OpenAPI document at /openapi.json.

Requests are validated by api.validation and model.inference (one set of rules for every
caller), not by these models: they describe, they do not decide.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.features import HOME_OWNERSHIP, LOAN_INTENTS
from runtime.schema import LIMITS


def _between(key: str) -> dict:
    lo, hi = LIMITS[key]
    return {"ge": lo, "le": hi}


class ApplicationIn(BaseModel):
    """A loan application: the applicant's identity as ``dob_ssn`` *or* ``date_of_birth`` and
    ``ssn_last4``, then the applicant's and the loan's fields.  Numbers may be JSON numbers or
    strings of ASCII digits; unknown fields are refused."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "dob_ssn": "19630621_4278",
                "zipcode": 76104,
                "person_age": 62,
                "person_income": 52000,
                "person_home_ownership": "RENT",
                "person_emp_length": 3,
                "loan_intent": "MEDICAL",
                "loan_amnt": 9000,
                "loan_int_rate": 12.5,
            }
        },
    )

    dob_ssn: str | None = Field(None, description="Birth date and SSN's last four digits: YYYYMMDD_NNNN")
    date_of_birth: str | None = Field(None, description="YYYY-MM-DD (with ssn_last4, instead of dob_ssn)")
    ssn_last4: str | None = Field(None, description="Four digits, as a string (with date_of_birth)")
    zipcode: int = Field(description="US zipcode, up to five digits", ge=1, le=99999)
    person_age: int = Field(description="Whole years, matching the birth date within a year", **_between("person_age"))
    person_income: float = Field(description="Yearly income in dollars", **_between("person_income"))
    person_home_ownership: Literal[HOME_OWNERSHIP] = Field(description="Home ownership")  # type: ignore[valid-type]
    person_emp_length: float = Field(description="Years of employment", **_between("person_emp_length"))
    loan_intent: Literal[LOAN_INTENTS] = Field(description="What the loan is for")  # type: ignore[valid-type]
    loan_amnt: float = Field(description="Loan amount in dollars", **_between("loan_amnt"))
    loan_int_rate: float = Field(description="Interest rate in percent", **_between("loan_int_rate"))


class ReasonOut(BaseModel):
    code: str = Field(description="Reason code in the catalogue (model/reasons.py)")
    text: str = Field(description="The principal reason in plain language")
    feature: str = Field(description="The input that drives this reason")
    value: str = Field(description="The applicant's value, formatted")
    contribution: float = Field(description="Log-odds of default it adds against the training average (XGBoost's own)")
    as_of: str | None = Field(description="Date of the credit file the value comes from; null for application fields")


class FeatureOut(BaseModel):
    name: str
    view: Literal["credit_history", "zipcode_features"]
    value: float | int | str | None
    as_of: str | None = Field(description="Event time of the online row the value comes from (ISO 8601)")
    status: Literal["ok", "missing", "stale"]


class ChallengerOut(BaseModel):
    model_version: str
    probability: float | None = None
    outcome: Literal["approve", "refer", "decline"] | None = None
    error: str | None = None


Outcome = Literal["approve", "refer", "decline"]


class DecisionOut(BaseModel):
    id: int = Field(description="The decision's id in the decision trail: GET /v1/decisions/{id}")
    client: str = Field(description="The client system whose token made the request")
    applicant: str = Field(description="The applicant id, masked (only the SSN's last two digits)")
    outcome: Outcome = Field(description="refer: an underwriter decides (refer_reasons say why)")
    probability: float | None = Field(description="The model's probability of default (null: referred for data)")
    cutoff: float | None = Field(description="The credit policy's cut-off for this model")
    band: list[float] | None = Field(description="The refer band [low, high): below it approve, at or above decline")
    model_version: str | None
    policy_version: str = Field(description="Credit policy version @ the first 8 hex digits of its file's sha256")
    reasons: list[ReasonOut] = Field(description="Principal reasons (decline and refer): at most four, largest first")
    refer_reasons: list[str] = Field(description="Why the application goes to an underwriter")
    features: list[FeatureOut] = Field(description="The online features read, with their as-of times")
    warnings: list[str]
    latency_ms: float = Field(description="Time the decision took inside the service")


class RecordedDecisionOut(BaseModel):
    id: int
    decided_at: str
    decided_by: str = Field(description="`api:<client>` for the API, the user name for the app")
    channel: Literal["app", "api", "cli", "batch"]
    applicant: str = Field(description="The applicant id, masked")
    inputs: dict = Field(description="The application as decided, without the applicant id")
    outcome: Outcome
    status: Literal["final", "pending"] = Field(description="pending: a referral waiting for an underwriter")
    review: dict | None = Field(description="The underwriter's verdict on a referral")
    probability: float | None
    cutoff: float | None
    model_version: str | None
    policy_version: str | None
    reasons: list[ReasonOut]
    refer_reasons: list[str]
    features: list[FeatureOut]
    latency_ms: float | None


class ErrorOut(BaseModel):
    error: str = Field(description="One sentence")


class FieldErrorsOut(ErrorOut):
    fields: dict[str, str] = Field(default_factory=dict, description="A message per invalid field")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: str
    valkey: str
    model: str
    error: str | None = None
