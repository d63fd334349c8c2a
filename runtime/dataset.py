"""What data is loaded, and whether the online store and the model are older than it.

A load that replaces the data (bootstrap/load.py) records its time in ``loan_desk_dataset``.
Until a materialization that started after it has succeeded, the online store still holds
features of the old data; until a model is trained on it, the model was fitted to other data.
``DataState`` says both, and what to run; the decision service refuses decisions meanwhile
(feast_ext/model code reads it through ``data_state``, cached for a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from runtime import db
from runtime.settings import Settings


@dataclass(frozen=True)
class DataState:
    loaded_at: datetime | None  # when the current data was loaded (None: nothing loaded)
    info: dict | None  # what was loaded (source, sizes, the fingerprint of the request)
    materialized_at: datetime | None  # start of the newest successful materialization

    @property
    def online_older_than_data(self) -> bool:
        return self.loaded_at is not None and (self.materialized_at is None or self.materialized_at < self.loaded_at)

    def model_older_than_data(self, model_metadata: dict | None) -> bool:
        """True when the model was trained on another load than the current one."""
        if self.info is None:
            return False
        trained_on = ((model_metadata or {}).get("dataset") or {}).get("loaded_at")
        return trained_on != self.info.get("loaded_at")

    def what_to_run(self, model_metadata: dict | None) -> list[str]:
        steps = []
        if self.online_older_than_data:
            steps.append("uv run loan-desk materialize")
        if self.model_older_than_data(model_metadata):
            steps.append("uv run loan-desk train")
        return steps


def read_data_state(conn) -> DataState:
    """The state, read on ``conn`` (a job's own connection, e.g. the materialize run's)."""
    row = conn.execute(
        "SELECT (SELECT loaded_at FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1), "
        "(SELECT info FROM loan_desk_dataset ORDER BY loaded_at DESC LIMIT 1), "
        "(SELECT max(started_at) FROM loan_desk_materialize_runs WHERE status = 'succeeded')"
    ).fetchone()
    return DataState(loaded_at=row[0], info=row[1], materialized_at=row[2])


def data_state(settings: Settings) -> DataState:
    with db.connection(settings) as conn:
        return read_data_state(conn)
