"""The credit policy: a versioned TOML file (policy/credit-policy.toml) that turns a probability
of default into approve, refer or decline.

    policy = load_policy()                       # PolicyError: one sentence naming what is wrong
    cut = policy.cutoff(bundle.metadata)         # from the bundle's policy slice, per the method
    outcome, why = policy.classify(p, cut, values)

The cut-off is a business decision written down in the file: ``expected_loss`` (the cut-off
with the best realised profit on the training run's *policy slice*, given the loss given default
and one year's interest as margin), ``approval_rate`` (approves that share of the slice) or
``fixed``.  The policy slice is the loans between the early-stopping slice and the test slice:
neither picks the boosting rounds nor measures the model.  Each bundle carries its slice's
out-of-sample predictions, so any policy file can be applied to any bundle without retraining,
and ``loan-desk policy simulate`` compares two policies on the same rows.

Outcomes: below the refer band, approve; above it, decline; inside it, refer.  A knock-out rule
that fires turns an approve into a refer; missing or stale data is a refer too (inference.py).
"""

from __future__ import annotations

import hashlib
import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model import features as F
from runtime.settings import ROOT

DEFAULT_FILE = ROOT / "policy" / "credit-policy.toml"
METHODS = ("expected_loss", "approval_rate", "fixed")
OUTCOMES = ("approve", "refer", "decline")
_SEVERITY = {o: i for i, o in enumerate(OUTCOMES)}

_TOP = {"version", "approved_by", "approved_on", "note", "cutoff", "refer", "knockout", "promotion"}
_CUTOFF = {"method", "loss_given_default", "approval_rate", "value"}
_REFER = {"below", "above"}
_KNOCKOUT = {"feature", "at_least", "reason"}
_PROMOTION = {"max_auc_drop", "max_calibration_error_rise", "max_group_ratio_drop"}
_KNOCKOUT_FEATURES = (*F.APPLICATION_FIELDS, *F.DERIVED, *F.CREDIT_FEATURES)


class PolicyError(ValueError):
    """A policy file that cannot be used; ``str(err)`` is one sentence for people."""


@dataclass(frozen=True)
class Knockout:
    feature: str
    at_least: float
    reason: str

    def hit(self, values: dict) -> bool:
        v = values.get(self.feature)
        return v is not None and v == v and v >= self.at_least


@dataclass(frozen=True)
class Policy:
    version: str
    sha256: str
    path: str
    method: str
    loss_given_default: float | None
    approval_rate: float | None
    value: float | None
    below: float
    above: float
    knockouts: tuple[Knockout, ...]
    promotion: dict
    approved_by: str = ""
    approved_on: str = ""
    note: str = ""
    _cutoffs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        """What a decision records: the version and the first 8 hex digits of the file's sha256."""
        return f"{self.version}@{self.sha256[:8]}"

    # -- the cut-off -------------------------------------------------------------------------
    def cutoff(self, metadata: dict) -> float:
        """The cut-off this policy gives the bundle with ``metadata`` (cached per bundle)."""
        key = metadata.get("model_version")
        got = self._cutoffs.get(key)
        if got is None:
            got = self._cutoffs[key] = self.cutoff_on(metadata)
        return got

    def cutoff_on(self, metadata: dict) -> float:
        """The cut-off for a bundle's metadata (or any dict with a ``policy_slice``), not cached."""
        if self.method == "fixed":
            return float(self.value)
        s = metadata.get("policy_slice")
        if not s or not s.get("p"):
            raise PolicyError(
                f"model {metadata.get('model_version')} has no policy slice (trained by an earlier Loan Desk): "
                'retrain it (`uv run loan-desk train`) or use a policy with method = "fixed"'
            )
        return pick_cutoff(
            self.method,
            np.asarray(s["p"], dtype=float),
            np.asarray(s["y"], dtype=float),
            np.asarray(s["amount"], dtype=float),
            np.asarray(s["rate"], dtype=float),
            loss_given_default=self.loss_given_default,
            approval_rate=self.approval_rate,
        )

    # -- the outcome -------------------------------------------------------------------------
    def band(self, cutoff: float) -> tuple[float, float]:
        return max(cutoff - self.below, 0.0), min(cutoff + self.above, 1.0)

    def classify(self, probability: float, cutoff: float, values: dict) -> tuple[str, list[str]]:
        """(outcome, why it is referred): the band, then the knock-out rules."""
        lo, hi = self.band(cutoff)
        why: list[str] = []
        if probability >= hi:
            outcome = "decline"
        elif probability >= lo:
            outcome = "refer"
            why.append(
                f"Probability of default {probability:.1%} is within the refer band {lo:.1%}–{hi:.1%} "
                f"around the cut-off {cutoff:.1%}"
            )
        else:
            outcome = "approve"
        if outcome != "decline":
            for k in self.knockouts:
                if k.hit(values):
                    outcome = "refer"
                    why.append(f"Knock-out rule: {k.reason}")
        return outcome, why

    def describe(self) -> list[str]:
        lines = [
            f"Credit policy {self.version} ({self.path}, sha256 {self.sha256[:12]})",
            f"  approved by {self.approved_by or '-'} on {self.approved_on or '-'}",
        ]
        if self.note:
            lines.append(f"  {self.note}")
        if self.method == "expected_loss":
            lines.append(
                f"  cut-off: expected loss — best realised profit on the policy slice, loss given default "
                f"{self.loss_given_default:.0%}, margin one year's interest"
            )
        elif self.method == "approval_rate":
            lines.append(f"  cut-off: approves {self.approval_rate:.0%} of the policy slice")
        else:
            lines.append(f"  cut-off: fixed at {self.value:.2%}")
        lines.append(f"  refer band: cut-off − {self.below:.1%} to cut-off + {self.above:.1%}")
        for k in self.knockouts:
            lines.append(f"  knock-out → refer: {k.feature} ≥ {k.at_least:g} ({k.reason})")
        p = self.promotion
        lines.append(
            f"  promotion: AUC drop ≤ {p['max_auc_drop']}, calibration error rise ≤ "
            f"{p['max_calibration_error_rise']}, group approval ratio drop ≤ {p['max_group_ratio_drop']}"
        )
        return lines


def severity(outcome: str) -> int:
    return _SEVERITY[outcome]


# --- picking a cut-off ----------------------------------------------------------------------------
def pick_cutoff(
    method: str,
    p: np.ndarray,
    y: np.ndarray,
    amount: np.ndarray,
    rate: np.ndarray,
    loss_given_default: float | None = None,
    approval_rate: float | None = None,
) -> float:
    """The cut-off (approve when p < cut-off) the method picks on a slice of labelled loans."""
    order = np.argsort(p, kind="stable")
    ps = p[order]
    if method == "approval_rate":
        k = int(round(approval_rate * len(ps)))
        if k <= 0:
            return float(ps[0])
        if k >= len(ps):
            return float(min(ps[-1] + 1e-6, 1.0))
        return float((ps[k - 1] + ps[k]) / 2)
    # expected_loss: approving the k lowest-risk loans earns Σ interest of the repaid, loses Σ LGD × amount
    # of the defaulted; the best k sets the cut-off halfway between its last and the next probability.
    gain = np.where(y[order] > 0, -loss_given_default * amount[order], amount[order] * rate[order] / 100.0)
    total = np.concatenate([[0.0], np.cumsum(gain)])
    k = int(np.argmax(total))
    if k == 0:
        return float(max(ps[0] - 1e-6, 1e-6))
    if k >= len(ps):
        return float(min(ps[-1] + 1e-6, 1.0))
    return float((ps[k - 1] + ps[k]) / 2)


# --- reading the file ----------------------------------------------------------------------------
def policy_file() -> Path:
    return Path(os.environ.get("LOAN_DESK_POLICY_FILE") or DEFAULT_FILE)


def _unknown(where: str, got: dict, known: set) -> None:
    extra = sorted(set(got) - known)
    if extra:
        raise PolicyError(f"unknown field {extra[0]!r} in {where} (known: {', '.join(sorted(known))})")


def _num(where: str, value, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where} must be a number, got {str(value)[:40]!r}")
    value = float(value)
    if value != value or value < lo or value > hi or (lo_open and value == lo):
        raise PolicyError(
            f"{where} must be {'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}, got {value:g}"
        )
    return value


def parse_policy(text: str, path: str = "<policy>") -> Policy:
    """Validate a policy file's text; raises PolicyError with one sentence."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path} is not valid TOML ({exc})") from None
    _unknown("the top level", doc, _TOP)
    version = doc.get("version")
    if not isinstance(version, str) or not version.strip() or len(version) > 40:
        raise PolicyError('version must be a short text, e.g. "2026.11-1"')
    cut = doc.get("cutoff")
    if not isinstance(cut, dict):
        raise PolicyError("[cutoff] is missing")
    _unknown("[cutoff]", cut, _CUTOFF)
    method = cut.get("method")
    if method not in METHODS:
        raise PolicyError(f"cutoff.method must be one of {', '.join(METHODS)}, got {str(method)[:40]!r}")
    lgd = rate = value = None
    if method == "expected_loss":
        if "loss_given_default" not in cut:
            raise PolicyError('cutoff.loss_given_default is required with method = "expected_loss"')
        lgd = _num("cutoff.loss_given_default", cut["loss_given_default"], 0, 1, lo_open=True)
    elif method == "approval_rate":
        if "approval_rate" not in cut:
            raise PolicyError('cutoff.approval_rate is required with method = "approval_rate"')
        rate = _num("cutoff.approval_rate", cut["approval_rate"], 0, 1, lo_open=True)
    else:
        if "value" not in cut:
            raise PolicyError('cutoff.value is required with method = "fixed"')
        value = _num("cutoff.value", cut["value"], 0, 1, lo_open=True)
    refer = doc.get("refer", {})
    if not isinstance(refer, dict):
        raise PolicyError("[refer] must be a table with below and above")
    _unknown("[refer]", refer, _REFER)
    bands = {}
    for k in ("below", "above"):
        raw = refer.get(k, 0.0)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw < 0:
            raise PolicyError(
                f"refer.{k} is negative ({raw:g}): the approve and decline bands would overlap; use 0 for no refer band"
            )
        bands[k] = _num(f"refer.{k}", raw, 0, 0.5)
    if value is not None and (value - bands["below"] <= 0 or value + bands["above"] >= 1):
        raise PolicyError("the refer band around the fixed cut-off must stay between 0 and 1")
    knockouts = []
    raw_k = doc.get("knockout", [])
    if not isinstance(raw_k, list):
        raise PolicyError("knock-out rules are written as [[knockout]] tables")
    for i, k in enumerate(raw_k, 1):
        if not isinstance(k, dict):
            raise PolicyError(f"knock-out rule {i} must be a table")
        _unknown(f"knock-out rule {i}", k, _KNOCKOUT)
        feat = k.get("feature")
        if feat not in _KNOCKOUT_FEATURES:
            raise PolicyError(f"knock-out rule {i}: feature {str(feat)[:40]!r} is not one Loan Desk reads")
        reason = k.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise PolicyError(f"knock-out rule {i} needs a reason (the sentence the underwriter reads)")
        knockouts.append(Knockout(feat, _num(f"knock-out rule {i}: at_least", k.get("at_least"), -1e12, 1e12), reason))
    promo = doc.get("promotion", {})
    if not isinstance(promo, dict):
        raise PolicyError("[promotion] must be a table")
    _unknown("[promotion]", promo, _PROMOTION)
    defaults = {"max_auc_drop": 0.005, "max_calibration_error_rise": 0.01, "max_group_ratio_drop": 0.05}
    promotion = {k: _num(f"promotion.{k}", promo.get(k, d), 0, 1) for k, d in defaults.items()}
    for k in ("approved_by", "approved_on", "note"):
        if k in doc and not isinstance(doc[k], str):
            raise PolicyError(f"{k} must be text")
    return Policy(
        version=version.strip(),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        path=path,
        method=method,
        loss_given_default=lgd,
        approval_rate=rate,
        value=value,
        below=bands["below"],
        above=bands["above"],
        knockouts=tuple(knockouts),
        promotion=promotion,
        approved_by=doc.get("approved_by", ""),
        approved_on=str(doc.get("approved_on", "")),
        note=doc.get("note", ""),
    )


def load_policy(path: Path | str | None = None) -> Policy:
    path = Path(path or policy_file())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"no credit policy at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"the credit policy {path} cannot be read ({exc})") from None
    return parse_policy(text, str(path))


class PolicySource:
    """The policy in force for a long-running process: the file is re-read when it changes
    (one ``stat`` per decision); a file that fails validation is refused, logged once, and the
    last good policy keeps deciding (``problem`` says why)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path or policy_file())
        self._lock = threading.Lock()
        self._seen = None
        self._good: Policy | None = None
        self.problem: PolicyError | None = None

    def get(self) -> Policy:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._seen and self._good is not None:
            return self._good
        with self._lock:
            if stamp != self._seen or self._good is None:
                try:
                    self._good = load_policy(self.path)
                    self.problem = None
                except PolicyError as exc:
                    import logging

                    if self._good is None:
                        raise
                    if str(exc) != str(self.problem):
                        logging.getLogger(__name__).warning(
                            "credit policy refused: %s; still deciding with policy %s", exc, self._good.label
                        )
                    self.problem = exc
                self._seen = stamp
        return self._good
