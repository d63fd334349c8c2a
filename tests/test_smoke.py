from model.inference import DecisionService


def test_backbone_decides(backbone, pg):
    row = pg.execute("SELECT dob_ssn, zipcode FROM loans ORDER BY loan_id DESC LIMIT 1").fetchone()
    svc = DecisionService(settings=backbone["settings"])
    d = svc.decide(
        {
            "dob_ssn": row[0],
            "zipcode": row[1],
            "person_age": _age(row[0]),
            "person_income": 50000,
            "person_home_ownership": "RENT",
            "person_emp_length": 2,
            "loan_intent": "EDUCATION",
            "loan_amnt": 5000,
            "loan_int_rate": 10.5,
        }
    )
    assert 0 < d.probability < 1
    assert d.outcome in ("approve", "refer", "decline")
    assert d.model_version == backbone["meta"]["model_version"]


def _age(dob_ssn):
    from datetime import UTC, datetime

    b = datetime.strptime(dob_ssn[:8], "%Y%m%d").date()
    t = datetime.now(UTC).date()
    return t.year - b.year - ((t.month, t.day) < (b.month, b.day))
