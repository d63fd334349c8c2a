"""The one way any caller gets a credit decision.

    service = DecisionService.shared()            # store and model loaded once, reused
    decision = service.decide({"dob_ssn": "19630621_4278", "zipcode": 76104, ...})

``decide`` validates the application, reads both entities' online features through Feast's
Redis online store (one pipelined round trip, decoded by Feast's own code), builds the
model's numpy row, predicts, applies the credit policy (model/policy.py: approve, refer or
decline) and gives the principal reasons (model/reasons.py) from XGBoost's own per-feature
contributions.  When a challenger model is set, it scores the same row in the shadow (recorded,
never the decision).  It is thread-safe.  ``decide_many(raws)`` gives the same Decision for each
of many applications (batch scoring), reading the online store once per chunk of rows and
scoring each chunk in one prediction and one contributions pass.

Missing or stale data is a *refer*, with the reason: an applicant without a credit file (when
the model scores the credit file) goes to an underwriter, never decided on a silent NaN.  A
view's row older than the view's TTL counts as no row, exactly as in the point-in-time join that
built the training set, and the reason says so with the row's as-of date.  Data reloaded after
the online store was filled or the model trained is a refer too, naming the step to run.

The model comes from the current bundle (model/bundles.py): the service holds one loaded
bundle — booster, metadata and version together — and reads the tiny ``current`` pointer on
every decision; when it names another bundle, that one is loaded and checked, then swapped in
as a whole.  A bundle that fails the checks is refused (``BundleInvalid``, logged once) and the
last good bundle keeps deciding, with a warning on each decision.  The credit policy file is
watched the same way (one ``stat`` per decision).

Errors are typed: ``ApplicationError`` (bad input, with a message per field),
``StoreUnavailable`` (Valkey unreachable or timing out), ``ModelUnavailable`` (no usable model;
``BundleInvalid`` when the current bundle is refused) and ``PolicyUnavailable``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import xgboost as xgb

from feast_ext.online_reader import OnlineReader
from model import bundles
from model import features as F
from model.bundles import Bundle, BundleError
from model.policy import Policy, PolicyError, PolicySource
from model.reasons import PrincipalReason, principal_reasons
from runtime.schema import LIMITS

log = logging.getLogger(__name__)

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


class DecisionError(RuntimeError):
    """Base of every error ``decide`` raises; ``str(err)`` is a message for people."""


class ApplicationError(DecisionError, ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{LABELS.get(k, k)}: {v}" for k, v in errors.items()))


class MissingFeatures(DecisionError):
    """``missing``: the views without a usable row; ``stale``: those among them whose row is older
    than the view's TTL, with the row's event timestamp."""

    def __init__(self, missing: list[str], message: str, stale: dict[str, datetime] | None = None):
        self.missing = missing
        self.stale = stale or {}
        super().__init__(message)


class DataReloaded(MissingFeatures):
    """The data was replaced after the online store was filled or the model trained: refer, do not decide."""

    def __init__(self, state, steps: list[str]):
        self.steps = steps
        what = (
            "the online features and the model are"
            if len(steps) == 2
            else ("the online features are" if "materialize" in steps[0] else "the model is")
        )
        super().__init__(
            [],
            f"The data was reloaded on {state.loaded_at:%Y-%m-%d %H:%M} UTC and {what} older than it: Loan Desk "
            f"does not decide on them until {' and '.join(f'`{c}`' for c in steps)} "
            f"{'have' if len(steps) == 2 else 'has'} run. Refer the application to manual underwriting.",
        )


class StoreUnavailable(DecisionError):
    pass


class PolicyUnavailable(DecisionError):
    """No credit policy could be read (a refused change keeps the last good one instead)."""


class ModelUnavailable(DecisionError):
    pass


class BundleInvalid(ModelUnavailable):
    """The current model bundle cannot be used: a file is unreadable or corrupt, or the booster
    does not match its metadata.  ``version`` names the refused bundle, ``reason`` says why."""

    def __init__(self, version: str | None, reason: str, message: str):
        self.version = version
        self.reason = reason
        super().__init__(message)

    def again(self) -> BundleInvalid:
        """A fresh copy to raise (one remembered instance is never raised in several threads)."""
        return BundleInvalid(self.version, self.reason, str(self))


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


# A number typed or sent as text: ASCII digits only, an optional sign, thousands commas in
# groups of three, an optional decimal point. Python's float() would also take "１２３",
# "1_000", "1e5", "nan" or "inf"; none of them is an amount an officer typed.
_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+", re.ASCII)
ECHO_CHARS = 40


def echo(value: object) -> str:
    """Input repeated in a message: a short prefix, never the whole of a long or binary value."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\x00", "\\0")
    return repr(text[:ECHO_CHARS] + "…") if len(text) > ECHO_CHARS else repr(text)


def _number(raw: Mapping, key: str, errors: dict, integer: bool = False):
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        errors[key] = "is required"
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors[key] = f"must be a number, got {echo(value)}"
        return None
    if isinstance(value, str):
        text = value.strip()
        if "\x00" in text:
            errors[key] = "contains a NUL byte; type the number again"
            return None
        if not _NUMBER_RE.fullmatch(text):
            errors[key] = f"must be a number written with the digits 0-9, got {echo(value)}"
            return None
        value = text.replace(",", "")
    try:
        num = float(value)
    except OverflowError:
        errors[key] = "is far too large"
        return None
    except (TypeError, ValueError):
        errors[key] = f"must be a number, got {echo(value)}"
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
        digits = parts[0] + parts[1] if len(parts) == 2 else ""
        if len(parts) != 2 or len(parts[0]) != 8 or len(parts[1]) != 4 or not (digits.isascii() and digits.isdigit()):
            errors["dob_ssn"] = "must look like YYYYMMDD_NNNN (date of birth, underscore, SSN last four)"
            return None
        try:
            datetime.strptime(parts[0], "%Y%m%d")
        except ValueError:
            errors["dob_ssn"] = f"{parts[0]} is not a real date"
            return None
        return key
    dob, ssn = raw.get("date_of_birth"), raw.get("ssn_last4")
    if dob in (None, ""):
        errors["date_of_birth"] = "is required"
    if ssn in (None, ""):
        errors["ssn_last4"] = "is required"
    if dob in (None, "") or ssn in (None, ""):
        return None
    if isinstance(dob, datetime):
        dob = dob.date()
    if not isinstance(dob, date):
        try:
            dob = datetime.strptime(str(dob).strip(), "%Y-%m-%d").date()
        except ValueError:
            errors["date_of_birth"] = "must be a date YYYY-MM-DD"
            return None
    if not date(1900, 1, 1) <= dob <= datetime.now(UTC).date():
        errors["date_of_birth"] = "must be between 1900-01-01 and today"
        return None
    ssn = str(ssn).strip()
    if len(ssn) != 4 or not (ssn.isascii() and ssn.isdigit()):
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
    if not isinstance(raw, Mapping):
        raise ApplicationError({"application": f"must be a set of named fields (a mapping), got {type(raw).__name__}"})
    errors: dict[str, str] = {}
    key = _dob_ssn(raw, errors)
    zipcode = raw.get("zipcode")
    zip_ok = None
    if zipcode in (None, ""):
        errors["zipcode"] = "is required"
    else:
        text = str(zipcode).strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) == 0:
            errors["zipcode"] = f"must be a US zipcode of up to five digits, got {echo(zipcode)}"
        else:
            zip_ok = int(text)
    real_age = age_on(datetime.strptime(key[:8], "%Y%m%d").date()) if key else None
    given_age = raw.get("person_age")
    if given_age is None or (isinstance(given_age, str) and not given_age.strip()):
        # Age is derived from the date of birth (the model does not score it; the record keeps it).
        age = real_age
        if age is not None and not LIMITS["person_age"][0] <= age <= LIMITS["person_age"][1]:
            lo, hi = LIMITS["person_age"]
            errors["date_of_birth" if "date_of_birth" in raw else "dob_ssn"] = (
                f"gives an age of {age}; applicants must be {lo} to {hi}"
            )
            age = None
    else:
        age = _number(raw, "person_age", errors, integer=True)
    income = _number(raw, "person_income", errors)
    emp = _number(raw, "person_emp_length", errors)
    amount = _number(raw, "loan_amnt", errors)
    rate = _number(raw, "loan_int_rate", errors)
    own = str(raw.get("person_home_ownership") or "").strip().upper()
    if not own:
        errors["person_home_ownership"] = "is required"
    elif own not in F.OWNERSHIP_CODE:
        errors["person_home_ownership"] = f"must be one of {', '.join(F.HOME_OWNERSHIP)}, got {echo(own)}"
    intent = str(raw.get("loan_intent") or "").strip().upper()
    if not intent:
        errors["loan_intent"] = "is required"
    elif intent not in F.INTENT_CODE:
        errors["loan_intent"] = f"must be one of {', '.join(F.LOAN_INTENTS)}, got {echo(intent)}"
    if age is not None and emp is not None and emp > max(age - 14, 0):
        errors["person_emp_length"] = f"{emp:g} years of employment is not possible at age {age}"
    if real_age is not None and age is not None:
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
    status: str  # ok | missing (a value the row lacks) | stale (older than the view's TTL: not used)


@dataclass
class Decision:
    """One credit decision.  ``outcome`` is approve, refer or decline; a referral for missing or
    stale data has no probability.  ``reasons`` are the principal reasons (decline and refer:
    at most four, only factors that raised risk); ``refer_reasons`` say why it goes to a person;
    ``challenger`` is the shadow score of the challenger model (recorded, never the decision)."""

    application: Application
    outcome: str
    probability: float | None
    cutoff: float | None
    band: tuple[float, float] | None
    reasons: list[PrincipalReason]
    refer_reasons: list[str]
    contributions: dict[str, float]
    base_value: float | None
    features: list[FeatureValue]
    model_version: str | None
    policy_version: str
    challenger: dict | None = None
    latency_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.outcome == "approve"

    @property
    def threshold(self) -> float | None:
        return self.cutoff

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

    def __init__(self, store=None, model_dir: Path | str | None = None, settings=None, policy_file=None):
        from runtime.settings import model_dir as default_model_dir

        self._store = store
        self._settings = settings
        self._model_dir = Path(model_dir or default_model_dir())
        self._pointer = str(self._model_dir / bundles.POINTER)
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._bundle: Bundle | None = None  # the last good bundle: swapped as one object, never mutated
        self._refused: BundleInvalid | None = None  # what the pointer names now, if it was refused
        self._reader = None
        self._data_state = None  # (checked at, runtime.dataset.DataState | None)
        self._policy_source = PolicySource(policy_file)
        self._challenger_pointer = str(self._model_dir / bundles.CHALLENGER)
        self._challengers: dict[str, Bundle | None] = {}

    DATA_STATE_TTL_S = 5.0

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

    def bundle(self) -> Bundle:
        """The bundle deciding now: the one the ``current`` pointer names, or — when that one is
        refused — the last good one.  Cheap when nothing changed: one read of the pointer file."""
        pointer = bundles.read_pointer(self._pointer)
        good = self._bundle
        if good is not None and pointer == good.version:
            return good
        refused = self._refused
        if refused is not None and refused.version == pointer:
            if good is not None:
                return good
            raise refused.again()
        if not self._load_lock.acquire(blocking=good is None):
            return good  # another thread is loading the new bundle; keep deciding with the current one
        try:
            return self._switch(pointer)
        finally:
            self._load_lock.release()

    def _switch(self, pointer: str | None) -> Bundle:
        good = self._bundle
        if good is not None and pointer == good.version:
            return good
        if self._refused is not None and self._refused.version == pointer:
            if good is not None:
                return good
            raise self._refused.again()
        where = self._model_dir
        if pointer is None:
            if good is None:
                if bundles.legacy_model(where):
                    raise ModelUnavailable(
                        f"the model in {where} was written by an earlier Loan Desk version and is not used: "
                        "run `uv run loan-desk train`"
                    )
                raise ModelUnavailable(f"no trained model in {where}: run `uv run loan-desk train`")
            reason = f"no model bundle is current in {where}"
            refused = BundleInvalid(None, reason, f"{reason}; still deciding with model {good.version}")
        else:
            try:
                bundle = bundles.load_bundle(pointer, where)
            except BundleError as exc:
                if good is not None:
                    msg = f"{exc} — refused; still deciding with model {good.version}"
                else:
                    msg = (
                        f"{exc} — refused, and no earlier model was loaded: run `uv run loan-desk train`, "
                        "or `uv run loan-desk models use VERSION` to go back to an earlier bundle "
                        "(`loan-desk models list`)"
                    )
                refused = BundleInvalid(pointer, exc.reason, msg)
            else:
                self._bundle, self._refused = bundle, None
                if good is not None:
                    log.info("model bundle %s replaces %s", bundle.version, good.version)
                return bundle
        log.warning("%s", refused)  # once per refused pointer: the refusal is remembered
        self._refused = refused
        if good is not None:
            return good
        raise refused.again()

    @property
    def model_problem(self) -> ModelUnavailable | None:
        """Why the bundle the pointer names is not the one deciding, or why nothing can decide;
        None when the current bundle is deciding."""
        try:
            self.bundle()
        except ModelUnavailable as exc:
            return exc
        return self._refused

    def model(self) -> tuple[xgb.Booster, dict]:
        """The booster and the metadata of one and the same bundle."""
        b = self.bundle()
        return b.booster, b.metadata

    @property
    def metadata(self) -> dict:
        return self.bundle().metadata

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
        b = self.bundle()
        self.policy().cutoff(b.metadata)
        self.reader().read("00000000_0000", 0)
        x = np.zeros((1, len(b.columns)), dtype=np.float32)
        b.booster.inplace_predict(x)
        b.booster.predict(xgb.DMatrix(x, feature_names=b.metadata["features"], nthread=1), pred_contribs=True)
        if (cb := self.challenger()) is not None:
            cb.booster.inplace_predict(np.zeros((1, len(cb.columns)), dtype=np.float32))

    # -- policy and challenger ----------------------------------------------------------------
    def policy(self) -> Policy:
        """The credit policy in force (re-read when its file changes; a bad file is refused and the
        last good policy keeps deciding)."""
        try:
            return self._policy_source.get()
        except PolicyError as exc:
            raise PolicyUnavailable(f"no usable credit policy: {exc}") from None

    @property
    def policy_problem(self) -> PolicyError | None:
        return self._policy_source.problem

    def challenger(self) -> Bundle | None:
        """The challenger bundle (scored in the shadow), or None; a challenger that cannot be
        loaded is skipped (logged once), never in the way of a decision."""
        version = bundles.read_pointer(self._challenger_pointer)
        if version is None:
            return None
        got = self._challengers.get(version)
        if got is None and version not in self._challengers:
            try:
                got = bundles.load_bundle(version, self._model_dir)
            except BundleError as exc:
                log.warning("challenger %s not scored: %s", version, exc)
                got = None
            self._challengers = {version: got}
        return got

    # -- deciding ---------------------------------------------------------------------------
    def _usable(self, app: Application, credit, zipcode, needed: set[str]):
        """Rows older than their view's TTL count as missing, as in the point-in-time join.
        Returns (credit, zipcode, stale views, why to refer): a view the model needs and lacks
        sends the application to a person; one it does not score only gets a warning."""
        now = datetime.now(UTC)
        ttl = self.reader().ttl
        stale: dict[str, datetime] = {}
        rows = {"credit_history": credit, "zipcode_features": zipcode}
        for view, row in rows.items():
            if row is not None and row[1] is not None and now - row[1] > ttl[view]:
                stale[view] = row[1]
                rows[view] = None
        why, notes = [], []
        if "credit_history" in stale:
            msg = (
                f"The applicant's credit file is as of {stale['credit_history']:%Y-%m-%d}, older than the "
                f"{_days(ttl['credit_history'])} TTL of the credit history, so it counts as missing (as in training)"
            )
            (why if "credit_history" in needed else notes).append(msg)
        elif rows["credit_history"] is None:
            msg = "The applicant has no credit file in the online store"
            (why if "credit_history" in needed else notes).append(msg)
        if "zipcode_features" in stale:
            msg = (
                f"The statistics of zipcode {app.zipcode:05d} are as of {stale['zipcode_features']:%Y-%m-%d}, older "
                f"than the {_days(ttl['zipcode_features'])} TTL of the zipcode features"
            )
            (why if "zipcode_features" in needed else notes).append(msg)
        elif rows["zipcode_features"] is None:
            msg = f"Zipcode {app.zipcode:05d} has no statistics in the online store"
            (why if "zipcode_features" in needed else notes).append(msg)
        return rows["credit_history"], rows["zipcode_features"], stale, why, notes

    def data_state(self):
        """What is loaded, and when the online store was last filled (runtime.dataset.DataState),
        read from Postgres at most every DATA_STATE_TTL_S seconds; None when it cannot be read
        (the decision then goes on: it reads only Valkey, and recording it will say what is wrong)."""
        cached = self._data_state
        now = time.monotonic()
        if cached is None or now - cached[0] > self.DATA_STATE_TTL_S:
            from runtime.dataset import data_state
            from runtime.settings import Settings

            try:
                state = data_state(self._settings or Settings.from_env())
            except Exception:
                state = cached[1] if cached else None
            cached = self._data_state = (now, state)
        return cached[1]

    def outdated_by_reload(self, model: Bundle | None = None) -> list[str]:
        """The steps to run before deciding again, when a load replaced the data since the online
        store was filled or the model trained (empty: nothing outdated)."""
        state = self.data_state()
        if state is None:
            return []
        return state.what_to_run((model or self.bundle()).metadata)

    def decide(self, raw: Mapping | Application) -> Decision:
        """Validate, read the online features, score, apply the credit policy, explain.
        Bad input raises ApplicationError; missing or stale data, or data reloaded since the
        model or the online store, is a *refer* with the reason (not an exception)."""
        t0 = time.perf_counter()
        app = parse_application(raw)
        ctx = self._context()
        if ctx.reloaded:
            return self._referred(app, [], ctx.model, ctx.policy, [ctx.reloaded], ctx.warnings, t0)
        row = self._row(app, self.reader().read(app.dob_ssn, app.zipcode), ctx)
        if row.why:
            return self._referred(app, row.feats, ctx.model, ctx.policy, row.why, ctx.warnings + row.notes, t0)
        xm = row.x[:, ctx.model.columns]
        probability = float(ctx.model.booster.inplace_predict(xm)[0])
        # nthread=1: building a one-row DMatrix with the OpenMP pool costs up to ~9 ms at p99 on a busy machine.
        names = ctx.model.metadata["features"]
        contribs = ctx.model.booster.predict(xgb.DMatrix(xm, feature_names=names, nthread=1), pred_contribs=True)[0]
        return self._scored(row, ctx, probability, contribs, row.x, t0)

    def decide_many(self, raws, chunk: int = 500) -> list[Decision | ApplicationError]:
        """``decide`` for many applications: one result per input, in order — a Decision, or the
        ApplicationError of a row that fails validation (returned, not raised).  The online
        features are read ``chunk`` rows per pipelined round trip, and each chunk is scored in one
        prediction and one contributions pass; each Decision is the one ``decide`` gives for that
        row (same policy, reasons, referrals and challenger shadow score).  One model, policy and
        data-state check serve the whole call.  ``latency_ms`` of a row is its chunk's time
        divided by the chunk's rows.  A store, model or policy that is unavailable raises, as in
        ``decide``."""
        out: list[Decision | ApplicationError | None] = [None] * len(raws)
        valid: list[tuple[int, Application]] = []
        for i, raw in enumerate(raws):
            try:
                valid.append((i, parse_application(raw)))
            except ApplicationError as err:
                out[i] = err
        if not valid:
            return out
        ctx = self._context()
        chunk = max(1, chunk)
        for start in range(0, len(valid), chunk):
            t0 = time.perf_counter()
            part = valid[start : start + chunk]
            if ctx.reloaded:
                for i, app in part:
                    out[i] = self._referred(app, [], ctx.model, ctx.policy, [ctx.reloaded], ctx.warnings, t0)
                continue
            reads = self.reader().read_many([(app.dob_ssn, app.zipcode) for _, app in part], chunk=chunk)
            rows = [self._row(app, read, ctx) for (_, app), read in zip(part, reads, strict=True)]
            scored = [(i, r) for (i, _), r in zip(part, rows, strict=True) if not r.why]
            if scored:
                x = np.vstack([r.x for _, r in scored])
                xm = x[:, ctx.model.columns]
                probs = ctx.model.booster.inplace_predict(xm)
                names = ctx.model.metadata["features"]
                contribs = ctx.model.booster.predict(xgb.DMatrix(xm, feature_names=names), pred_contribs=True)
                cb, p2s = self.challenger(), None
                if cb is not None and cb.version != ctx.model.version:
                    try:
                        p2s = cb.booster.inplace_predict(x[:, cb.columns])
                    except (xgb.core.XGBoostError, ValueError) as exc:
                        p2s = exc
            per_row = (time.perf_counter() - t0) / len(part)
            k = 0
            for (i, _), r in zip(part, rows, strict=True):
                if r.why:
                    d = self._referred(r.app, r.feats, ctx.model, ctx.policy, r.why, ctx.warnings + r.notes, t0)
                else:
                    p2 = p2s if p2s is None or isinstance(p2s, Exception) else p2s[k]
                    d = self._scored(r, ctx, float(probs[k]), contribs[k], x[k : k + 1], t0, (cb, p2))
                    k += 1
                d.latency_ms = per_row * 1000
                out[i] = d
        return out

    def _context(self) -> _Context:
        """What one decision (or one batch) decides with: the policy, the bundle, the warnings,
        the views the model needs, and why not to decide when the data was reloaded."""
        policy = self.policy()
        model = self.bundle()  # booster, metadata and version of one bundle, for this whole decision
        warnings = [str(w) for w in (self._refused, self._policy_source.problem) if w is not None]
        needed = _needed_views(model)
        reloaded = None
        if steps := self.outdated_by_reload(model):
            reloaded = str(DataReloaded(self.data_state(), steps))
        return _Context(policy, model, warnings, needed, reloaded)

    def _row(self, app: Application, read, ctx: _Context) -> _Row:
        """The online rows of one application checked for use, and its model row when usable."""
        credit, zipcode, stale, why, notes = self._usable(app, *read, ctx.needed)
        feats = _feature_values(*read, stale)
        if why:
            return _Row(app, feats, why, notes)
        c_vals, c_ts = credit or ({}, None)
        z_vals = zipcode[0] if zipcode else {}
        return _Row(app, feats, why, notes, F.row_vector(app.as_dict(), c_vals, z_vals), c_vals, c_ts, z_vals)

    def _scored(self, row: _Row, ctx: _Context, probability: float, contribs, x, t0: float, shadow_p=None) -> Decision:
        """The Decision of a scored row: policy outcome, principal reasons, challenger shadow.
        ``shadow_p``: (challenger bundle or None, its probability for this row or the exception
        its prediction raised) when the caller scored the challenger already (a batch)."""
        model, policy = ctx.model, ctx.policy
        names = model.metadata["features"]
        contributions = {name: float(contribs[i]) for i, name in enumerate(names)}
        values = {**row.app.as_dict(), **row.c_vals, **row.z_vals}
        for name in F.DERIVED:
            v = float(x[0, F.INDEX[name]])
            values[name] = None if v != v else v
        cutoff = policy.cutoff(model.metadata)
        outcome, refer_why = policy.classify(probability, cutoff, values)
        reasons = []
        if outcome != "approve":
            as_of = dict.fromkeys(F.CREDIT_FEATURES, row.c_ts) | {"total_debt_due": row.c_ts}
            reasons = principal_reasons(contributions, values, as_of)
        shadow = None
        cb = self.challenger() if shadow_p is None else shadow_p[0]
        if cb is not None and cb.version != model.version:
            try:
                if shadow_p is None:
                    p2 = float(cb.booster.inplace_predict(x[:, cb.columns])[0])
                elif isinstance(shadow_p[1], Exception):
                    raise shadow_p[1]
                else:
                    p2 = float(shadow_p[1])
                c2 = policy.cutoff(cb.metadata)
                shadow = {"model_version": cb.version, "probability": p2, "outcome": policy.classify(p2, c2, values)[0]}
            except (PolicyError, xgb.core.XGBoostError, ValueError) as exc:
                shadow = {"model_version": cb.version, "error": str(exc)[:200]}
        return Decision(
            application=row.app,
            outcome=outcome,
            probability=probability,
            cutoff=cutoff,
            band=policy.band(cutoff),
            reasons=reasons,
            refer_reasons=refer_why,
            contributions=contributions,
            base_value=float(contribs[-1]),
            features=row.feats,
            model_version=model.version,
            policy_version=policy.label,
            challenger=shadow,
            latency_ms=(time.perf_counter() - t0) * 1000,
            warnings=ctx.warnings + row.notes,
        )

    def _referred(self, app, feats, model, policy, why, warnings, t0) -> Decision:
        return Decision(
            application=app,
            outcome="refer",
            probability=None,
            cutoff=None,
            band=None,
            reasons=[],
            refer_reasons=why,
            contributions={},
            base_value=None,
            features=feats,
            model_version=model.version,
            policy_version=policy.label,
            latency_ms=(time.perf_counter() - t0) * 1000,
            warnings=warnings,
        )


def _needed_views(model: Bundle) -> frozenset[str]:
    """The feature views whose rows the bundle's model scores (without them: refer)."""
    got = _NEEDED.get(model.version)
    if got is None:
        scored = set(model.metadata["features"])
        got = frozenset(v for v, names in _VIEW_FEATURES.items() if scored & set(names))
        _NEEDED[model.version] = got
    return got


_NEEDED: dict[str, frozenset[str]] = {}


@dataclass
class _Context:
    policy: Policy
    model: Bundle
    warnings: list[str]
    needed: set[str]
    reloaded: str | None  # why not to decide at all (the data was reloaded), or None


@dataclass
class _Row:
    app: Application
    feats: list[FeatureValue]
    why: list[str]  # why to refer (missing or stale data the model needs); empty: score it
    notes: list[str]
    x: np.ndarray | None = None
    c_vals: dict = field(default_factory=dict)
    c_ts: datetime | None = None
    z_vals: dict = field(default_factory=dict)


_VIEW_FEATURES = {
    "credit_history": (*F.CREDIT_FEATURES, "total_debt_due"),
    "zipcode_features": (*F.ZIPCODE_FEATURES, "avg_wage_zip"),
}


def _feature_values(credit, zipcode, stale: dict) -> list[FeatureValue]:
    """Every online feature as read (a stale row's values are kept, marked stale, and not used)."""
    feats = []
    for view, row, names in (
        ("credit_history", credit, F.CREDIT_FEATURES),
        ("zipcode_features", zipcode, (*F.ZIPCODE_TEXT, *F.ZIPCODE_FEATURES)),
    ):
        values, ts = row if row is not None else ({}, None)
        for n in names:
            v = values.get(n)
            status = "stale" if view in stale else ("missing" if v is None else "ok")
            feats.append(FeatureValue(n, view, v, ts, status))
    return feats


def _days(ttl: timedelta) -> str:
    return f"{ttl.days}-day" if ttl == timedelta(days=ttl.days) else str(ttl)
