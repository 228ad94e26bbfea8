//! One scheduling round: which queued jobs start now, within the caps.

use std::collections::BTreeMap;
use std::sync::Arc;

use proxy_runner_domain::job_containers::PROXY_PATH;
use proxy_runner_domain::ports::{BackendError, ContainerInfo, JobFilter, labels as label_keys};
use proxy_runner_domain::schedule::{Waiting, pick_jobs_to_start};
use proxy_runner_domain::sync::lock;
use proxy_runner_domain::{Job, JobSource, JobStatus};
use uuid::Uuid;

use super::warm::is_due;
use super::{AutoscaleError, Autoscaler};
use crate::metrics as m;

/// Containers of the proxy path (job, service and step containers) are not
/// ephemeral runners: they count against no cap and are no runner to reap.
pub(super) fn is_proxy_path(c: &ContainerInfo) -> bool {
    c.labels.get(label_keys::PATH).map(String::as_str) == Some(PROXY_PATH)
}

/// Page size of the store listings the autoscaler walks.
pub(super) const PAGE: usize = 500;

impl Autoscaler {
    /// One scheduling round: starts as many queued jobs as the caps allow.
    /// Returns the ids whose provisioning was started.
    pub async fn tick(self: &Arc<Self>) -> Result<Vec<Uuid>, AutoscaleError> {
        Ok(self.round().await?.0)
    }

    /// One scheduling round: the jobs whose provisioning it started, and how
    /// many warm runners it started.
    pub(super) async fn round(self: &Arc<Self>) -> Result<(Vec<Uuid>, usize), AutoscaleError> {
        let queued = self.queued_github_jobs().await?;
        let warm = self.warm_configured() || self.has_warm_runners();
        // With work to do, listing the containers is the engine check (one
        // call less per round while a burst starts); idle, a ping.
        let engine = if queued.is_empty() && !warm {
            self.backend.ping().await.map(|()| None)
        } else {
            self.live_for_round(warm).await.map(Some)
        };
        metrics::gauge!(m::BACKEND_UP).set(if engine.is_ok() { 1.0 } else { 0.0 });
        let Some(mut live) = engine.map_err(AutoscaleError::EngineNotReady)? else {
            return Ok((Vec::new(), 0));
        };
        let now = self.now();
        let candidates: Vec<&Job> = queued.iter().filter(|j| !self.is_in_flight(j.id)).collect();
        // A job a warm runner took or can take gets no cold start.
        let held = self.hold_for_warm(&candidates, now);
        let due: Vec<&Job> = candidates
            .iter()
            .copied()
            .filter(|j| is_due(j, now))
            .collect();
        let waiting: Vec<Waiting> = candidates
            .iter()
            .filter(|j| !held.jobs.contains(&j.id))
            .map(|j| Waiting {
                id: j.id,
                repository: j.repository.clone(),
                created_at: j.created_at,
                not_before: j.not_before,
            })
            .collect();
        let picked = pick_jobs_to_start(&waiting, &live, self.config.caps, now);
        let mut started = Vec::new();
        for id in &picked {
            let Some(job) = queued.iter().find(|j| j.id == *id).cloned() else {
                continue;
            };
            *live.entry(job.repository.to_ascii_lowercase()).or_default() += 1;
            if self.start_provisioning(job).await? {
                started.push(*id);
            }
        }
        let starved: Vec<String> = due
            .iter()
            .filter(|j| !held.jobs.contains(&j.id) && !picked.contains(&j.id))
            .map(|j| j.repository.to_ascii_lowercase())
            .collect();
        let warm_started = if warm {
            self.warm_round(&live, &starved, &held, now).await
        } else {
            0
        };
        Ok((started, warm_started))
    }

    /// Queued jobs that came from GitHub (hook jobs are already running on
    /// their proxy runner), all pages.
    pub(super) async fn queued_github_jobs(&self) -> Result<Vec<Job>, AutoscaleError> {
        let mut queued = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    status: Some(JobStatus::Queued),
                    repository: None,
                    after,
                    limit: PAGE,
                })
                .await?;
            let done = page.len() < PAGE;
            after = page.last().map(|j| j.id);
            queued.extend(
                page.into_iter()
                    .filter(|j| j.source != JobSource::Hook && self.autoscaled(&j.labels)),
            );
            if done {
                return Ok(queued);
            }
        }
    }

    /// Records the job as provisioning and starts its provisioning task.
    /// False when another writer moved the job first.
    async fn start_provisioning(self: &Arc<Self>, mut job: Job) -> Result<bool, AutoscaleError> {
        if job.start_provisioning(self.now()).is_err() {
            return Ok(false);
        }
        // In flight before the write, so `reconcile` never sees it as
        // provisioning without a provisioner.
        lock(&self.in_flight).insert(job.id, job.repository.to_ascii_lowercase());
        let saved = self.save(&mut job, JobStatus::Queued, &[]).await;
        if !matches!(saved, Ok(true)) {
            lock(&self.in_flight).remove(&job.id);
            return saved.map_err(AutoscaleError::from);
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let (id, repository) = (job.id, job.repository.clone());
            let started = this.provision(job).await;
            lock(&this.in_flight).remove(&id);
            if !started {
                // The network may have been created for nothing.
                this.remove_network_when_unused(&repository).await;
            }
        });
        Ok(true)
    }

    /// The live counts of a round with work to do; after a restart, the
    /// warm runners on the engine are found first, so that they count.
    async fn live_for_round(&self, warm: bool) -> Result<BTreeMap<String, usize>, BackendError> {
        if warm {
            self.sync_warm_once().await?;
        }
        self.live_counts().await
    }

    /// Live containers per repository (lower-case), counting in-flight starts.
    async fn live_counts(&self) -> Result<BTreeMap<String, usize>, BackendError> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        // In-flight first: a start that finishes after this snapshot has its
        // container in the listing below. Only `tick` adds to the set.
        let in_flight = lock(&self.in_flight).clone();
        let containers = self.backend.list(&self.config.instance).await?;
        // Every running container counts, also one still running another
        // job for a job that is being provisioned again (a hand-off); a
        // container whose start races this count is counted twice for a
        // moment, which errs on the side of the caps.
        for c in containers.iter().filter(|c| c.running && !is_proxy_path(c)) {
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
}
