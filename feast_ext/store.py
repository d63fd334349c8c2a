"""Loan Desk's Feast configuration, the process's FeatureStore, and `feast apply`.

The configuration is feature_repo/feature_store.yaml with its ``${VAR}`` placeholders filled
from the settings in process (``repo_config``): nothing is written to the environment, and
the feast CLI in a terminal reads the same file after `eval "$(uv run loan-desk env)"`.
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
    """feature_store.yaml as a RepoConfig, its placeholders filled from ``settings``.

    ``settings.materializer == "feast"`` selects Feast's own engine (``batch_engine: local``).
    ``changes`` replace top-level entries; a dict is merged into the section it names, e.g.
    ``repo_config(s, online_store={"key_ttl_seconds": 60}, batch_engine="local")``.
    """
    import yaml
    from feast.repo_config import RepoConfig

    env = settings.feast_env()
    text = (FEATURE_REPO / "feature_store.yaml").read_text()
    filled = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], text)
    data = yaml.safe_load(filled)
    if settings.materializer == "feast":
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


def project_key_suffix(settings: Settings) -> bytes:
    """Feast's Redis keys end with the project name."""
    return settings.project.encode()


def _project_keys(settings: Settings):
    """(client, iterator over this project's online keys): a SCAN, about 1 s per million keys;
    other keys sharing the Redis db (another project's, whatever its name ends with) are left out."""
    import redis

    from feast_ext.engine import is_project_key

    r = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    keys = r.scan_iter(match=b"*" + project_key_suffix(settings), count=10_000)
    return r, (k for k in keys if is_project_key(k, settings.project))


def online_key_count(settings: Settings) -> int:
    """Entities of this project online."""
    _, keys = _project_keys(settings)
    return sum(1 for _ in keys)


def clear_online(settings: Settings) -> int:
    """Drop every online row of this project, nothing else in the Redis db."""
    r, keys = _project_keys(settings)
    deleted, batch = 0, []
    for key in keys:
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += r.unlink(*batch)
            batch = []
    if batch:
        deleted += r.unlink(*batch)
    return deleted
