"""Feast definitions for Loan Desk: two entities, two feature views, one feature service."""

from datetime import timedelta

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

credit_history_source = PostgreSQLSource(
    name="credit_history",
    table="credit_history",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

zipcode_source = PostgreSQLSource(
    name="zipcode_features",
    table="zipcode_features",
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

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
