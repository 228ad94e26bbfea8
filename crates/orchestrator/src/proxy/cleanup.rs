//! `cleanup_job`, and removing a job's containers whenever its end is known
//! (completion, the runner's next job, the job timeout).

use proxy_runner_domain::Job;

use super::{HookRequest, ProxyError, ProxyJobs, state_job_id};
use crate::auth::Principal;
use crate::service::ServiceError;

impl ProxyJobs {
    /// `cleanup_job`: removes everything of the caller's job. Returns the
    /// job's id and how many containers were removed. A job that already
    /// ended is cleaned up all the same (its completion may have come
    /// first).
    pub async fn cleanup(
        &self,
        who: &Principal,
        request: HookRequest,
    ) -> Result<(uuid::Uuid, usize), ProxyError> {
        let job = match self.find_job(who, &request).await {
            Ok(job) => job,
            Err(ProxyError::Service(ServiceError::NotFound(_)))
                if state_job_id(&request.state)?.is_some() =>
            {
                let id = state_job_id(&request.state)?.unwrap_or_default();
                match self.store.get_job(id).await? {
                    Some(job) if job.runner_name.as_deref() == Some(&request.runner_name) => job,
                    _ => {
                        return Err(ServiceError::NotFound(format!("no job with id {id}")).into());
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let removed = self.release(&job).await?;
        self.audit
            .record(
                &who.actor(),
                "proxy.cleaned_up",
                Some(job.id),
                serde_json::json!({"removed": removed}),
            )
            .await;
        Ok((job.id, removed))
    }

    /// Removes every container of `job` and its network when no other job
    /// uses it; records the removal on the job.
    pub async fn release(&self, job: &Job) -> Result<usize, ProxyError> {
        let removed = self
            .containers
            .remove_job(&self.config.instance, job.id)
            .await?;
        if let Some(record) = &job.job_container {
            match self
                .networks
                .remove_network_if_unused(&record.network)
                .await
            {
                Ok(_) => {}
                Err(e) => tracing::debug!(network = %record.network, error = %e, "network kept"),
            }
            if record.removed_at.is_none() {
                let now = self.sources.clock.now();
                self.update(job.id, move |j| {
                    j.containers_removed(now);
                    Vec::new()
                })
                .await?;
            }
        }
        if removed > 0 {
            tracing::info!(job = %job.id, removed, "job containers removed");
        }
        Ok(removed)
    }
}
