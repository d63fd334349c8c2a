"""The one way any caller gets a credit decision.

    service = DecisionService.shared()            # store and model loaded once, reused
    decision = service.decide({"dob_ssn": "19630621_4278", "zipcode": 76104, ...})

``decide`` validates the application, reads both entities' online features through Feast's
Redis online store (one pipelined round trip, decoded by Feast's own code), builds the
model's numpy row, predicts, and explains the result with XGBoost's own per-feature
contributions.  It is thread-safe.

Policy for missing online features: an applicant without a credit file, or a zipcode
without statistics, is refused with ``MissingFeatures`` — Loan Desk never decides on a
silent NaN; such an application goes to manual underwriting.  Features older than their
view's TTL are used but flagged ``stale``.

Errors are typed: ``ApplicationError`` (bad input, with a message per field),
``MissingFeatures``, ``StoreUnavailable`` (Valkey unreachable or timing out) and
``ModelUnavailable`` (no trained model).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import xgboost as xgb

from feast_ext.online_reader import OnlineReader
from model import features as F
from runtime.schema import LIMITS

LABELS = {
    "dob_ssn": "Applicant ID",
    "date_of_birth": "Date of birth",
    "ssn_last4": "SSN last four",
    "zipcode": "Zipcode",
    "person_age": "Age",
    "person_income": "Yearly income",
    "person_home_ownership": "Home ownership",
    "person_emp_length": "Employment length (years)",
    "loan_intent": "Loan intent",
    "loan_amnt": "Loan amount",
    "loan_int_rate": "Interest rate",
}
TOP_REASONS = 5
_FEATURE_NAMES = list(F.FEATURES)


class DecisionError(RuntimeError):
    """Base of every error ``decide`` raises; ``str(err)`` is a message for people."""


class ApplicationError(DecisionError, ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{LABELS.get(k, k)}: {v}" for k, v in errors.items()))


class MissingFeatures(DecisionError):
    def __init__(self, missing: list[str], message: str):
        self.missing = missing
        super().__init__(message)


class StoreUnavailable(DecisionError):
    pass


class ModelUnavailable(DecisionError):
    pass


# --- the application ------------------------------------------------------------------------
@dataclass(frozen=True)
class Application:
    dob_ssn: str
    zipcode: int
    person_age: int
    person_income: float
    person_home_ownership: str
    person_emp_length: float
    loan_intent: str
    loan_amnt: float
    loan_int_rate: float

    def as_dict(self) -> dict:
        return asdict(self)


def _number(raw: Mapping, key: str, errors: dict, integer: bool = False):
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        errors[key] = "is required"
        return None
    try:
        num = float(str(value).replace(",", "").strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        errors[key] = f"must be a number, got {value!r}"
        return None
    if math.isnan(num) or math.isinf(num):
        errors[key] = "must be a finite number"
        return None
    if integer and num != int(num):
        errors[key] = "must be a whole number"
        return None
    lo, hi = LIMITS.get(key, (None, None))
    if lo is not None and not lo <= num <= hi:
        errors[key] = f"must be between {lo:,} and {hi:,} (the range the model was trained on)"
        return None
    return int(num) if integer else num


def _dob_ssn(raw: Mapping, errors: dict) -> str | None:
    key = raw.get("dob_ssn")
    if key:
        key = str(key).strip()
        parts = key.split("_")
        if len(parts) != 2 or len(parts[0]) != 8 or len(parts[1]) != 4 or not (parts[0] + parts[1]).isdigit():
            errors["dob_ssn"] = f"must look like YYYYMMDD_NNNN, got {key!r}"
            return None
        try:
            datetime.strptime(parts[0], "%Y%m%d")
        except ValueError:
            errors["dob_ssn"] = f"{parts[0]} is not a real date"
            return None
        return key
    dob, ssn = raw.get("date_of_birth"), raw.get("ssn_last4")
    if dob in (None, ""):
        errors["date_of_birth"] = "is required (or give dob_ssn)"
    if ssn in (None, ""):
        errors["ssn_last4"] = "is required (or give dob_ssn)"
    if dob in (None, "") or ssn in (None, ""):
        return None
    if isinstance(dob, datetime):
        dob = dob.date()
    if not isinstance(dob, date):
        try:
            dob = datetime.strptime(str(dob).strip(), "%Y-%m-%d").date()
        except ValueError:
            errors["date_of_birth"] = f"must be a date YYYY-MM-DD, got {dob!r}"
            return None
    if not date(1900, 1, 1) <= dob <= datetime.now(UTC).date():
        errors["date_of_birth"] = "must be between 1900-01-01 and today"
        return None
    ssn = str(ssn).strip()
    if len(ssn) != 4 or not ssn.isdigit():
        errors["ssn_last4"] = "must be exactly four digits"
        return None
    return f"{dob:%Y%m%d}_{ssn}"


def age_on(born: date, today: date | None = None) -> int:
    """Whole years from ``born`` to ``today`` (default: today, UTC)."""
    today = today or datetime.now(UTC).date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def parse_application(raw: Mapping | Application) -> Application:
    """Validate raw input; raises ApplicationError with one message per bad field."""
    if isinstance(raw, Application):
        raw = raw.as_dict()
    errors: dict[str, str] = {}
    key = _dob_ssn(raw, errors)
    zipcode = raw.get("zipcode")
    zip_ok = None
    if zipcode in (None, ""):
        errors["zipcode"] = "is required"
    else:
        text = str(zipcode).strip()
        if not text.isdigit() or len(text) > 5 or int(text) == 0:
            errors["zipcode"] = f"must be a US zipcode of up to five digits, got {zipcode!r}"
        else:
            zip_ok = int(text)
    age = _number(raw, "person_age", errors, integer=True)
    income = _number(raw, "person_income", errors)
    emp = _number(raw, "person_emp_length", errors)
    amount = _number(raw, "loan_amnt", errors)
    rate = _number(raw, "loan_int_rate", errors)
    own = str(raw.get("person_home_ownership") or "").strip().upper()
    if own not in F.OWNERSHIP_CODE:
        errors["person_home_ownership"] = f"must be one of {', '.join(F.HOME_OWNERSHIP)}"
    intent = str(raw.get("loan_intent") or "").strip().upper()
    if intent not in F.INTENT_CODE:
        errors["loan_intent"] = f"must be one of {', '.join(F.LOAN_INTENTS)}"
    if age is not None and emp is not None and emp > max(age - 14, 0):
        errors["person_emp_length"] = f"{emp:g} years of employment is not possible at age {age}"
    if key and age is not None and "dob_ssn" not in errors:
        real_age = age_on(datetime.strptime(key[:8], "%Y%m%d").date())
        if abs(real_age - age) > 1:
            errors["person_age"] = f"does not match the date of birth ({real_age} years old today)"
    if errors:
        raise ApplicationError(errors)
    return Application(key, zip_ok, age, income, own, emp, intent, amount, rate)


# --- the decision ------------------------------------------------------------------------------
@dataclass
class FeatureValue:
    name: str
    view: str
    value: object
    event_timestamp: datetime | None
    status: str  # ok | stale | missing


@dataclass
class Reason:
    feature: str
    value: object
    contribution: float  # log-odds of default this feature adds
    direction: str  # "raises risk" | "lowers risk"


@dataclass
class Decision:
    application: Application
    probability: float
    decision: str  # approve | reject
    threshold: float
    reasons: list[Reason]
    contributions: dict[str, float]
    base_value: float
    features: list[FeatureValue]
    stale: list[str]
    model_version: str
    latency_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.decision == "approve"

    def to_dict(self) -> dict:
        out = asdict(self)
        for f in out["features"]:
            ts = f["event_timestamp"]
            f["event_timestamp"] = ts.isoformat() if ts else None
        return out


# --- the service -------------------------------------------------------------------------------
class DecisionService:
    _shared: DecisionService | None = None
    _shared_lock = threading.Lock()

    def __init__(self, store=None, model_dir: Path | str | None = None, settings=None):
        from runtime.settings import model_dir as default_model_dir

        self._store = store
        self._settings = settings
        self._model_dir = Path(model_dir or default_model_dir())
        self._lock = threading.RLock()
        self._booster: xgb.Booster | None = None
        self._meta: dict = {}
        self._model_mtime = 0.0
        self._reader = None

    @classmethod
    def shared(cls) -> DecisionService:
        """The process-wide service (every page, run.py and the benchmarks use this one)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    # -- loading ---------------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from feast_ext.store import feature_store

                    self._store = feature_store(self._settings)
        return self._store

    def model(self) -> tuple[xgb.Booster, dict]:
        """The booster and its metadata; reloaded when `loan-desk train` writes a new one."""
        path = self._model_dir / "model.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise ModelUnavailable(f"no trained model in {self._model_dir}: run `uv run loan-desk train`") from None
        if self._booster is None or mtime != self._model_mtime:
            with self._lock:
                if self._booster is None or mtime != self._model_mtime:
                    try:
                        meta = json.loads((self._model_dir / "metadata.json").read_text())
                        booster = xgb.Booster()
                        booster.load_model(str(path))
                        booster.set_param({"nthread": 1})
                    except (OSError, ValueError, xgb.core.XGBoostError) as exc:
                        raise ModelUnavailable(f"the model in {self._model_dir} cannot be read: {exc}") from None
                    if meta.get("features") != list(F.FEATURES):
                        raise ModelUnavailable("the saved model was trained on other features: retrain it")
                    self._booster, self._meta, self._model_mtime = booster, meta, mtime
        return self._booster, self._meta

    @property
    def metadata(self) -> dict:
        return self.model()[1]

    def reader(self) -> OnlineReader:
        if self._reader is None:
            with self._lock:
                if self._reader is None:
                    self._reader = OnlineReader(self.store, ("credit_history", "zipcode_features"), StoreUnavailable)
        return self._reader

    def warm(self) -> None:
        """Pay the one-time costs before the first application: load the model, open the online
        store's connection (one read of a key that does not exist) and run XGBoost's
        prediction and contribution passes once on a zero row."""
        booster, _ = self.model()
        self.reader().read("00000000_0000", 0)
        x = np.zeros((1, len(F.FEATURES)), dtype=np.float32)
        booster.inplace_predict(x)
        booster.predict(xgb.DMatrix(x, feature_names=_FEATURE_NAMES, nthread=1), pred_contribs=True)

    # -- deciding ---------------------------------------------------------------------------
    def decide(self, raw: Mapping | Application) -> Decision:
        t0 = time.perf_counter()
        app = parse_application(raw)
        booster, meta = self.model()
        credit, zipcode = self.reader().read(app.dob_ssn, app.zipcode)
        missing = []
        if credit is None:
            missing.append("credit_history")
        if zipcode is None:
            missing.append("zipcode_features")
        if missing:
            parts = []
            if credit is None:
                parts.append(f"applicant {app.dob_ssn} has no credit file in the online store")
            if zipcode is None:
                parts.append(f"zipcode {app.zipcode:05d} has no statistics in the online store")
            raise MissingFeatures(
                missing,
                "; ".join(parts) + ". Loan Desk does not decide without them: refer the "
                "application to manual underwriting (or materialize, if the data was just loaded).",
            )
        c_vals, c_ts = credit
        z_vals, z_ts = zipcode
        x = F.row_vector(app.as_dict(), c_vals, z_vals)
        probability = float(booster.inplace_predict(x)[0])
        # nthread=1: building a one-row DMatrix with the OpenMP pool costs up to ~9 ms at p99 on a busy machine.
        contribs = booster.predict(xgb.DMatrix(x, feature_names=_FEATURE_NAMES, nthread=1), pred_contribs=True)[0]
        threshold = float(meta["threshold"])

        now = datetime.now(UTC)
        feats, stale = [], []
        for view, values, ts, names in (
            ("credit_history", c_vals, c_ts, F.CREDIT_FEATURES),
            ("zipcode_features", z_vals, z_ts, (*F.ZIPCODE_TEXT, *F.ZIPCODE_FEATURES)),
        ):
            is_stale = ts is not None and now - ts > self.reader().ttl[view]
            if is_stale:
                stale.append(view)
            for n in names:
                v = values.get(n)
                status = "missing" if v is None else ("stale" if is_stale else "ok")
                feats.append(FeatureValue(n, view, v, ts, status))
        contributions = {name: float(contribs[i]) for i, name in enumerate(F.FEATURES)}
        shown = {**app.as_dict(), **c_vals, **z_vals}
        shown["loan_pct_income"] = round(float(x[0, F.INDEX["loan_pct_income"]]), 3)
        shown["total_debt_due"] = float(x[0, F.INDEX["total_debt_due"]])
        shown["avg_wage_zip"] = round(float(x[0, F.INDEX["avg_wage_zip"]]))
        top = sorted(contributions.items(), key=lambda kv: abs(kv[1]), reverse=True)[:TOP_REASONS]
        reasons = [Reason(name, shown.get(name), c, "raises risk" if c > 0 else "lowers risk") for name, c in top]
        warnings = [f"{v} features are older than their {self.reader().ttl[v].days}-day TTL" for v in stale]
        return Decision(
            application=app,
            probability=probability,
            decision="reject" if probability >= threshold else "approve",
            threshold=threshold,
            reasons=reasons,
            contributions=contributions,
            base_value=float(contribs[-1]),
            features=feats,
            stale=stale,
            model_version=meta["model_version"],
            latency_ms=(time.perf_counter() - t0) * 1000,
            warnings=warnings,
        )
