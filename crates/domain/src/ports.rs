//! Ports: the traits through which the orchestrator reaches the outside world
//! (job store, GitHub, container engine, clock). Adapters live in their own
//! crates; tests use recording doubles.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{Job, JobStatus};

// ---------------------------------------------------------------- clock

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Where new ids come from (UUIDv7 in production, a sequence in tests).
pub trait IdSource: Send + Sync + 'static {
    fn new_id(&self) -> Uuid;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7;

impl IdSource for UuidV7 {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Random numbers in `[0, 1]` that spread retries apart.
pub trait Jitter: Send + Sync + 'static {
    fn sample(&self) -> f64;
}

// ---------------------------------------------------------------- job store

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    #[error("job store rejected the data: {0}")]
    Invalid(String),
}

/// Result of inserting a job that may already exist.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New(Job),
    /// A job with the same idempotency key (delegation key or GitHub job id)
    /// was already stored; it is returned unchanged.
    Existing(Job),
}

impl Inserted {
    pub fn job(&self) -> &Job {
        match self {
            Inserted::New(j) | Inserted::Existing(j) => j,
        }
    }
    pub fn into_job(self) -> Job {
        match self {
            Inserted::New(j) | Inserted::Existing(j) => j,
        }
    }
    pub fn is_new(&self) -> bool {
        matches!(self, Inserted::New(_))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub repository: Option<String>,
    /// Keyset paging: only jobs with an id greater than this (ids are UUIDv7,
    /// so this is creation order).
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// Which tokens `list_tokens` returns: creation order (ids are UUIDv7),
/// keyset paged like jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFilter {
    pub runner: Option<String>,
    /// Only tokens with an id greater than this.
    pub after: Option<Uuid>,
    pub limit: usize,
}

/// A per-runner credential issued by the orchestrator. Only the hash of the
/// token is ever stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: Uuid,
    pub runner: String,
    /// Hex SHA-256 of the token.
    #[serde(skip_serializing)]
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One line of the audit trail. `detail` must never hold a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    /// `admin`, `runner:{name}`, `github`, `orchestrator`.
    pub actor: String,
    /// e.g. `job.delegated`, `job.completed`, `token.created`, `container.started`.
    pub action: String,
    pub job_id: Option<Uuid>,
    pub detail: serde_json::Value,
}

/// The durable store of jobs, tokens, the audit trail and webhook deliveries.
///
/// Every write takes the audit events that record it (`audit`) and commits
/// them in the same transaction, and only when the write took effect (a new
/// job, a won compare and set, a deleted job, a revoked token): the write and
/// its audit rows are stored together or not at all. A write, once handed to
/// the store, completes even when the caller's future is dropped; an
/// answer means the write is durable.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts `job` unless a job with the same delegation key (hook jobs) or
    /// GitHub job id already exists, in which case that one is returned (and
    /// `audit` is not written).
    async fn insert_job(&self, job: &Job, audit: &[AuditEvent]) -> Result<Inserted, StoreError>;
    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StoreError>;
    async fn find_by_github_job_id(&self, github_job_id: u64) -> Result<Option<Job>, StoreError>;
    /// The newest job of `runner_name` with key `job_key` that is not finished.
    async fn find_active_for_runner(
        &self,
        runner_name: &str,
        job_key: &str,
    ) -> Result<Option<Job>, StoreError>;
    /// The newest unfinished hook-delegated job of `runner_name` (a proxy
    /// runner runs one job at a time).
    async fn find_active_hook_job(&self, runner_name: &str) -> Result<Option<Job>, StoreError>;
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError>;
    /// Writes `job` if the stored record is still the one `job` was read as:
    /// status `expected` and the same `revision` (compare and set). On
    /// success `job.revision` is bumped; false when another writer won (and
    /// `audit` is not written).
    async fn update_job(
        &self,
        job: &mut Job,
        expected: JobStatus,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError>;

    /// Deletes a job if it is still at `revision` (compare and set): a
    /// tracking record that another record of the same job supersedes.
    /// False when another writer changed it first.
    async fn delete_job(
        &self,
        id: Uuid,
        revision: u64,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError>;

    async fn insert_token(
        &self,
        token: &TokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError>;
    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Marks the token revoked; false when there is no such (unrevoked) token.
    async fn revoke_token(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError>;
    /// Tokens (revoked ones too) in creation order, at most `filter.limit`
    /// (capped like `list_jobs`).
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError>;

    /// Appends an event that records no write of this store (a container
    /// started, an exit seen).
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;

    /// Records a webhook delivery id; false when it was seen before.
    async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Forgets a delivery whose processing failed, so a redelivery is handled.
    async fn forget_delivery(&self, delivery_id: &str) -> Result<(), StoreError>;

    /// A hook-delegated job of `runner_name` for this run attempt that no
    /// GitHub job id is linked to yet (to join webhook events to it).
    async fn find_unlinked_hook_job(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Option<Job>, StoreError>;

    /// Running jobs recorded from GitHub's events (not from a hook) that
    /// GitHub says `runner_name` runs for this run attempt, newest first (at
    /// most a few): the record a delegation of the same job replaces.
    async fn find_tracking_records(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Vec<Job>, StoreError>;

    /// The repositories (as stored) of jobs written at or after `since`: the
    /// scopes where runners of recent jobs may still be registered.
    async fn repositories_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// The job that ran in `container_id` although the container was
    /// started for another job.
    async fn find_job_ran_in_container(
        &self,
        container_id: &str,
    ) -> Result<Option<Job>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------- GitHub

/// Where runners are registered: one repository or a whole organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Scope {
    Repository { owner: String, repo: String },
    Organization { org: String },
}

impl Scope {
    pub fn repository(full_name: &str) -> Option<Scope> {
        let (owner, repo) = crate::names::parse_repository(full_name).ok()?;
        Some(Scope::Repository {
            owner: owner.to_string(),
            repo: repo.to_string(),
        })
    }

    /// The REST path prefix: `repos/{owner}/{repo}` or `orgs/{org}`.
    pub fn api_path(&self) -> String {
        match self {
            Scope::Repository { owner, repo } => format!("repos/{owner}/{repo}"),
            Scope::Organization { org } => format!("orgs/{org}"),
        }
    }

    /// The URL a runner is configured with (`--url`), under `web_base`
    /// (`https://github.com` or an Enterprise Server / emulator address).
    pub fn runner_url(&self, web_base: &str) -> String {
        let base = web_base.trim_end_matches('/');
        match self {
            Scope::Repository { owner, repo } => format!("{base}/{owner}/{repo}"),
            Scope::Organization { org } => format!("{base}/{org}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Repository { owner, repo } => write!(f, "{owner}/{repo}"),
            Scope::Organization { org } => write!(f, "org {org}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitRequest {
    pub name: String,
    pub labels: Vec<String>,
    pub runner_group_id: u64,
    pub work_folder: String,
}

/// A just-in-time runner configuration. The encoded config is a credential.
#[derive(Debug, Clone)]
pub struct JitConfig {
    pub runner_id: u64,
    pub runner_name: String,
    pub encoded_jit_config: SecretString,
}

#[derive(Debug, Clone)]
pub struct RegistrationToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub id: u64,
    pub name: String,
    pub os: String,
    pub status: String,
    pub busy: bool,
    pub labels: Vec<String>,
    pub ephemeral: bool,
}

/// A workflow job as the REST API (or a webhook) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowJobInfo {
    pub id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub repository: String,
    pub name: String,
    pub workflow_name: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub labels: Vec<String>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
}

/// Errors of the GitHub port. Messages never carry a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub: not found: {0}")]
    NotFound(String),
    #[error("GitHub: conflict: {0}")]
    Conflict(String),
    #[error("GitHub: validation failed: {0}")]
    Validation(String),
    #[error("GitHub: unauthorized or forbidden: {0}")]
    Unauthorized(String),
    #[error("GitHub: rate limited until {until}")]
    RateLimited { until: DateTime<Utc> },
    #[error("GitHub: circuit open for {host}; failing fast")]
    CircuitOpen { host: String },
    #[error("GitHub: request timed out: {0}")]
    Timeout(String),
    #[error("GitHub: HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("GitHub: transport error: {0}")]
    Transport(String),
}

impl GitHubError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GitHubError::RateLimited { .. }
            | GitHubError::CircuitOpen { .. }
            | GitHubError::Timeout(_)
            | GitHubError::Transport(_) => true,
            GitHubError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// The design's `GitHubAPIService`, as far as the orchestrator needs it.
#[async_trait]
pub trait RunnerRegistry: Send + Sync + 'static {
    async fn generate_jit_config(
        &self,
        scope: &Scope,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError>;
    async fn create_registration_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError>;
    /// Deletes a runner; `NotFound` when GitHub no longer has it.
    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GitHubError>;
    async fn list_runners(&self, scope: &Scope) -> Result<Vec<RunnerInfo>, GitHubError>;
    /// One workflow job as GitHub sees it now.
    async fn get_workflow_job(
        &self,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError>;
    /// Queued workflow jobs of a repository (for polling).
    async fn list_queued_jobs(
        &self,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError>;
}

/// Queued GitHub jobs found by asking rather than told by webhooks (the
/// poller, for setups GitHub cannot reach).
#[async_trait]
pub trait QueuedJobFeed: Send + Sync + 'static {
    /// One round over the watched repositories; failures are the feed's to
    /// log, a failing repository does not hide the others' jobs.
    async fn poll_once(&self) -> Vec<WorkflowJobInfo>;
    /// How long to wait before the next round (GitHub's budget paces it).
    fn next_delay(&self) -> Duration;
}

// ---------------------------------------------------------------- containers

#[derive(Debug, Clone)]
pub enum EnvValue {
    Plain(String),
    /// Passed to the container and nowhere else; never printed.
    Secret(SecretString),
}

#[derive(Debug, Clone)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

impl EnvVar {
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: EnvValue::Plain(value.into()),
        }
    }
    pub fn secret(name: impl Into<String>, value: SecretString) -> Self {
        EnvVar {
            name: name.into(),
            value: EnvValue::Secret(value),
        }
    }
}

/// A secret a runner container reads from its standard input at start.
#[derive(Debug, Clone)]
pub struct StdinSecret {
    /// The variable the entrypoint hands the value on as (to one process).
    pub name: String,
    pub value: SecretString,
}

impl StdinSecret {
    pub fn new(name: impl Into<String>, value: SecretString) -> Self {
        StdinSecret {
            name: name.into(),
            value,
        }
    }
}

/// Longest standard-input hand-over the runner entrypoints read.
pub const MAX_STDIN_PAYLOAD: usize = 256 * 1024;

/// What a runner container's standard input carries: one `NAME=value` line
/// per secret, in order; the container reads to the end of input. Names are
/// `[A-Z0-9_]` and start with a letter; values are single lines. Errors name
/// the variable, never the value.
pub fn stdin_payload(secrets: &[StdinSecret]) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    let mut payload = String::new();
    for secret in secrets {
        let name = &secret.name;
        let name_ok = name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(format!("invalid stdin secret name {name:?}"));
        }
        let value = secret.value.expose_secret();
        if value.is_empty() || value.contains(['\n', '\r', '\0']) {
            return Err(format!("the value of {name} must be one non-empty line"));
        }
        payload.push_str(name);
        payload.push('=');
        payload.push_str(value);
        payload.push('\n');
    }
    if payload.len() > MAX_STDIN_PAYLOAD {
        return Err(format!(
            "stdin secrets are longer than {MAX_STDIN_PAYLOAD} bytes"
        ));
    }
    Ok(SecretString::from(payload))
}

/// Reads what [`stdin_payload`] wrote, strictly: `NAME=value` lines, only
/// the names in `accepted`, each at most once. Errors name the line or the
/// variable, never a value.
pub fn parse_stdin_payload(text: &str, accepted: &[&str]) -> Result<Vec<StdinSecret>, String> {
    if text.len() > MAX_STDIN_PAYLOAD {
        return Err(format!("stdin is longer than {MAX_STDIN_PAYLOAD} bytes"));
    }
    let mut secrets: Vec<StdinSecret> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("stdin line {} is not NAME=value", n + 1));
        };
        if !accepted.contains(&name) {
            return Err(format!(
                "stdin line {} names {:?}, expected one of {}",
                n + 1,
                name.chars().take(64).collect::<String>(),
                accepted.join(", ")
            ));
        }
        if value.is_empty() {
            return Err(format!("{name} on stdin is empty"));
        }
        if secrets.iter().any(|s| s.name == name) {
            return Err(format!("{name} is on stdin twice"));
        }
        secrets.push(StdinSecret::new(
            name,
            SecretString::from(value.to_string()),
        ));
    }
    Ok(secrets)
}

/// Least-privilege settings for a job container. Defaults are the hardened ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hardening {
    /// `uid[:gid]` or a user name of the image; never root.
    pub user: String,
    pub drop_all_capabilities: bool,
    pub no_new_privileges: bool,
    pub read_only_root_filesystem: bool,
    pub pids_limit: i64,
    pub memory_bytes: i64,
    /// CPU in billionths of a CPU (Docker's NanoCPUs).
    pub nano_cpus: i64,
    /// Writable tmpfs mounts (paths) when the root filesystem is read-only.
    pub tmpfs: Vec<String>,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            user: "1001:1001".into(),
            drop_all_capabilities: true,
            no_new_privileges: true,
            read_only_root_filesystem: true,
            pids_limit: 512,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            tmpfs: vec!["/tmp".into(), "/home/runner".into()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<EnvVar>,
    /// Secrets handed to the container's entrypoint on its standard input
    /// right after start ([`stdin_payload`]) instead of in `env`: they are in
    /// no part of the container's configuration (`docker inspect`) and in no
    /// environment the job's processes inherit from the container.
    pub stdin_secrets: Vec<StdinSecret>,
    /// Overrides the image's command when set.
    pub command: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub hardening: Hardening,
    pub auto_remove: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedContainer {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
}

/// Label keys put on everything proxy-runner creates.
pub mod labels {
    pub const JOB_ID: &str = "proxy-runner.job-id";
    pub const REPOSITORY: &str = "proxy-runner.repository";
    pub const INSTANCE: &str = "proxy-runner.instance";
    /// `proxy` on everything of the proxy path (hook-driven job containers).
    pub const PATH: &str = "proxy-runner.path";
    /// `job`, `service` or `step` on proxy-path containers.
    pub const ROLE: &str = "proxy-runner.role";
    /// On a warm runner's container (which names no job yet): the key of
    /// its label set (`warm::pool_key`).
    pub const WARM: &str = "proxy-runner.warm";
    /// On a warm runner's container: when it was started (RFC 3339), for
    /// its age after a restart.
    pub const WARM_SINCE: &str = "proxy-runner.warm-since";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// A container of ours stopped; `job_id` comes from its label.
    Exited {
        container_id: String,
        job_id: Option<Uuid>,
        exit_code: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("image {image:?} is not present on the container engine and will not be pulled")]
    ImageMissing { image: String },
    #[error("container engine unreachable: {0}")]
    DaemonUnreachable(String),
    #[error("a container named {0:?} already exists")]
    NameConflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("container engine error: {0}")]
    Other(String),
}

impl BackendError {
    /// Whether the job should wait and retry rather than fail.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::DaemonUnreachable(_) | BackendError::Other(_)
        )
    }
}

/// Starts and watches job containers (Docker today; Kubernetes later).
#[async_trait]
pub trait ContainerBackend: Send + Sync + 'static {
    /// `docker`, `dry-run`, ...
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<(), BackendError>;
    /// Creates the network if it does not exist (idempotent).
    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), BackendError>;
    /// Creates and starts a container.
    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, BackendError>;
    /// Stops (and so, with auto-remove, removes) a container; `NotFound` if gone.
    async fn stop(&self, container_id: &str, grace: Duration) -> Result<(), BackendError>;
    /// Removes a container whatever its state (one that was created and
    /// never started is not auto-removed); `Ok` when it is already gone.
    async fn remove(&self, container_id: &str) -> Result<(), BackendError>;
    /// Removes the network when no container is attached; true if removed.
    async fn remove_network_if_unused(&self, name: &str) -> Result<bool, BackendError>;
    /// Containers carrying `proxy-runner.instance={instance}`.
    async fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, BackendError>;
    /// Networks carrying `proxy-runner.instance={instance}`, with their labels.
    async fn list_networks(&self, instance: &str) -> Result<Vec<NetworkSpec>, BackendError>;
    /// Exit events of containers carrying `proxy-runner.instance={instance}`.
    /// The stream ends when the engine connection drops; callers re-subscribe.
    fn events(&self, instance: &str) -> BoxStream<'static, Result<ContainerEvent, BackendError>>;
}

#[cfg(test)]
mod stdin_payload_tests {
    use secrecy::{ExposeSecret, SecretString};

    use super::{MAX_STDIN_PAYLOAD, StdinSecret, parse_stdin_payload, stdin_payload};

    const NAMES: [&str; 2] = ["ACTIONS_RUNNER_INPUT_JITCONFIG", "RUNNER_TOKEN"];

    #[test]
    fn what_is_written_is_read_back() {
        let written = stdin_payload(&[
            secret("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJh=="),
            secret("RUNNER_TOKEN", "a=b"),
        ])
        .unwrap();
        let read = parse_stdin_payload(written.expose_secret(), &NAMES).unwrap();
        let pairs: Vec<(&str, &str)> = read
            .iter()
            .map(|s| (s.name.as_str(), s.value.expose_secret()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJh=="),
                ("RUNNER_TOKEN", "a=b")
            ]
        );
        assert!(parse_stdin_payload("", &NAMES).unwrap().is_empty());
    }

    #[test]
    fn unexpected_stdin_is_refused_without_the_value() {
        for (text, named) in [
            ("no-equals-s3cret\n", "line 1"),
            ("OTHER=s3cret\n", "OTHER"),
            ("RUNNER_TOKEN=\n", "RUNNER_TOKEN"),
            ("RUNNER_TOKEN=s3cret\nRUNNER_TOKEN=s3cret\n", "twice"),
        ] {
            let err = parse_stdin_payload(text, &NAMES).unwrap_err();
            assert!(err.contains(named), "{text:?}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let huge = format!("RUNNER_TOKEN={}", "x".repeat(MAX_STDIN_PAYLOAD));
        assert!(parse_stdin_payload(&huge, &NAMES).is_err());
    }

    fn secret(name: &str, value: &str) -> StdinSecret {
        StdinSecret::new(name, SecretString::from(value.to_string()))
    }

    #[test]
    fn one_line_per_secret_in_order() {
        let payload = stdin_payload(&[
            secret("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJh=="),
            secret("RUNNER_TOKEN", "AB12"),
        ])
        .unwrap();
        assert_eq!(
            payload.expose_secret(),
            "ACTIONS_RUNNER_INPUT_JITCONFIG=eyJh==\nRUNNER_TOKEN=AB12\n"
        );
        assert_eq!(stdin_payload(&[]).unwrap().expose_secret(), "");
    }

    #[test]
    fn bad_names_and_values_are_refused_without_the_value() {
        for name in ["", "lower", "1ST", "A-B", "A=B", "A B"] {
            let err = stdin_payload(&[secret(name, "v4lue")]).unwrap_err();
            assert!(err.contains("name"), "{name:?}: {err}");
        }
        for value in ["", "two\nlines", "cr\rhere", "nul\0here"] {
            let err = stdin_payload(&[secret("TOKEN", value)]).unwrap_err();
            assert!(err.contains("TOKEN"), "{err}");
            assert!(!err.contains("here") && !err.contains("lines"), "{err}");
        }
        let huge = "x".repeat(MAX_STDIN_PAYLOAD);
        let err = stdin_payload(&[secret("TOKEN", &huge)]).unwrap_err();
        assert!(!err.contains("xxxx"), "{err}");
    }
}
