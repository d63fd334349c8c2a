"""Fair-lending groups and the adverse impact ratio.

The adverse impact ratio of a group is its approval rate divided by the approval rate of the
most-approved group, at the actual cut-off.  Under 0.8 (the "four-fifths" convention) is a flag to
investigate, not a verdict; small groups swing, so each rate carries a 95% Wilson interval and the
ratio an interval from it.  Groups Loan Desk can compute from its own data: age bands (62+ is its
own band: Regulation B 1002.6(b)(2)), state, and the zipcode's income band.
"""

from __future__ import annotations

import math

import numpy as np

AGE_BANDS = ((18, 24, "18–24"), (25, 34, "25–34"), (35, 44, "35–44"), (45, 61, "45–61"), (62, 200, "62+"))
FLAG_BELOW = 0.8
MIN_GROUP = 30  # groups smaller than this get no ratio of their own (and never set the reference)


def age_band(age) -> str:
    if age is None or age != age:
        return "unknown"
    for lo, hi, label in AGE_BANDS:
        if lo <= age <= hi:
            return label
    return "unknown"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def approval_ratios(approved, groups, min_count: int = MIN_GROUP, order=None) -> list[dict]:
    """One row per group: n, approval rate with its interval, ratio to the most-approved group
    (among groups of at least ``min_count``) with an interval, and flag (ratio < 0.8)."""
    approved = np.asarray(approved, dtype=bool)
    groups = np.asarray(groups, dtype=object)
    labels = list(order) if order is not None else sorted(set(groups.tolist()), key=str)
    counts = {}
    for g in labels:
        m = groups == g
        counts[g] = (int(m.sum()), int(approved[m].sum()))
    return ratios_from_counts(counts, min_count, order=labels)


def ratios_from_counts(counts: dict, min_count: int = MIN_GROUP, order=None) -> list[dict]:
    """``approval_ratios`` from counts already aggregated (in SQL, say): ``{group: (n, approved)}``.
    Groups are listed in ``order`` (default: sorted by name); empty groups are left out."""
    labels = list(order) if order is not None else sorted(counts, key=str)
    rows = []
    for g in labels:
        n, k = counts.get(g, (0, 0))
        n, k = int(n), int(k)
        if n == 0:
            continue
        lo, hi = wilson(k, n)
        rows.append({"group": str(g), "n": n, "approved": k, "rate": k / n, "rate_low": lo, "rate_high": hi})
    big = [r for r in rows if r["n"] >= min_count]
    ref = max((r["rate"] for r in big), default=0.0)
    for r in rows:
        if r["n"] >= min_count and ref > 0:
            r["ratio"] = r["rate"] / ref
            r["ratio_low"], r["ratio_high"] = r["rate_low"] / ref, min(r["rate_high"] / ref, 1.0 / max(ref, 1e-9))
            r["flag"] = r["ratio"] < FLAG_BELOW
        else:
            r["ratio"] = r["ratio_low"] = r["ratio_high"] = None
            r["flag"] = False
    return rows


def min_ratio(rows: list[dict]) -> float | None:
    ratios = [r["ratio"] for r in rows if r.get("ratio") is not None]
    return min(ratios) if ratios else None


def age_band_ratios(approved, ages) -> list[dict]:
    bands = [age_band(a) for a in np.asarray(ages, dtype=float)]
    return approval_ratios(approved, bands, order=[b[2] for b in AGE_BANDS])
