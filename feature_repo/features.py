"""Feast definitions for Loan Desk: two entities, two feature views, one feature service.

The views read Postgres tables, or under the Spark profile the same tables exported to Parquet
(`loan-desk export --parquet DIR`): ``definitions(offline, export_dir)`` builds the same views
over either kind of source. `feast apply` in this folder picks the profile from the environment
it is given (LOAN_DESK_OFFLINE, LOAN_DESK_EXPORT_DIR, printed by `loan-desk env`); the app and
the CLI call ``definitions`` with their settings instead.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Int64, String
from feast.value_type import ValueType

applicant = Entity(
    name="dob_ssn",
    join_keys=["dob_ssn"],
    value_type=ValueType.STRING,
    description="Applicant: date of birth and last four digits of the SSN, YYYYMMDD_NNNN",
)

zipcode = Entity(
    name="zipcode",
    join_keys=["zipcode"],
    value_type=ValueType.INT64,
    description="US five-digit zipcode of the applicant's address",
)

OFFLINE_TABLES = ("credit_history", "zipcode_features")
# The export's partition column: the UTC month of event_timestamp (bootstrap/export.py).
PARTITION_COLUMN = "event_month"
PARTITION_FORMAT = "%Y-%m"


def postgres_sources() -> tuple:
    return tuple(
        PostgreSQLSource(
            name=table,
            table=table,
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
        )
        for table in OFFLINE_TABLES
    )


def spark_sources(export_dir: str) -> tuple:
    """The export's Parquet folders; Feast prunes months outside a query's window."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    return tuple(
        SparkSource(
            name=table,
            path=f"{export_dir.rstrip('/')}/{table}",
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp",
            date_partition_column=PARTITION_COLUMN,
            date_partition_column_format=PARTITION_FORMAT,
        )
        for table in OFFLINE_TABLES
    )


def definitions(offline: str = "postgres", export_dir: str | None = None) -> list:
    """Every object to register: the entities, the sources of the profile, the views, the service."""
    if offline == "spark":
        if not export_dir:
            raise ValueError("the Spark profile needs the export folder (LOAN_DESK_EXPORT_DIR)")
        credit_history_source, zipcode_source = spark_sources(export_dir)
    else:
        credit_history_source, zipcode_source = postgres_sources()

    # Credit bureau snapshots arrive about every three months. A snapshot older than 180 days
    # is too old to decide on (two missed refreshes), so the point-in-time join drops it.
    # (The 2021 tutorial used 90 days while its only snapshot predated every loan by 4+ months,
    # which silently emptied every credit feature of its training set.)
    credit_history = FeatureView(
        name="credit_history",
        entities=[applicant],
        ttl=timedelta(days=180),
        schema=[
            Field(name="credit_card_due", dtype=Int64),
            Field(name="mortgage_due", dtype=Int64),
            Field(name="student_loan_due", dtype=Int64),
            Field(name="vehicle_loan_due", dtype=Int64),
            Field(name="hard_pulls", dtype=Int64),
            Field(name="missed_payments_2y", dtype=Int64),
            Field(name="missed_payments_1y", dtype=Int64),
            Field(name="missed_payments_6m", dtype=Int64),
            Field(name="bankruptcies", dtype=Int64),
        ],
        source=credit_history_source,
        online=True,
        tags={"owner": "risk", "refresh": "quarterly"},
    )

    # Zipcode statistics come from yearly tax filings and change slowly: ten years of TTL.
    zipcode_features = FeatureView(
        name="zipcode_features",
        entities=[zipcode],
        ttl=timedelta(days=3650),
        schema=[
            Field(name="city", dtype=String),
            Field(name="state", dtype=String),
            Field(name="location_type", dtype=String),
            Field(name="tax_returns_filed", dtype=Int64),
            Field(name="population", dtype=Int64),
            Field(name="total_wages", dtype=Int64),
        ],
        source=zipcode_source,
        online=True,
        tags={"owner": "risk", "refresh": "yearly"},
    )

    credit_model_v1 = FeatureService(
        name="credit_model_v1",
        features=[credit_history, zipcode_features],
        description="Every online feature the Loan Desk credit model reads",
    )
    return [
        applicant,
        zipcode,
        credit_history_source,
        zipcode_source,
        credit_history,
        zipcode_features,
        credit_model_v1,
    ]


def _from_environment() -> list:
    """For `feast apply` in a terminal: the profile named by the environment (read only). The
    export folder defaults as in runtime/settings.py: $LOAN_DESK_HOME/export, .loan-desk/export."""
    offline = (os.environ.get("LOAN_DESK_OFFLINE") or "postgres").strip().lower()
    if offline != "spark":
        return definitions()
    home = Path(os.environ.get("LOAN_DESK_HOME") or Path(__file__).resolve().parent.parent / ".loan-desk")
    export_dir = os.environ.get("LOAN_DESK_EXPORT_DIR") or str(home.resolve() / "export")
    return definitions("spark", export_dir if "://" in export_dir else os.path.abspath(export_dir))


(
    _,
    _,
    credit_history_source,
    zipcode_source,
    credit_history,
    zipcode_features,
    credit_model_v1,
) = _from_environment()
