//! The one writer of a PostgreSQL store: a task that commits every write
//! queued at the same moment in one transaction (one WAL flush at COMMIT),
//! each in a savepoint of its own so that one write's compare-and-set miss
//! or conflict leaves the others standing. A caller hears its answer only
//! after COMMIT returned; a caller that goes away after handing over its
//! write does not stop it (the write and its audit rows land, or neither).
//! Several replicas each have their writer; the database orders them.

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{AuditEvent, Inserted, StoreError, TokenRecord};
use proxy_runner_domain::{Job, JobStatus};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Connection, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{classify, i64_id, job_from_row, job_json};

/// Writes waiting for the writer at most; further callers wait to hand theirs over.
pub(crate) const QUEUE: usize = 4096;
/// Writes committed in one transaction at most.
pub(crate) const MAX_BATCH: usize = 512;

/// How often `insert_job` tries again when a conflicting job vanished
/// between the insert and the read (it finished and gave up its key).
const INSERT_ATTEMPTS: usize = 3;

/// A query that reads jobs: the JSON record and the revision beside it,
/// then `$rest` (a literal, so the SQL stays static).
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!("SELECT data::text AS data, revision FROM jobs ", $rest)
    };
}

/// One write with the audit rows that record it.
pub(crate) enum Write {
    InsertJob(Box<Job>, Vec<AuditEvent>),
    UpdateJob(Box<Job>, JobStatus, Vec<AuditEvent>),
    DeleteJob(Uuid, u64, Vec<AuditEvent>),
    InsertToken(TokenRecord, Vec<AuditEvent>),
    RevokeToken(Uuid, DateTime<Utc>, Vec<AuditEvent>),
    Audit(AuditEvent),
    RecordDelivery(String, String, DateTime<Utc>),
    ForgetDelivery(String),
}

pub(crate) enum Outcome {
    Inserted(Box<Inserted>),
    /// Whether the write took effect (a won compare-and-set, a new row).
    Applied(bool),
}

pub(crate) struct Request {
    pub(crate) write: Write,
    pub(crate) reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Hands `write` to the writer and waits for its commit. Once the write is
/// queued it is carried out whether or not this future is still awaited.
pub(crate) async fn submit(
    queue: &mpsc::Sender<Request>,
    write: Write,
) -> Result<Outcome, StoreError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(Request { write, reply })
        .await
        .map_err(|_| StoreError::Unavailable("the job store is closed".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Unavailable("the job store's writer stopped".into()))?
}

/// The writer task: runs until every sender is gone.
pub(crate) async fn run(
    pool: PgPool,
    target: std::sync::Arc<str>,
    mut queue: mpsc::Receiver<Request>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcomes = match try_commit(&pool, &target, &batch).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // The transaction as a whole failed (connection lost, server
                // gone): no write of it is acknowledged.
                let why = match classify(&target, e) {
                    StoreError::Unavailable(m) | StoreError::Invalid(m) => m,
                };
                tracing::warn!(error = %why, writes = batch.len(), "job store commit failed");
                batch
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(why.clone())))
                    .collect()
            }
        };
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            // A caller that went away no longer listens; its write stands.
            let _ = request.reply.send(outcome);
        }
    }
}

async fn try_commit(
    pool: &PgPool,
    target: &str,
    batch: &[Request],
) -> Result<Vec<Result<Outcome, StoreError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let [only] = batch {
        // Alone: the transaction is the write's, no savepoint needed.
        return match apply(&mut tx, target, &only.write).await {
            Ok(outcome) => {
                tx.commit().await?;
                Ok(vec![Ok(outcome)])
            }
            Err(e) => {
                tx.rollback().await?;
                Ok(vec![Err(e)])
            }
        };
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        let mut savepoint = Connection::begin(&mut *tx).await?;
        match apply(&mut savepoint, target, &request.write).await {
            Ok(outcome) => {
                savepoint.commit().await?;
                outcomes.push(Ok(outcome));
            }
            Err(e) => {
                savepoint.rollback().await?;
                outcomes.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    target: &str,
    write: &Write,
) -> Result<Outcome, StoreError> {
    let conn: &mut PgConnection = tx;
    let fail = |e| classify(target, e);
    match write {
        Write::InsertJob(job, audit) => {
            let inserted = insert_job(conn, target, job).await?;
            if inserted.is_new() {
                append(conn, target, audit).await?;
            }
            Ok(Outcome::Inserted(Box::new(inserted)))
        }
        Write::UpdateJob(job, expected, audit) => {
            let won = update_job(conn, target, job, *expected).await?;
            applied(conn, target, won, audit).await
        }
        Write::DeleteJob(id, revision, audit) => {
            let done = sqlx::query("DELETE FROM jobs WHERE id = $1 AND revision = $2")
                .bind(id)
                .bind(i64::try_from(*revision).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await
                .map_err(fail)?;
            applied(conn, target, done.rows_affected() == 1, audit).await
        }
        Write::InsertToken(token, audit) => {
            sqlx::query(
                "INSERT INTO runner_tokens (id, runner, hash, created_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token.id)
            .bind(&token.runner)
            .bind(&token.hash)
            .bind(token.created_at)
            .bind(token.revoked_at)
            .execute(&mut *conn)
            .await
            .map_err(fail)?;
            applied(conn, target, true, audit).await
        }
        Write::RevokeToken(id, at, audit) => {
            let n = sqlx::query(
                "UPDATE runner_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(fail)?
            .rows_affected();
            applied(conn, target, n == 1, audit).await
        }
        Write::Audit(event) => applied(conn, target, true, std::slice::from_ref(event)).await,
        Write::RecordDelivery(delivery_id, event, at) => {
            let n = sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, event, received_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(delivery_id)
            .bind(event)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(fail)?
            .rows_affected();
            Ok(Outcome::Applied(n == 1))
        }
        Write::ForgetDelivery(delivery_id) => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE delivery_id = $1")
                .bind(delivery_id)
                .execute(&mut *conn)
                .await
                .map_err(fail)?;
            Ok(Outcome::Applied(true))
        }
    }
}

/// The audit rows go in only with a write that took effect.
async fn applied(
    conn: &mut PgConnection,
    target: &str,
    done: bool,
    audit: &[AuditEvent],
) -> Result<Outcome, StoreError> {
    if done {
        append(conn, target, audit).await?;
    }
    Ok(Outcome::Applied(done))
}

async fn append(
    conn: &mut PgConnection,
    target: &str,
    audit: &[AuditEvent],
) -> Result<(), StoreError> {
    for event in audit {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, job_id, detail)
             VALUES ($1, $2, $3, $4, $5::json)",
        )
        .bind(event.at)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(event.job_id)
        .bind(event.detail.to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(target, e))?;
    }
    Ok(())
}

async fn insert_job(
    conn: &mut PgConnection,
    target: &str,
    job: &Job,
) -> Result<Inserted, StoreError> {
    let fail = |e| classify(target, e);
    let key = job.delegation_key().map(|k| k.as_string());
    let github_job_id = job.github_job_id.map(i64_id).transpose()?;
    let run_id = i64_id(job.run_id)?;
    let data = job_json(job)?;
    for _ in 0..INSERT_ATTEMPTS {
        // No conflict target: any unique index (id, delegation key,
        // GitHub job id) turns the insert into nothing. A racing insert
        // of the same key is waited for, then this one does nothing.
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, status, repository, runner_name, job_key, github_job_id,
                               delegation_key, created_at, updated_at, data,
                               source, run_id, run_attempt, ran_in_container_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::json, $11, $12, $13, $14)
             ON CONFLICT DO NOTHING",
        )
        .bind(job.id)
        .bind(job.status.as_str())
        .bind(&job.repository)
        .bind(&job.runner_name)
        .bind(&job.job_key)
        .bind(github_job_id)
        .bind(&key)
        .bind(job.created_at)
        .bind(job.updated_at)
        .bind(&data)
        .bind(job.source.as_str())
        .bind(run_id)
        .bind(i64::from(job.run_attempt))
        .bind(&job.ran_in_container_id)
        .execute(&mut *conn)
        .await
        .map_err(fail)?
        .rows_affected();
        if inserted == 1 {
            return Ok(Inserted::New(job.clone()));
        }
        // Read committed: this statement sees the row that won.
        let existing = sqlx::query(select_jobs!(
            "WHERE ($1::text IS NOT NULL AND delegation_key = $1)
                OR ($2::bigint IS NOT NULL AND github_job_id = $2)
                OR id = $3
             LIMIT 1"
        ))
        .bind(&key)
        .bind(github_job_id)
        .bind(job.id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(fail)?;
        if let Some(row) = existing {
            return Ok(Inserted::Existing(job_from_row(target, &row)?));
        }
        // The job that held the key finished in between and gave it up:
        // the insert is tried again and now makes a new job.
    }
    Err(StoreError::Invalid(
        "job was neither inserted nor found (conflicting unique keys)".into(),
    ))
}

/// Compare and set on status and revision in one `UPDATE`: when another
/// writer updates the row first, PostgreSQL waits for it and re-checks the
/// WHERE clause on the new version, where the stale revision no longer
/// matches. True when this write won.
async fn update_job(
    conn: &mut PgConnection,
    target: &str,
    job: &Job,
    expected: JobStatus,
) -> Result<bool, StoreError> {
    let github_job_id = job.github_job_id.map(i64_id).transpose()?;
    let mut next = job.clone();
    next.revision = job.revision + 1;
    let done = sqlx::query(
        // A finished job gives up its delegation key: the next leg of a
        // matrix (same GITHUB_JOB, run, attempt and runner) is a new job.
        "UPDATE jobs SET status = $1, runner_name = $2, github_job_id = $3, updated_at = $4,
             data = $5::json, revision = revision + 1,
             delegation_key = CASE WHEN $1 IN ('completed', 'failed', 'cancelled')
                                   THEN NULL ELSE delegation_key END,
             source = $9, run_id = $10, run_attempt = $11, ran_in_container_id = $12
         WHERE id = $6 AND status = $7 AND revision = $8",
    )
    .bind(next.status.as_str())
    .bind(&next.runner_name)
    .bind(github_job_id)
    .bind(next.updated_at)
    .bind(job_json(&next)?)
    .bind(next.id)
    .bind(expected.as_str())
    .bind(i64::try_from(job.revision).unwrap_or(i64::MAX))
    .bind(next.source.as_str())
    .bind(i64_id(next.run_id)?)
    .bind(i64::from(next.run_attempt))
    .bind(&next.ran_in_container_id)
    .execute(&mut *conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Invalid(format!(
            "GitHub job {} is already linked to another job",
            job.github_job_id.unwrap_or_default()
        )),
        _ => classify(target, e),
    })?
    .rows_affected();
    Ok(done == 1)
}
