//! The one writer of the SQLite store: a task that owns the write connection
//! and commits every write queued at the same moment in one transaction (one
//! fsync), each in a savepoint of its own so that one write's compare-and-set
//! miss or conflict leaves the others standing. A caller hears its answer
//! only after COMMIT returned; a caller that goes away after handing over its
//! write does not stop it (the write and its audit rows land, or neither).

use chrono::{DateTime, Utc};
use proxy_runner_domain::Job;
use proxy_runner_domain::JobStatus;
use proxy_runner_domain::ports::{AuditEvent, Inserted, StoreError, TokenRecord};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{i64_id, job_from_row, job_json, ts, unavailable};

/// Writes waiting for the writer at most; further callers wait to hand theirs over.
pub(crate) const QUEUE: usize = 4096;
/// Writes committed in one transaction at most.
pub(crate) const MAX_BATCH: usize = 512;

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
pub(crate) async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcomes = commit(&pool, &batch).await;
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            // A caller that went away no longer listens; its write stands.
            let _ = request.reply.send(outcome);
        }
    }
}

/// Applies `batch` in one transaction; every write's own result, or the
/// failure of the whole transaction for each.
async fn commit(pool: &SqlitePool, batch: &[Request]) -> Vec<Result<Outcome, StoreError>> {
    match try_commit(pool, batch).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, writes = batch.len(), "job store commit failed");
            batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(why.clone())))
                .collect()
        }
    }
}

async fn try_commit(
    pool: &SqlitePool,
    batch: &[Request],
) -> Result<Vec<Result<Outcome, StoreError>>, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if let [only] = batch {
        // Alone: the transaction is the write's, no savepoint needed.
        return match apply(&mut tx, &only.write).await {
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
        match apply(&mut savepoint, &request.write).await {
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

async fn apply(conn: &mut SqliteConnection, write: &Write) -> Result<Outcome, StoreError> {
    match write {
        Write::InsertJob(job, audit) => {
            let inserted = insert_job(conn, job).await?;
            if inserted.is_new() {
                append(conn, audit).await?;
            }
            Ok(Outcome::Inserted(Box::new(inserted)))
        }
        Write::UpdateJob(job, expected, audit) => {
            let won = update_job(conn, job, *expected).await?;
            applied(conn, won, audit).await
        }
        Write::DeleteJob(id, revision, audit) => {
            let done = sqlx::query("DELETE FROM jobs WHERE id = ? AND revision = ?")
                .bind(id.to_string())
                .bind(i64::try_from(*revision).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            applied(conn, done.rows_affected() == 1, audit).await
        }
        Write::InsertToken(token, audit) => {
            sqlx::query(
                "INSERT INTO runner_tokens (id, runner, hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(token.id.to_string())
            .bind(&token.runner)
            .bind(&token.hash)
            .bind(ts(token.created_at))
            .bind(token.revoked_at.map(ts))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            applied(conn, true, audit).await
        }
        Write::RevokeToken(id, at, audit) => {
            let n = sqlx::query(
                "UPDATE runner_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(ts(*at))
            .bind(id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?
            .rows_affected();
            applied(conn, n == 1, audit).await
        }
        Write::Audit(event) => applied(conn, true, std::slice::from_ref(event)).await,
        Write::RecordDelivery(delivery_id, event, at) => {
            let n = sqlx::query(
                "INSERT INTO webhook_deliveries (delivery_id, event, received_at) VALUES (?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(delivery_id)
            .bind(event)
            .bind(ts(*at))
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?
            .rows_affected();
            Ok(Outcome::Applied(n == 1))
        }
        Write::ForgetDelivery(delivery_id) => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE delivery_id = ?")
                .bind(delivery_id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            Ok(Outcome::Applied(true))
        }
    }
}

/// The audit rows go in only with a write that took effect.
async fn applied(
    conn: &mut SqliteConnection,
    done: bool,
    audit: &[AuditEvent],
) -> Result<Outcome, StoreError> {
    if done {
        append(conn, audit).await?;
    }
    Ok(Outcome::Applied(done))
}

async fn append(conn: &mut SqliteConnection, audit: &[AuditEvent]) -> Result<(), StoreError> {
    for event in audit {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, job_id, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(ts(event.at))
        .bind(&event.actor)
        .bind(&event.action)
        .bind(event.job_id.map(|u| u.to_string()))
        .bind(event.detail.to_string())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_job(conn: &mut SqliteConnection, job: &Job) -> Result<Inserted, StoreError> {
    let key = job.delegation_key().map(|k| k.as_string());
    let github_job_id = job.github_job_id.map(i64_id).transpose()?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, status, repository, runner_name, job_key, github_job_id,
                           delegation_key, created_at, updated_at, data)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING",
    )
    .bind(job.id.to_string())
    .bind(job.status.as_str())
    .bind(&job.repository)
    .bind(&job.runner_name)
    .bind(&job.job_key)
    .bind(github_job_id)
    .bind(&key)
    .bind(ts(job.created_at))
    .bind(ts(job.updated_at))
    .bind(job_json(job)?)
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if inserted == 1 {
        return Ok(Inserted::New(job.clone()));
    }
    let existing = sqlx::query(
        "SELECT data, revision FROM jobs
         WHERE (?1 IS NOT NULL AND delegation_key = ?1)
            OR (?2 IS NOT NULL AND github_job_id = ?2)
            OR id = ?3
         LIMIT 1",
    )
    .bind(&key)
    .bind(github_job_id)
    .bind(job.id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(unavailable)?;
    match existing {
        Some(row) => Ok(Inserted::Existing(job_from_row(&row)?)),
        None => Err(StoreError::Invalid(
            "job was neither inserted nor found (conflicting unique keys)".into(),
        )),
    }
}

/// Compare and set on status and revision; true when this write won.
async fn update_job(
    conn: &mut SqliteConnection,
    job: &Job,
    expected: JobStatus,
) -> Result<bool, StoreError> {
    let github_job_id = job.github_job_id.map(i64_id).transpose()?;
    let mut next = job.clone();
    next.revision = job.revision + 1;
    let done = sqlx::query(
        // A finished job gives up its delegation key: the next leg of a
        // matrix (same GITHUB_JOB, run, attempt and runner) is a new job.
        "UPDATE jobs SET status = ?1, runner_name = ?2, github_job_id = ?3, updated_at = ?4, data = ?5,
             revision = revision + 1,
             delegation_key = CASE WHEN ?1 IN ('completed', 'failed', 'cancelled') THEN NULL ELSE delegation_key END
         WHERE id = ?6 AND status = ?7 AND revision = ?8",
    )
    .bind(next.status.as_str())
    .bind(&next.runner_name)
    .bind(github_job_id)
    .bind(ts(next.updated_at))
    .bind(job_json(&next)?)
    .bind(next.id.to_string())
    .bind(expected.as_str())
    .bind(i64::try_from(job.revision).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Invalid(format!(
            "GitHub job {} is already linked to another job",
            job.github_job_id.unwrap_or_default()
        )),
        _ => unavailable(e),
    })?
    .rows_affected();
    Ok(done == 1)
}
