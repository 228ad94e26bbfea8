-- The same schema as the SQLite store's, in PostgreSQL's types.
--
-- Jobs: the full record is kept as JSON text in `data` (type json keeps the
-- text as written, like the SQLite store); the columns beside it are the ones
-- queries filter or join on, kept in step by the store on every write. Where
-- the SQLite store reads a field out of the JSON (json_extract), this table
-- has a column: PostgreSQL cannot read any field of a document that holds a
-- \u0000 escape, which a job's environment may.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,            -- UUIDv7: byte order is creation order
    status          text NOT NULL,
    repository      text NOT NULL,               -- compared case-insensitively (lower())
    runner_name     text,
    job_key         text NOT NULL,
    source          text NOT NULL,               -- hook, webhook, poll
    run_id          bigint NOT NULL,
    run_attempt     bigint NOT NULL,
    github_job_id   bigint UNIQUE,
    delegation_key  text UNIQUE,                 -- already lower-cases the repository
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    data            json NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_repository ON jobs (lower(repository), id);
CREATE INDEX jobs_by_runner ON jobs (runner_name, job_key, id);

-- Per-runner orchestrator tokens: only a SHA-256 of each token is stored.
CREATE TABLE runner_tokens (
    id          uuid PRIMARY KEY,
    runner      text NOT NULL,
    hash        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- Append-only audit trail.
CREATE TABLE audit_log (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    job_id  uuid,
    detail  json NOT NULL
);
CREATE INDEX audit_by_job ON audit_log (job_id);

-- Webhook deliveries already handled (X-GitHub-Delivery), for de-duplication
-- across every replica that shares the database.
CREATE TABLE webhook_deliveries (
    delivery_id  text PRIMARY KEY,
    event        text NOT NULL,
    received_at  timestamptz NOT NULL
);
