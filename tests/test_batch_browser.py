"""The batch page in Chromium: an officer uploads a CSV and downloads one result row per application.

Uses tests/test_browser.py's server, browser and sign-in (its module-scoped fixtures run again
for this module).
"""

from __future__ import annotations

import csv
import io
import uuid

from model.batch import REQUIRED
from tests.test_browser import (  # noqa: F401 - fixtures are found by name
    ARTIFACTS,
    OFFICER,
    _expect_text,
    _login,
    _no_traceback,
    _shots,
    app_url,
    browser,
    page,
    pytestmark,
)

FIELDS = ("dob_ssn", *REQUIRED)  # the columns the scorer needs, in its order


def test_batch_upload_returns_a_file(app_url, page, pg):  # noqa: F811 - the imported fixtures
    rows = pg.execute(
        f"SELECT {', '.join(FIELDS)} FROM loans WHERE person_income BETWEEN 4000 AND 2000000 "
        "AND loan_amnt BETWEEN 500 AND 35000 AND loan_int_rate BETWEEN 5 AND 25 AND dob_ssn BETWEEN '1940' AND '2006' "
        "AND person_emp_length <= 3 ORDER BY loan_id DESC LIMIT 12"
    ).fetchall()
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    # An extra column (ignored by the scorer) makes this run's file new: the same file twice is refused.
    run = uuid.uuid4().hex
    w.writerow([*FIELDS, "campaign_run"])
    w.writerows([*r, run] for r in rows)
    w.writerow(["=cmd|' /C calc'!A0", "12345", "lots", "RENT", "3", "MEDICAL", "5000", "10", run])
    data = ("\ufeff" + buf.getvalue()).encode()
    page.goto(app_url)
    _login(page, OFFICER)
    _expect_text(page, "New application")
    page.goto(f"{app_url}/batch")
    _expect_text(page, "Batch scoring")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        {"name": "campaign.csv", "mimeType": "text/csv", "buffer": data}
    )
    _expect_text(page, "campaign.csv")
    page.get_by_role("button", name="Score the file").click()
    button = page.get_by_role("button", name="Download the results (CSV)")
    button.wait_for(timeout=120_000)
    _expect_text(page, "13 rows, 12 scored and recorded")
    with page.expect_download() as info:
        button.click()
    download = info.value
    assert download.suggested_filename.startswith("campaign-batch-")
    out = list(csv.DictReader(open(download.path(), encoding="utf-8", newline="")))  # noqa: SIM115
    assert len(out) == 13 and all(r["decision_id"] for r in out[:12]) and out[12]["error"]
    assert "Applicant ID looks like a spreadsheet formula" in out[12]["error"]
    assert not any(r[0] in page.content() for r in rows)  # applicant ids masked on the page
    ids = [int(r["decision_id"]) for r in out[:12]]
    recorded = pg.execute(
        "SELECT count(*), count(DISTINCT batch_id) FROM loan_desk_decisions WHERE id = ANY(%s) AND channel = 'batch' "
        "AND username = %s",
        [ids, OFFICER[0]],
    ).fetchone()
    assert recorded == (12, 1)
    _no_traceback(page)
    _shots(page, "batch")
    assert (ARTIFACTS / "batch-390.png").exists()
