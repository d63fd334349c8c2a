"""Batch scoring: upload a CSV of applications, get one recorded decision (or the row's errors) per row."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from model.batch import (
    IDENTITY,
    MAX_REASONS,
    OPTIONAL,
    REQUIRED,
    AlreadyScored,
    BatchInputError,
    score_csv,
)
from pages._ui import guarded, plain, require, settings, show_error
from runtime.batches import recent_batches

PREVIEW_ROWS = 1000
TEMPLATE = (
    ",".join(("dob_ssn", *REQUIRED, *OPTIONAL))
    + "\r\n19630621_4278,76104,52000,RENT,3,MEDICAL,9000,12.5,\r\n"
    + "19900115_1234,02438,81000,MORTGAGE,7.5,HOMEIMPROVEMENT,15000,9.9,\r\n"
)


def _score(upload, again: bool, user: str) -> None:
    data = upload.getvalue()
    bar = st.progress(0.0, text="Reading the file…")

    def progress(line: int, lines: int) -> None:
        bar.progress(min(line / max(lines, 1), 1.0), text=f"Scored up to line {line:,} of about {lines:,}")

    preview: list[dict] = []

    def keep(rows: list[dict]) -> None:
        if len(preview) < PREVIEW_ROWS:
            preview.extend(rows[: PREVIEW_ROWS - len(preview)])

    sink = io.StringIO(newline="")
    try:
        summary = score_csv(
            settings(),
            io.BytesIO(data),
            sink,
            username=user,
            filename=upload.name,
            again=again,
            progress=progress,
            on_rows=keep,
        )
    except AlreadyScored as exc:
        bar.empty()
        st.session_state["ld_batch"] = None
        st.warning(plain(str(exc)), icon=":material/content_copy:")
        return
    except BatchInputError as exc:
        bar.empty()
        st.session_state["ld_batch"] = None
        st.error(plain(f"The file cannot be scored: {exc}. Nothing was recorded."), icon=":material/error:")
        return
    except Exception as exc:
        bar.empty()
        st.session_state["ld_batch"] = None
        show_error(exc, "The batch could not start; nothing was recorded")
        return
    bar.empty()
    st.session_state["ld_batch"] = (summary, sink.getvalue(), preview, upload.name)


def _show(summary, text: str, preview: list[dict], name: str) -> None:
    if summary.status == "done":
        st.success(plain(summary.describe()), icon=":material/task_alt:")
    else:
        st.error(plain(summary.describe()), icon=":material/error:")
    # A row that wraps (two or three to a line on a phone) instead of five stacked columns.
    with st.container(horizontal=True, gap="large"):
        for label, n in (
            ("Rows", summary.rows),
            ("Approved", summary.outcomes.get("approve", 0)),
            ("Referred", summary.outcomes.get("refer", 0)),
            ("Declined", summary.outcomes.get("decline", 0)),
            ("Errors", summary.errors),
        ):
            st.metric(label, f"{n:,}", width="content")
    stem = name.rsplit(".", 1)[0][:60] or "batch"
    st.download_button(
        "Download the results (CSV)",
        data=text.encode("utf-8"),
        file_name=f"{stem}-batch-{summary.batch_id}-results.csv",
        mime="text/csv",
        icon=":material/download:",
        type="primary",
    )
    if not preview:
        return
    table = pd.DataFrame(
        [
            {
                "row": r["row"],
                "outcome": r["outcome"] or "error",
                "PD": "" if r["probability"] == "" else f"{float(r['probability']):.1%}",
                "reasons or error": r["error"]
                or "; ".join(r[f"reason_{i}"] for i in range(1, MAX_REASONS + 1) if r[f"reason_{i}"])
                or r["refer_reason"],
                "applicant": r["applicant"],
                "decision": f"/decision?id={r['decision_id']}" if r["decision_id"] else "",
            }
            for r in preview
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "row": st.column_config.NumberColumn("line", help="The row's line in the file (the header is line 1)"),
            "PD": st.column_config.TextColumn("PD", help="Probability of default", width="small"),
            "reasons or error": st.column_config.TextColumn("reasons or error", width="large"),
            "decision": st.column_config.LinkColumn("decision", display_text=r"id=(\d+)", width="small"),
        },
    )
    if summary.rows > len(preview):
        st.caption(f"The first {len(preview):,} of {summary.rows:,} rows; the download has them all.")


def _recent(user: str, role: str) -> None:
    st.subheader("Recent batches")
    with guarded("The recent batches are unavailable"):
        rows = recent_batches(settings(), None if role == "admin" else user, limit=10)
        if not rows:
            st.caption("No batches yet.")
            return
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "batch": r["id"],
                        "status": r["status"],
                        "rows": r["rows"],
                        "scored": r["scored"],
                        "errors": r["errors"],
                        "file": r["filename"],
                        "by": r["username"],
                        "started (UTC)": f"{r['created_at']:%Y-%m-%d %H:%M}",
                    }
                    for r in rows
                ]
            ),
            hide_index=True,
        )


user, role = require("officer", "admin")
st.title(":material/table_view: Batch scoring")
st.markdown(
    "Upload a CSV with one application per row. Each row is validated like the form and decided "
    "like an application from the form; every decision is recorded as part of one batch."
)
with st.expander("Columns the file needs"):
    st.markdown(
        f"**Required:** {', '.join(f'`{c}`' for c in REQUIRED)}, and the applicant: `dob_ssn` "
        "(`YYYYMMDD_NNNN`) or `date_of_birth` (`YYYY-MM-DD`) with `ssn_last4`.  \n"
        f"**Optional:** `person_age` (otherwise from the date of birth). Other columns are ignored. "
        f"UTF-8, with or without a byte-order mark."
    )
    st.caption(f"Recognised columns: {', '.join((*IDENTITY, *REQUIRED, *OPTIONAL))}.")
    st.download_button("Download a template", TEMPLATE, file_name="applications-template.csv", mime="text/csv")
upload = st.file_uploader("CSV of applications", type=["csv"], key="ld_batch_file")
again = st.checkbox(
    "Score it again, even if this file was already scored (every row is recorded again)", key="ld_batch_again"
)
if st.button("Score the file", type="primary", icon=":material/play_arrow:", disabled=upload is None):
    try:
        _score(upload, again, user)
    except Exception as exc:  # never a traceback on the page
        show_error(exc, "The batch failed")
if last := st.session_state.get("ld_batch"):
    _show(*last)
_recent(user, role)
