"""Loan Desk's Feast configuration, the process's FeatureStore, and `feast apply`.

The configuration is feature_repo/feature_store.yaml (feature_store.spark.yaml under the Spark
profile, LOAN_DESK_OFFLINE=spark) with its ``${VAR}`` placeholders filled from the settings in
process (``repo_config``): nothing is written to the environment, and the feast CLI in a
terminal reads the same file after `eval "$(uv run loan-desk env)"`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from pathlib import Path

from runtime.settings import FEATURE_REPO, Settings

_store_lock = threading.Lock()


def repo_config(settings: Settings, **changes):
    """The profile's feature_store yaml as a RepoConfig, its placeholders filled from ``settings``.

    ``settings.materializer == "feast"`` selects Feast's own engine (``batch_engine: local``).
    ``changes`` replace top-level entries; a dict is merged into the section it names, e.g.
    ``repo_config(s, online_store={"key_ttl_seconds": 60}, batch_engine="local")``.
    """
    import yaml
    from feast.repo_config import RepoConfig

    env = settings.feast_env()
    text = settings.feast_config_file().read_text()
    filled = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], text)
    data = yaml.safe_load(filled)
    if settings.materializer == "feast" and settings.offline == "postgres":
        data["batch_engine"] = "local"
    for key, value in changes.items():
        section = data.get(key)
        data[key] = {**section, **value} if isinstance(value, dict) and isinstance(section, dict) else value
    config = RepoConfig(**data)
    config.repo_path = FEATURE_REPO
    return config


@functools.lru_cache(maxsize=8)
def _cached_store(settings: Settings):
    from feast import FeatureStore

    if settings.offline == "spark":
        from feast_ext.spark import quiet

        quiet()

    return FeatureStore(repo_path=str(FEATURE_REPO), config=repo_config(settings))


def new_feature_store(settings: Settings, **changes):
    """A FeatureStore of its own (not the process's shared one), its configuration changed as
    ``repo_config(settings, **changes)`` describes."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(FEATURE_REPO), config=repo_config(settings, **changes))


def feature_store(settings: Settings | None = None):
    """This process's FeatureStore for ``settings`` (one per settings, built once)."""
    settings = settings or Settings.from_env()
    with _store_lock:
        return _cached_store(settings)


def apply(settings: Settings) -> str:
    """`feast apply` for feature_repo/, in-process (same code path as the CLI)."""
    from feast.repo_operations import apply_total

    from runtime.migrations import migrate

    migrate(settings)  # the registry's schema
    if settings.offline == "spark":
        return _apply_spark(settings)
    if str(FEATURE_REPO) not in sys.path:
        sys.path.insert(0, str(FEATURE_REPO))  # feast imports the definitions as top-level modules
    # Feast applies the objects of the imported definition modules, and registering them can
    # leave state on those objects (materialization intervals). Import them afresh each time,
    # so applying to another database in the same process never carries that state over.
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().parent == FEATURE_REPO:
            del sys.modules[name]
    cwd = os.getcwd()
    try:
        apply_total(repo_config(settings), FEATURE_REPO, skip_source_validation=False)
    finally:
        os.chdir(cwd)  # apply_total changes into the repo
    with _store_lock:
        _cached_store.cache_clear()  # the next store sees the new registry at once
    return "registered entities, feature views and feature service in the Postgres registry"


def _apply_spark(settings: Settings) -> str:
    """`feast apply` of the same definitions over the Parquet export: the objects come from
    ``features.definitions`` with the settings' export folder, not from the environment, and go
    through the same apply as the CLI's (Feast's plan, registry diff and infra update)."""
    import importlib.util

    from feast.data_source import DataSource
    from feast.entity import Entity
    from feast.feature_service import FeatureService
    from feast.feature_store import FeatureStore
    from feast.feature_view import DUMMY_ENTITY, FeatureView
    from feast.project import Project
    from feast.repo_contents import RepoContents
    from feast.repo_operations import apply_total_with_repo_instance

    from feast_ext.spark import check_export, quiet

    quiet()
    location = settings.export_location()
    check_export(location)
    # features.py as a module of its own (no sys.path or sys.modules change, fresh objects)
    spec = importlib.util.spec_from_file_location("loan_desk_feature_definitions", FEATURE_REPO / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects = module.definitions("spark", location)
    repo = RepoContents(
        projects=[Project(name=settings.project)],
        data_sources=[o for o in objects if isinstance(o, DataSource)],
        feature_views=[o for o in objects if isinstance(o, FeatureView)],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)] + [DUMMY_ENTITY],
        feature_services=[o for o in objects if isinstance(o, FeatureService)],
        permissions=[],
    )
    store = FeatureStore(repo_path=str(FEATURE_REPO), config=repo_config(settings))
    # Feast's source validation would start Spark to read each schema; check_export checked the folders.
    apply_total_with_repo_instance(store, settings.project, store.registry, repo, skip_source_validation=True)
    with _store_lock:
        _cached_store.cache_clear()
    return f"registered the feature views over the Parquet export in {location} (Feast project {settings.project})"


def project_key_suffix(settings: Settings) -> bytes:
    """Feast's Redis keys end with the project name."""
    return settings.project.encode()


def _project_keys(settings: Settings):
    """(client, iterator over this project's online keys): a SCAN (of every primary of a
    cluster), about 1 s per million keys; other keys sharing the Redis db (another project's,
    whatever its name ends with) are left out."""
    from feast_ext.engine import is_project_key, scan_primaries

    r = settings.redis_client(socket_timeout=5, socket_connect_timeout=2)
    keys = scan_primaries(r, b"*" + project_key_suffix(settings))
    return r, (k for k in keys if is_project_key(k, settings.project))


def online_key_count(settings: Settings) -> int:
    """Entities of this project online."""
    r, keys = _project_keys(settings)
    try:
        return sum(1 for _ in keys)
    finally:
        r.close()


def clear_online(settings: Settings) -> int:
    """Drop every online row of this project, nothing else in the Redis db."""
    from feast_ext.engine import unlink_keys

    r, keys = _project_keys(settings)
    try:
        return unlink_keys(r, keys)
    finally:
        r.close()
