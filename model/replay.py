"""Replay a recorded decision: score it again, and read its features again as of its time.

* ``rescore``: the record's inputs and the feature values it used, through the bundle of the
  record's model version (model.bundles.load_bundle) and the same row builder as inference
  (model.features.row_vector, then the bundle's columns).  The probability must equal the
  recorded one to 1e-9; anything else means the record, the bundle or the code changed.
* ``reread``: the features the offline store held at the decision's time, by a point-in-time
  join (Feast get_historical_features of the model's feature service, one entity row: the
  applicant, the zipcode and the decision time), beside the online values the decision used.
  A difference is not necessarily an error (a snapshot written to the offline store after the
  last materialization, or an online row older than the view's TTL), but it is shown.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime

from model import bundles
from model import features as F

TOLERANCE = 1e-9


class ReplayError(RuntimeError):
    """A record that cannot be replayed; ``str(err)`` says why in one sentence."""


@dataclass(frozen=True)
class Rescore:
    model_version: str
    recorded: float
    replayed: float

    @property
    def difference(self) -> float:
        return abs(self.replayed - self.recorded)

    @property
    def equal(self) -> bool:
        return self.difference <= TOLERANCE


@dataclass(frozen=True)
class FeatureCheck:
    name: str
    view: str
    online: object  # the value the decision used (None: missing)
    online_status: str  # ok | missing | stale
    offline: object  # the value the point-in-time join returns as of the decision time

    @property
    def same(self) -> bool:
        return _same(self.online if self.online_status != "stale" else None, self.offline)


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _same(a, b) -> bool:
    if _blank(a) or _blank(b):
        return _blank(a) and _blank(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return str(a) == str(b)


@functools.lru_cache(maxsize=8)
def _bundle(version: str, root: str | None):
    return bundles.load_bundle(version, root)


def _used_values(record: dict) -> tuple[dict, dict]:
    """The online values the decision scored: a stale view's values were recorded but not used."""
    credit, zipcode = {}, {}
    for f in record.get("features") or []:
        if f.get("status") == "stale" or f.get("value") is None:
            continue
        (credit if f["view"] == "credit_history" else zipcode)[f["name"]] = f["value"]
    return credit, zipcode


def rescore(record: dict, model_dir=None) -> Rescore:
    """Score the record again with its own model bundle.  ReplayError when it has no score."""
    version = record.get("model_version")
    recorded = record.get("probability")
    if recorded is None:
        raise ReplayError(
            "This decision has no probability to replay: it was referred before scoring "
            "(missing or stale data), so there is no score to reproduce."
        )
    if not version:
        raise ReplayError("This record names no model version, so it cannot be scored again.")
    try:
        bundle = _bundle(version, None if model_dir is None else str(model_dir))
    except bundles.BundleError as exc:
        raise ReplayError(f"The model of this decision cannot be loaded: {exc}") from None
    credit, zipcode = _used_values(record)
    try:
        x = F.row_vector(record["inputs"], credit, zipcode)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"The recorded inputs cannot be rebuilt into the model's row ({exc!r:.120}).") from None
    replayed = float(bundle.booster.inplace_predict(x[:, bundle.columns])[0])
    return Rescore(version, float(recorded), replayed)


def reread(settings, record: dict, store=None) -> list[FeatureCheck]:
    """Each online feature of the record beside its point-in-time value in the offline store."""
    import pandas as pd

    from feast_ext.store import feature_store

    inputs = record.get("inputs") or {}
    decided_at: datetime = record["decided_at"]
    if not inputs.get("dob_ssn") or inputs.get("zipcode") is None:
        raise ReplayError("This record has no applicant or zipcode to look up.")
    store = store or feature_store(settings)
    entity = pd.DataFrame(
        {
            "dob_ssn": [inputs["dob_ssn"]],
            "zipcode": [int(inputs["zipcode"])],
            "event_timestamp": [pd.Timestamp(decided_at).tz_convert("UTC")],
        }
    )
    service = store.get_feature_service(F.FEATURE_SERVICE)
    frame = store.get_historical_features(entity_df=entity, features=service).to_df()
    if len(frame) != 1:
        raise ReplayError(f"The point-in-time join returned {len(frame)} rows for one decision.")
    offline = frame.iloc[0].to_dict()
    checks = []
    for f in record.get("features") or []:
        value = offline.get(f["name"])
        if hasattr(value, "item"):  # numpy scalar → Python
            value = value.item()
        if _blank(value):
            value = None
        checks.append(FeatureCheck(f["name"], f["view"], f.get("value"), f.get("status", "ok"), value))
    return checks
