-- Jobs: the full record is kept as JSON in `data`; the columns beside it are
-- the ones queries filter or join on, kept in step by the store on every write.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,   -- UUIDv7, so text order is creation order
    status          TEXT NOT NULL,
    repository      TEXT NOT NULL COLLATE NOCASE,
    runner_name     TEXT,
    job_key         TEXT NOT NULL,
    github_job_id   INTEGER UNIQUE,
    delegation_key  TEXT UNIQUE,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    data            TEXT NOT NULL
) STRICT;
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_repository ON jobs (repository, id);
CREATE INDEX jobs_by_runner ON jobs (runner_name, job_key, id);

-- Per-runner orchestrator tokens: only a SHA-256 of each token is stored.
CREATE TABLE runner_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    runner      TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;

-- Append-only audit trail.
CREATE TABLE audit_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    job_id  TEXT,
    detail  TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_job ON audit_log (job_id);

-- Webhook deliveries already handled (X-GitHub-Delivery), for de-duplication.
CREATE TABLE webhook_deliveries (
    delivery_id  TEXT PRIMARY KEY NOT NULL,
    event        TEXT NOT NULL,
    received_at  TEXT NOT NULL
) STRICT;
