//! The durable job store on PostgreSQL, behind the domain's [`JobStore`]
//! port, with exactly the meaning of the SQLite store: several orchestrator
//! replicas can share one database.
//!
//! - Idempotency keys are unique indexes (the delegation key of hook jobs,
//!   GitHub's job id); an insert that meets one returns the stored job.
//! - `update_job` is compare-and-set on status and revision in one `UPDATE`:
//!   PostgreSQL re-checks the condition on the newest row version after a
//!   concurrent writer commits, so exactly one of racing writers wins.
//! - Every write goes through one writer task, which commits the writes
//!   queued together, each with its audit rows, in one transaction (a
//!   savepoint each); a lost connection rolls it back, and the callers get
//!   [`StoreError::Unavailable`] (so the API answers 503).
//! - The pool reconnects by itself: after an outage the same store works
//!   again without being rebuilt. A write whose commit was sent but whose
//!   answer was lost is reported `Unavailable` although it may have landed;
//!   a retried insert then finds it by its idempotency key.
//! - A job is kept whole as JSON text (`data`); every field a query filters
//!   on is also a column, kept in step on each write, so no query reads
//!   inside the JSON (PostgreSQL cannot, once a document holds a `\u0000`).
//!
//! No error message or log line carries the password of the database URL.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{
    AuditEvent, Inserted, JobFilter, JobStore, StoreError, TokenFilter, TokenRecord,
};
use proxy_runner_domain::{Job, JobStatus};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

mod writer;

use writer::{Outcome, Request, Write};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Largest page `list_jobs` returns, whatever the caller asks for (the same
/// cap as the SQLite store's).
pub const MAX_PAGE: usize = 500;

/// Largest number of audit lines `list_audit` returns.
const MAX_AUDIT: usize = 10_000;

/// A query that reads jobs: the JSON record and the revision beside it,
/// then `$rest` (a literal, so the SQL stays static).
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!("SELECT data::text AS data, revision FROM jobs ", $rest)
    };
}

/// Pool settings; the defaults suit the orchestrator.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Connections to the server at most.
    pub max_connections: u32,
    /// How long a call waits for a connection (including reconnecting after
    /// an outage) before it answers [`StoreError::Unavailable`]; also the
    /// limit of the first connection at start.
    pub acquire_timeout: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL adapter of [`JobStore`].
#[derive(Clone)]
pub struct PostgresStore {
    /// Reads, and the writer's connection per transaction.
    pool: PgPool,
    /// Writes queued for the writer task.
    writes: mpsc::Sender<Request>,
    /// `user@host:port/database`: names the server in errors, never the password.
    target: Arc<str>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's own Debug would print the connect options.
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`)
    /// and migrates it. An unreachable server is [`StoreError::Unavailable`]
    /// naming the host; a malformed URL is [`StoreError::Invalid`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresSettings::default()).await
    }

    pub async fn connect_with(url: &str, settings: PostgresSettings) -> Result<Self, StoreError> {
        let secret = password_of(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Invalid(redact(
                    format!("not a usable PostgreSQL URL: {e}"),
                    secret.as_deref(),
                ))
            })?
            .application_name("proxy-runner");
        let target: Arc<str> = describe(&options).into();
        let unreachable = |why: String| {
            StoreError::Unavailable(redact(
                format!("cannot use PostgreSQL at {target}: {why}"),
                secret.as_deref(),
            ))
        };

        // One connection first: its error says why the server cannot be
        // used (refused, unknown host, authentication), which the pool's
        // own retrying would turn into a bare timeout.
        let conn = tokio::time::timeout(
            settings.acquire_timeout,
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", settings.acquire_timeout)))?
        .map_err(|e| unreachable(e.to_string()))?;
        // Closing politely is best effort: the server was reached.
        let _ = conn.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            // A connection is checked before use, so those the server
            // dropped during an outage are replaced, not handed out.
            .test_before_acquire(true)
            .connect_lazy_with(options);
        // Replicas starting together migrate one after the other: the
        // migrator holds an advisory lock while it runs.
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| unreachable(format!("migration failed: {e}")))?;
        tracing::debug!(server = %target, "PostgreSQL job store ready");
        let (writes, queue) = mpsc::channel(writer::QUEUE);
        tokio::spawn(writer::run(pool.clone(), target.clone(), queue));
        Ok(PostgresStore {
            pool,
            writes,
            target,
        })
    }

    /// The server and database this store uses, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema version (the newest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS v FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        row.try_get("v").map_err(|e| self.fail(e))
    }

    pub async fn close(&self) {
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

    fn fail(&self, e: sqlx::Error) -> StoreError {
        classify(&self.target, e)
    }

    async fn fetch_job(
        &self,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Option<Job>, StoreError> {
        query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.fail(e))?
            .as_ref()
            .map(|row| job_from_row(&self.target, row))
            .transpose()
    }
}

/// `user@host:port/database` (or the socket directory for a local socket).
fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(dir) => format!("{} (socket)", dir.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    format!("{}@{place}/{database}", options.get_username())
}

/// The password of a `scheme://user:password@host/...` URL, raw and
/// percent-decoded, to be kept out of messages.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

/// `message` with every appearance of `secret` (raw or percent-decoded)
/// replaced.
fn redact(message: String, secret: Option<&str>) -> String {
    let Some(secret) = secret else {
        return message;
    };
    let decoded = percent_decode(secret);
    let mut out = message.replace(secret, "***");
    if !decoded.is_empty() {
        out = out.replace(&decoded, "***");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sorts a driver error into the port's two kinds: the server refused the
/// data (constraint, type or syntax: SQLSTATE classes 22, 23, 42) or could
/// not be used (everything else: connection, shutdown, resources, time-out).
fn classify(target: &str, e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            if matches!(code.get(..2), Some("22" | "23" | "42")) {
                StoreError::Invalid(format!("{d} (SQLSTATE {code})"))
            } else {
                StoreError::Unavailable(format!("PostgreSQL at {target}: {d} (SQLSTATE {code})"))
            }
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => StoreError::Invalid(e.to_string()),
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "PostgreSQL at {target} gave no connection in time (unreachable or overloaded)"
        )),
        _ => StoreError::Unavailable(format!("PostgreSQL at {target}: {e}")),
    }
}

fn job_from_row(target: &str, row: &PgRow) -> Result<Job, StoreError> {
    let data: String = row.try_get("data").map_err(|e| classify(target, e))?;
    let mut job: Job = serde_json::from_str(&data)
        .map_err(|e| StoreError::Invalid(format!("bad job record: {e}")))?;
    let revision: i64 = row.try_get("revision").map_err(|e| classify(target, e))?;
    job.revision = u64::try_from(revision).unwrap_or_default();
    Ok(job)
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("the job store's writer answered another kind of write".into())
}

fn job_json(job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn i64_id(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("id {v} out of range")))
}

fn token_from_row(target: &str, row: &PgRow) -> Result<TokenRecord, StoreError> {
    let get = |e| classify(target, e);
    Ok(TokenRecord {
        id: row.try_get("id").map_err(get)?,
        runner: row.try_get("runner").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        revoked_at: row.try_get("revoked_at").map_err(get)?,
    })
}

fn audit_from_row(target: &str, row: &PgRow) -> Result<AuditEvent, StoreError> {
    let get = |e| classify(target, e);
    let detail: String = row.try_get("detail").map_err(get)?;
    Ok(AuditEvent {
        at: row.try_get("at").map_err(get)?,
        actor: row.try_get("actor").map_err(get)?,
        action: row.try_get("action").map_err(get)?,
        job_id: row.try_get("job_id").map_err(get)?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| StoreError::Invalid(format!("bad audit detail: {e}")))?,
    })
}

#[async_trait]
impl JobStore for PostgresStore {
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
        let sql = select_jobs!("WHERE id = $1");
        self.fetch_job(sqlx::query(sql).bind(id)).await
    }

    async fn find_by_github_job_id(&self, github_job_id: u64) -> Result<Option<Job>, StoreError> {
        let sql = select_jobs!("WHERE github_job_id = $1");
        self.fetch_job(sqlx::query(sql).bind(i64_id(github_job_id)?))
            .await
    }

    async fn find_active_for_runner(
        &self,
        runner_name: &str,
        job_key: &str,
    ) -> Result<Option<Job>, StoreError> {
        let sql = select_jobs!(
            "WHERE runner_name = $1 AND job_key = $2
               AND status NOT IN ('completed', 'failed', 'cancelled')
             ORDER BY id DESC LIMIT 1"
        );
        self.fetch_job(sqlx::query(sql).bind(runner_name).bind(job_key))
            .await
    }

    async fn find_active_hook_job(&self, runner_name: &str) -> Result<Option<Job>, StoreError> {
        let sql = select_jobs!(
            "WHERE runner_name = $1 AND delegation_key IS NOT NULL
               AND status NOT IN ('completed', 'failed', 'cancelled')
             ORDER BY id DESC LIMIT 1"
        );
        self.fetch_job(sqlx::query(sql).bind(runner_name)).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let limit = i64::try_from(filter.limit.clamp(1, MAX_PAGE)).unwrap_or(1);
        // Only the conditions asked for, so each query can use its index.
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(select_jobs!("WHERE TRUE"));
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(repository) = &filter.repository {
            q.push(" AND lower(repository) = lower(")
                .push_bind(repository.as_str())
                .push(")");
        }
        if let Some(after) = filter.after {
            q.push(" AND id > ").push_bind(after);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| job_from_row(&self.target, row))
            .collect()
    }

    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query(
            "SELECT id, runner, hash, created_at, revoked_at FROM runner_tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(e))?
        .as_ref()
        .map(|row| token_from_row(&self.target, row))
        .transpose()
    }

    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        let limit = i64::try_from(filter.limit.clamp(1, MAX_PAGE)).unwrap_or(1);
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id, runner, hash, created_at, revoked_at FROM runner_tokens WHERE TRUE",
        );
        if let Some(runner) = &filter.runner {
            q.push(" AND runner = ").push_bind(runner.as_str());
        }
        if let Some(after) = filter.after {
            q.push(" AND id > ").push_bind(after);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| token_from_row(&self.target, row))
            .collect()
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, job_id, detail::text AS detail
             FROM audit_log ORDER BY seq DESC LIMIT $1",
        )
        .bind(i64::try_from(limit.clamp(1, MAX_AUDIT)).unwrap_or(1))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| audit_from_row(&self.target, row))
            .collect()
    }

    async fn repositories_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT lower(repository) FROM jobs WHERE updated_at >= $1
             ORDER BY 1 LIMIT 10000",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    async fn find_tracking_records(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let sql = select_jobs!(
            "WHERE runner_name = $1 AND lower(repository) = lower($2) AND status = 'running'
               AND github_job_id IS NOT NULL AND source <> 'hook'
               AND run_id = $3 AND run_attempt = $4
             ORDER BY id DESC LIMIT 8"
        );
        let rows = sqlx::query(sql)
            .bind(runner_name)
            .bind(repository)
            .bind(i64_id(run_id)?)
            .bind(i64::from(run_attempt))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| job_from_row(&self.target, row))
            .collect()
    }

    async fn find_unlinked_hook_job(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Option<Job>, StoreError> {
        let sql = select_jobs!(
            "WHERE runner_name = $1 AND lower(repository) = lower($2) AND github_job_id IS NULL
               AND source = 'hook' AND run_id = $3 AND run_attempt = $4
             ORDER BY id DESC LIMIT 1"
        );
        self.fetch_job(
            sqlx::query(sql)
                .bind(runner_name)
                .bind(repository)
                .bind(i64_id(run_id)?)
                .bind(i64::from(run_attempt)),
        )
        .await
    }

    async fn find_job_ran_in_container(
        &self,
        container_id: &str,
    ) -> Result<Option<Job>, StoreError> {
        let sql = select_jobs!("WHERE ran_in_container_id = $1 ORDER BY id DESC LIMIT 1");
        self.fetch_job(sqlx::query(sql).bind(container_id)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_found_and_kept_out_of_messages() {
        let url = "postgres://app:s3cr%40t@db.example:5433/jobs?sslmode=disable";
        let secret = password_of(url);
        assert_eq!(secret.as_deref(), Some("s3cr%40t"));
        let message = redact(
            "failed for s3cr@t and s3cr%40t at db.example".to_string(),
            secret.as_deref(),
        );
        assert_eq!(message, "failed for *** and *** at db.example");
        assert_eq!(password_of("postgres://app@db/jobs"), None);
        assert_eq!(password_of("postgres://db/jobs"), None);
        assert_eq!(password_of("postgres://app:@db/jobs"), None);
    }

    #[test]
    fn the_target_names_user_host_port_and_database_only() {
        let options =
            PgConnectOptions::from_str("postgres://app:hunter2@db.example:5433/jobs").unwrap();
        let target = describe(&options);
        assert_eq!(target, "app@db.example:5433/jobs");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_naming_the_host_not_the_password() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let err = PostgresStore::connect("postgres://app:hunter2@127.0.0.1:1/jobs")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn a_malformed_url_is_invalid_without_the_password() {
        let err = PostgresStore::connect("postgres://app:hunter2@db:notaport/jobs")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Invalid(_)), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
