"""Input edges found by a hostile-input run: numbers only from ASCII digits, a per-field message for
non-mappings, huge integers, NaN and infinities, NUL bytes, and echoed input cut short."""

from __future__ import annotations

import datetime

import pytest

from model.inference import ApplicationError, age_on, parse_application


def _base() -> dict:
    return {
        "dob_ssn": "19900101_1234",
        "zipcode": "76104",
        "person_age": age_on(datetime.date(1990, 1, 1)),
        "person_income": "50,000",
        "person_home_ownership": "RENT",
        "person_emp_length": "3",
        "loan_intent": "EDUCATION",
        "loan_amnt": "5000",
        "loan_int_rate": "10.5",
    }


def test_plain_ascii_numbers_with_thousands_commas_are_accepted():
    app = parse_application(_base())
    assert app.person_income == 50_000 and app.loan_amnt == 5000 and app.loan_int_rate == 10.5
    assert parse_application({**_base(), "loan_amnt": "+12,345.50"}).loan_amnt == 12_345.5


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loan_amnt", "١٢٣٤", "digits 0-9"),  # Arabic-Indic digits
        ("loan_amnt", "５０００", "digits 0-9"),  # full-width digits
        ("loan_amnt", "1_000", "digits 0-9"),
        ("loan_amnt", "1e5", "digits 0-9"),
        ("loan_amnt", "nan", "digits 0-9"),
        ("loan_amnt", "12,34", "digits 0-9"),
        ("loan_amnt", 10**400, "far too large"),
        ("loan_amnt", float("nan"), "finite"),
        ("loan_amnt", float("-inf"), "finite"),
        ("loan_amnt", True, "must be a number"),
        ("loan_amnt", [5000], "must be a number"),
        ("loan_amnt", "50\x0000", "NUL byte"),
        ("zipcode", "𝟘𝟙𝟚𝟛", "zipcode of up to five digits"),
        ("dob_ssn", "１９９００１０１_1234", "YYYYMMDD_NNNN"),
    ],
)
def test_bad_numbers_get_a_message_for_their_field(field, value, message):
    with pytest.raises(ApplicationError) as err:
        parse_application({**_base(), field: value})
    assert list(err.value.errors) == [field]
    assert message in err.value.errors[field]


def test_echoed_input_is_cut_to_a_short_prefix():
    with pytest.raises(ApplicationError) as err:
        parse_application({**_base(), "loan_amnt": "9" * 50 + "x" * 100_000})
    assert len(str(err.value)) < 200
    assert "…" in err.value.errors["loan_amnt"]


def test_a_malformed_applicant_id_is_not_repeated_back():
    with pytest.raises(ApplicationError) as err:
        parse_application({**_base(), "dob_ssn": "19900101_12345"})
    assert "19900101" not in str(err.value)


@pytest.mark.parametrize("raw", [[1, 2], "dob_ssn=1", 42, None])
def test_a_non_mapping_application_is_refused_with_a_sentence(raw):
    with pytest.raises(ApplicationError) as err:
        parse_application(raw)
    assert "mapping" in err.value.errors["application"]


def test_the_cli_refuses_unicode_digits_and_leaves_the_data_alone(backbone, pg):
    from tests.conftest import run_cli

    before = pg.execute("SELECT count(*) FROM loans").fetchone()[0]
    for bad in ("𝟘𝟙𝟚𝟛", "1_000", "５０"):
        out = run_cli("loan-desk", "load", "--applicants", bad)
        assert out.returncode == 2
        assert "digits 0-9" in out.stderr and "Traceback" not in out.stderr
    assert pg.execute("SELECT count(*) FROM loans").fetchone()[0] == before
