//! The autoscaling path: for each queued job we serve (from a webhook or the
//! poller), mint runner credentials, ensure the repository's network and
//! start one ephemeral runner container; follow GitHub's events and the
//! container's exit to the end; clean up runner registrations and networks.
//!
//! Decisions are the domain's pure functions (`schedule`, `failure`,
//! `runner_plan`, `Job`'s methods); the rooms here do the IO around them:
//!
//! - `ingest`: GitHub's job events (webhook, poll, asking GitHub) into the store;
//! - `schedule`: which queued jobs start now, within the caps (`tick`);
//! - `provision`: credentials, network and container of one job;
//! - `exits`: a runner container stopped;
//! - `networks`: repository networks, created and removed in order;
//! - `reconcile`: what no event told us;
//! - `warm`: warm runners, started before their job (`warm = N`);
//! - `loops`: the background tasks.

mod exits;
mod ingest;
mod loops;
mod networks;
mod provision;
mod reconcile;
mod schedule;
mod warm;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::failure::RetryPolicy;
use proxy_runner_domain::labels::{LabelSet, same_label};
use proxy_runner_domain::ports::{
    AuditEvent, BackendError, ContainerBackend, Hardening, JobStore, RunnerRegistry, Scope,
    StoreError,
};
use proxy_runner_domain::schedule::Caps;
use proxy_runner_domain::sync::lock;
use proxy_runner_domain::{Job, JobStatus};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::audit::Auditor;
use crate::config::{JobPath, Registration};
use crate::sources::Sources;

pub use ingest::{Ingested, JobAction};
pub use proxy_runner_domain::runner_plan::JITCONFIG_ENV;

/// A configured label set with its own image and hardening.
#[derive(Debug, Clone)]
pub struct Pool {
    pub labels: LabelSet,
    /// Proxy-path jobs are recorded for tracking; proxy runners take them.
    pub path: JobPath,
    pub image: Option<String>,
    pub hardening: Option<Hardening>,
    /// Warm runners kept waiting for each of `warm_repositories`.
    pub warm: usize,
    pub warm_repositories: Vec<String>,
}

impl Pool {
    /// A label set without warm runners.
    pub fn new(labels: LabelSet, path: JobPath) -> Pool {
        Pool {
            labels,
            path,
            image: None,
            hardening: None,
            warm: 0,
            warm_repositories: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    pub instance: String,
    pub image: String,
    pub network_prefix: String,
    pub caps: Caps,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub registration: Registration,
    pub runner_group_id: u64,
    /// Web base for `GITHUB_URL` (`https://github.com`).
    pub web_url: String,
    /// Register runners at this organization instead of each repository.
    pub organization: Option<String>,
    /// Configured pools; empty: every job asking for `self-hosted`.
    pub pools: Vec<Pool>,
    pub hardening: Hardening,
    /// A runner that has not taken a job after this long is stopped.
    pub idle_timeout: Duration,
    pub tick: Duration,
    pub reconcile_every: Duration,
    /// When a job's runner took another job, the runner started for that
    /// other job is normally free to take this one: a new runner is started
    /// only if none took the job within this grace.
    pub handoff_grace: Duration,
    /// A running job we heard nothing of for this long is checked on GitHub.
    pub settle_after: Duration,
    /// An idle warm runner is recycled after this long.
    pub warm_max_age: Duration,
    /// A queued job waits this long for a warm runner before a cold start.
    pub warm_wait: Duration,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            instance: "default".into(),
            image: "github-runner:latest".into(),
            network_prefix: "proxy-runner".into(),
            caps: Caps {
                global: 10,
                per_repository: 5,
            },
            max_attempts: 5,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(120),
            registration: Registration::Jit,
            runner_group_id: 1,
            web_url: "https://github.com".into(),
            organization: None,
            pools: Vec::new(),
            hardening: Hardening::default(),
            idle_timeout: Duration::from_secs(600),
            tick: Duration::from_millis(500),
            reconcile_every: Duration::from_secs(15),
            handoff_grace: Duration::from_secs(10),
            settle_after: Duration::from_secs(120),
            warm_max_age: Duration::from_secs(3600),
            warm_wait: Duration::from_secs(10),
        }
    }
}

impl AutoscaleConfig {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            handoff_grace: self.handoff_grace,
        }
    }
}

/// Errors of the autoscaler's public operations.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container engine not ready; jobs wait: {0}")]
    EngineNotReady(BackendError),
    #[error("container engine: {0}")]
    Engine(BackendError),
    #[error("GitHub job {0} kept changing; not recorded")]
    KeptChanging(u64),
}

pub struct Autoscaler {
    store: Arc<dyn JobStore>,
    backend: Arc<dyn ContainerBackend>,
    registry: Arc<dyn RunnerRegistry>,
    sources: Sources,
    audit: Auditor,
    config: AutoscaleConfig,
    wake: Notify,
    /// Provisioning and exit handling under way: tests and shutdown await them.
    tasks: TaskTracker,
    /// Jobs whose provisioning is under way, by repository (lower-case):
    /// counted against the caps before their container shows up.
    in_flight: Mutex<HashMap<Uuid, String>>,
    /// Orders network creation against network removal, so that a network
    /// is never removed between a job's `ensure_network` and its start.
    network_lock: tokio::sync::Mutex<()>,
    /// When each quiet running job was last asked about on GitHub.
    last_asked: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// Repositories (lower-case) where a job ended lately, with the number
    /// of reconciliations left that look there for runners left registered
    /// for ended jobs. Seeded at the first pass from the store, so a kill
    /// loses none.
    runner_sweeps: Mutex<HashMap<String, u8>>,
    /// Whether the first reconciliation seeded `runner_sweeps`.
    sweeps_seeded: std::sync::atomic::AtomicBool,
    /// Networks the last reconciliation found without containers.
    empty_networks: Mutex<HashSet<String>>,
    /// Containers of ours the last reconciliation found not running.
    stopped_containers: Mutex<HashSet<String>>,
    /// Warm runners and the jobs waiting for one.
    warm: Mutex<warm::WarmInventory>,
    /// Whether the warm inventory was rebuilt from the engine since start.
    warm_synced: AtomicBool,
    /// Warm runners were retired: no more are started.
    warm_retired: AtomicBool,
}

impl Autoscaler {
    pub fn new(
        store: Arc<dyn JobStore>,
        backend: Arc<dyn ContainerBackend>,
        registry: Arc<dyn RunnerRegistry>,
        sources: Sources,
        config: AutoscaleConfig,
    ) -> Self {
        Autoscaler {
            audit: Auditor::new(store.clone(), sources.clock.clone()),
            store,
            backend,
            registry,
            sources,
            config,
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            in_flight: Mutex::new(HashMap::new()),
            network_lock: tokio::sync::Mutex::new(()),
            last_asked: Mutex::new(HashMap::new()),
            runner_sweeps: Mutex::new(HashMap::new()),
            sweeps_seeded: std::sync::atomic::AtomicBool::new(false),
            empty_networks: Mutex::new(HashSet::new()),
            stopped_containers: Mutex::new(HashSet::new()),
            warm: Mutex::new(warm::WarmInventory::default()),
            warm_synced: AtomicBool::new(false),
            warm_retired: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Wakes the scheduler (a job was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// On a stop: waits, within `grace`, for the provisioning and exit
    /// handling under way, so no container is left started but unrecorded.
    /// Returns how many were still running when the grace ran out (the next
    /// start's reconciler adopts or cleans what they leave).
    pub async fn finish_in_flight(&self, grace: Duration) -> usize {
        let under_way = self.tasks.len();
        if under_way > 0 {
            tracing::info!(under_way, "stopping: letting provisioning under way finish");
        }
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.tasks.reopen();
        self.tasks.len()
    }

    /// Waits until no provisioning or exit handling started so far is running.
    pub async fn idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// Runs scheduling rounds until a round starts nothing and every start
    /// has finished: the state a test or a benchmark inspects.
    pub async fn run_until_quiet(self: &Arc<Self>) -> Result<(), AutoscaleError> {
        loop {
            let (started, warm_started) = self.round().await?;
            self.idle().await;
            if started.is_empty() && warm_started == 0 {
                return Ok(());
            }
        }
    }

    /// The pool serving `job_labels`, or `None` when the job is not ours.
    /// Without configured pools every job asking for `self-hosted` is ours.
    pub fn pool_for(&self, job_labels: &[String]) -> Option<Option<&Pool>> {
        if job_labels.is_empty() {
            return None;
        }
        if self.config.pools.is_empty() {
            return job_labels
                .iter()
                .any(|l| same_label(l, "self-hosted"))
                .then_some(None);
        }
        self.config
            .pools
            .iter()
            .find(|p| p.labels.serves(job_labels))
            .map(Some)
    }

    fn scope_for(&self, repository: &str) -> Option<Scope> {
        match &self.config.organization {
            Some(org) => Some(Scope::Organization { org: org.clone() }),
            None => Scope::repository(repository),
        }
    }

    /// Compare-and-set write of a job read with status `expected`, with the
    /// audit events that record it (committed together, or neither).
    async fn save(
        &self,
        job: &mut Job,
        expected: JobStatus,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        let saved = self.store.update_job(job, expected, audit).await?;
        // A runner minted for this job whose container never came (a kill,
        // a race with the job ending elsewhere) is named for the job but
        // serves nothing: the reconciler looks for such runners.
        if saved && job.status.is_terminal() {
            self.sweep_runners_of(&job.repository);
        }
        Ok(saved)
    }

    /// Whether an ephemeral runner is started for a job with these labels
    /// (not when proxy runners serve them).
    fn autoscaled(&self, job_labels: &[String]) -> bool {
        matches!(self.pool_for(job_labels), Some(None))
            || matches!(self.pool_for(job_labels), Some(Some(p)) if p.path == JobPath::Autoscale)
    }

    /// Asks the next two reconciliations to delete runners of ended jobs
    /// registered for `repository` (two: a runner minted while the first
    /// one looked is caught by the second).
    fn sweep_runners_of(&self, repository: &str) {
        lock(&self.runner_sweeps).insert(repository.to_ascii_lowercase(), 2);
    }

    fn is_in_flight(&self, id: Uuid) -> bool {
        lock(&self.in_flight).contains_key(&id)
    }

    fn now(&self) -> DateTime<Utc> {
        self.sources.clock.now()
    }
}
