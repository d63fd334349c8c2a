"""`loan-desk decide`: applications as JSON lines in, one JSON line per application out.

Each input line is one JSON object with the tutorial's field names (``dob_ssn`` or
``date_of_birth`` + ``ssn_last4``, ``zipcode``, ``person_income``, ``person_home_ownership``,
``person_emp_length``, ``loan_intent``, ``loan_amnt``, ``loan_int_rate``; ``person_age``
optional).  Each answer is written and flushed as soon as it is decided, so a script can send
one line and wait for its answer.  An answer is either

    {"line": 1, "id": 812, "applicant": "1963****_**78", "outcome": "decline", "probability": 0.31,
     "reasons": [{"text": ..., "feature": ..., "value": ..., "contribution": ..., "as_of": ...}],
     "refer_reasons": [], "model_version": ..., "policy_version": ...}

or ``{"line": n, "error": "...", "fields": {"zipcode": "Zipcode is required", ...}}`` (``fields``
only for bad fields).  Each decision is recorded like one from the form (channel ``cli``);
a decision that cannot be recorded is not valid and is answered with an error instead.  Blank
lines are skipped.  The applicant's date of birth and SSN digits never appear in clear.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from model.inference import LABELS, ApplicationError, DecisionError, DecisionService
from runtime.decisions import record_decision
from runtime.errors import explain
from runtime.schema import masked_applicant
from runtime.settings import Settings

MAX_LINE = 1 << 20  # a longer line is refused, not parsed


def answer(decision, decision_id: int) -> dict:
    return {
        "id": decision_id,
        "applicant": masked_applicant(decision.application.dob_ssn),
        "outcome": decision.outcome,
        "probability": decision.probability,
        "reasons": [
            {k: r.as_dict()[k] for k in ("text", "feature", "value", "contribution", "as_of")} for r in decision.reasons
        ],
        "refer_reasons": list(decision.refer_reasons),
        "model_version": decision.model_version,
        "policy_version": decision.policy_version,
    }


def _hide(text: str, raw) -> str:
    key = raw.get("dob_ssn") if isinstance(raw, dict) else None
    if isinstance(key, str) and len(key.strip()) >= 8:
        text = text.replace(key.strip(), masked_applicant(key.strip()))
    return text


def decide_one(settings: Settings, service: DecisionService, n: int, text: str, username: str) -> dict:
    """The answer to one input line (never raises for bad input or an unavailable service)."""
    if len(text) > MAX_LINE:
        return {"line": n, "error": f"the line is longer than {MAX_LINE:,} characters"}
    try:
        raw = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and the numbers json refuses (too many digits)
        return {"line": n, "error": f"not valid JSON: {str(exc)[:200]}"}
    except RecursionError:
        return {"line": n, "error": "not valid JSON: nested too deeply"}
    if not isinstance(raw, dict):
        return {"line": n, "error": f"expected a JSON object of named fields, got a JSON {type(raw).__name__}"}
    try:
        decision = service.decide(raw)
    except ApplicationError as err:
        fields = {k: _hide(f"{LABELS.get(k, k)} {msg}", raw) for k, msg in err.errors.items()}
        return {"line": n, "error": "the application has errors: " + "; ".join(fields.values()), "fields": fields}
    except DecisionError as err:
        return {"line": n, "error": _hide(f"no decision: {err}", raw)}
    try:
        decision_id = record_decision(settings, username, decision, channel="cli")
    except Exception as exc:
        return {"line": n, "error": f"the decision could not be recorded, so it is not valid: {explain(exc)}"}
    return {"line": n, **answer(decision, decision_id)}


def decide_lines(settings: Settings, lines: Iterable[str], out: TextIO, username: str, service=None) -> tuple[int, int]:
    """Answer every line; returns (decided, errors)."""
    service = service or DecisionService.shared()
    decided = errors = 0
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        got = decide_one(settings, service, n, text, username)
        if "error" in got:
            errors += 1
        else:
            decided += 1
        out.write(json.dumps(got, ensure_ascii=False, allow_nan=False) + "\n")
        out.flush()
    return decided, errors
