"""The adverse-action notice for a declined application, as HTML and as PDF.

What it says follows ECOA / Regulation B 12 CFR 1002.9(b) and FCRA §615(a) (see
``../shared/docs/lending-notes.md``): the specific principal reasons (at most four, in the order
given), the ECOA anti-discrimination statement naming the federal agency, the consumer reporting
agency's details with the applicant's rights (free report within 60 days, dispute), and the
disclosure of the score used with its key factors and date.

The lender, bureau and agency details come from a TOML file, ``policy/notice.toml`` in the repo,
or the file ``LOAN_DESK_NOTICE_CONFIG`` names (``load_config``). A notice is only for a decline:
anything else raises ``NoticeRefused`` with a sentence.

    config = load_config()
    html = render_html(record, config)        # str, every value escaped
    pdf = render_pdf(record, config)          # bytes, %PDF…
    notice_filename(record, "pdf")            # "adverse-action-notice-12.pdf"

``record`` is a decision from the trail: ``id``, ``decided_at``, ``outcome``, ``applicant``
(masked), ``inputs``, ``reasons`` (each ``text``, ``feature``, ``value``, ``as_of``,
``contribution``), ``probability``, ``model_version``, ``policy_version``, ``used_credit_report``.
"""

from __future__ import annotations

import html
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from runtime.schema import masked_applicant

CONFIG_ENV = "LOAN_DESK_NOTICE_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "policy" / "notice.toml"
MAX_REASONS = 4  # Regulation B commentary: more than four is "not likely to be helpful"

INTENT_WORDS = {
    "EDUCATION": "education",
    "MEDICAL": "medical expenses",
    "VENTURE": "a business venture",
    "PERSONAL": "personal use",
    "DEBTCONSOLIDATION": "debt consolidation",
    "HOMEIMPROVEMENT": "home improvement",
}

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_TOLL_FREE = re.compile(r"^(?:\+?1[\s.-]?)?\(?(800|833|844|855|866|877|888)\)?[\s.-]?\d{3}[\s.-]?\d{4}$")
_FULL_DOB_SSN = re.compile(r"\d{8}_\d{4}")


class NoticeError(ValueError):
    """A notice cannot be made; the message is one sentence for the user."""


class NoticeRefused(NoticeError):
    """The decision is not a decline (or cannot support a notice)."""


class NoticeConfigError(NoticeError):
    """The notice's configuration file is missing, not TOML, or has a bad, unknown or missing field."""


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Party:
    """A name with its postal address (one string per line) and, where it has them, phone,
    website and the office that answers questions."""

    name: str
    address: tuple[str, ...]
    phone: str | None = None
    website: str | None = None
    contact: str | None = None


@dataclass(frozen=True)
class NoticeConfig:
    lender: Party
    bureau: Party
    agency: Party
    example: bool
    source: str  # the file it was read from


# For each table: field → required?  Types: name/phone/website/contact are strings, address a list of lines.
_FIELDS = {
    "lender": {"name": True, "address": True, "phone": True, "website": False, "contact": False},
    "bureau": {"name": True, "address": True, "phone": True, "website": False},
    "agency": {"name": True, "address": True},
}


def load_config(path: str | os.PathLike | None = None) -> NoticeConfig:
    """Read the notice's details: ``path``, else the file ``LOAN_DESK_NOTICE_CONFIG`` names, else
    ``policy/notice.toml``. Every problem found is reported in one ``NoticeConfigError``."""
    chosen = path if path is not None else (os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    where = Path(chosen)
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        hint = f" (set by {CONFIG_ENV})" if path is None and os.environ.get(CONFIG_ENV) else ""
        raise NoticeConfigError(f"notice configuration {where}{hint} does not exist") from None
    except OSError as exc:
        raise NoticeConfigError(f"notice configuration {where} cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise NoticeConfigError(f"notice configuration {where} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise NoticeConfigError(f"notice configuration {where} is not valid TOML: {exc}") from None
    return parse_config(data, str(where))


def parse_config(data: dict, source: str = "<config>") -> NoticeConfig:
    """Check a parsed TOML table (see ``policy/notice.toml``) and build the configuration."""
    problems: list[str] = []
    for key in data:
        if key not in _FIELDS and key != "example":
            problems.append(f"unknown field {key!r} (known: example, {', '.join(_FIELDS)})")
    example = data.get("example", False)
    if not isinstance(example, bool):
        problems.append(f"example must be true or false, got {_kind(example)}")
    parties: dict[str, Party] = {}
    for table, fields in _FIELDS.items():
        section = data.get(table)
        if section is None:
            problems.append(f"[{table}] is missing")
            continue
        if not isinstance(section, dict):
            problems.append(f"{table} must be a table ([{table}]), got {_kind(section)}")
            continue
        values: dict[str, object] = {}
        for key, value in section.items():
            if key not in fields:
                problems.append(f"unknown field {table}.{key} (known: {', '.join(fields)})")
            elif key == "address":
                if (
                    not isinstance(value, list)
                    or not 1 <= len(value) <= 5
                    or not all(isinstance(v, str) and v.strip() for v in value)
                ):
                    problems.append(f"{table}.address must be a list of 1 to 5 non-empty lines (strings)")
                else:
                    values[key] = tuple(v.strip() for v in value)
            elif not isinstance(value, str) or not value.strip():
                problems.append(f"{table}.{key} must be a non-empty string, got {_kind(value)}")
            else:
                values[key] = value.strip()
        for key, required in fields.items():
            if required and key not in section:
                problems.append(f"{table}.{key} is missing")
        phone = values.get("phone")
        if table == "bureau" and isinstance(phone, str) and not _TOLL_FREE.match(phone):
            problems.append(
                f"bureau.phone must be a toll-free number (800, 833, 844, 855, 866, 877 or 888), got {phone!r}"
            )
        if not any(p.startswith(f"{table}.") or p.startswith(f"unknown field {table}.") for p in problems):
            parties[table] = Party(**values)  # type: ignore[arg-type]
    if problems:
        raise NoticeConfigError(f"notice configuration {source}: " + "; ".join(problems))
    return NoticeConfig(parties["lender"], parties["bureau"], parties["agency"], example, source)


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# The letter's content, shared by the HTML and the PDF


@dataclass(frozen=True)
class Reason:
    text: str
    detail: str | None  # "Your value: 3 (as of October 1, 2026)"


@dataclass(frozen=True)
class Letter:
    decision_id: int
    notice_date: str
    decided_on: str
    applicant: str
    amount_phrase: str
    opening: str
    reasons: tuple[Reason, ...]
    score: tuple[tuple[str, str], ...]  # (label, value) rows
    score_intro: str
    used_credit_report: bool
    fcra: tuple[str, ...]
    ecoa: str
    questions: str
    versions: str
    example_banner: str | None


def notice_filename(record: dict, kind: str) -> str:
    """The download name: ``adverse-action-notice-<id>.pdf`` (or ``.html``)."""
    if kind not in ("pdf", "html"):
        raise ValueError(f"kind must be 'pdf' or 'html', got {kind!r}")
    return f"adverse-action-notice-{_decision_id(record)}.{kind}"


def letter(record: dict, config: NoticeConfig, issued: date | None = None) -> Letter:
    """The notice's text for ``record``; refuses (``NoticeRefused``) anything but a decline."""
    decision_id = _decision_id(record)
    outcome = record.get("outcome")
    if outcome == "approve":
        raise NoticeRefused(
            f"Decision {decision_id} was an approval: an adverse-action notice is only for declined applications."
        )
    if outcome == "refer":
        raise NoticeRefused(
            f"Decision {decision_id} is still under review (referred to a person): "
            "an adverse-action notice is only for declined applications."
        )
    if outcome != "decline":
        what = "no recorded outcome" if outcome is None else f"the outcome {str(outcome)[:20]!r}"
        raise NoticeRefused(
            f"Decision {decision_id} has {what}: an adverse-action notice is only for declined applications."
        )
    raw_reasons = record.get("reasons") or []
    if not isinstance(raw_reasons, list) or not all(isinstance(r, dict) and r.get("text") for r in raw_reasons):
        raise NoticeError(f"Decision {decision_id} has malformed reasons: each must have a text.")
    if not raw_reasons:
        raise NoticeRefused(
            f"Decision {decision_id} has no recorded principal reasons: a notice must state the specific reasons."
        )
    decided_at = _as_utc(record.get("decided_at"), decision_id)
    probability = record.get("probability")
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 <= probability <= 1:
        raise NoticeError(f"Decision {decision_id} has no valid probability (a number from 0 to 1).")
    inputs = record.get("inputs") or {}
    reasons = tuple(_reason(r) for r in raw_reasons[:MAX_REASONS])
    lender = config.lender
    amount_phrase = _amount_phrase(inputs)
    used = bool(record.get("used_credit_report"))
    decided_on = _long_date(decided_at.date())

    score = (
        ("Your score", f"{probability * 100:.1f}% estimated probability of default"),
        ("Range of possible scores", "0% to 100% (a lower score means a lower estimated risk)"),
        ("Date of the score", decided_on),
        ("Who produced the score", f"{lender.name}, with its credit model version {record.get('model_version')}"),
        ("Key factors that adversely affected your score", "; ".join(r.text for r in reasons)),
    )
    bureau = config.bureau
    fcra = (
        "Our decision was based in whole or in part on information in a report about you from the consumer "
        "reporting agency named below. You have a right under the Fair Credit Reporting Act to know what your "
        "file at that agency contains.",
        f"{bureau.name} did not make this decision and cannot tell you the specific reasons for it; "
        "please contact us with questions about the decision itself.",
        "You have the right to a free copy of your report from the agency if you ask for it within 60 days "
        "of receiving this notice.",
        "If any information in the report is inaccurate or incomplete, you have the right to dispute it "
        "directly with the agency.",
    )
    agency = config.agency
    ecoa = (
        "Under the federal Equal Credit Opportunity Act, a creditor may not discriminate against anyone who "
        "applies for credit because of race, color, religion, national origin, sex, marital status, or age "
        "(as long as the applicant is old enough to enter into a binding contract); because all or part of "
        "the applicant's income comes from a public assistance program; or because the applicant has in good "
        "faith exercised any right under the Consumer Credit Protection Act. The federal agency that oversees "
        f"{lender.name}'s compliance with this law is: {agency.name}, {', '.join(agency.address)}."
    )
    contact = f"our {lender.contact}" if lender.contact else "us"
    questions = f"If you have questions about this decision, please contact {contact} at {lender.phone}" + (
        f" or {lender.website}." if lender.website else "."
    )
    banner = None
    if config.example:
        banner = (
            "EXAMPLE DETAILS: the lender, credit bureau and agency details on this notice are example values. "
            f"Configure them in {Path(config.source).name} (set example = false) before sending it to an applicant."
        )
    return Letter(
        decision_id=decision_id,
        notice_date=_long_date(issued or datetime.now(UTC).date()),
        decided_on=decided_on,
        applicant=_applicant(record),
        amount_phrase=amount_phrase,
        opening=(
            f"Thank you for your application. After reviewing it, we are unable to approve your "
            f"application for {amount_phrase}. The principal reasons for our decision are listed below, "
            "most important first."
        ),
        reasons=reasons,
        score_intro=(
            "In making this decision we used a credit score produced by our own credit model from the "
            "information in your application"
            + (" and your credit report." if used else ".")
            + " The score estimates the chance that a loan would not be repaid as agreed."
        ),
        score=score,
        used_credit_report=used,
        fcra=fcra,
        ecoa=ecoa,
        questions=questions,
        versions=f"Decision {decision_id} · model {record.get('model_version')} · policy "
        f"{record.get('policy_version')}",
        example_banner=banner,
    )


def _decision_id(record: dict) -> int:
    value = record.get("id") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise NoticeError("The decision has no id: a notice needs the decision record's id.")
    return value


def _as_utc(value: object, decision_id: int) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime):
        raise NoticeError(f"Decision {decision_id} has no valid decision time.")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _long_date(d: date) -> str:
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"


def _applicant(record: dict) -> str:
    """The masked applicant id; a full date of birth + SSN is masked, never shown."""
    inputs = record.get("inputs") or {}
    if isinstance(inputs, dict) and inputs.get("dob_ssn"):
        return masked_applicant(str(inputs["dob_ssn"]))
    shown = str(record.get("applicant") or "")
    if _FULL_DOB_SSN.search(shown):
        return masked_applicant(_FULL_DOB_SSN.search(shown).group(0))
    return shown or "********_****"


def _amount_phrase(inputs: dict) -> str:
    amount = inputs.get("loan_amnt") if isinstance(inputs, dict) else None
    intent = inputs.get("loan_intent") if isinstance(inputs, dict) else None
    phrase = "a loan"
    if isinstance(amount, int | float) and not isinstance(amount, bool) and amount > 0:
        money = f"${amount:,.0f}" if float(amount).is_integer() else f"${amount:,.2f}"
        phrase = f"a loan of {money}"
    if intent:
        key = str(intent).strip().upper()
        phrase += f" for {INTENT_WORDS.get(key, key.lower().replace('_', ' '))}"
    return phrase


def _reason(raw: dict) -> Reason:
    value = raw.get("value")
    as_of = raw.get("as_of")
    detail = None
    if value not in (None, ""):
        detail = f"Your value: {value}"
        if as_of:
            when = as_of
            if isinstance(as_of, str):
                try:
                    when = date.fromisoformat(as_of[:10])
                except ValueError:
                    when = as_of
            if isinstance(when, datetime):
                when = when.date()
            detail += f" (as of {_long_date(when) if isinstance(when, date) else when})"
    return Reason(str(raw["text"]), detail)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; color: #1a1a1a; background: #f3f3f3;
       margin: 0; padding: 24px 12px; line-height: 1.45; font-size: 15px; }
.letter { background: #fff; max-width: 7.5in; margin: 0 auto; padding: 0.9in 0.9in 0.7in;
          box-shadow: 0 1px 4px rgba(0,0,0,.15); box-sizing: border-box; }
.banner { border: 2px solid #b45309; background: #fff7ed; color: #7c2d12; padding: 8px 12px; margin-bottom: 20px;
          font-size: 13px; }
.lender-name { font-size: 20px; font-weight: bold; margin: 0; }
.lender { color: #444; font-size: 13px; margin: 2px 0 0; }
hr { border: 0; border-top: 2px solid #1f3a5f; margin: 14px 0 18px; }
.meta { width: 100%; border-collapse: collapse; font-size: 14px; margin-bottom: 16px; }
.meta th { text-align: left; font-weight: normal; color: #555; padding: 1px 12px 1px 0; width: 11em; }
h1 { font-size: 18px; margin: 18px 0 10px; }
h2 { font-size: 15px; margin: 20px 0 6px; color: #1f3a5f; }
ol.reasons li { margin-bottom: 6px; }
.detail { color: #555; font-size: 13px; display: block; }
.score { border: 1px solid #c8d1dc; background: #f6f8fb; padding: 10px 14px; }
.score table { border-collapse: collapse; font-size: 14px; }
.score p { margin-top: 0; }
.score th, .score td { text-align: left; vertical-align: top; padding: 2px 14px 2px 0; }
.score th { font-weight: normal; color: #555; width: 11em; }
.party { margin: 6px 0 6px 1.5em; font-size: 14px; }
.small { font-size: 12px; color: #666; margin-top: 28px; }
@media print { body { background: #fff; padding: 0; } .letter { box-shadow: none; padding: 0; max-width: none; } }
@page { size: letter; margin: 0.9in; }
@media (max-width: 600px) { .letter { padding: 24px 18px; } .meta th { width: auto; } }
"""


def render_html(record: dict, config: NoticeConfig, *, issued: date | None = None) -> str:
    """The notice as a standalone HTML page (UTF-8, printable); every value is escaped."""
    note = letter(record, config, issued)
    e = _esc
    lender = config.lender
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Notice of action taken — decision {note.decision_id}</title>",
        f"<style>{_CSS}</style></head><body><main class='letter'>",
    ]
    if note.example_banner:
        out.append(f"<div class='banner' role='note'>{e(note.example_banner)}</div>")
    out.append(f"<p class='lender-name'>{e(lender.name)}</p>")
    out.append(f"<p class='lender'>{'<br>'.join(e(x) for x in _party_lines(lender))}</p><hr>")
    out.append("<table class='meta'>")
    for label, value in (
        ("Date of this notice", note.notice_date),
        ("Applicant", note.applicant),
        ("Decision reference", str(note.decision_id)),
        ("Date of decision", note.decided_on),
    ):
        out.append(f"<tr><th scope='row'>{e(label)}</th><td>{e(value)}</td></tr>")
    out.append("</table>")
    out.append("<h1>Notice of action taken on your credit application</h1>")
    out.append(f"<p>{e(note.opening)}</p>")
    out.append("<h2>Principal reasons for our decision</h2><ol class='reasons'>")
    for r in note.reasons:
        detail = f"<span class='detail'>{e(r.detail)}</span>" if r.detail else ""
        out.append(f"<li>{e(r.text)}{detail}</li>")
    out.append("</ol>")
    out.append("<h2>Your credit score</h2><div class='score'>")
    out.append(f"<p>{e(note.score_intro)}</p><table>")
    for label, value in note.score:
        out.append(f"<tr><th scope='row'>{e(label)}</th><td>{e(value)}</td></tr>")
    out.append("</table></div>")
    if note.used_credit_report:
        out.append("<h2>Your rights under the Fair Credit Reporting Act</h2>")
        out.extend(f"<p>{e(p)}</p>" for p in note.fcra)
        out.append(f"<p class='party'><strong>{e(config.bureau.name)}</strong><br>")
        out.append("<br>".join(e(x) for x in _party_lines(config.bureau, toll_free=True)) + "</p>")
    out.append("<h2>Your rights under the Equal Credit Opportunity Act</h2>")
    out.append(f"<p>{e(note.ecoa)}</p>")
    out.append(f"<p>{e(note.questions)}</p>")
    out.append(f"<p>Sincerely,<br>{e(lender.name)}</p>")
    out.append(f"<p class='small'>{e(note.versions)}</p>")
    out.append("</main></body></html>")
    return "\n".join(out)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _party_lines(party: Party, toll_free: bool = False) -> list[str]:
    lines = list(party.address)
    if party.phone:
        lines.append(f"Toll-free phone: {party.phone}" if toll_free else f"Phone: {party.phone}")
    if party.website:
        lines.append(party.website)
    return lines


# ---------------------------------------------------------------------------------------------
# PDF

# Unicode fonts from Debian's fonts-dejavu-core / fonts-liberation; the first family whose three
# files exist is embedded. Without any, the PDF uses the core Helvetica and transliterates.
FONT_CANDIDATES = (
    (
        "DejaVuSans",
        (
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
            "/usr/share/fonts/truetype/dejavu/DejaVuSans-Oblique.ttf",
        ),
    ),
    (
        "LiberationSans",
        (
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Italic.ttf",
        ),
    ),
)

_ASCII_FOR = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\u2022": "-",
    "\u00b7": "-",
    "\u2212": "-",
    "\u00a0": " ",
    "\u20ac": "EUR",
}


def latin1_safe(text: str) -> str:
    """``text`` in Latin-1 for a core PDF font: common punctuation mapped, accents dropped where
    the letter is not in Latin-1, anything else as '?'. Never raises."""
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch)
        elif ch in _ASCII_FOR:
            out.append(_ASCII_FOR[ch])
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            out.append(base if base and all(ord(c) < 256 for c in base) else "?")
    return "".join(out)


def _font_family(fonts: tuple | None = None) -> tuple[str, tuple[str, str, str]] | None:
    for family, files in fonts if fonts is not None else FONT_CANDIDATES:
        if all(Path(f).is_file() for f in files):
            return family, files
    return None


def render_pdf(record: dict, config: NoticeConfig, *, issued: date | None = None, fonts: tuple | None = None) -> bytes:
    """The notice as a US-letter PDF (one or two pages). ``fonts``: other font candidates
    (``FONT_CANDIDATES``' shape), for testing the fallback."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    note = letter(record, config, issued)
    chosen = _font_family(fonts)
    family = chosen[0] if chosen else "Helvetica"
    covered: set[int] = set()

    def fix(text: str) -> str:
        """Text the font can draw: with a TTF, a character it lacks becomes "?" (fpdf2 would drop
        it silently); with the core font, Latin-1 transliteration."""
        if not chosen:
            return latin1_safe(text)
        return "".join(ch if ord(ch) in covered or ch == "\n" else "?" for ch in text)

    class _Notice(FPDF):
        def footer(self) -> None:
            self.set_y(-15)
            self.set_font(family, "", 8)
            self.set_text_color(110)
            self.cell(0, 5, fix(f"{note.versions} · page {self.page_no()} of {{nb}}"), align="C")

    pdf = _Notice(format="Letter", unit="mm")
    if chosen:
        for style, path in zip(("", "B", "I"), chosen[1], strict=True):
            pdf.add_font(family, style, path)
        covered = set(pdf.fonts[family.lower()].cmap) & set(pdf.fonts[family.lower() + "B"].cmap)
    pdf.set_title(fix(f"Notice of action taken - decision {note.decision_id}"))
    pdf.set_author(fix(config.lender.name))
    pdf.set_creator("Loan Desk")
    margin = 22
    pdf.set_margins(margin, 20, margin)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    width = pdf.epw
    nl = {"new_x": XPos.LMARGIN, "new_y": YPos.NEXT}

    def para(text: str, size: float = 10, style: str = "", gap: float = 2.2, h: float = 5.0) -> None:
        pdf.set_font(family, style, size)
        pdf.multi_cell(width, h, fix(text), align="L", **nl)
        pdf.ln(gap)

    def heading(text: str) -> None:
        if pdf.get_y() > pdf.h - 45:  # keep a heading with what follows
            pdf.add_page()
        pdf.ln(1.5)
        pdf.set_text_color(31, 58, 95)
        para(text, 11.5, "B", gap=1.2)
        pdf.set_text_color(26)

    pdf.set_text_color(26)
    if note.example_banner:
        pdf.set_draw_color(180, 83, 9)
        pdf.set_fill_color(255, 247, 237)
        pdf.set_text_color(124, 45, 18)
        pdf.set_font(family, "", 8.5)
        pdf.multi_cell(width, 4.2, fix(note.example_banner), border=1, fill=True, padding=2, **nl)
        pdf.set_text_color(26)
        pdf.ln(5)
    lender = config.lender
    pdf.set_font(family, "B", 16)
    pdf.cell(width, 8, fix(lender.name), **nl)
    pdf.set_font(family, "", 9.5)
    pdf.set_text_color(80)
    reach = [f"Phone: {lender.phone}"] + ([lender.website] if lender.website else [])
    for line in ("  ·  ".join(lender.address), "  ·  ".join(reach)):
        pdf.multi_cell(width, 4.4, fix(line), align="L", **nl)
    pdf.set_text_color(26)
    pdf.ln(2)
    pdf.set_draw_color(31, 58, 95)
    pdf.set_line_width(0.6)
    pdf.line(margin, pdf.get_y(), margin + width, pdf.get_y())
    pdf.ln(5)

    for label, value in (
        ("Date of this notice", note.notice_date),
        ("Applicant", note.applicant),
        ("Decision reference", str(note.decision_id)),
        ("Date of decision", note.decided_on),
    ):
        pdf.set_font(family, "", 10)
        pdf.set_text_color(90)
        pdf.cell(42, 5.2, fix(label))
        pdf.set_text_color(26)
        pdf.cell(width - 42, 5.2, fix(value), **nl)
    pdf.ln(4)
    para("Notice of action taken on your credit application", 13.5, "B", gap=2, h=6.5)
    para(note.opening)

    heading("Principal reasons for our decision")
    for i, r in enumerate(note.reasons, 1):
        pdf.set_font(family, "B", 10)
        pdf.cell(7, 5, f"{i}.")
        pdf.multi_cell(width - 7, 5, fix(r.text), align="L", **nl)
        if r.detail:
            pdf.set_x(margin + 7)
            pdf.set_font(family, "", 9)
            pdf.set_text_color(90)
            pdf.multi_cell(width - 7, 4.5, fix(r.detail), align="L", **nl)
            pdf.set_text_color(26)
        pdf.ln(1.2)

    heading("Your credit score")
    para(note.score_intro, gap=1.5)
    pdf.set_fill_color(246, 248, 251)
    pdf.set_draw_color(200, 209, 220)
    pdf.set_line_width(0.2)
    pdf.set_font(family, "", 9.5)
    with pdf.table(
        col_widths=(38, 62),
        first_row_as_headings=False,
        line_height=4.8,
        padding=1.6,
        borders_layout="HORIZONTAL_LINES",
        cell_fill_color=(246, 248, 251),
        cell_fill_mode="ALL",
        text_align="LEFT",
    ) as table:
        for label, value in note.score:
            row = table.row()
            row.cell(fix(label))
            row.cell(fix(value))
    pdf.ln(2)

    if note.used_credit_report:
        heading("Your rights under the Fair Credit Reporting Act")
        for p in note.fcra:
            para(p, gap=1.6)
        bureau = config.bureau
        pdf.set_x(margin + 8)
        pdf.set_font(family, "B", 10)
        pdf.multi_cell(width - 8, 5, fix(bureau.name), align="L", **nl)
        pdf.set_font(family, "", 10)
        for line in _party_lines(bureau, toll_free=True):
            pdf.set_x(margin + 8)
            pdf.multi_cell(width - 8, 5, fix(line), align="L", **nl)
        pdf.ln(2)

    heading("Your rights under the Equal Credit Opportunity Act")
    para(note.ecoa)
    para(note.questions, gap=3)
    para(f"Sincerely,\n{lender.name}")
    return bytes(pdf.output())


def notice_record(row: dict) -> dict:
    """The notice's record from a row of the decision trail (runtime.decisions.decision_by_id):
    the applicant masked, and whether a credit file was used (any credit feature was read).
    A referral an underwriter declined is a decline: the reason the underwriter gave comes first,
    then the model's principal reasons, at most four in all."""
    from runtime.reviews import REASONS

    features = row.get("features") or []
    outcome, reasons, decided_at = row["outcome"], list(row.get("reasons") or []), row["decided_at"]
    review = row.get("review")
    if outcome == "refer" and review and review.get("outcome") in ("approve", "decline"):
        outcome, decided_at = review["outcome"], review.get("reviewed_at") or decided_at
        if outcome == "decline":
            code = review.get("reason_code")
            text = REASONS["decline"].get(code, code)
            reasons = [r for r in reasons if r.get("code") != code]
            reasons = [{"code": code, "text": text, "feature": "", "value": "", "contribution": 0.0, "as_of": None}]
            reasons += [r for r in row.get("reasons") or [] if r.get("code") != code]
            reasons = reasons[:4]
    return {
        "id": row["id"],
        "decided_at": decided_at,
        "outcome": outcome,
        "inputs": row.get("inputs") or {},
        "reasons": reasons,
        "probability": row.get("probability"),
        "model_version": row.get("model_version"),
        "policy_version": row.get("policy_version"),
        "used_credit_report": any(f.get("view") == "credit_history" and f.get("status") == "ok" for f in features),
    }
