//! The autoscaling path: for each queued job we serve (from a webhook or the
//! poller), mint runner credentials, ensure the repository's network and
//! start one ephemeral runner container; follow GitHub's events and the
//! container's exit to the end; clean up runner registrations and networks.
//!
//! Scheduling decisions are the domain's pure functions; this module does
//! the IO around them through the ports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::names::{container_name, network_name, runner_name};
use proxy_runner_domain::ports::{
    BackendError, Clock, ContainerBackend, ContainerEvent, ContainerSpec, EnvVar, GitHubError,
    Hardening, JitRequest, JobFilter, JobStore, NetworkSpec, RunnerRegistry, Scope, StoreError,
    WorkflowJobInfo, labels as label_keys,
};
use proxy_runner_domain::schedule::{Caps, Waiting, pick_jobs_to_start, retry_delay};
use proxy_runner_domain::{Job, JobSource, JobStatus, NewJob, conclusion_to_status};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{self, CAS_RETRIES};
use crate::config::Registration;
use crate::metrics as m;

/// The environment variable the runner image reads its JIT config from.
pub const JITCONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// A configured label set with its own image and hardening.
#[derive(Debug, Clone)]
pub struct Pool {
    pub labels: LabelSet,
    pub image: Option<String>,
    pub hardening: Option<Hardening>,
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
        }
    }
}

/// What became of a GitHub job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Created(Uuid),
    Updated(Uuid),
    Unchanged(Uuid),
    /// Not for us (labels we do not serve, or an action we wait out).
    Ignored(&'static str),
}

/// The GitHub job actions the autoscaler acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    Queued,
    Waiting,
    InProgress,
    Completed,
}

pub struct Autoscaler {
    store: Arc<dyn JobStore>,
    backend: Arc<dyn ContainerBackend>,
    registry: Arc<dyn RunnerRegistry>,
    clock: Arc<dyn Clock>,
    config: AutoscaleConfig,
    wake: Notify,
    /// Jobs whose provisioning is under way, by repository (lower-case):
    /// counted against the caps before their container shows up.
    in_flight: Mutex<HashMap<Uuid, String>>,
    /// Orders network creation against network removal, so that a network
    /// is never removed between a job's `ensure_network` and its start.
    network_lock: tokio::sync::Mutex<()>,
    /// When each quiet running job was last asked about on GitHub.
    last_asked: Mutex<HashMap<Uuid, std::time::Instant>>,
}

fn store_err(e: StoreError) -> String {
    e.to_string()
}

impl Autoscaler {
    pub fn new(
        store: Arc<dyn JobStore>,
        backend: Arc<dyn ContainerBackend>,
        registry: Arc<dyn RunnerRegistry>,
        clock: Arc<dyn Clock>,
        config: AutoscaleConfig,
    ) -> Self {
        Autoscaler {
            store,
            backend,
            registry,
            clock,
            config,
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
            network_lock: tokio::sync::Mutex::new(()),
            last_asked: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
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
                .any(|l| l.eq_ignore_ascii_case("self-hosted"))
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

    async fn save(&self, job: &mut Job, expected: JobStatus) -> Result<bool, String> {
        self.store
            .update_job(job, expected)
            .await
            .map_err(store_err)
    }

    // ------------------------------------------------------------ GitHub events

    /// Feeds one GitHub job event (webhook or poll) into the job store.
    pub async fn ingest(
        &self,
        action: JobAction,
        info: &WorkflowJobInfo,
        source: JobSource,
    ) -> Result<Ingested, String> {
        // Another writer (a container exit, a poll, a redelivery) may move the
        // job between our read and our write: read again and re-apply.
        for _ in 0..CAS_RETRIES {
            if let Some(outcome) = self.try_ingest(action, info, source).await? {
                return Ok(outcome);
            }
        }
        Err(format!(
            "GitHub job {} kept changing; not recorded",
            info.id
        ))
    }

    /// One attempt of [`Self::ingest`]; `None` when a concurrent write won.
    async fn try_ingest(
        &self,
        action: JobAction,
        info: &WorkflowJobInfo,
        source: JobSource,
    ) -> Result<Option<Ingested>, String> {
        let now = self.clock.now();
        let mut existing = self
            .store
            .find_by_github_job_id(info.id)
            .await
            .map_err(store_err)?;
        if existing.is_none()
            && let Some(runner) = &info.runner_name
            && matches!(action, JobAction::InProgress | JobAction::Completed)
        {
            // A proxy runner's hook may have delegated this job already.
            if let Some(mut hook_job) = self
                .store
                .find_unlinked_hook_job(runner, &info.repository, info.run_id, info.run_attempt)
                .await
                .map_err(store_err)?
            {
                let expected = hook_job.status;
                hook_job.github_job_id = Some(info.id);
                hook_job.runner_id = info.runner_id.or(hook_job.runner_id);
                hook_job.updated_at = now;
                if !self.save(&mut hook_job, expected).await? {
                    return Ok(None);
                }
                existing = Some(hook_job);
            }
        }

        let Some(mut job) = existing else {
            if self.pool_for(&info.labels).is_none() {
                metrics::counter!(m::WEBHOOKS, "outcome" => "not_ours").increment(1);
                return Ok(Some(Ingested::Ignored("labels not served")));
            }
            if action == JobAction::Waiting {
                return Ok(Some(Ingested::Ignored(
                    "waiting for approval; provisioned once queued",
                )));
            }
            let mut job = NewJob {
                job_key: info.name.clone(),
                run_id: info.run_id,
                run_attempt: info.run_attempt.max(1),
                repository: info.repository.clone(),
                workflow: info.workflow_name.clone(),
                runner_name: None,
                labels: info.labels.clone(),
                environment: BTreeMap::new(),
                matrix: None,
                needs: Vec::new(),
                github_job_id: Some(info.id),
                source,
            }
            .into_job(Uuid::now_v7(), now);
            // We may learn of it late: record what GitHub says now.
            self.apply_github_state(&mut job, action, info, now).await;
            let inserted = self.store.insert_job(&job).await.map_err(store_err)?;
            if !inserted.is_new() {
                // Recorded meanwhile by another event: apply ours to that one.
                return Ok(None);
            }
            let id = inserted.job().id;
            tracing::info!(job = %id, github_job = info.id, repository = %info.repository, labels = ?info.labels, ?source, "job recorded");
            self.audit(
                "github",
                "job.queued",
                Some(id),
                serde_json::json!({
                    "githubJobId": info.id, "repository": info.repository, "labels": info.labels, "source": source,
                }),
            )
            .await;
            self.after_linking(&job).await;
            self.wake.notify_one();
            return Ok(Some(Ingested::Created(id)));
        };

        let before = job.clone();
        self.apply_github_state(&mut job, action, info, now).await;
        if job == before {
            return Ok(Some(Ingested::Unchanged(job.id)));
        }
        if !self.save(&mut job, before.status).await? {
            return Ok(None);
        }
        if job.status != before.status {
            metrics::counter!(m::JOB_TRANSITIONS, "to" => job.status.as_str()).increment(1);
            self.audit(
                "github",
                &format!("job.{}", job.status),
                Some(job.id),
                serde_json::json!({"githubJobId": info.id, "runnerName": job.runner_name, "conclusion": job.conclusion}),
            )
            .await;
        }
        if job.ran_in_container_id != before.ran_in_container_id {
            self.after_linking(&job).await;
        }
        if job.status.is_terminal() && !before.status.is_terminal() {
            self.after_github_finished(&before, &job).await;
        }
        Ok(Some(Ingested::Updated(job.id)))
    }

    /// `job` ran in the container started for another job X. X's runner is
    /// busy now: X needs another runner, and is not to wait for its
    /// container's exit to learn that.
    async fn after_linking(&self, job: &Job) {
        let Some(container) = &job.ran_in_container_id else {
            return;
        };
        let Some(owner) = job.runner_name.as_deref().and_then(runner_owner) else {
            return;
        };
        let Ok(Some(mut owner_job)) = self.store.get_job(owner).await else {
            return;
        };
        if owner_job.status != JobStatus::Provisioning
            || owner_job.container_id.as_deref() != Some(container.as_str())
            || self
                .in_flight
                .lock()
                .expect("lock")
                .contains_key(&owner_job.id)
        {
            return;
        }
        // The container is the other job's now; its exit is not this job's.
        owner_job.container_id = None;
        let failure = if job.container_id.is_some() {
            Failure::handoff(format!(
                "its runner took job {} instead; waiting for that job's runner to take this one",
                job.id
            ))
        } else {
            Failure::handoff_now(format!(
                "its runner took job {} instead; starting another runner",
                job.id
            ))
        };
        self.provisioning_failed(owner_job, failure).await;
        self.wake.notify_one();
    }

    /// Applies what GitHub says about the job to our record (in memory).
    async fn apply_github_state(
        &self,
        job: &mut Job,
        action: JobAction,
        info: &WorkflowJobInfo,
        now: DateTime<Utc>,
    ) {
        match action {
            JobAction::Queued | JobAction::Waiting => {}
            JobAction::InProgress => {
                self.link_runner(job, info).await;
                if job.status.can_transition_to(JobStatus::Running) {
                    let _ = job.transition(JobStatus::Running, now);
                }
            }
            JobAction::Completed => {
                self.link_runner(job, info).await;
                let target = conclusion_to_status(info.conclusion.as_deref());
                if job.status.can_transition_to(target) {
                    let _ = job.transition(target, now);
                    job.conclusion = info.conclusion.clone();
                }
            }
        }
    }

    /// Records which runner took the job. A runner we started for job X may
    /// take job J with the same labels: J then records X's container.
    async fn link_runner(&self, job: &mut Job, info: &WorkflowJobInfo) {
        if let Some(name) = &info.runner_name {
            job.runner_name = Some(name.clone());
            job.runner_id = info.runner_id.or(job.runner_id);
            // Linked once: later events for the job (completed, redeliveries)
            // must not move it to the owner's next container.
            if job.ran_in_container_id.is_none()
                && let Some(owner) = runner_owner(name)
                && owner != job.id
                && let Ok(Some(owner_job)) = self.store.get_job(owner).await
                && owner_job.container_id.is_some()
            {
                job.ran_in_container_id = owner_job.container_id.clone();
            }
        }
    }

    /// GitHub finished (or cancelled) a job: if its own container never took
    /// a job, stop it and deregister its runner.
    async fn after_github_finished(&self, before: &Job, job: &Job) {
        if before.status == JobStatus::Provisioning
            && let Some(container) = &before.container_id
            // Its runner may already be running another job with the same labels.
            && matches!(self.store.find_job_ran_in_container(container).await, Ok(None))
        {
            tracing::info!(job = %job.id, container = %container, "job finished elsewhere; stopping its idle runner");
            // Not on the webhook's time: GitHub waits 10 s for the answer.
            let (backend, container, id) = (Arc::clone(&self.backend), container.clone(), job.id);
            tokio::spawn(async move {
                if let Err(e) = backend.stop(&container, Duration::from_secs(10)).await
                    && !matches!(e, BackendError::NotFound(_))
                {
                    tracing::warn!(job = %id, error = %e, "cannot stop idle runner container");
                }
            });
        }
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        job_id: Option<Uuid>,
        detail: serde_json::Value,
    ) {
        audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            actor,
            action,
            job_id,
            detail,
        )
        .await;
    }

    // ------------------------------------------------------------ provisioning

    /// Live containers per repository (lower-case), counting in-flight starts.
    async fn live_counts(&self) -> Result<BTreeMap<String, usize>, BackendError> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        // In-flight first: a start that finishes after this snapshot has its
        // container in the listing below. Only `tick` adds to the set.
        let in_flight = self.in_flight.lock().expect("lock").clone();
        let containers = self.backend.list(&self.config.instance).await?;
        // Every running container counts, also one still running another
        // job for a job that is being provisioned again (a hand-off); a
        // container whose start races this count is counted twice for a
        // moment, which errs on the side of the caps.
        for c in containers.iter().filter(|c| c.running) {
            if let Some(repo) = c.labels.get(label_keys::REPOSITORY) {
                *counts.entry(repo.to_ascii_lowercase()).or_default() += 1;
            }
        }
        for repo in in_flight.values() {
            *counts.entry(repo.clone()).or_default() += 1;
        }
        metrics::gauge!(m::LIVE_CONTAINERS).set(counts.values().sum::<usize>() as f64);
        Ok(counts)
    }

    /// One scheduling round: starts as many queued jobs as the caps allow.
    /// Returns the ids whose provisioning was started.
    pub async fn tick(self: &Arc<Self>) -> Result<Vec<Uuid>, String> {
        if let Err(e) = self.backend.ping().await {
            metrics::gauge!(m::BACKEND_UP).set(0.0);
            return Err(format!("container engine not ready; jobs wait: {e}"));
        }
        metrics::gauge!(m::BACKEND_UP).set(1.0);
        let mut queued = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    status: Some(JobStatus::Queued),
                    repository: None,
                    after,
                    limit: 500,
                })
                .await
                .map_err(store_err)?;
            let done = page.len() < 500;
            after = page.last().map(|j| j.id);
            queued.extend(page.into_iter().filter(|j| j.source != JobSource::Hook));
            if done {
                break;
            }
        }
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let live = self.live_counts().await.map_err(|e| e.to_string())?;
        let waiting: Vec<Waiting> = queued
            .iter()
            .filter(|j| !self.in_flight.lock().expect("lock").contains_key(&j.id))
            .map(|j| Waiting {
                id: j.id,
                repository: j.repository.clone(),
                created_at: j.created_at,
                not_before: j.not_before,
            })
            .collect();
        let picked = pick_jobs_to_start(&waiting, &live, self.config.caps, self.clock.now());
        let mut started = Vec::new();
        for id in picked {
            let Some(mut job) = queued.iter().find(|j| j.id == id).cloned() else {
                continue;
            };
            let now = self.clock.now();
            if job.transition(JobStatus::Provisioning, now).is_err() {
                continue;
            }
            job.attempts += 1;
            job.not_before = None;
            // In flight before the write, so `reconcile` never sees it as
            // provisioning without a provisioner.
            self.in_flight
                .lock()
                .expect("lock")
                .insert(job.id, job.repository.to_ascii_lowercase());
            let saved = self.save(&mut job, JobStatus::Queued).await;
            if !matches!(saved, Ok(true)) {
                self.in_flight.lock().expect("lock").remove(&job.id);
                saved?;
                continue;
            }
            started.push(job.id);
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let (id, repository) = (job.id, job.repository.clone());
                let started = this.provision(job).await;
                this.in_flight.lock().expect("lock").remove(&id);
                if !started {
                    // The network may have been created for nothing.
                    this.remove_network_when_unused(&repository).await;
                }
            });
        }
        Ok(started)
    }

    /// Mints credentials, ensures the network, starts the container.
    /// Returns whether a container was started.
    async fn provision(&self, mut job: Job) -> bool {
        let started = std::time::Instant::now();
        match self.try_provision(&mut job).await {
            Ok(container_id) => {
                metrics::histogram!(m::PROVISION_DURATION).record(started.elapsed().as_secs_f64());
                let waited = (self.clock.now() - job.created_at)
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0;
                metrics::histogram!(m::QUEUE_TO_START).record(waited);
                tracing::info!(job = %job.id, container = %container_id, attempt = job.attempts, "runner container started");
                self.audit(
                    "orchestrator",
                    "container.started",
                    Some(job.id),
                    serde_json::json!({
                        "container": container_name(job.id), "containerId": container_id,
                        "runnerName": runner_name(job.id), "attempt": job.attempts,
                    }),
                )
                .await;
                true
            }
            Err(failure) => {
                // A runner minted for this attempt must not outlive it.
                self.deregister(&job).await;
                self.provisioning_failed(job, failure).await;
                false
            }
        }
    }

    async fn try_provision(&self, job: &mut Job) -> Result<String, Failure> {
        let scope = self.scope_for(&job.repository).ok_or_else(|| {
            Failure::fatal(format!("repository {:?} is not owner/name", job.repository))
        })?;
        let pool = self.pool_for(&job.labels).flatten().cloned();
        let mut runner_labels =
            LabelSet::parse_list(["ephemeral", "container"]).expect("static labels");
        runner_labels.extend(job.labels.iter().map(String::as_str));
        // The first runner of a job has the design's names; a later one (after
        // a failure or a hand-off) gets its own, since the earlier runner may
        // still be running another job under the old names.
        let suffix = job
            .last_error
            .is_some()
            .then(|| format!("-{}", &Uuid::now_v7().simple().to_string()[24..]));
        let name = format!("{}{}", runner_name(job.id), suffix.as_deref().unwrap_or(""));

        let credential = match self.config.registration {
            Registration::Jit => {
                let request = JitRequest {
                    name: name.clone(),
                    labels: runner_labels.as_slice().to_vec(),
                    runner_group_id: self.config.runner_group_id,
                    work_folder: "_work".into(),
                };
                let jit = match self.registry.generate_jit_config(&scope, &request).await {
                    Err(GitHubError::Conflict(_)) => {
                        // A runner of an earlier attempt still holds the name.
                        self.delete_runner_named(&scope, &name).await;
                        self.registry.generate_jit_config(&scope, &request).await
                    }
                    other => other,
                }
                .map_err(Failure::github)?;
                job.provisioned_runner_id = Some(jit.runner_id);
                EnvVar::secret(JITCONFIG_ENV, jit.encoded_jit_config)
            }
            Registration::RegistrationToken => {
                let token = self
                    .registry
                    .create_registration_token(&scope)
                    .await
                    .map_err(Failure::github)?;
                EnvVar::secret("RUNNER_TOKEN", token.token)
            }
        };

        let network = network_name(&self.config.network_prefix, &job.repository);
        let labels = BTreeMap::from([
            (label_keys::JOB_ID.to_string(), job.id.to_string()),
            (
                label_keys::REPOSITORY.to_string(),
                job.repository.to_ascii_lowercase(),
            ),
            (
                label_keys::INSTANCE.to_string(),
                self.config.instance.clone(),
            ),
        ]);
        let network_guard = self.network_lock.lock().await;
        self.backend
            .ensure_network(&NetworkSpec {
                name: network.clone(),
                labels: labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != label_keys::JOB_ID)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .await
            .map_err(Failure::backend)?;
        drop(network_guard);
        let spec = ContainerSpec {
            name: format!(
                "{}{}",
                container_name(job.id),
                suffix.as_deref().unwrap_or("")
            ),
            image: pool
                .as_ref()
                .and_then(|p| p.image.clone())
                .unwrap_or_else(|| self.config.image.clone()),
            env: vec![
                EnvVar::plain("RUNNER_NAME", name.clone()),
                EnvVar::plain("RUNNER_LABELS", runner_labels.as_slice().join(",")),
                EnvVar::plain("GITHUB_URL", scope.runner_url(&self.config.web_url)),
                EnvVar::plain("JOB_ID", job.job_key.clone()),
                EnvVar::plain("RUN_ID", job.run_id.to_string()),
                credential,
            ],
            command: None,
            labels,
            network,
            hardening: pool
                .and_then(|p| p.hardening)
                .unwrap_or_else(|| self.config.hardening.clone()),
            auto_remove: true,
        };
        let mut started = self.backend.start(&spec).await;
        // A container of an earlier attempt still holds the name: the engine
        // removes exited auto-remove containers shortly after their exit
        // event, so stop it (by name) and wait for the name to come free.
        for _ in 0..20 {
            if !matches!(started, Err(BackendError::NameConflict(_))) {
                break;
            }
            let _ = self.backend.stop(&spec.name, Duration::from_secs(2)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            started = self.backend.start(&spec).await;
        }
        let started = started.map_err(Failure::backend)?;
        job.container_id = Some(started.id.clone());
        job.runner_name.get_or_insert(name);
        job.last_error = None;
        job.updated_at = self.clock.now();
        match self.save(job, JobStatus::Provisioning).await {
            Ok(true) => {}
            // GitHub settled the job meanwhile (e.g. cancelled): keep the
            // container record on the job so the exit event cleans up.
            Ok(false) => {
                if let Ok(Some(mut current)) = self.store.get_job(job.id).await {
                    let expected = current.status;
                    current.container_id = Some(started.id.clone());
                    current.provisioned_runner_id = job.provisioned_runner_id;
                    let _ = self.save(&mut current, expected).await;
                    if current.status.is_terminal() {
                        let _ = self.backend.stop(&started.id, Duration::from_secs(5)).await;
                    }
                }
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record started container"),
        }
        Ok(started.id)
    }

    async fn delete_runner_named(&self, scope: &Scope, name: &str) {
        if let Ok(runners) = self.registry.list_runners(scope).await {
            for r in runners.into_iter().filter(|r| r.name == name) {
                let _ = self.registry.delete_runner(scope, r.id).await;
            }
        }
    }

    /// Deletes the runner registered for the job's own container, if GitHub
    /// still has it (an ephemeral runner that ran its job is already gone).
    async fn deregister(&self, job: &Job) {
        let Some(scope) = self.scope_for(&job.repository) else {
            return;
        };
        let Some(runner_id) = job.provisioned_runner_id else {
            // Registration-token runners register themselves: we know only
            // the name we gave them.
            if self.config.registration == Registration::RegistrationToken
                && job.source != JobSource::Hook
            {
                self.delete_runner_named(&scope, &runner_name(job.id)).await;
            }
            return;
        };
        match self.registry.delete_runner(&scope, runner_id).await {
            Ok(()) => tracing::info!(job = %job.id, runner_id, "runner deregistered"),
            Err(GitHubError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(job = %job.id, runner_id, error = %e, "cannot deregister runner")
            }
        }
    }

    /// Records a failed or handed-over start; true when this writer's
    /// requeue (or failure) was the one stored.
    async fn provisioning_failed(&self, mut job: Job, failure: Failure) -> bool {
        let now = self.clock.now();
        let give_up = failure.fatal || (failure.counts && job.attempts >= self.config.max_attempts);
        if !failure.counts {
            job.attempts = job.attempts.saturating_sub(1);
        }
        job.last_error = Some(failure.message.clone());
        let target = if give_up {
            JobStatus::Failed
        } else {
            JobStatus::Queued
        };
        if job.transition(target, now).is_err() {
            return false;
        }
        if !give_up && failure.handoff {
            let grace = chrono::Duration::from_std(self.config.handoff_grace).unwrap_or_default();
            job.not_before = Some(now + grace);
        } else if !give_up && failure.delay {
            let delay = retry_delay(
                job.attempts.max(1),
                self.config.retry_base,
                self.config.retry_max,
                rand::random::<f64>(),
            );
            job.not_before = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
        }
        tracing::warn!(job = %job.id, attempt = job.attempts, error = %failure.message, gave_up = give_up, "provisioning failed");
        match self.save(&mut job, JobStatus::Provisioning).await {
            // GitHub settled the job meanwhile (finished, cancelled): nothing to retry.
            Ok(false) => false,
            Ok(true) => {
                metrics::counter!(m::JOB_TRANSITIONS, "to" => target.as_str()).increment(1);
                self.audit(
                    "orchestrator",
                    if give_up {
                        "job.failed"
                    } else {
                        "job.requeued"
                    },
                    Some(job.id),
                    serde_json::json!({"error": failure.message, "attempt": job.attempts}),
                )
                .await;
                true
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot record provisioning failure");
                false
            }
        }
    }

    // ------------------------------------------------------------ container exits

    /// A container of ours stopped.
    pub async fn on_container_exit(
        &self,
        container_id: &str,
        job_id: Option<Uuid>,
        exit_code: Option<i64>,
    ) {
        let Some(job_id) = job_id else { return };
        let Ok(Some(job)) = self.store.get_job(job_id).await else {
            return;
        };
        tracing::info!(job = %job.id, container = %container_id, exit_code = ?exit_code, status = %job.status, "runner container exited");
        self.audit(
            "orchestrator",
            "container.exited",
            Some(job.id),
            serde_json::json!({"containerId": container_id, "exitCode": exit_code}),
        )
        .await;
        // A container handed over to another job is no longer this job's.
        if job.container_id.as_deref() == Some(container_id) {
            self.settle_exit(job.clone(), container_id, exit_code).await;
        }
        // The exit code is the runner's in that container: it belongs to the
        // job that ran there when that was another job.
        if let Ok(Some(mut other)) = self.store.find_job_ran_in_container(container_id).await
            && other.id != job.id
            && other.exit_code.is_none()
            && let Some(code) = exit_code.and_then(|c| i32::try_from(c).ok())
        {
            other.exit_code = Some(code);
            let expected = other.status;
            let _ = self.save(&mut other, expected).await;
        }
        self.remove_network_when_unused(&job.repository).await;
        self.wake.notify_one();
    }

    async fn settle_exit(&self, mut job: Job, container_id: &str, exit_code: Option<i64>) {
        for _ in 0..CAS_RETRIES {
            let expected = job.status;
            if expected != JobStatus::Provisioning {
                // Its own container's code, unless another job ran there.
                if job.ran_in_container_id.is_none() {
                    job.exit_code = exit_code
                        .and_then(|c| i32::try_from(c).ok())
                        .or(job.exit_code);
                }
                job.updated_at = self.clock.now();
                match self.save(&mut job, expected).await {
                    Ok(true) => {
                        self.deregister(&job).await;
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %e, "cannot record container exit");
                        return;
                    }
                }
            } else {
                // The runner exited and we never heard that it took this job.
                // GitHub knows: the job may have run (its events are late or
                // lost, or we only poll), or another job took the runner.
                match self.settle_from_github(&job).await {
                    GitHubSays::Settled => return,
                    GitHubSays::Unknown => {
                        // Cannot tell whether it ran: wait, without using an attempt.
                        job.container_id = None;
                        self.provisioning_failed(
                            job,
                            Failure::wait(
                                "runner exited; GitHub could not be asked about the job".into(),
                            ),
                        )
                        .await;
                        return;
                    }
                    GitHubSays::NotStarted => {}
                }
                job.container_id = None;
                job.exit_code = exit_code.and_then(|c| i32::try_from(c).ok());
                let other = self
                    .store
                    .find_job_ran_in_container(container_id)
                    .await
                    .ok()
                    .flatten();
                let failure = match (other, exit_code) {
                    // The other job's own runner, if it got one, is free to
                    // take this job; if it never got one, nothing is owed.
                    (Some(other), _) if other.container_id.is_some() => Failure::handoff(format!(
                        "its runner took job {} instead; waiting for that job's runner to take this one",
                        other.id
                    )),
                    (Some(other), _) => Failure::handoff_now(format!(
                        "its runner took job {} instead; starting another runner",
                        other.id
                    )),
                    (None, Some(c)) => Failure::retry(format!(
                        "runner container exited with code {c} before taking the job"
                    )),
                    (None, None) => {
                        Failure::retry("runner container disappeared before taking the job".into())
                    }
                };
                let runner_of_attempt = job.clone();
                if self.provisioning_failed(job, failure).await {
                    self.deregister(&runner_of_attempt).await;
                }
                return;
            }
            match self.store.get_job(job.id).await {
                Ok(Some(current)) if current.container_id.as_deref() == Some(container_id) => {
                    job = current
                }
                _ => return,
            }
        }
    }

    /// Asks GitHub where the job is and records it when GitHub has moved it
    /// on (running or finished). True when the record was brought up to date.
    async fn settle_from_github(&self, job: &Job) -> GitHubSays {
        let (Some(github_job_id), Ok((owner, repo))) = (
            job.github_job_id,
            proxy_runner_domain::names::parse_repository(&job.repository),
        ) else {
            return GitHubSays::NotStarted;
        };
        let info = match self
            .registry
            .get_workflow_job(owner, repo, github_job_id)
            .await
        {
            Ok(info) => info,
            Err(GitHubError::NotFound(_)) => return GitHubSays::NotStarted,
            Err(e) => {
                tracing::debug!(job = %job.id, error = %e, "cannot ask GitHub about the job");
                return GitHubSays::Unknown;
            }
        };
        let action = match info.status.as_str() {
            "completed" => JobAction::Completed,
            "in_progress" => JobAction::InProgress,
            _ => return GitHubSays::NotStarted,
        };
        match self.ingest(action, &info, job.source).await {
            Ok(_) => GitHubSays::Settled,
            Err(_) => GitHubSays::Unknown,
        }
    }

    /// Removes the repository's network once no container uses it. The exit
    /// event comes before the engine has removed the container, so this
    /// tries a few times while the network still looks in use.
    async fn remove_network_when_unused(&self, repository: &str) {
        let network = network_name(&self.config.network_prefix, repository);
        for attempt in 0..8u32 {
            {
                // Under the lock, a job of this repository that is starting
                // is in `in_flight` (it was put there before its
                // `ensure_network`): leave the network to its exit.
                let _guard = self.network_lock.lock().await;
                let starting = self
                    .in_flight
                    .lock()
                    .expect("lock")
                    .values()
                    .any(|r| r.eq_ignore_ascii_case(repository));
                if starting {
                    return;
                }
                match self.backend.remove_network_if_unused(&network).await {
                    Ok(true) => {
                        tracing::info!(network = %network, "network removed");
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::debug!(network = %network, error = %e, "network kept"),
                }
            }
            // Containers detach a moment after their exit event.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
        }
    }

    /// Settles what no event told us: containers that vanished unseen,
    /// provisioning cut off by a restart, runners idle past the timeout, and
    /// running jobs whose end GitHub reported to nobody.
    pub async fn reconcile(&self) {
        let Ok(provisioning) = self
            .store
            .list_jobs(&JobFilter {
                status: Some(JobStatus::Provisioning),
                limit: 500,
                ..Default::default()
            })
            .await
        else {
            return;
        };
        // Taken after the listing: a job `tick` moves to provisioning is in
        // `in_flight` before its status is written.
        let in_flight = self.in_flight.lock().expect("lock").clone();
        // Listed last: every container whose id a job above records was
        // started before that record was written, so it shows here.
        let Ok(live) = self.backend.list(&self.config.instance).await else {
            return;
        };
        let live_ids: HashMap<&str, bool> =
            live.iter().map(|c| (c.id.as_str(), c.running)).collect();
        let now = self.clock.now();
        for job in provisioning {
            if in_flight.contains_key(&job.id) {
                continue;
            }
            match job.container_id.clone() {
                None => {
                    self.provisioning_failed(
                        job,
                        Failure::wait("provisioning was interrupted".into()),
                    )
                    .await;
                }
                Some(c) if !live_ids.get(c.as_str()).copied().unwrap_or(false) => {
                    self.on_container_exit(&c, Some(job.id), None).await
                }
                Some(_) => {}
            }
        }

        // Idle runners: a live container whose runner runs no job.
        for c in live.iter().filter(|c| c.running) {
            let Some(owner_id) = c
                .labels
                .get(label_keys::JOB_ID)
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue;
            };
            if in_flight.contains_key(&owner_id) {
                continue;
            }
            let Ok(Some(owner)) = self.store.get_job(owner_id).await else {
                continue;
            };
            let serving_other = matches!(
                self.store.find_job_ran_in_container(&c.id).await,
                Ok(Some(other)) if !other.status.is_terminal()
            );
            let serving_own = owner.container_id.as_deref() == Some(c.id.as_str())
                && owner.status == JobStatus::Running
                && owner.ran_in_container_id.is_none();
            let idle_for = (now - owner.updated_at).to_std().unwrap_or_default();
            if serving_other || serving_own || idle_for <= self.config.idle_timeout {
                continue;
            }
            // No event said the runner took its job, but events can be lost
            // (and polling only sees queued jobs): GitHub decides.
            if owner.status == JobStatus::Provisioning
                && owner.container_id.as_deref() == Some(c.id.as_str())
                && self.settle_from_github(&owner).await != GitHubSays::NotStarted
            {
                continue;
            }
            tracing::warn!(job = %owner.id, container = %c.id, "runner idle past the timeout; stopping it");
            let _ = self.backend.stop(&c.id, Duration::from_secs(10)).await;
        }

        // Running jobs GitHub may have finished without a webhook reaching
        // us; each is asked at most once per `settle_after`.
        let mut after = None;
        loop {
            let Ok(page) = self
                .store
                .list_jobs(&JobFilter {
                    status: Some(JobStatus::Running),
                    after,
                    limit: 500,
                    ..Default::default()
                })
                .await
            else {
                return;
            };
            after = page.last().map(|j| j.id);
            let last_page = page.len() < 500;
            for job in page {
                let quiet_for = (now - job.updated_at).to_std().unwrap_or_default();
                let asked_lately = self
                    .last_asked
                    .lock()
                    .expect("lock")
                    .get(&job.id)
                    .is_some_and(|t| t.elapsed() < self.config.settle_after);
                if job.github_job_id.is_some()
                    && quiet_for > self.config.settle_after
                    && !asked_lately
                {
                    self.last_asked
                        .lock()
                        .expect("lock")
                        .insert(job.id, std::time::Instant::now());
                    self.settle_from_github(&job).await;
                }
            }
            if last_page {
                break;
            }
        }
        // Forget jobs that are no longer running.
        let keep_for = self.config.settle_after * 2;
        self.last_asked
            .lock()
            .expect("lock")
            .retain(|_, t| t.elapsed() < keep_for);
    }

    // ------------------------------------------------------------ loops

    /// Runs the scheduler, the event watcher and the reconciler until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let scheduler = {
            let this = Arc::clone(self);
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = this.tick().await {
                        tracing::debug!(error = %e, "scheduling round skipped");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = this.wake.notified() => {},
                        _ = tokio::time::sleep(this.config.tick) => {},
                    }
                }
            })
        };
        let watcher = {
            let this = Arc::clone(self);
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let mut events = this.backend.events(&this.config.instance);
                    // Exits missed while not subscribed are found by reconcile.
                    this.reconcile().await;
                    loop {
                        tokio::select! {
                                                    _ = stop.cancelled() => return,
                                                    ev = events.next() => match ev {
                        Some(Ok(ContainerEvent::Exited { container_id, job_id, exit_code })) => {
                                                            // Handled on its own task: cleanup waits must not hold up other exits.
                                                            let this = Arc::clone(&this);
                                                            tokio::spawn(async move {
                                                                this.on_container_exit(&container_id, job_id, Some(exit_code)).await;
                                                            });
                                                        }
                                                        Some(Err(e)) => {
                                                            tracing::warn!(error = %e, "container event stream failed");
                                                            break;
                                                        }
                                                        None => break,
                                                    }
                                                }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    }
                }
            })
        };
        let reconciler = {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(this.config.reconcile_every) => this.reconcile().await,
                    }
                }
            })
        };
        vec![scheduler, watcher, reconciler]
    }

    /// Wakes the scheduler (a job was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The job a runner was started for, from its name: `ephemeral-{job id}`,
/// with a suffix for later runners of the same job.
fn runner_owner(runner_name: &str) -> Option<Uuid> {
    let rest = runner_name.strip_prefix("ephemeral-")?;
    Uuid::parse_str(rest.get(..36)?).ok()
}

/// What GitHub said when asked about a job whose runner went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GitHubSays {
    /// Running or finished there: our record is brought up to date.
    Settled,
    /// Still queued (or unknown to GitHub): no runner took it.
    NotStarted,
    /// GitHub could not be asked (rate limit, breaker open, network).
    Unknown,
}

/// Why provisioning failed, and whether to retry.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    /// Give up at once (no retry can help).
    fatal: bool,
    /// Counts against `max_attempts` (waiting for a daemon or a rate limit does not).
    counts: bool,
    /// Wait (backoff) before the next attempt.
    delay: bool,
    /// The job's runner took another job: wait `handoff_grace` for another
    /// runner to take this one before starting a new one.
    handoff: bool,
}

impl Failure {
    fn fatal(message: String) -> Self {
        Failure {
            message,
            fatal: true,
            counts: true,
            delay: false,
            handoff: false,
        }
    }
    fn retry(message: String) -> Self {
        Failure {
            message,
            fatal: false,
            counts: true,
            delay: true,
            handoff: false,
        }
    }
    /// Not a failure: the job's runner served another job.
    fn handoff(message: String) -> Self {
        Failure {
            message,
            fatal: false,
            counts: false,
            delay: false,
            handoff: true,
        }
    }
    /// Not a failure, and no runner is free for the job: start one now.
    fn handoff_now(message: String) -> Self {
        Failure {
            message,
            fatal: false,
            counts: false,
            delay: false,
            handoff: false,
        }
    }
    /// Waiting for something outside (engine down, rate limit): no attempt used.
    fn wait(message: String) -> Self {
        Failure {
            message,
            fatal: false,
            counts: false,
            delay: true,
            handoff: false,
        }
    }
    fn github(e: GitHubError) -> Self {
        match e {
            GitHubError::RateLimited { .. } | GitHubError::CircuitOpen { .. } => {
                Failure::wait(e.to_string())
            }
            GitHubError::Conflict(_) => Failure::retry(e.to_string()),
            _ if e.is_retryable() => Failure::retry(e.to_string()),
            _ => Failure::fatal(e.to_string()),
        }
    }
    fn backend(e: BackendError) -> Self {
        match e {
            BackendError::DaemonUnreachable(_) | BackendError::NameConflict(_) => {
                Failure::wait(e.to_string())
            }
            BackendError::ImageMissing { .. } => Failure::fatal(e.to_string()),
            _ => Failure::retry(e.to_string()),
        }
    }
}
