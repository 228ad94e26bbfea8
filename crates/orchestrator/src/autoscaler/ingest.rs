//! GitHub's job events (webhooks, polls, answers to our questions) into the
//! job store, and what they set off: a hand-off when a runner took another
//! job, an idle runner stopped when GitHub finished its job elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proxy_runner_domain::failure::Failure;
use proxy_runner_domain::ports::{BackendError, GitHubError, WorkflowJobInfo};
use proxy_runner_domain::runner_plan::runner_owner;
use proxy_runner_domain::warm::warm_id;
use proxy_runner_domain::{Job, JobSource, JobStatus, NewJob};
use uuid::Uuid;

use super::{AutoscaleError, Autoscaler};
use crate::audit::retry_cas;
use crate::metrics as m;

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

/// What GitHub said when asked about a job whose runner went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GitHubSays {
    /// Running or finished there: our record is brought up to date.
    Settled,
    /// Still queued (or unknown to GitHub): no runner took it.
    NotStarted,
    /// GitHub could not be asked (rate limit, breaker open, network).
    Unknown,
}

impl Autoscaler {
    /// Feeds one GitHub job event (webhook or poll) into the job store.
    pub async fn ingest(
        &self,
        action: JobAction,
        info: &WorkflowJobInfo,
        source: JobSource,
    ) -> Result<Ingested, AutoscaleError> {
        // Another writer (a container exit, a poll, a redelivery) may move the
        // job between our read and our write: read again and re-apply.
        retry_cas(
            || self.try_ingest(action, info, source),
            || AutoscaleError::KeptChanging(info.id),
        )
        .await
    }

    /// One attempt of [`Self::ingest`]; `None` when a concurrent write won.
    async fn try_ingest(
        &self,
        action: JobAction,
        info: &WorkflowJobInfo,
        source: JobSource,
    ) -> Result<Option<Ingested>, AutoscaleError> {
        let mut existing = self.store.find_by_github_job_id(info.id).await?;
        let tracking = existing.clone().filter(|j| self.is_proxy_tracking(j));
        if (existing.is_none() || tracking.is_some())
            && let Some(runner) = &info.runner_name
            && matches!(action, JobAction::InProgress | JobAction::Completed)
        {
            // A proxy runner's hook may have delegated this job already.
            match self.link_hook_job(runner, info, tracking).await? {
                Some(Some(hook_job)) => existing = Some(hook_job),
                Some(None) => {}
                None => return Ok(None),
            }
        }
        match existing {
            None => self.record_new(action, info, source).await,
            Some(job) => self.apply_to_existing(job, action, info).await,
        }
    }

    /// A record kept only to follow a job that proxy runners serve: GitHub
    /// told us of it, we never started a runner for it.
    fn is_proxy_tracking(&self, job: &Job) -> bool {
        job.source != JobSource::Hook
            && !self.autoscaled(&job.labels)
            && job.attempts == 0
            && job.container_id.is_none()
    }

    /// Links the hook-delegated job of `runner` for this run to GitHub's job
    /// id; a tracking record of the same job goes, so that the job has one
    /// record. `Some(None)`: there is no such hook job; `None`: a concurrent
    /// write won.
    async fn link_hook_job(
        &self,
        runner: &str,
        info: &WorkflowJobInfo,
        tracking: Option<Job>,
    ) -> Result<Option<Option<Job>>, AutoscaleError> {
        let Some(mut hook_job) = self
            .store
            .find_unlinked_hook_job(runner, &info.repository, info.run_id, info.run_attempt)
            .await?
        else {
            return Ok(Some(None));
        };
        if let Some(tracking) = tracking {
            // The GitHub job id moves to the hook's record.
            let merged = self.audit.event(
                "github",
                "job.merged",
                Some(hook_job.id),
                serde_json::json!({"githubJobId": info.id, "trackingRecord": tracking.id}),
            );
            if !self
                .store
                .delete_job(tracking.id, tracking.revision, &[merged])
                .await?
            {
                return Ok(None);
            }
        }
        let expected = hook_job.status;
        hook_job.link_github_job(info.id, info.runner_id, self.now());
        if !self.save(&mut hook_job, expected, &[]).await? {
            return Ok(None);
        }
        Ok(Some(Some(hook_job)))
    }

    async fn record_new(
        &self,
        action: JobAction,
        info: &WorkflowJobInfo,
        source: JobSource,
    ) -> Result<Option<Ingested>, AutoscaleError> {
        if self.pool_for(&info.labels).is_none() {
            metrics::counter!(m::WEBHOOKS, "outcome" => "not_ours").increment(1);
            return Ok(Some(Ingested::Ignored("labels not served")));
        }
        if action == JobAction::Waiting {
            return Ok(Some(Ingested::Ignored(
                "waiting for approval; provisioned once queued",
            )));
        }
        let now = self.now();
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
            dropped_secrets: 0,
        }
        .into_job(self.sources.ids.new_id(), now);
        // We may learn of it late: record what GitHub says now.
        self.apply_github_state(&mut job, action, info).await;
        let queued = self.audit.event(
            "github",
            "job.queued",
            Some(job.id),
            serde_json::json!({
                "githubJobId": info.id, "repository": info.repository, "labels": info.labels, "source": source,
            }),
        );
        let inserted = self.store.insert_job(&job, &[queued]).await?;
        if !inserted.is_new() {
            // Recorded meanwhile by another event: apply ours to that one.
            return Ok(None);
        }
        let id = inserted.job().id;
        tracing::info!(job = %id, github_job = info.id, repository = %info.repository, labels = ?info.labels, ?source, "job recorded");
        self.after_linking(&job).await;
        self.wake.notify_one();
        Ok(Some(Ingested::Created(id)))
    }

    async fn apply_to_existing(
        &self,
        mut job: Job,
        action: JobAction,
        info: &WorkflowJobInfo,
    ) -> Result<Option<Ingested>, AutoscaleError> {
        let before = job.clone();
        self.apply_github_state(&mut job, action, info).await;
        if job == before {
            return Ok(Some(Ingested::Unchanged(job.id)));
        }
        let moved = (job.status != before.status).then(|| {
            self.audit.event(
                "github",
                &format!("job.{}", job.status),
                Some(job.id),
                serde_json::json!({"githubJobId": info.id, "runnerName": job.runner_name, "conclusion": job.conclusion}),
            )
        });
        if !self.save(&mut job, before.status, moved.as_slice()).await? {
            return Ok(None);
        }
        if moved.is_some() {
            metrics::counter!(m::JOB_TRANSITIONS, "to" => job.status.as_str()).increment(1);
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
            || self.is_in_flight(owner_job.id)
        {
            return;
        }
        // The container is the other job's now; its exit is not this job's.
        owner_job.release_container();
        let failure = if job.container_id.is_some() {
            Failure::Handoff(format!(
                "its runner took job {} instead; waiting for that job's runner to take this one",
                job.id
            ))
        } else {
            Failure::HandoffNow(format!(
                "its runner took job {} instead; starting another runner",
                job.id
            ))
        };
        self.provisioning_failed(owner_job, failure).await;
        self.wake.notify_one();
    }

    /// Applies what GitHub says about the job to our record (in memory).
    async fn apply_github_state(&self, job: &mut Job, action: JobAction, info: &WorkflowJobInfo) {
        let now = self.now();
        match action {
            JobAction::Queued | JobAction::Waiting => {}
            JobAction::InProgress => {
                self.link_runner(job, info).await;
                job.started_on_github(now);
            }
            JobAction::Completed => {
                self.link_runner(job, info).await;
                job.finished_on_github(info.conclusion.clone(), now);
            }
        }
    }

    /// Records which runner took the job. A runner we started for job X may
    /// take job J with the same labels: J then records X's container.
    async fn link_runner(&self, job: &mut Job, info: &WorkflowJobInfo) {
        let Some(name) = &info.runner_name else {
            return;
        };
        let mut ran_in = None;
        if job.ran_in_container_id.is_none() {
            if let Some(owner) = runner_owner(name)
                && owner != job.id
                && let Ok(Some(owner_job)) = self.store.get_job(owner).await
            {
                ran_in = owner_job.container_id;
            } else if let Some(warm) = warm_id(name) {
                // A warm runner took it: the job runs in the warm container.
                ran_in = self.warm_runner_took_a_job(warm, job.id).await;
            }
        }
        job.taken_by_runner(name.clone(), info.runner_id, ran_in);
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
            self.tasks.spawn(async move {
                if let Err(e) = backend.stop(&container, Duration::from_secs(10)).await
                    && !matches!(e, BackendError::NotFound(_))
                {
                    tracing::warn!(job = %id, error = %e, "cannot stop idle runner container");
                }
            });
        }
    }

    /// Asks GitHub where the job is and records it when GitHub has moved it
    /// on (running or finished).
    pub(super) async fn settle_from_github(&self, job: &Job) -> GitHubSays {
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
}
