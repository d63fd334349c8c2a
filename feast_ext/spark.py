"""The Spark profile's runtime pieces: the export's layout, the process's Spark session, and
Spark failures turned into one sentence.

Feast's Spark offline store and engine reuse the active Spark session of the process, or start
one from ``spark_conf`` in feature_repo/feature_store.spark.yaml. ``session`` starts it from
the same configuration and points its Python workers at ``spark.pyspark.python`` (this
virtualenv's interpreter): PySpark takes the workers' interpreter from PYSPARK_PYTHON at
SparkContext creation and never from that setting, so it is set on the SparkContext object
(``pythonExec``) instead of in the environment. pyspark is imported only here, lazily: the app
and the Postgres profile never load it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from pathlib import Path

from runtime.settings import Settings

# The export's layout (bootstrap/export.py writes it, the Spark sources in features.py read it):
# DIR/<table>/event_month=YYYY-MM/part-NNNNN.parquet, plus a manifest at the top.
EXPORT_TABLES = ("credit_history", "zipcode_features", "loans")
PARTITION_COLUMN = "event_month"
MANIFEST = "_loan_desk_export.json"

_lock = threading.Lock()
SPARK_SOURCE_LOGGER = "feast.infra.offline_stores.contrib.spark_offline_store.spark_source"
_NULL = logging.NullHandler()


class SparkJobFailed(RuntimeError):
    """A Spark job stopped before it finished (cancelled, its JVM gone, a task failed)."""


class ExportMissing(RuntimeError):
    """The Spark profile's Parquet export is not where the settings say."""


def table_path(location: str, table: str) -> str:
    return f"{location.rstrip('/')}/{table}"


def check_export(location: str) -> None:
    """A local export folder must hold the three tables (a URL is left to Spark to read)."""
    if "://" in location and not location.startswith("file://"):
        return
    root = Path(location.removeprefix("file://"))
    missing = [t for t in EXPORT_TABLES if not (root / t).is_dir()]
    if missing:
        raise ExportMissing(
            f"no Parquet export in {root} (missing {', '.join(missing)}): "
            f"run `uv run loan-desk export --parquet {root}` first"
        )


def spark_conf(settings: Settings) -> dict[str, str]:
    from feast_ext.store import repo_config

    return dict(repo_config(settings).offline_store.spark_conf or {})


def quiet() -> None:
    """Feast warns on every Spark source and query that its Spark support is experimental (once is
    enough), and logs a Spark read failure with its Java stack trace before raising: with no
    logging set up (the CLI) Python would print that on stderr, while the error itself is
    reported as one sentence (``job_errors``)."""
    warnings.filterwarnings("once", message="The spark .* is an experimental feature", category=RuntimeWarning)
    logging.getLogger(SPARK_SOURCE_LOGGER).addHandler(_NULL)


def session(settings: Settings):
    """This process's Spark session (started on first use, again after it was stopped)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = spark_conf(settings)
    quiet()
    with _lock:
        spark = SparkSession.getActiveSession()
        if spark is None:
            spark = SparkSession.builder.config(conf=SparkConf().setAll(list(conf.items()))).getOrCreate()
            spark.sparkContext.setLogLevel("ERROR")  # Spark's own warnings are not the user's business
        python = conf.get("spark.pyspark.python")
        if python:
            spark.sparkContext.pythonExec = python
    return spark


def stop(jvm: bool = False) -> None:
    """Stop this process's Spark session, if one runs; with ``jvm`` also end the JVM that PySpark
    started for it (a later session starts a new one)."""
    from pyspark import SparkContext

    with _lock:
        sc = SparkContext._active_spark_context
        if sc is not None:
            sc.stop()
        gateway = SparkContext._gateway
        if jvm and gateway is not None:
            proc = getattr(gateway, "proc", None)  # the spark-submit process PySpark launched
            gateway.shutdown()
            SparkContext._gateway = SparkContext._jvm = None
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def _first_line(exc: BaseException) -> str:
    """The Java exception's own message when there is one ("Job 3 cancelled because SparkContext
    was shut down"), else the first line."""
    text = str(exc).strip()
    found = re.search(r"^[:\s]*[\w.$]*(?:Exception|Error): (.+)$", text, flags=re.MULTILINE)
    if found:
        return found.group(1).strip()[:300]
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _spark_cause(exc: BaseException) -> BaseException | None:
    """The Spark failure behind ``exc``: Feast re-raises some (a source Spark could not read
    becomes "Unable to find table") with the original as the context."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, Py4JError | PySparkException) or "SparkContext" in str(exc):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@contextlib.contextmanager
def job_errors(what: str):
    """Spark's failures (a py4j error with a Java stack trace, a cancelled job, a stopped context)
    as one sentence; other errors pass through unchanged."""
    try:
        yield
    except Exception as exc:
        cause = _spark_cause(exc)
        if cause is None:
            raise
        from pyspark import SparkContext

        why = _first_line(cause)
        if SparkContext._active_spark_context is None and "SparkContext" not in why:
            why = f"Spark was shut down ({why})"
        raise SparkJobFailed(f"the Spark job for {what} stopped before it finished: {why}") from None
