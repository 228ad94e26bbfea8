//! The durable job store: SQLite in WAL mode, behind the domain's
//! [`JobStore`] port. Migrations are embedded and versioned. Reads use a pool
//! of connections; every write goes through one writer task that owns the
//! write connection and commits the writes that arrive together, with their
//! audit rows, in one transaction (`writer`). A write the API acknowledged is
//! committed (fsync'd) before the answer goes out, so it survives `kill -9` of
//! the orchestrator.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use proxy_runner_domain::ports::{
    AuditEvent, Inserted, JobFilter, JobStore, StoreError, TokenFilter, TokenRecord,
};
use proxy_runner_domain::{Job, JobStatus};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::mpsc;
use uuid::Uuid;

mod writer;

use writer::{Outcome, Request, Write};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Largest page `list_jobs` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 500;

/// Connections that serve reads of a database file.
const READERS: u32 = 8;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// The writer's connection (the same pool as reads for `:memory:`).
    write_pool: SqlitePool,
    /// Writes queued for the writer task.
    writes: mpsc::Sender<Request>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("the job store's writer answered another kind of write".into())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Invalid(format!("bad timestamp {s:?} in database: {e}")))
}

async fn pool(options: SqliteConnectOptions, max: u32) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .map_err(|e| unavailable(format!("cannot open database: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    /// Starts the writer task on the current Tokio runtime.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the API answers.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Switching a new file to WAL needs the database to itself: the
        // writer's connection does it, and the migrations, before the
        // readers open (otherwise a racing connection can get SQLITE_BUSY).
        let write_pool = pool(options.clone(), 1).await?;
        MIGRATOR
            .run(&write_pool)
            .await
            .map_err(|e| unavailable(format!("migration failed: {e}")))?;
        let readers = pool(options, READERS).await?;
        Ok(Self::start(readers, write_pool))
    }

    /// A private in-memory database (tests, `--db :memory:`).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(unavailable)?;
        // One connection for reads and the writer: every connection to
        // :memory: is its own database.
        let pool = pool(options, 1).await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| unavailable(format!("migration failed: {e}")))?;
        Ok(Self::start(pool.clone(), pool))
    }

    fn start(pool: SqlitePool, write_pool: SqlitePool) -> Self {
        let (writes, queue) = mpsc::channel(writer::QUEUE);
        tokio::spawn(writer::run(write_pool.clone(), queue));
        SqliteStore {
            pool,
            write_pool,
            writes,
        }
    }

    /// The schema version (the newest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS v FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        row.try_get("v").map_err(unavailable)
    }

    /// Closes the connections; writes after this fail as unavailable.
    pub async fn close(&self) {
        self.write_pool.close().await;
        self.pool.close().await;
    }

    async fn write(&self, write: Write) -> Result<Outcome, StoreError> {
        writer::submit(&self.writes, write).await
    }

    /// A write whose answer is whether it took effect.
    async fn applied(&self, write: Write) -> Result<bool, StoreError> {
        match self.write(write).await? {
            Outcome::Applied(done) => Ok(done),
            Outcome::Inserted(_) => Err(unexpected()),
        }
    }
}

fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let data: String = row.try_get("data").map_err(unavailable)?;
    let mut job: Job = serde_json::from_str(&data)
        .map_err(|e| StoreError::Invalid(format!("bad job record: {e}")))?;
    let revision: i64 = row.try_get("revision").map_err(unavailable)?;
    job.revision = u64::try_from(revision).unwrap_or_default();
    Ok(job)
}

fn job_json(job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn i64_id(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("id {v} out of range")))
}

fn token_from_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    let id: String = row.try_get("id").map_err(unavailable)?;
    let revoked: Option<String> = row.try_get("revoked_at").map_err(unavailable)?;
    Ok(TokenRecord {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Invalid(e.to_string()))?,
        runner: row.try_get("runner").map_err(unavailable)?,
        hash: row.try_get("hash").map_err(unavailable)?,
        created_at: parse_ts(
            &row.try_get::<String, _>("created_at")
                .map_err(unavailable)?,
        )?,
        revoked_at: revoked.as_deref().map(parse_ts).transpose()?,
    })
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, job: &Job, audit: &[AuditEvent]) -> Result<Inserted, StoreError> {
        match self
            .write(Write::InsertJob(Box::new(job.clone()), audit.to_vec()))
            .await?
        {
            Outcome::Inserted(inserted) => Ok(*inserted),
            Outcome::Applied(_) => Err(unexpected()),
        }
    }

    async fn update_job(
        &self,
        job: &mut Job,
        expected: JobStatus,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        let won = self
            .applied(Write::UpdateJob(
                Box::new(job.clone()),
                expected,
                audit.to_vec(),
            ))
            .await?;
        if won {
            job.revision += 1;
        }
        Ok(won)
    }

    async fn delete_job(
        &self,
        id: Uuid,
        revision: u64,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        self.applied(Write::DeleteJob(id, revision, audit.to_vec()))
            .await
    }

    async fn insert_token(
        &self,
        token: &TokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        self.applied(Write::InsertToken(token.clone(), audit.to_vec()))
            .await
            .map(drop)
    }

    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        self.applied(Write::RevokeToken(id, at, audit.to_vec()))
            .await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.applied(Write::Audit(event.clone())).await.map(drop)
    }

    async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.applied(Write::RecordDelivery(
            delivery_id.to_string(),
            event.to_string(),
            at,
        ))
        .await
    }

    async fn forget_delivery(&self, delivery_id: &str) -> Result<(), StoreError> {
        self.applied(Write::ForgetDelivery(delivery_id.to_string()))
            .await
            .map(drop)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        sqlx::query("SELECT data, revision FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn find_by_github_job_id(&self, github_job_id: u64) -> Result<Option<Job>, StoreError> {
        sqlx::query("SELECT data, revision FROM jobs WHERE github_job_id = ?")
            .bind(i64_id(github_job_id)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn find_active_for_runner(
        &self,
        runner_name: &str,
        job_key: &str,
    ) -> Result<Option<Job>, StoreError> {
        sqlx::query(
            "SELECT data, revision FROM jobs
             WHERE runner_name = ? AND job_key = ?
               AND status NOT IN ('completed', 'failed', 'cancelled')
             ORDER BY id DESC LIMIT 1",
        )
        .bind(runner_name)
        .bind(job_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn find_active_hook_job(&self, runner_name: &str) -> Result<Option<Job>, StoreError> {
        sqlx::query(
            "SELECT data, revision FROM jobs
             WHERE runner_name = ? AND delegation_key IS NOT NULL
               AND status NOT IN ('completed', 'failed', 'cancelled')
             ORDER BY id DESC LIMIT 1",
        )
        .bind(runner_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = filter.limit.clamp(1, MAX_PAGE) as i64;
        // Only the conditions asked for, so SQLite can use the status or
        // repository index (an `?1 IS NULL OR ...` form scans the table).
        let mut q: sqlx::QueryBuilder<sqlx::Sqlite> =
            sqlx::QueryBuilder::new("SELECT data, revision FROM jobs WHERE 1");
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(repository) = &filter.repository {
            q.push(" AND repository = ").push_bind(repository.as_str());
        }
        if let Some(after) = filter.after {
            q.push(" AND id > ").push_bind(after.to_string());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM runner_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        let limit = filter.limit.clamp(1, MAX_PAGE) as i64;
        let rows = sqlx::query(
            "SELECT * FROM runner_tokens
             WHERE (?1 IS NULL OR runner = ?1)
               AND (?2 IS NULL OR id > ?2)
             ORDER BY id LIMIT ?3",
        )
        .bind(filter.runner.as_deref())
        .bind(filter.after.map(|u| u.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, job_id, detail FROM audit_log ORDER BY seq DESC LIMIT ?",
        )
        .bind(limit.clamp(1, 10_000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let job_id: Option<String> = row.try_get("job_id").map_err(unavailable)?;
                let detail: String = row.try_get("detail").map_err(unavailable)?;
                Ok(AuditEvent {
                    at: parse_ts(&row.try_get::<String, _>("at").map_err(unavailable)?)?,
                    actor: row.try_get("actor").map_err(unavailable)?,
                    action: row.try_get("action").map_err(unavailable)?,
                    job_id: job_id
                        .as_deref()
                        .map(Uuid::parse_str)
                        .transpose()
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                })
            })
            .collect()
    }

    async fn repositories_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT repository FROM jobs WHERE updated_at >= ? ORDER BY repository LIMIT 10000",
        )
        .bind(ts(since))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    async fn find_tracking_records(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT data, revision FROM jobs
             WHERE runner_name = ? AND repository = ? AND status = 'running'
               AND github_job_id IS NOT NULL
               AND json_extract(data, '$.source') != 'hook'
               AND json_extract(data, '$.runId') = ? AND json_extract(data, '$.runAttempt') = ?
             ORDER BY id DESC LIMIT 8",
        )
        .bind(runner_name)
        .bind(repository)
        .bind(i64_id(run_id)?)
        .bind(i64::from(run_attempt))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn find_unlinked_hook_job(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Option<Job>, StoreError> {
        sqlx::query(
            "SELECT data, revision FROM jobs
             WHERE runner_name = ? AND repository = ? AND github_job_id IS NULL
               AND json_extract(data, '$.source') = 'hook'
               AND json_extract(data, '$.runId') = ? AND json_extract(data, '$.runAttempt') = ?
             ORDER BY id DESC LIMIT 1",
        )
        .bind(runner_name)
        .bind(repository)
        .bind(i64_id(run_id)?)
        .bind(i64::from(run_attempt))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn find_job_ran_in_container(
        &self,
        container_id: &str,
    ) -> Result<Option<Job>, StoreError> {
        sqlx::query(
            "SELECT data, revision FROM jobs WHERE json_extract(data, '$.ranInContainerId') = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(container_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(job_from_row)
        .transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
