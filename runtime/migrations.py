"""Versioned schema migrations for Loan Desk's own tables (and the registry's schema).

``migrate`` applies the versions a database has not seen, each in its own transaction, under
an advisory lock so that two processes never apply the same step twice.  It runs from
`loan-desk` and from every step that needs a table (services, load, apply, materialize,
users); requests and sign-ins never run DDL: they find the tables, or say which step to run.
Version 1 is the schema the project had before migrations (CREATE ... IF NOT EXISTS), so
databases made by earlier versions adopt it as they are.
"""

from __future__ import annotations

from runtime import db
from runtime.settings import Settings

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "registry schema, users, decisions, materialization runs, dataset",
        """
CREATE SCHEMA IF NOT EXISTS feast_registry;
CREATE TABLE IF NOT EXISTS loan_desk_users (
    name          text PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('officer', 'admin')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS loan_desk_decisions (
    id            bigserial PRIMARY KEY,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    username      text NOT NULL,
    inputs        jsonb NOT NULL,
    features      jsonb NOT NULL,
    probability   double precision NOT NULL,
    decision      text NOT NULL,
    threshold     double precision NOT NULL,
    model_version text NOT NULL,
    latency_ms    double precision
);
CREATE INDEX IF NOT EXISTS loan_desk_decisions_user ON loan_desk_decisions (username, decided_at DESC);
CREATE TABLE IF NOT EXISTS loan_desk_materialize_runs (
    id           bigserial PRIMARY KEY,
    requested_by text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    mode         text,
    window_start timestamptz,
    window_end   timestamptz NOT NULL,
    rows         bigint,
    seconds      double precision,
    status       text        NOT NULL DEFAULT 'running',
    progress     text,
    error        text
);
CREATE TABLE IF NOT EXISTS loan_desk_dataset (
    loaded_at timestamptz NOT NULL DEFAULT now(),
    info      jsonb       NOT NULL
);
""",
    ),
    (
        2,
        "server-side sign-in sessions, sign-in attempts and lockouts, normalised user names",
        """
-- Names are normalised (stripped, lowercase) when created; new rows must be, old rows are left alone.
ALTER TABLE loan_desk_users
    ADD CONSTRAINT loan_desk_users_name_normalised CHECK (name = lower(btrim(name))) NOT VALID;
-- One row per sign-in. The browser's cookie holds a random id; only its SHA-256 is stored.
CREATE TABLE loan_desk_sessions (
    id_hash    bytea       PRIMARY KEY,
    username   text        NOT NULL REFERENCES loan_desk_users (name) ON DELETE CASCADE ON UPDATE CASCADE,
    client     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz,
    ended_why  text,
    CHECK ((ended_at IS NULL) = (ended_why IS NULL))
);
CREATE INDEX loan_desk_sessions_open ON loan_desk_sessions (username) WHERE ended_at IS NULL;
-- Every sign-in attempt, successful or not (the name as typed, cut to 64 characters).
CREATE TABLE loan_desk_signin_attempts (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    username text        NOT NULL,
    client   text        NOT NULL,
    outcome  text        NOT NULL CHECK (outcome IN ('ok', 'wrong password', 'unknown user', 'too soon', 'locked'))
);
CREATE INDEX loan_desk_signin_attempts_user ON loan_desk_signin_attempts (username, at DESC);
CREATE INDEX loan_desk_signin_attempts_client ON loan_desk_signin_attempts (client, at DESC);
-- Failure counters per user name and per client address: a growing delay, then a lockout.
CREATE TABLE loan_desk_signin_limits (
    kind          text        NOT NULL CHECK (kind IN ('user', 'client')),
    key           text        NOT NULL,
    failures      integer     NOT NULL DEFAULT 0,
    last_failure  timestamptz,
    next_allowed  timestamptz,
    locked_until  timestamptz,
    PRIMARY KEY (kind, key)
);
""",
    ),
    (
        3,
        "API tokens of client systems (sha256 hashes only)",
        """
CREATE TABLE loan_desk_api_tokens (
    name       text PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    role       text NOT NULL CHECK (role IN ('client', 'admin')),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
""",
    ),
    (
        4,
        "decision records: outcomes, reasons, policy, hash chain; reviews, batches, model events; underwriter role",
        """
ALTER TABLE loan_desk_users DROP CONSTRAINT IF EXISTS loan_desk_users_role_check;
ALTER TABLE loan_desk_users ADD CONSTRAINT loan_desk_users_role_check
    CHECK (role IN ('officer', 'underwriter', 'admin'));
ALTER TABLE loan_desk_decisions RENAME COLUMN decision TO outcome;
UPDATE loan_desk_decisions SET outcome = 'decline' WHERE outcome = 'reject';
ALTER TABLE loan_desk_decisions
    ALTER COLUMN probability DROP NOT NULL,
    ALTER COLUMN threshold DROP NOT NULL,
    ALTER COLUMN model_version DROP NOT NULL,
    ADD CONSTRAINT loan_desk_decisions_outcome CHECK (outcome IN ('approve', 'refer', 'decline')),
    ADD COLUMN band           jsonb,
    ADD COLUMN reasons        jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN refer_reasons  jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN contributions  jsonb,
    ADD COLUMN policy_version text,
    ADD COLUMN challenger     jsonb,
    ADD COLUMN channel        text NOT NULL DEFAULT 'app' CHECK (channel IN ('app', 'api', 'cli', 'batch')),
    ADD COLUMN client         text,
    ADD COLUMN batch_id       bigint,
    ADD COLUMN applicant      text GENERATED ALWAYS AS (inputs->>'dob_ssn') STORED,
    -- pending: a referral waiting for an underwriter; final otherwise (the review holds the verdict)
    ADD COLUMN status         text NOT NULL DEFAULT 'final' CHECK (status IN ('final', 'pending')),
    ADD COLUMN prev_hash      bytea,
    ADD COLUMN record_hash    bytea,
    ADD COLUMN field_hashes   jsonb;
UPDATE loan_desk_decisions SET status = 'final';
CREATE INDEX loan_desk_decisions_time ON loan_desk_decisions (decided_at DESC, id DESC);
CREATE INDEX loan_desk_decisions_applicant ON loan_desk_decisions (applicant, decided_at DESC);
CREATE INDEX loan_desk_decisions_pending ON loan_desk_decisions (decided_at) WHERE status = 'pending';
CREATE INDEX loan_desk_decisions_outcome ON loan_desk_decisions (outcome, decided_at DESC);
CREATE INDEX loan_desk_decisions_batch ON loan_desk_decisions (batch_id) WHERE batch_id IS NOT NULL;
-- One head per hash chain: the last record's id and hash (a deleted tail shows as a mismatch).
CREATE TABLE loan_desk_chain_heads (
    chain     text PRIMARY KEY,
    last_id   bigint NOT NULL,
    last_hash bytea NOT NULL,
    records   bigint NOT NULL
);
-- An underwriter's verdict on a referred decision: exactly one per decision (maker-checker in code).
CREATE TABLE loan_desk_reviews (
    id           bigserial PRIMARY KEY,
    decision_id  bigint NOT NULL UNIQUE REFERENCES loan_desk_decisions (id),
    reviewed_at  timestamptz NOT NULL,
    reviewer     text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('approve', 'decline')),
    reason_code  text NOT NULL,
    note         text NOT NULL DEFAULT '',
    prev_hash    bytea,
    record_hash  bytea,
    field_hashes jsonb
);
CREATE TABLE loan_desk_batches (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    username   text NOT NULL,
    filename   text NOT NULL,
    rows       integer NOT NULL DEFAULT 0,
    scored     integer NOT NULL DEFAULT 0,
    errors     integer NOT NULL DEFAULT 0,
    status     text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    finished_at timestamptz
);
-- Promotions, challengers and overrides of the model lifecycle.
CREATE TABLE loan_desk_model_events (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    username  text NOT NULL,
    version   text NOT NULL,
    action    text NOT NULL CHECK (action IN ('promoted', 'challenger', 'override', 'rollback')),
    reason    text NOT NULL DEFAULT '',
    details   jsonb
);
""",
    ),
    (
        5,
        "decision history: an officer's decisions by outcome",
        """
-- An officer's own decisions filtered by outcome (the history page's commonest officer search):
-- its page and its count read this index alone instead of every decision of the officer.
CREATE INDEX IF NOT EXISTS loan_desk_decisions_user_outcome
    ON loan_desk_decisions (username, outcome, decided_at DESC, id DESC);
""",
    ),
    (
        6,
        "batch scoring: the file's sha256, the rows recorded so far, why a batch failed",
        """
ALTER TABLE loan_desk_batches
    ADD COLUMN sha256           text,
    ADD COLUMN recorded_through integer NOT NULL DEFAULT 0,
    ADD COLUMN error            text;
CREATE INDEX loan_desk_batches_sha256 ON loan_desk_batches (sha256, created_at DESC);
""",
    ),
]
_MIGRATE_LOCK = 0x4C444D49  # "LDMI"


class SchemaMissing(RuntimeError):
    """The database has not been set up (or is behind this version of Loan Desk)."""


def applied_versions(conn) -> set[int]:
    exists = conn.execute("SELECT to_regclass('public.loan_desk_schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return set()
    return {v for (v,) in conn.execute("SELECT version FROM loan_desk_schema_migrations")}


def missing_versions(conn) -> list[int]:
    """Every known migration the database has not applied (not only those above its newest)."""
    have = applied_versions(conn)
    return [v for v, _, _ in MIGRATIONS if v not in have]


def migrate(settings: Settings) -> list[int]:
    """Apply every migration the database lacks; returns the versions applied (often none)."""
    db.ensure_database(settings)
    applied = []
    with db.connect(settings, job=True) as conn:
        if not missing_versions(conn):
            return applied
        conn.execute("SELECT pg_advisory_lock(%s)", [_MIGRATE_LOCK])
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS loan_desk_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            have = applied_versions(conn)
            for version, name, ddl in MIGRATIONS:
                if version in have:
                    continue
                with conn.transaction():
                    conn.execute(ddl)
                    conn.execute(
                        "INSERT INTO loan_desk_schema_migrations (version, name) VALUES (%s, %s)", [version, name]
                    )
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_MIGRATE_LOCK])
    return applied


def require(conn) -> None:
    """Raise SchemaMissing with the step to run when the database is not migrated."""
    if missing_versions(conn):
        raise SchemaMissing("the database has no Loan Desk tables yet: run `uv run loan-desk` (or any step) first")
