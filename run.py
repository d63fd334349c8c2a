"""The seed's check: decide one example application of an applicant in the loaded data.

uv run python run.py
"""

from __future__ import annotations

import sys


def example_application() -> dict:
    """The most recent loan in Postgres, as a new application (same person, same request)."""
    import psycopg

    from runtime.settings import Settings

    with psycopg.connect(**Settings.from_env().pg_kwargs()) as conn:
        row = conn.execute(
            "SELECT l.dob_ssn, l.zipcode, l.person_income, l.person_home_ownership, l.person_emp_length, "
            "l.loan_intent, l.loan_amnt, l.loan_int_rate FROM loans l "
            "WHERE l.person_income BETWEEN 4000 AND 2000000 AND l.loan_amnt BETWEEN 500 AND 35000 "
            "ORDER BY l.event_timestamp DESC, l.loan_id LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError("no loans in Postgres: run `uv run loan-desk` (or `loan-desk load`) first")
    keys = (
        "dob_ssn",
        "zipcode",
        "person_income",
        "person_home_ownership",
        "person_emp_length",
        "loan_intent",
        "loan_amnt",
        "loan_int_rate",
    )
    app = dict(zip(keys, row, strict=True))
    from datetime import datetime

    from model.inference import age_on

    app["person_age"] = age_on(datetime.strptime(app["dob_ssn"][:8], "%Y%m%d").date())
    app["person_emp_length"] = min(app["person_emp_length"], max(app["person_age"] - 14, 0))
    return app


def main() -> int:
    from model.inference import DecisionError, DecisionService
    from runtime.errors import explain
    from runtime.schema import masked_applicant

    try:
        app = example_application()
        print("Application:")
        for k, v in app.items():
            print(f"  {k:24} {masked_applicant(v) if k == 'dob_ssn' else v}")
        decision = DecisionService.shared().decide(app)
    except DecisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2
    print("\nFeatures fetched from the online store:")
    for f in decision.features:
        ts = f.event_timestamp.strftime("%Y-%m-%d") if f.event_timestamp else "-"
        print(f"  {f.view + ':' + f.name:40} {f.value!s:>14}  as of {ts}  [{f.status}]")
    print(f"\nModel {decision.model_version}, credit policy {decision.policy_version}")
    if decision.probability is not None:
        lo, hi = decision.band
        print(
            f"Probability of default {decision.probability:.3f} (cut-off {decision.cutoff:.3f}, "
            f"refer band {lo:.3f}-{hi:.3f})"
        )
    for why in decision.refer_reasons:
        print(f"Referred: {why}")
    if decision.reasons:
        print("Principal reasons:")
        for r in decision.reasons:
            as_of = f" (as of {r.as_of})" if r.as_of else ""
            print(f"  {r.text}: {r.value}{as_of}  [{r.contribution:+.3f}]")
    print()
    print(
        {"approve": "loan approved!", "decline": "loan rejected!", "refer": "loan referred to an underwriter"}[
            decision.outcome
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
