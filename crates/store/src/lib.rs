//! The durable job store: SQLite in WAL mode, behind the domain's
//! [`JobStore`] port. Migrations are embedded and versioned; a job the API
//! acknowledged is committed (fsync'd) before the answer goes out, so it
//! survives `kill -9` of the orchestrator.

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
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Largest page `list_jobs` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 500;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Invalid(format!("bad timestamp {s:?} in database: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
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
        // Switching a new file to WAL needs the database to itself: do it,
        // and the migrations, on one connection before the pool opens more
        // (otherwise a racing connection can get SQLITE_BUSY at once).
        let single = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(format!("cannot open database: {e}")))?;
        MIGRATOR
            .run(&single)
            .await
            .map_err(|e| unavailable(format!("migration failed: {e}")))?;
        single.close().await;
        Self::connect(options, 8).await
    }

    /// A private in-memory database (tests, `--db :memory:`).
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(unavailable)?;
        // One connection: every connection to :memory: is its own database.
        Self::connect(options, 1).await
    }

    async fn connect(options: SqliteConnectOptions, max: u32) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| unavailable(format!("cannot open database: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| unavailable(format!("migration failed: {e}")))?;
        Ok(SqliteStore { pool })
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

    pub async fn close(&self) {
        self.pool.close().await;
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
    async fn insert_job(&self, job: &Job) -> Result<Inserted, StoreError> {
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
        .execute(&self.pool)
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
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match existing {
            Some(row) => Ok(Inserted::Existing(job_from_row(&row)?)),
            None => Err(StoreError::Invalid(
                "job was neither inserted nor found (conflicting unique keys)".into(),
            )),
        }
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
        let rows = sqlx::query(
            "SELECT data, revision FROM jobs
             WHERE (?1 IS NULL OR status = ?1)
               AND (?2 IS NULL OR repository = ?2)
               AND (?3 IS NULL OR id > ?3)
             ORDER BY id LIMIT ?4",
        )
        .bind(filter.status.map(JobStatus::as_str))
        .bind(filter.repository.as_deref())
        .bind(filter.after.map(|u| u.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(job_from_row).collect()
    }

    async fn update_job(&self, job: &mut Job, expected: JobStatus) -> Result<bool, StoreError> {
        let github_job_id = job.github_job_id.map(i64_id).transpose()?;
        let read_at = job.revision;
        let mut next = job.clone();
        next.revision = read_at + 1;
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
        .bind(i64::try_from(read_at).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Invalid(format!(
                "GitHub job {} is already linked to another job",
                job.github_job_id.unwrap_or_default()
            )),
            _ => unavailable(e),
        })?
        .rows_affected();
        if done == 1 {
            job.revision = next.revision;
        }
        Ok(done == 1)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runner_tokens (id, runner, hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(token.id.to_string())
        .bind(&token.runner)
        .bind(&token.hash)
        .bind(ts(token.created_at))
        .bind(token.revoked_at.map(ts))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
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

    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE runner_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(ts(at))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(n == 1)
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

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, job_id, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(ts(event.at))
        .bind(&event.actor)
        .bind(&event.action)
        .bind(event.job_id.map(|u| u.to_string()))
        .bind(event.detail.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
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

    async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, event, received_at) VALUES (?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(delivery_id)
        .bind(event)
        .bind(ts(at))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn delete_job(&self, id: Uuid, revision: u64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = ? AND revision = ?")
            .bind(id.to_string())
            .bind(i64::try_from(revision).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_delivery(&self, delivery_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_deliveries WHERE delivery_id = ?")
            .bind(delivery_id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
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
