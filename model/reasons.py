"""Principal reasons: what a declined or referred applicant is told, in plain language.

Each reason groups the model inputs that describe one thing about the applicant (the three
missed-payment counts are one reason; the four debts and their total are another).  A reason's
weight is the sum of its inputs' contributions, XGBoost's own per-feature SHAP values
(``pred_contribs``).  They are measured against a documented reference: the model's expected
output over its training loans (the bias term), i.e. *the average applicant the model learned
from*.  A positive weight means this applicant's values raised the risk above that reference.

Rules (Regulation B 1002.9(b)(2) and its commentary; CFPB circulars 2022-03 and 2023-03):
- only reasons that raised risk, largest first, at most four;
- only factors the model actually scored (never age, never a zipcode's area statistics: the
  model does not use them, and the catalogue has no sentence for them);
- the text is about the applicant, with the applicant's value and its as-of date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MAX_REASONS = 4
REFERENCE = "the model's average output over its training loans (XGBoost's bias term)"


@dataclass(frozen=True)
class Entry:
    code: str
    features: tuple[str, ...]
    text: str


CATALOGUE: tuple[Entry, ...] = (
    Entry("LTI", ("loan_pct_income",), "Loan amount is high relative to income"),
    Entry("INC", ("person_income",), "Income is low for the amount of credit requested"),
    Entry("AMT", ("loan_amnt",), "Loan amount requested is high"),
    Entry("EMP", ("person_emp_length",), "Length of employment is short"),
    Entry(
        "MISS",
        ("missed_payments_6m", "missed_payments_1y", "missed_payments_2y"),
        "Missed payments on credit obligations",
    ),
    Entry(
        "DEBT",
        ("total_debt_due", "credit_card_due", "mortgage_due", "student_loan_due", "vehicle_loan_due"),
        "Amount owed on credit obligations is high",
    ),
    Entry("INQ", ("hard_pulls",), "Number of recent credit inquiries"),
    Entry("BKR", ("bankruptcies",), "Bankruptcy on the credit file"),
    Entry("RATE", ("loan_int_rate",), "Interest rate of the requested loan is high"),
    Entry("HOME", ("person_home_ownership",), "Housing status"),
    Entry("PURP", ("loan_intent",), "Purpose of the loan"),
)
BY_FEATURE = {f: e for e in CATALOGUE for f in e.features}

# A member's own sentence, when that member drives the reason.
MEMBER_TEXT = {
    "missed_payments_6m": "Missed payments in the last 6 months",
    "missed_payments_1y": "Missed payments in the last 12 months",
    "missed_payments_2y": "Missed payments in the last 2 years",
    "total_debt_due": "Total amount owed on credit obligations is high",
    "credit_card_due": "Credit card balance owed is high",
    "mortgage_due": "Mortgage balance owed is high",
    "student_loan_due": "Student loan balance owed is high",
    "vehicle_loan_due": "Vehicle loan balance owed is high",
}
WORDS = {
    "RENT": "renting",
    "MORTGAGE": "paying a mortgage",
    "OWN": "owns the home",
    "OTHER": "other",
    "EDUCATION": "education",
    "MEDICAL": "medical expenses",
    "VENTURE": "a business venture",
    "PERSONAL": "personal",
    "DEBTCONSOLIDATION": "debt consolidation",
    "HOMEIMPROVEMENT": "home improvement",
}
_MONEY = {"person_income", "loan_amnt", *BY_FEATURE["total_debt_due"].features}


def format_value(feature: str, value) -> str:
    """An applicant's value as a person reads it."""
    if value is None or (isinstance(value, float) and value != value):
        return "not on file"
    if feature in _MONEY:
        return f"${float(value):,.0f}"
    if feature == "loan_pct_income":
        return f"{float(value):.0%} of income"
    if feature == "loan_int_rate":
        return f"{float(value):.2f}%"
    if feature == "person_emp_length":
        return f"{float(value):g} years"
    if feature in ("person_home_ownership", "loan_intent"):
        return WORDS.get(str(value), str(value).lower())
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}"
    return str(value)


@dataclass(frozen=True)
class PrincipalReason:
    code: str
    text: str
    feature: str  # the input that drives the reason
    value: str  # the applicant's value, formatted
    contribution: float  # log-odds of default the reason adds against the reference
    as_of: str | None  # date of the credit file the value comes from; None for the application's own fields

    def as_dict(self) -> dict:
        return {
            "code": self.code,
            "text": self.text,
            "feature": self.feature,
            "value": self.value,
            "contribution": self.contribution,
            "as_of": self.as_of,
        }


def principal_reasons(
    contributions: dict[str, float], values: dict, as_of: dict[str, datetime | None], limit: int = MAX_REASONS
) -> list[PrincipalReason]:
    """The reasons that raised this applicant's risk, largest first (``as_of``: feature → date)."""
    out = []
    for entry in CATALOGUE:
        members = [f for f in entry.features if f in contributions]
        if not members:
            continue
        weight = sum(contributions[f] for f in members)
        if weight <= 0:
            continue
        driver = max(members, key=lambda f: contributions[f])
        ts = as_of.get(driver)
        out.append(
            PrincipalReason(
                code=entry.code,
                text=MEMBER_TEXT.get(driver, entry.text),
                feature=driver,
                value=format_value(driver, values.get(driver)),
                contribution=float(weight),
                as_of=ts.date().isoformat() if isinstance(ts, datetime) else None,
            )
        )
    out.sort(key=lambda r: r.contribution, reverse=True)
    return out[:limit]
