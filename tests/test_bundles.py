"""Model bundles: train publishes immutable bundles, the pointer switches atomically, the service
holds one (booster, metadata) pair, refuses broken bundles and keeps the last good one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from model import bundles
from model.bundles import BundleError, UnknownVersion, check_decisions, current_version, list_bundles, use
from model.features import MODEL_FEATURES
from model.inference import BundleInvalid, DecisionService, ModelUnavailable
from model.policy import load_policy
from tests.conftest import run_cli

# The repository's policy with no promotion margins to meet: these tests are about bundles and pointers.
ALWAYS_PROMOTE = dataclasses.replace(
    load_policy(), promotion={"max_auc_drop": 1.0, "max_calibration_error_rise": 1.0, "max_group_ratio_drop": 1.0}
)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory):
    """Two real trainings into a model folder of this module: A (default parameters), then B (shallower
    trees: another booster and threshold)."""
    from feast_ext.store import feature_store
    from model.train import train

    s = backbone["settings"]
    root = tmp_path_factory.mktemp("models")
    a = train(feature_store(s), s, out_dir=root, policy=ALWAYS_PROMOTE, compare=False)
    a_files = _digest(Path(a["written_to"]))
    b = train(feature_store(s), s, out_dir=root, params={"max_depth": 2}, policy=ALWAYS_PROMOTE, compare=False)
    return {"root": root, "a": a, "b": b, "a_files": a_files, "settings": s}


@pytest.fixture()
def root(trained, tmp_path):
    """A copy of the module's two bundles, with A current."""
    shutil.copytree(trained["root"] / bundles.BUNDLES, tmp_path / bundles.BUNDLES)
    use(trained["a"]["model_version"], tmp_path)
    return tmp_path


def _copy_bundle(root: Path, source: str, version: str, raw: bytes | None = None, **meta_changes) -> str:
    """Publish a new bundle made from an existing one, with another booster or metadata."""
    src = bundles.bundle_path(source, root)
    meta = {**json.loads((src / bundles.META_FILE).read_text()), **meta_changes, "model_version": version}
    bundles.write_bundle(raw if raw is not None else (src / bundles.MODEL_FILE).read_bytes(), meta, root)
    return version


def test_each_train_publishes_a_new_bundle_and_moves_the_pointer(trained):
    root, a, b = trained["root"], trained["a"], trained["b"]
    assert a["model_version"] != b["model_version"]
    assert [(i.version, i.threshold, i.current) for i in list_bundles(root)] == [
        (a["model_version"], a["threshold"], False),
        (b["model_version"], b["threshold"], True),
    ]
    assert current_version(root) == b["model_version"]
    assert bundles.current_metadata(root)["threshold"] == b["threshold"]
    # Published folders are never touched again; nothing but bundles and the pointer is left behind.
    assert _digest(Path(a["written_to"])) == trained["a_files"]
    assert sorted(p.name for p in root.iterdir()) == [bundles.BUNDLES, bundles.POINTER]
    folders = sorted(p.name for p in (root / bundles.BUNDLES).iterdir())
    assert folders == sorted([a["model_version"], b["model_version"]])
    meta = json.loads((Path(b["written_to"]) / bundles.META_FILE).read_text())
    assert meta["features"] == list(MODEL_FEATURES) and meta["model_version"] == b["model_version"]
    with pytest.raises(BundleError, match="never replaced"):
        bundles.write_bundle(b"{}", dict(meta), root)


def test_models_use_rolls_back_and_the_next_decision_reports_it(trained, root, app):
    a, b = trained["a"], trained["b"]
    assert a["threshold"] != b["threshold"]  # so the test tells the two apart
    svc = DecisionService(settings=trained["settings"], model_dir=root)
    use(b["model_version"], root)
    d_b = svc.decide(app)
    assert (d_b.model_version, d_b.threshold) == (b["model_version"], b["threshold"])

    out = run_cli("loan-desk", "models", "use", a["model_version"], "--dir", str(root))
    assert out.returncode == 0, out.stderr
    assert f"model {a['model_version']} (threshold {a['threshold']:g}" in out.stderr
    d_a = svc.decide(app)
    assert (d_a.model_version, d_a.threshold) == (a["model_version"], a["threshold"])
    assert d_a.probability != d_b.probability and not d_a.warnings
    assert check_decisions([d_a, d_b], root) == []

    listed = run_cli("loan-desk", "models", "list", "--dir", str(root))
    assert listed.returncode == 0, listed.stderr
    lines = {ln[2:].split()[0]: ln for ln in listed.stdout.splitlines()[1:]}
    assert lines[a["model_version"]].startswith("* ") and lines[b["model_version"]].startswith("  ")
    assert f"{b['metrics']['auc']:.3f}" in lines[b["model_version"]]

    bad = run_cli("loan-desk", "models", "use", "20200101-000000-nothere", "--dir", str(root))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "no model bundle '20200101-000000-nothere'" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert current_version(root) == a["model_version"]
    for evil in ("../bundles", ""):
        with pytest.raises(UnknownVersion):
            use(evil, root)


def test_a_corrupt_booster_is_refused_and_the_last_good_bundle_keeps_deciding(trained, root, app, caplog):
    a, b = trained["a"]["model_version"], trained["b"]["model_version"]
    svc = DecisionService(settings=trained["settings"], model_dir=root)
    assert svc.decide(app).model_version == a

    raw = (bundles.bundle_path(a, root) / bundles.MODEL_FILE).read_bytes()
    broken = _copy_bundle(root, a, "20990101-000000-truncated", raw=raw[: len(raw) // 2])
    use(broken, root)
    with caplog.at_level(logging.WARNING, logger="model.inference"):
        decisions = [svc.decide({**app, "loan_amnt": 1000 + 1000 * i}) for i in range(5)]
    assert {d.model_version for d in decisions} == {a}
    assert check_decisions(decisions, root) == []
    problem = svc.model_problem
    assert isinstance(problem, BundleInvalid) and isinstance(problem, ModelUnavailable)
    assert problem.version == broken and "not a readable XGBoost model" in problem.reason
    assert all(f"{broken}" in d.warnings[0] and f"still deciding with model {a}" in d.warnings[0] for d in decisions)
    assert len([r for r in caplog.records if broken in r.getMessage()]) == 1  # logged once

    # Bytes changed on disk after publishing: the recorded sha256 catches it.
    flipped = _copy_bundle(root, b, "20990101-000001-flipped")
    path = bundles.bundle_path(flipped, root) / bundles.MODEL_FILE
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b'"base_score"', b'"base_scorf"', 1))
    use(flipped, root)
    assert svc.decide(app).model_version == a
    assert svc.model_problem.version == flipped and "sha256" in svc.model_problem.reason

    # A service with no good bundle yet: the typed error, with the steps to run.
    with pytest.raises(BundleInvalid, match="loan-desk models use VERSION"):
        DecisionService(settings=trained["settings"], model_dir=root).decide(app)
    # The CLI does not switch to a broken bundle.
    out = run_cli("loan-desk", "models", "use", broken, "--dir", str(root))
    assert out.returncode == 2 and "not a readable XGBoost model" in out.stderr and "Traceback" not in out.stderr
    assert current_version(root) == flipped

    use(b, root)  # a good bundle again: the warning goes away
    d = svc.decide(app)
    assert d.model_version == b and not d.warnings and svc.model_problem is None


def _other_booster(names: list[str]) -> bytes:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, len(names))).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, y, feature_names=names), 3)
    return bytes(booster.save_raw("json"))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("metadata lists one feature fewer", f"takes {len(MODEL_FEATURES)} features"),
        ("booster with a renamed feature", "not in the list: income_renamed"),
        ("booster and metadata agree, Loan Desk builds other features", "columns this Loan Desk does not build: shoe"),
    ],
)
def test_a_bundle_whose_booster_does_not_match_its_metadata_is_refused(trained, root, app, case, reason):
    a = trained["a"]["model_version"]
    svc = DecisionService(settings=trained["settings"], model_dir=root)
    assert svc.decide(app).model_version == a
    names = list(MODEL_FEATURES)
    if case == "metadata lists one feature fewer":
        bad = _copy_bundle(root, a, "20990101-000002-fewer", features=names[:-1])
    elif case == "booster with a renamed feature":
        renamed = [("income_renamed" if n == "person_income" else n) for n in names]
        bad = _copy_bundle(root, a, "20990101-000003-renamed", raw=_other_booster(renamed))
    else:
        other = [*names[:-1], "shoe_size"]
        bad = _copy_bundle(root, a, "20990101-000004-other", raw=_other_booster(other), features=other)
    assert len(names) == 17
    use(bad, root)
    d = svc.decide(app)
    assert d.model_version == a and d.threshold == trained["a"]["threshold"]
    assert check_decisions([d], root) == []
    assert isinstance(svc.model_problem, BundleInvalid) and svc.model_problem.version == bad
    assert reason in svc.model_problem.reason
    with pytest.raises(BundleError, match=reason):
        bundles.load_bundle(bad, root)


def test_every_decision_belongs_to_one_bundle_while_training_and_switching(trained, root, app):
    """One thread decides in a loop while this one trains a new bundle and switches back and forth."""
    from feast_ext.store import feature_store
    from model.train import train

    s = trained["settings"]
    a, b = trained["a"]["model_version"], trained["b"]["model_version"]
    svc = DecisionService(settings=s, model_dir=root)
    variants = [{**app, "loan_amnt": 1000 + 1500 * (i % 20), "loan_int_rate": 6 + i % 15} for i in range(40)]
    decisions, errors, stop = [], [], threading.Event()

    def decide_loop():
        i = 0
        while not stop.is_set():
            try:
                decisions.append(svc.decide(variants[i % len(variants)]))
            except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
                errors.append(exc)
                return
            i += 1

    worker = threading.Thread(target=decide_loop)
    worker.start()
    try:
        time.sleep(0.2)
        c = train(
            feature_store(s), s, out_dir=root, params={"max_depth": 6, "eta": 0.3}, policy=ALWAYS_PROMOTE, compare=False
        )
        c = c["model_version"]
        time.sleep(0.2)
        c2 = train(
            feature_store(s),
            s,
            out_dir=root,
            params={"max_depth": 3, "eta": 0.03},
            policy=ALWAYS_PROMOTE,
            compare=False,
        )
        c2 = c2["model_version"]
        for i in range(30):  # rapid switches: loads race with decisions
            use((b, a, c)[i % 3], root)
            time.sleep(0.01)
        use(c2, root)
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors
    seen = {d.model_version for d in decisions}
    assert {a, c, c2} <= seen and len(decisions) > 100
    assert decisions[-1].model_version == c2
    assert check_decisions(decisions, root) == []
    assert len({d.threshold for d in decisions}) == len(seen)  # four bundles, four thresholds
