//! A runner container stopped: record the exit on the job it belongs to, or
//! find out from GitHub why the runner ended before taking its job.

use proxy_runner_domain::failure::Failure;
use proxy_runner_domain::ports::StoreError;
use proxy_runner_domain::{Job, JobSource, JobStatus};
use uuid::Uuid;

use super::Autoscaler;
use super::ingest::GitHubSays;
use crate::audit::retry_cas;

impl Autoscaler {
    /// A container of ours stopped.
    pub async fn on_container_exit(
        &self,
        container_id: &str,
        job_id: Option<Uuid>,
        exit_code: Option<i64>,
    ) {
        let code = exit_code.and_then(|c| i32::try_from(c).ok());
        let Some(job_id) = job_id else {
            // Only warm runners' containers name no job.
            self.warm_container_exited(container_id, code).await;
            return;
        };
        let Ok(Some(job)) = self.store.get_job(job_id).await else {
            return;
        };
        if job.source == JobSource::Hook {
            // A proxy-path container (job, service, step): not a runner's.
            return;
        }
        tracing::info!(job = %job.id, container = %container_id, exit_code = ?exit_code, status = %job.status, "runner container exited");
        self.audit
            .record(
                "orchestrator",
                "container.exited",
                Some(job.id),
                serde_json::json!({"containerId": container_id, "exitCode": exit_code}),
            )
            .await;
        // A container handed over to another job is no longer this job's.
        if job.container_id.as_deref() == Some(container_id) {
            let settled = retry_cas(
                || self.try_settle_exit(job.id, container_id, code),
                || StoreError::Unavailable("the job kept changing".into()),
            )
            .await;
            if let Err(e) = settled {
                tracing::error!(job = %job.id, error = %e, "cannot record container exit");
            }
        }
        // The exit code is the runner's in that container: it belongs to the
        // job that ran there when that was another job.
        if let (Ok(Some(mut other)), Some(code)) = (
            self.store.find_job_ran_in_container(container_id).await,
            code,
        ) && other.id != job.id
            && other.runner_container_exited(code)
        {
            let expected = other.status;
            let _ = self.save(&mut other, expected, &[]).await;
        }
        self.remove_network_when_unused(&job.repository).await;
        self.wake.notify_one();
    }

    /// One attempt at recording the exit of the job's own container; `None`
    /// when another writer won.
    async fn try_settle_exit(
        &self,
        job_id: Uuid,
        container_id: &str,
        exit_code: Option<i32>,
    ) -> Result<Option<()>, StoreError> {
        let mut job = match self.store.get_job(job_id).await? {
            Some(job) if job.container_id.as_deref() == Some(container_id) => job,
            _ => return Ok(Some(())),
        };
        let expected = job.status;
        if expected == JobStatus::Provisioning {
            self.exited_before_taking_the_job(job, container_id, exit_code)
                .await;
            return Ok(Some(()));
        }
        job.own_container_exited(exit_code, self.now());
        if !self.save(&mut job, expected, &[]).await? {
            return Ok(None);
        }
        self.deregister(&job).await;
        Ok(Some(()))
    }

    /// The runner exited and we never heard that it took this job. GitHub
    /// knows: the job may have run (its events are late or lost, or we only
    /// poll), or another job took the runner.
    async fn exited_before_taking_the_job(
        &self,
        mut job: Job,
        container_id: &str,
        exit_code: Option<i32>,
    ) {
        match self.settle_from_github(&job).await {
            GitHubSays::Settled => return,
            GitHubSays::Unknown => {
                // Cannot tell whether it ran: wait, without using an attempt.
                job.release_container();
                let failure =
                    Failure::Wait("runner exited; GitHub could not be asked about the job".into());
                self.provisioning_failed(job, failure).await;
                return;
            }
            GitHubSays::NotStarted => {}
        }
        job.container_exited_unused(exit_code);
        let other = self
            .store
            .find_job_ran_in_container(container_id)
            .await
            .ok()
            .flatten();
        let failure = match (other, exit_code) {
            // The other job's own runner, if it got one, is free to take
            // this job; if it never got one, nothing is owed.
            (Some(other), _) if other.container_id.is_some() => Failure::Handoff(format!(
                "its runner took job {} instead; waiting for that job's runner to take this one",
                other.id
            )),
            (Some(other), _) => Failure::HandoffNow(format!(
                "its runner took job {} instead; starting another runner",
                other.id
            )),
            (None, Some(c)) => Failure::Retry(format!(
                "runner container exited with code {c} before taking the job"
            )),
            (None, None) => {
                Failure::Retry("runner container disappeared before taking the job".into())
            }
        };
        let runner_of_attempt = job.clone();
        if self.provisioning_failed(job, failure).await {
            self.deregister(&runner_of_attempt).await;
        }
    }
}
