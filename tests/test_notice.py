"""The adverse-action notice (runtime/notice.py): content, escaping, refusal, configuration errors."""

from __future__ import annotations

import copy
import io
from datetime import UTC, date, datetime
from pathlib import Path

import pypdf
import pytest

from runtime import notice
from runtime.notice import (
    NoticeConfigError,
    NoticeRefused,
    load_config,
    notice_filename,
    render_html,
    render_pdf,
)

ROOT = Path(__file__).resolve().parent.parent

REASONS = [
    {
        "text": "Missed payments in the last 6 months",
        "feature": "missed_payments_6m",
        "value": "3",
        "as_of": "2026-10-01",
        "contribution": 0.41,
    },
    {
        "text": "Loan amount is high relative to income",
        "feature": "loan_to_income",
        "value": "29% of income",
        "as_of": None,
        "contribution": 0.30,
    },
    {
        "text": "Credit card balance is high",
        "feature": "credit_card_due",
        "value": "$8,400",
        "as_of": "2026-09-30",
        "contribution": 0.20,
    },
    {
        "text": "Length of employment is short",
        "feature": "person_emp_length",
        "value": "1 year",
        "as_of": None,
        "contribution": 0.10,
    },
    {"text": "A fifth reason never shown", "feature": "hard_pulls", "value": "2", "as_of": None, "contribution": 0.01},
]

GOOD_CONFIG = """
example = false
[lender]
name = "Prairie Lending Co."
address = ["12 Main Street", "Peoria, IL 61602"]
phone = "(309) 555-0177"
website = "https://prairie.example"
contact = "Loan Office"
[bureau]
name = "Sample Bureau LLC"
address = ["PO Box 1234", "Atlanta, GA 30374"]
phone = "1-888-555-0100"
[agency]
name = "Consumer Financial Protection Bureau"
address = ["1700 G Street NW", "Washington, DC 20552"]
"""


def _record(**changes) -> dict:
    record = {
        "id": 12,
        "decided_at": datetime(2026, 10, 3, 14, 5, tzinfo=UTC),
        "outcome": "decline",
        "applicant": "1963****_**78",
        "inputs": {
            "dob_ssn": "19630621_4278",
            "loan_amnt": 12000,
            "loan_intent": "DEBTCONSOLIDATION",
            "person_income": 41000,
        },
        "reasons": copy.deepcopy(REASONS),
        "probability": 0.4137,
        "model_version": "20261001-abc123",
        "policy_version": "2026.10-1",
        "used_credit_report": True,
    }
    record.update(changes)
    return record


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "notice.toml"
    path.write_text(GOOD_CONFIG)
    return load_config(path)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return _flat(" ".join(page.extract_text() for page in reader.pages))


def _statements_present(text: str) -> None:
    """The ECOA and FCRA statements and the score disclosure, in ``text`` (whitespace collapsed)."""
    for phrase in (
        # ECOA, Reg B 1002.9(b)(1)
        "Equal Credit Opportunity Act, a creditor may not discriminate",
        "race, color, religion, national origin, sex, marital status, or age",
        "public assistance program",
        "Consumer Credit Protection Act",
        "Consumer Financial Protection Bureau, 1700 G Street NW, Washington, DC 20552",
        # FCRA 615(a)
        "Fair Credit Reporting Act",
        "Sample Bureau LLC",
        "PO Box 1234",
        "Atlanta, GA 30374",
        "Toll-free phone: 1-888-555-0100",
        "did not make this decision and cannot tell you the specific reasons",
        "free copy of your report",
        "within 60 days",
        "right to dispute",
        # score disclosure
        "41.4% estimated probability of default",
        "0% to 100%",
        "Key factors that adversely affected your score",
    ):
        assert phrase in text, phrase


def test_html_has_reasons_statements_and_decision(config):
    page = render_html(_record(), config, issued=date(2026, 10, 4))
    text = _flat(page)
    assert text.startswith("<!DOCTYPE html>")
    assert "Decision reference</th><td>12</td>" in text
    assert "October 4, 2026" in text and "October 3, 2026" in text
    assert "a loan of $12,000 for debt consolidation" in text
    positions = [text.index(r["text"]) for r in REASONS[:4]]
    assert positions == sorted(positions), "reasons keep their order"
    assert "A fifth reason never shown" not in text
    assert "Your value: 3 (as of October 1, 2026)" in text
    assert "Your value: 29% of income" in text
    _statements_present(text.replace("&#x27;", "'"))
    assert "Prairie Lending Co." in text and "(309) 555-0177" in text
    assert "EXAMPLE DETAILS" not in text  # example = false


def test_html_escapes_every_value(config, tmp_path):
    hostile = '<script>alert("x")</script>'
    reasons = copy.deepcopy(REASONS)
    reasons[0]["text"] = f"Missed payments {hostile}"
    reasons[1]["value"] = "<b>29%</b>"
    path = tmp_path / "hostile.toml"
    path.write_text(GOOD_CONFIG.replace('"Prairie Lending Co."', '"Prairie <img src=x onerror=alert(1)> & Co."'))
    page = render_html(_record(reasons=reasons, model_version="<i>v1</i>"), load_config(path))
    assert "<script>" not in page and "<img" not in page and "<b>29%" not in page and "<i>v1" not in page
    assert "Missed payments &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "Prairie &lt;img src=x onerror=alert(1)&gt; &amp; Co." in page


def test_applicant_is_masked_never_in_clear(config):
    for record in (_record(), _record(applicant="19630621_4278", inputs={"loan_amnt": 5000})):
        page = render_html(record, config)
        assert "19630621" not in page and "4278" not in page
        assert "1963****_**78" in page
        assert "19630621" not in _pdf_text(render_pdf(record, config))


def test_pdf_is_a_pdf_with_reasons_and_statements(config):
    data = render_pdf(_record(), config, issued=date(2026, 10, 4))
    assert data.startswith(b"%PDF")
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert 1 <= len(reader.pages) <= 2
    text = _pdf_text(data)
    for r in REASONS[:4]:
        assert r["text"] in text
    assert "A fifth reason never shown" not in text
    assert "Decision reference 12" in text
    assert "a loan of $12,000 for debt consolidation" in text
    _statements_present(text)


@pytest.mark.parametrize("fonts", [None, ()], ids=["unicode-ttf", "core-font-fallback"])
def test_pdf_handles_text_outside_latin1(config, fonts):
    if fonts is None:
        assert notice._font_family() is not None, "a Unicode TTF (fonts-dejavu-core or fonts-liberation) is expected"
    reasons = copy.deepcopy(REASONS)
    reasons[0]["text"] = "Zoë’s “missed” payments — 王 Ω €"
    data = render_pdf(_record(reasons=reasons), config, fonts=fonts)
    text = _pdf_text(data)
    if fonts is None:
        assert "Zoë’s “missed” payments — ? Ω" in text  # a glyph the font lacks shows as "?"
    else:
        assert 'Zoë\'s "missed" payments - ? ? EUR' in text


@pytest.mark.parametrize(
    ("outcome", "words"),
    [("approve", "Decision 12 was an approval"), ("refer", "Decision 12 is still under review")],
)
def test_refused_unless_declined(config, outcome, words):
    for render in (render_html, render_pdf):
        with pytest.raises(NoticeRefused) as caught:
            render(_record(outcome=outcome), config)
        message = str(caught.value)
        assert message.startswith(words)
        assert message.endswith("an adverse-action notice is only for declined applications.")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"outcome": None}, "Decision 12 has no recorded outcome"),
        ({"outcome": "reject"}, "Decision 12 has the outcome 'reject'"),
        ({"probability": None}, "Decision 12 has no valid probability"),
        ({"decided_at": "yesterday"}, "Decision 12 has no valid decision time"),
        ({"reasons": [{"text": ""}]}, "Decision 12 has malformed reasons"),
        ({"id": "12"}, "The decision has no id"),
    ],
)
def test_malformed_record_is_one_sentence(config, changes, expected):
    with pytest.raises(notice.NoticeError) as caught:
        render_pdf(_record(**changes), config)
    assert str(caught.value).startswith(expected) and str(caught.value).endswith(".")


def test_decline_without_reasons_is_refused(config):
    with pytest.raises(NoticeRefused, match="no recorded principal reasons"):
        render_html(_record(reasons=[]), config)


def test_fcra_section_only_when_a_credit_report_was_used(config):
    page = render_html(_record(used_credit_report=False), config)
    assert "Fair Credit Reporting Act" not in page and "Sample Bureau LLC" not in page
    assert "Equal Credit Opportunity Act" in page and "estimated probability of default" in page


def test_repo_config_loads_and_marks_its_example_values(monkeypatch):
    monkeypatch.delenv(notice.CONFIG_ENV, raising=False)
    config = load_config()
    assert Path(config.source) == ROOT / "policy" / "notice.toml"
    assert config.example is True
    assert "EXAMPLE DETAILS" in render_html(_record(), config)
    assert "EXAMPLE DETAILS" in _pdf_text(render_pdf(_record(), config))


def test_env_var_points_to_another_file(monkeypatch, tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(GOOD_CONFIG.replace("Prairie Lending Co.", "Other Lender Inc."))
    monkeypatch.setenv(notice.CONFIG_ENV, str(path))
    assert load_config().lender.name == "Other Lender Inc."
    monkeypatch.setenv(notice.CONFIG_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(NoticeConfigError, match=r"absent\.toml \(set by LOAN_DESK_NOTICE_CONFIG\) does not exist"):
        load_config()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace('contact = "Loan Office"', 'contact = "Loan Office"\nfax = "1"'),
            "unknown field lender.fax",
        ),
        (lambda t: t + "\n[extra]\nx = 1\n", "unknown field 'extra'"),
        (lambda t: t.replace('phone = "(309) 555-0177"\n', ""), "lender.phone is missing"),
        (lambda t: t.split("[agency]")[0], "[agency] is missing"),
        (
            lambda t: t.replace('phone = "(309) 555-0177"', "phone = 3095550177"),
            "lender.phone must be a non-empty string",
        ),
        (lambda t: t.replace('["PO Box 1234", "Atlanta, GA 30374"]', '"PO Box 1234"'), "bureau.address must be a list"),
        (lambda t: t.replace("example = false", 'example = "no"'), "example must be true or false"),
        (lambda t: t.replace('"1-888-555-0100"', '"(404) 555-0100"'), "bureau.phone must be a toll-free number"),
        (lambda t: t.replace("[lender]", "[lender"), "is not valid TOML"),
    ],
)
def test_config_errors_are_one_message(tmp_path, edit, expected):
    path = tmp_path / "notice.toml"
    path.write_text(edit(GOOD_CONFIG))
    with pytest.raises(NoticeConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"notice configuration {path}")
    assert "\n" not in message and "Traceback" not in message


def test_config_lists_every_problem_at_once(tmp_path):
    path = tmp_path / "notice.toml"
    path.write_text(GOOD_CONFIG.replace('name = "Sample Bureau LLC"', "name = 5").replace("website", "web_site"))
    with pytest.raises(NoticeConfigError) as caught:
        load_config(path)
    assert "bureau.name must be a non-empty string, got a number" in str(caught.value)
    assert "unknown field lender.web_site" in str(caught.value)


def test_notice_filename():
    assert notice_filename(_record(), "pdf") == "adverse-action-notice-12.pdf"
    assert notice_filename(_record(id=7), "html") == "adverse-action-notice-7.html"
    with pytest.raises(ValueError, match="kind must be"):
        notice_filename(_record(), "docx")


def test_a_referral_declined_on_review_gets_a_notice_with_the_underwriters_reason_first():
    from datetime import UTC, datetime

    from runtime.notice import notice_record

    reasons = [
        {
            "code": "LTI",
            "text": "Loan amount is high relative to income",
            "feature": "loan_pct_income",
            "value": "45% of income",
            "contribution": 0.9,
            "as_of": None,
        },
        {
            "code": "MISS",
            "text": "Missed payments in the last 6 months",
            "feature": "missed_payments_6m",
            "value": "2",
            "contribution": 0.5,
            "as_of": "2026-11-01",
        },
    ]
    row = {
        "id": 7,
        "decided_at": datetime(2026, 11, 1, tzinfo=UTC),
        "outcome": "refer",
        "inputs": {"dob_ssn": "19630621_4278", "loan_amnt": 9000, "loan_intent": "MEDICAL"},
        "reasons": reasons,
        "features": [{"view": "credit_history", "status": "ok"}],
        "review": {
            "outcome": "decline",
            "reason_code": "INCOME_UNVERIFIED",
            "reviewed_at": datetime(2026, 11, 2, tzinfo=UTC),
        },
    }
    doc = notice_record(row)
    assert doc["outcome"] == "decline" and doc["decided_at"].day == 2
    assert [r["text"] for r in doc["reasons"]] == [
        "Income could not be verified",
        "Loan amount is high relative to income",
        "Missed payments in the last 6 months",
    ]
    assert notice_record({**row, "review": {**row["review"], "outcome": "approve"}})["outcome"] == "approve"
    assert notice_record({**row, "review": None})["outcome"] == "refer"
