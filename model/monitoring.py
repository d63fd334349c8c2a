"""Monitoring of the model in use: feature drift (population stability index), approval ratios
by group at the cut-off, and predicted against observed default — from the decision trail.

The counting happens in Postgres (runtime/monitoring.py); this module turns the counts into
the measures a reviewer reads:

* **PSI** of each online feature the model scores, between the training loans (the bundle's
  ``training_distribution``: decile edges, the share of each bucket, and the missing share)
  and the recorded features of the decisions in a date range:
  ``sum((actual - expected) * ln(actual / expected))`` over the buckets plus one bucket for
  missing values.  Below 0.1 stable, 0.1–0.25 watch, above 0.25 shifted (a common convention).
* **Adverse impact ratios** by age band (62+ its own band) and by state, with Wilson
  intervals and the 0.8 flag (model/groups.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model import groups
from runtime import monitoring as q
from runtime.schema import CREDIT_FEATURES, ZIPCODE_FEATURES

PSI_STABLE, PSI_SHIFTED = 0.1, 0.25
PSI_FLOOR = 1e-4  # a bucket with no values counts as this share (ln(0) is undefined)
PSI_MIN_DECISIONS = 100  # fewer decisions than this: the PSI is shown, marked as noisy
ONLINE_FEATURES = (*CREDIT_FEATURES, *ZIPCODE_FEATURES)
MIN_STATE_DECISIONS = groups.MIN_GROUP


def psi(expected, actual, floor: float = PSI_FLOOR) -> float:
    """Population stability index between two distributions over the same buckets (shares or
    counts; each is normalised to sum 1, empty buckets count as ``floor``)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape or e.size == 0:
        raise ValueError("expected and actual need the same, non-empty, buckets")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("a distribution with nothing in it has no PSI")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_status(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < PSI_STABLE:
        return "stable"
    if value <= PSI_SHIFTED:
        return "watch"
    return "shifted"


def reference_shares(dist: dict) -> list[float] | None:
    """Training shares ``[missing, bucket 0, ..., bucket k]`` of one feature's training_distribution
    entry, or None when the bundle does not say them: bundles trained before ``shares`` was
    recorded give them only when the nine deciles are distinct (10% each, by definition)."""
    edges = dist.get("deciles") or []
    missing = float(dist.get("missing") or 0.0)
    shares = dist.get("shares")
    if shares is None:
        if len(edges) != 9:
            return None
        shares = [0.1] * 10
    if len(shares) != len(edges) + 1:
        return None
    return [missing, *((1.0 - missing) * float(s) for s in shares)]


@dataclass
class FeatureDrift:
    feature: str
    psi: float | None
    status: str
    decisions: int
    expected: list[float] = field(default_factory=list)  # [missing, bucket 0..k] shares
    actual: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def expected_missing(self) -> float | None:
        return self.expected[0] if self.expected else None

    @property
    def actual_missing(self) -> float | None:
        return self.actual[0] if self.actual else None


def _bucket_labels(edges: list[float]) -> list[str]:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:,.2f}"

    if not edges:
        return ["missing", "any value"]
    labels = ["missing", f"< {fmt(edges[0])}"]
    labels += [f"{fmt(lo)} – {fmt(hi)}" for lo, hi in zip(edges, edges[1:], strict=False)]
    labels.append(f"≥ {fmt(edges[-1])}")
    return labels


def online_model_features(metadata: dict) -> list[str]:
    """The features the model scores that come from the online store (credit file, zipcode)."""
    return [f for f in metadata.get("features", []) if f in ONLINE_FEATURES]


def feature_drift(settings, period: q.Period, metadata: dict) -> list[FeatureDrift]:
    """PSI of every online feature the model scores, recorded decisions of ``period`` against
    the training loans; sorted by PSI, largest first (features without one last)."""
    dist = metadata.get("training_distribution") or {}
    names = online_model_features(metadata)
    refs = {f: reference_shares(dist[f]) for f in names if f in dist}
    edges = {f: dist[f].get("deciles") or [] for f in refs if refs[f] is not None}
    counts = q.feature_buckets(settings, period, edges)
    out = []
    for f in names:
        ref = refs.get(f)
        if ref is None:
            why = (
                "not in the bundle's training distribution"
                if f not in dist
                else "the bundle has no bucket shares for it: retrain to record them"
            )
            out.append(FeatureDrift(f, None, "n/a", 0, note=why))
            continue
        got = counts.get(f, {})
        k = len(edges[f]) + 1
        actual = [got.get(None, 0)] + [got.get(b, 0) for b in range(k)]
        n = int(sum(actual))
        labels = _bucket_labels(edges[f])
        if n == 0:
            out.append(FeatureDrift(f, None, "n/a", 0, ref, [], labels, "no decisions with this feature in the range"))
            continue
        present = int(sum(actual[1:]))
        if present == 0:
            out.append(FeatureDrift(f, None, "n/a", n, ref, [a / n for a in actual], labels, "every value was missing"))
            continue
        # PSI over the values present: a referral without a credit file would otherwise move every
        # credit feature at once and hide a real drift. The missing share is compared on its own.
        value = psi(ref[1:], actual[1:])
        notes = []
        if n < PSI_MIN_DECISIONS:
            notes.append(f"only {n} decisions: the PSI is noisy")
        if abs(actual[0] / n - ref[0]) >= 0.01:
            notes.append(f"missing: {ref[0]:.1%} in training, {actual[0] / n:.1%} now")
        note = "; ".join(notes)
        out.append(FeatureDrift(f, value, psi_status(value), n, ref, [a / n for a in actual], labels, note))
    return sorted(out, key=lambda d: (d.psi is None, -(d.psi or 0.0)))


def age_band_ratios(rows) -> list[dict]:
    """Approval ratios by age band from ``runtime.monitoring.approvals_by_age`` rows."""
    counts: dict[str, list[int]] = {}
    for age, n, k in rows:
        c = counts.setdefault(groups.age_band(age), [0, 0])
        c[0] += n
        c[1] += k
    order = [b[2] for b in groups.AGE_BANDS] + ["unknown"]
    return groups.ratios_from_counts({g: tuple(v) for g, v in counts.items()}, order=order)


def state_ratios(rows, min_count: int = MIN_STATE_DECISIONS) -> tuple[list[dict], dict]:
    """Approval ratios by state from ``runtime.monitoring.approvals_by_state`` rows, only states
    with at least ``min_count`` scored decisions (their ratio is meaningful), lowest ratio first;
    and what was left out: ``{states, decisions}`` (decisions without a state count there too)."""
    counts = {s if s else "unknown": (n, k) for s, n, k in rows}
    big = {s: c for s, c in counts.items() if c[0] >= min_count and s != "unknown"}
    left = {s: c for s, c in counts.items() if s not in big}
    rows_out = groups.ratios_from_counts(big, min_count=min_count)
    rows_out.sort(key=lambda r: (r["ratio"] if r["ratio"] is not None else 2.0, r["group"]))
    return rows_out, {"states": sum(1 for s in left if s != "unknown"), "decisions": sum(c[0] for c in left.values())}


def calibration_summary(cal: dict) -> dict:
    """Overall predicted and observed default of the matched decisions, and the expected
    calibration error (|predicted - observed| per bin, weighted by its decisions)."""
    bins = cal.get("bins") or []
    n = sum(b["n"] for b in bins)
    if n == 0:
        return {"n": 0, "predicted": None, "observed": None, "ece": None}
    return {
        "n": n,
        "predicted": sum(b["predicted"] * b["n"] for b in bins) / n,
        "observed": sum(b["observed"] * b["n"] for b in bins) / n,
        "ece": sum(abs(b["predicted"] - b["observed"]) * b["n"] for b in bins) / n,
    }
