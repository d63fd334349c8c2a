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
    feature: str
    value: float | int | str | None = Field(description="The value this applicant has")
    contribution: float = Field(description="Log-odds of default this feature adds (XGBoost's own contributions)")
    direction: Literal["raises risk", "lowers risk"]


class FeatureOut(BaseModel):
    name: str
    view: Literal["credit_history", "zipcode_features"]
    value: float | int | str | None
    as_of: str | None = Field(description="Event time of the online row the value comes from (ISO 8601)")
    status: Literal["ok", "missing"]


class DecisionOut(BaseModel):
    id: int = Field(description="The decision's id in the decision trail: GET /v1/decisions/{id}")
    client: str = Field(description="The client system whose token made the request")
    applicant: str = Field(description="The applicant id, masked (only the SSN's last two digits)")
    outcome: Literal["approve", "reject"]
    probability: float = Field(description="The model's probability of default")
    threshold: float = Field(description="Probabilities at or above it are rejected")
    model_version: str
    reasons: list[ReasonOut] = Field(description="The features that moved this decision most, largest first")
    features: list[FeatureOut] = Field(description="The online features used, with their as-of times")
    warnings: list[str]
    latency_ms: float = Field(description="Time the decision took inside the service")


class RecordedDecisionOut(BaseModel):
    id: int
    decided_at: str
    decided_by: str = Field(description="`api:<client>` for the API, the user name for the app")
    applicant: str = Field(description="The applicant id, masked")
    inputs: dict = Field(description="The application as decided, without the applicant id")
    outcome: Literal["approve", "reject"]
    probability: float
    threshold: float
    model_version: str
    features: list[FeatureOut]
    latency_ms: float | None


class ErrorOut(BaseModel):
    error: str = Field(description="One sentence")


class FieldErrorsOut(ErrorOut):
    fields: dict[str, str] = Field(default_factory=dict, description="A message per invalid field")


class ReferOut(ErrorOut):
    refer: Literal["manual_underwriting"]
    missing: list[str] = Field(description="The feature views with no row for this application")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: str
    valkey: str
    model: str
    error: str | None = None
