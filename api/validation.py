"""Turn a request body into the application fields ``DecisionService.decide`` accepts, or into
a clear error.

The API is stricter than the form about *types*, so that nothing reaches the model by a
surprising conversion: numbers come only from JSON numbers or from strings of ASCII digits
(``"52000"``, ``"12.5"``); ``true``/``false``, ``NaN``, ``Infinity``, numbers too large for a
float and non-ASCII digits are refused per field.  The rules about *values* (ranges, dates,
categories) are the model's own, from ``model.inference.parse_application``.

Messages echo the client's input at most as a short prefix, and never for the applicant's
identity (``dob_ssn``, ``date_of_birth``, ``ssn_last4``).
"""

from __future__ import annotations

import json
import math
import re

from model.inference import ApplicationError, parse_application
from runtime.schema import LIMITS

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT = 32  # longer than any valid value ("DEBTCONSOLIDATION" has 17 characters)
MAX_REPORTED_UNKNOWN = 10

NUMBER_FIELDS = ("zipcode", "person_age", "person_income", "person_emp_length", "loan_amnt", "loan_int_rate")
TEXT_FIELDS = ("dob_ssn", "date_of_birth", "ssn_last4", "person_home_ownership", "loan_intent")
FIELDS = (*TEXT_FIELDS, *NUMBER_FIELDS)
PERSONAL = ("dob_ssn", "date_of_birth", "ssn_last4")

_DECIMAL = re.compile(r"\s*[0-9]{1,15}(\.[0-9]{1,15})?\s*")
_DIGITS = re.compile(r"\s*[0-9]{1,15}\s*")
_ECHO = re.compile(r",? got .*$", re.DOTALL)


class BodyError(ValueError):
    """The body cannot be read as JSON at all (HTTP 400)."""


class FieldErrors(ValueError):
    """The body is JSON but not a valid application: a sentence and a message per field (HTTP 422)."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        self.fields = fields or {}
        super().__init__(message)


class _NotFinite:
    """NaN, Infinity or a float literal beyond the float range, as sent."""


class _TooLarge:
    """An integer literal with more digits than any field can use."""


def _parse_int(text: str):
    return int(text) if len(text) <= 20 else _TooLarge()


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NotFinite()


def decode(body: bytes) -> object:
    """The JSON value of ``body``; BodyError with one sentence when it is not JSON."""
    if not body.strip():
        raise BodyError("The body is empty: send the application as a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"The body is not UTF-8 text (byte {exc.start}).") from None
    try:
        return json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=lambda _name: _NotFinite()
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"The body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
    except RecursionError:
        raise BodyError("The body is not valid JSON for this API (it is nested too deeply).") from None


def _kind(value) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _range_message(key: str) -> str:
    if key == "zipcode":
        return "must be a US zipcode of up to five digits"
    lo, hi = LIMITS[key]
    return f"must be between {lo:,} and {hi:,} (the range the model was trained on)"


def _check_number(key: str, value) -> str | None:
    if value is None:
        return None  # parse_application says "is required"
    if isinstance(value, bool):
        return "must be a number, not true or false"
    if isinstance(value, _NotFinite):
        return "must be a finite number"
    if isinstance(value, _TooLarge):
        return _range_message(key)
    if isinstance(value, int | float):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None  # "is required"
        pattern = _DIGITS if key == "zipcode" else _DECIMAL
        if len(value) > MAX_TEXT or not pattern.fullmatch(value):
            kind = "digits" if key == "zipcode" else "digits with an optional decimal point"
            return f"must be a JSON number or a string of ASCII {kind}"
        return None
    return f"must be a number, got {_kind(value)}"


def _check_text(key: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        if key == "ssn_last4":
            return "must be a string of four digits (a number would lose leading zeros)"
        return f"must be a string, got {_kind(value)}"
    if len(value) > MAX_TEXT:
        return f"is too long (at most {MAX_TEXT} characters)"
    if not value.isascii():
        return "must be plain ASCII text"
    return None


def application_fields(body: object) -> dict:
    """The application's fields from a decoded body; FieldErrors when the body is not an
    application.  Only types are checked here; values are checked by parse_application."""
    if not isinstance(body, dict):
        raise FieldErrors(
            f"The body must be a JSON object with the application's fields, got {_kind(body)}; see /docs."
        )
    errors: dict[str, str] = {}
    unknown = [k for k in body if k not in FIELDS]
    for key in unknown[:MAX_REPORTED_UNKNOWN]:
        errors[key[:MAX_TEXT]] = "is not a field of an application"
    for key in NUMBER_FIELDS:
        if key in body and (msg := _check_number(key, body[key])):
            errors[key] = msg
    for key in TEXT_FIELDS:
        if key in body and (msg := _check_text(key, body[key])):
            errors[key] = msg
    if errors:
        errors.update(_value_errors(body, errors))
        more = len(unknown) - MAX_REPORTED_UNKNOWN
        extra = f" ({more} more unknown fields not listed)" if more > 0 else ""
        raise FieldErrors(invalid_sentence(errors) + extra, errors)
    return {k: body[k] for k in FIELDS if k in body}


def _value_errors(body: dict, type_errors: dict[str, str]) -> dict[str, str]:
    """The model's messages for the fields whose types were right, so that one answer lists
    every problem (none about a field that was left out because its type was wrong)."""
    left_out = {k for k in type_errors if k in FIELDS}
    if left_out & set(PERSONAL):
        left_out |= set(PERSONAL)
    if "person_age" in left_out:
        left_out.add("person_emp_length")  # checked against the age
    try:
        parse_application({k: v for k, v in body.items() if k in FIELDS and k not in type_errors})
    except ApplicationError as err:
        return {k: v for k, v in field_messages(err.errors).items() if k not in left_out}
    return {}


def field_messages(errors: dict[str, str]) -> dict[str, str]:
    """parse_application's messages, with nothing of the applicant's identity echoed back."""
    return {k: (_ECHO.sub("", v) if k in PERSONAL else v) for k, v in errors.items()}


def invalid_sentence(errors: dict[str, str]) -> str:
    n = len(errors)
    return f'The application has {n} invalid field{"s" if n != 1 else ""}; see "fields".'
