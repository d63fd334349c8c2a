"""The offline tables' feature columns and the ranges an application may take.

Shared by data loading (bootstrap), the explore queries (runtime) and the model's feature
vector (model), so each names the same columns without importing the others.
"""

from __future__ import annotations

CREDIT_FEATURES = (
    "credit_card_due",
    "mortgage_due",
    "student_loan_due",
    "vehicle_loan_due",
    "hard_pulls",
    "missed_payments_2y",
    "missed_payments_1y",
    "missed_payments_6m",
    "bankruptcies",
)
ZIPCODE_FEATURES = ("tax_returns_filed", "population", "total_wages")
ZIPCODE_TEXT = ("city", "state", "location_type")

# Ranges of the training data: the form, the CLI and the API accept nothing outside them.
LIMITS = {
    "person_age": (18, 100),
    "person_income": (4_000, 2_000_000),
    "person_emp_length": (0, 60),
    "loan_amnt": (500, 35_000),
    "loan_int_rate": (5.0, 25.0),
}


def masked_applicant(dob_ssn: str | None) -> str:
    """The applicant id as pages, messages and logs show it: birth year and the SSN's last two
    digits only (``19630621_4278`` → ``1963****_**78``); never the date of birth with the SSN."""
    if not dob_ssn or len(dob_ssn) != 13 or dob_ssn[8] != "_":
        return "********_****"
    return f"{dob_ssn[:4]}****_**{dob_ssn[-2:]}"
