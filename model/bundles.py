"""Model bundles: each training run's booster and metadata, published together, never changed.

    <model dir>/bundles/<version>/model.json      the booster (XGBoost JSON)
    <model dir>/bundles/<version>/metadata.json   version, threshold, feature list, metrics,
                                                  sha256 of model.json
    <model dir>/current                           the version being served (one line)

``write_bundle`` fills a hidden temporary folder beside the others and renames it into place in
one step, so nobody sees half a bundle, and a published folder is never written again.
``use`` switches the ``current`` pointer with a temporary file and ``os.replace``, so the pointer
always names one whole bundle; rolling back is ``use`` of an earlier version.  ``load_bundle``
reads a bundle and refuses it with ``BundleError`` when a file is unreadable or corrupt, or the
booster does not match its metadata.

The layout of earlier Loan Desk versions (a bare ``model.json`` + ``metadata.json`` in the model
folder) is ignored, not imported: nothing guarantees that those two files belong together.
``legacy_model`` says whether such files are there, so messages can tell to retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime.files import fsync_dir
from runtime.settings import model_dir

BUNDLES = "bundles"
POINTER = "current"
CHALLENGER = "challenger"
MODEL_FILE = "model.json"
META_FILE = "metadata.json"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BundleError(Exception):
    """A bundle that cannot be used; ``str(err)`` is a message for people."""

    def __init__(self, version: str | None, reason: str):
        self.version = version
        self.reason = reason
        super().__init__(f"model bundle {version}: {reason}" if version else reason)


class UnknownVersion(BundleError, LookupError):
    def __init__(self, version: str, root: Path):
        super().__init__(
            None, f"no model bundle {version[:100]!r} in {root}: `uv run loan-desk models list` shows the versions"
        )
        self.version = version


@dataclass(frozen=True)
class Bundle:
    """One loaded bundle: the booster and the metadata that belong to it.  Treat as read-only."""

    version: str
    path: Path
    threshold: float
    booster: object  # xgboost.Booster
    metadata: dict
    columns: object = None  # numpy positions of the booster's inputs in model.features.FEATURES


@dataclass(frozen=True)
class BundleInfo:
    version: str
    trained_at: str | None
    auc: float | None
    threshold: float | None
    current: bool
    problem: str | None = None  # set when the metadata cannot be read


# --- paths and the pointer ------------------------------------------------------------------------
def root_dir(root: Path | str | None = None) -> Path:
    return Path(root or model_dir())


def bundle_path(version: str, root: Path | str | None = None) -> Path:
    return root_dir(root) / BUNDLES / version


def current_version(root: Path | str | None = None) -> str | None:
    """The version the ``current`` pointer names, or None."""
    return read_pointer(str(root_dir(root) / POINTER))


def read_pointer(path: str) -> str | None:
    """One read of the one-line pointer file (about 3 µs: it runs on every decision)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip() or None


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def use(version: str, root: Path | str | None = None, pointer: str = POINTER) -> None:
    """Point ``current`` (or ``pointer``) at an existing bundle, atomically.  Does not load the
    booster: check it with ``load_bundle`` first where that matters (``loan-desk models use`` does)."""
    root = root_dir(root)
    if not _VERSION.fullmatch(version or "") or not (bundle_path(version, root) / META_FILE).is_file():
        raise UnknownVersion(version or "", root)
    tmp = root / f".{pointer}.{uuid.uuid4().hex}.tmp"
    try:
        _write_file(tmp, (version + "\n").encode())
        os.replace(tmp, root / pointer)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(root)


def challenger_version(root: Path | str | None = None) -> str | None:
    """The version the ``challenger`` pointer names (scored in the shadow of each decision), or None."""
    return read_pointer(str(root_dir(root) / CHALLENGER))


def set_challenger(version: str | None, root: Path | str | None = None) -> None:
    """Make ``version`` the challenger, or retire the challenger (None)."""
    if version is None:
        (root_dir(root) / CHALLENGER).unlink(missing_ok=True)
        fsync_dir(root_dir(root))
    else:
        use(version, root, CHALLENGER)


# --- writing ----------------------------------------------------------------------------------------
def write_bundle(raw: bytes, meta: dict, root: Path | str | None = None) -> Path:
    """Publish a new bundle folder (``meta["model_version"]`` names it); the pointer is not moved.

    Adds ``booster_sha256`` to ``meta``.  Raises BundleError when the version is taken.
    """
    version = str(meta.get("model_version") or "")
    if not _VERSION.fullmatch(version):
        raise BundleError(None, f"model_version must be letters, digits, '.', '_' or '-', got {version[:100]!r}")
    meta["booster_sha256"] = hashlib.sha256(raw).hexdigest()
    parent = root_dir(root) / BUNDLES
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / version
    if final.exists():
        raise BundleError(version, f"{final} exists already; a published bundle is never replaced")
    tmp = parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_file(tmp / MODEL_FILE, raw)
        _write_file(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        for name in (MODEL_FILE, META_FILE):
            os.chmod(tmp / name, 0o444)
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)  # fails if a bundle of that name appeared meanwhile
        except OSError as exc:
            raise BundleError(version, f"cannot publish it as {final}: {exc.strerror or exc}") from None
        fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def publish(raw: bytes, meta: dict, root: Path | str | None = None) -> Bundle:
    """Write a bundle, check that it loads, then make it current.  Returns the loaded bundle."""
    write_bundle(raw, meta, root)
    bundle = load_bundle(meta["model_version"], root)
    use(bundle.version, root)
    return bundle


# --- reading ----------------------------------------------------------------------------------------
def read_metadata(version: str, root: Path | str | None = None) -> dict:
    root = root_dir(root)
    if not _VERSION.fullmatch(version or ""):
        raise UnknownVersion(version or "", root)
    path = bundle_path(version, root) / META_FILE
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        if not bundle_path(version, root).is_dir():
            raise UnknownVersion(version, root) from None
        raise BundleError(version, f"{META_FILE} is missing") from None
    except (OSError, ValueError) as exc:
        raise BundleError(version, f"{META_FILE} cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise BundleError(version, f"{META_FILE} is not a JSON object")
    return meta


def current_metadata(root: Path | str | None = None) -> dict | None:
    """Metadata of the current bundle, or None when there is none (or it cannot be read)."""
    version = current_version(root)
    if version is None:
        return None
    try:
        return read_metadata(version, root)
    except BundleError:
        return None


def legacy_model(root: Path | str | None = None) -> bool:
    """True when the model folder holds an earlier version's bare model.json (never used)."""
    return (root_dir(root) / MODEL_FILE).is_file()


def list_bundles(root: Path | str | None = None) -> list[BundleInfo]:
    """Every published bundle, oldest first."""
    root = root_dir(root)
    current = current_version(root)
    out = []
    try:
        entries = [p for p in (root / BUNDLES).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    for path in entries:
        try:
            meta = read_metadata(path.name, root)
        except BundleError as exc:
            out.append(BundleInfo(path.name, None, None, None, path.name == current, exc.reason))
            continue
        threshold = meta.get("threshold")
        out.append(
            BundleInfo(
                version=path.name,
                trained_at=meta.get("trained_at"),
                auc=(meta.get("metrics") or {}).get("auc"),
                threshold=float(threshold) if isinstance(threshold, int | float) else None,
                current=path.name == current,
            )
        )
    return sorted(out, key=lambda b: (b.trained_at or "", b.version))


def load_bundle(version: str, root: Path | str | None = None) -> Bundle:
    """Read and check one bundle: the booster's bytes match the recorded sha256, the booster loads,
    its feature names and count equal the metadata's feature list, which is the list this Loan
    Desk builds, the threshold is a probability, and a prediction on one row works.
    Raises UnknownVersion or BundleError."""
    import numpy as np
    import xgboost as xgb

    from model.features import FEATURES

    meta = read_metadata(version, root)
    path = bundle_path(version, root)
    if meta.get("model_version") != version:
        raise BundleError(version, f"its metadata names another version ({str(meta.get('model_version'))[:100]!r})")
    threshold = meta.get("threshold")
    if not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise BundleError(version, f"its threshold {threshold!r} is not a probability")
    features = meta.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise BundleError(version, "its metadata has no feature list")
    try:
        raw = (path / MODEL_FILE).read_bytes()
    except OSError as exc:
        raise BundleError(version, f"{MODEL_FILE} cannot be read ({exc.strerror or exc})") from None
    if hashlib.sha256(raw).hexdigest() != meta.get("booster_sha256"):
        raise BundleError(version, f"{MODEL_FILE} is corrupt (its sha256 differs from the one recorded at training)")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
    except (xgb.core.XGBoostError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(version, f"{MODEL_FILE} is not a readable XGBoost model ({first})") from None
    names = list(booster.feature_names or [])
    if booster.num_features() != len(features) or names != features:
        raise BundleError(
            version,
            f"its booster takes {booster.num_features()} features"
            + (f" ({_diff(names, features)})" if names else " without names")
            + f" but its metadata lists {len(features)}",
        )
    unknown = [f for f in features if f not in FEATURES]
    if unknown or len(set(features)) != len(features):
        raise BundleError(
            version,
            "it was trained on columns this Loan Desk does not build: " + ", ".join(unknown[:5] or ["duplicates"]),
        )
    booster.set_param({"nthread": 1})
    try:
        booster.inplace_predict(np.zeros((1, len(features)), dtype=np.float32))
    except (xgb.core.XGBoostError, ValueError) as exc:
        raise BundleError(version, f"its booster cannot predict ({str(exc)[:200]})") from None
    from model.features import columns

    return Bundle(
        version=version,
        path=path,
        threshold=float(threshold),
        booster=booster,
        metadata=meta,
        columns=columns(features),
    )


def _diff(names: list[str], expected: list[str] | None = None) -> str:
    from model.features import FEATURES

    expected = list(FEATURES) if expected is None else expected
    extra = [n for n in names if n not in expected]
    lacking = [n for n in expected if n not in names]
    parts = []
    if extra:
        parts.append("not in the list: " + ", ".join(extra[:5]))
    if lacking:
        parts.append("missing: " + ", ".join(lacking[:5]))
    return "; ".join(parts) or "same names in another order"


# --- checking decisions (tests and benchmarks) ---------------------------------------------------
def check_decisions(decisions, root: Path | str | None = None) -> list[str]:
    """Rescore each scored ``model.inference.Decision`` with the booster of the bundle its
    ``model_version`` names; returns one line per decision whose probability does not belong to
    that bundle, or whose outcome does not follow from it and the decision's cut-off and band
    (empty: all consistent)."""
    from model import features as F

    cache: dict[str, Bundle] = {}
    problems = []
    for i, d in enumerate(decisions):
        if d.probability is None:
            continue
        if d.model_version not in cache:
            cache[d.model_version] = load_bundle(d.model_version, root)
        b = cache[d.model_version]
        credit = {f.name: f.value for f in d.features if f.view == "credit_history"}
        zipcode = {f.name: f.value for f in d.features if f.view == "zipcode_features"}
        x = F.row_vector(d.application.as_dict(), credit, zipcode)[:, b.columns]
        p = float(b.booster.inplace_predict(x)[0])
        lo, hi = d.band
        band_outcome = "decline" if p >= hi else ("refer" if p >= lo else "approve")
        fits = d.outcome == band_outcome or (band_outcome == "approve" and d.outcome == "refer")
        if d.probability != p or not fits:
            problems.append(
                f"decision {i}: version {d.model_version} probability {d.probability:.6f} {d.outcome}; "
                f"that bundle gives probability {p:.6f} ({band_outcome} in the band {lo:.4f}–{hi:.4f})"
            )
    return problems
