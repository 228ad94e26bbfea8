//! What no `cleanup_job` removed: containers of jobs that ended (the runner
//! was killed mid-job, the orchestrator restarted), and delegated jobs whose
//! completion never came within the job timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proxy_runner_domain::ports::{JobFilter, labels as label_keys};
use proxy_runner_domain::{JobSource, JobStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ProxyError, ProxyJobs};

/// How often the reaper looks.
const REAP_EVERY: Duration = Duration::from_secs(30);
const PAGE: usize = 500;

impl ProxyJobs {
    /// One pass: containers whose job ended or is unknown are removed
    /// (after a restart, those of running jobs are adopted as they are),
    /// and delegated jobs past the timeout are closed and cleaned up.
    pub async fn reap(&self) -> Result<(), ProxyError> {
        let live = self
            .containers
            .list_proxy_containers(&self.config.instance)
            .await?;
        let jobs: BTreeSet<Uuid> = live
            .iter()
            .filter_map(|c| c.labels.get(label_keys::JOB_ID))
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect();
        let (mut kept, mut removed) = (0, 0);
        for id in jobs {
            match self.store.get_job(id).await? {
                Some(job) if !job.status.is_terminal() => kept += 1,
                Some(job) => {
                    self.release(&job).await?;
                    removed += 1;
                }
                None => {
                    self.containers
                        .remove_job(&self.config.instance, id)
                        .await?;
                    removed += 1;
                }
            }
        }
        if kept + removed > 0 {
            tracing::info!(
                kept,
                removed,
                "proxy reaper: containers of running jobs kept, of ended or unknown jobs removed"
            );
        }
        self.close_timed_out().await
    }

    /// Delegated jobs running longer than the job timeout: GitHub has ended
    /// them by now, and their runner never reported it.
    async fn close_timed_out(&self) -> Result<(), ProxyError> {
        let now = self.sources.clock.now();
        let timeout = chrono::Duration::seconds(
            i64::try_from(self.config.section.job_timeout_secs).unwrap_or(i64::MAX / 1000),
        );
        let mut after = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    status: Some(JobStatus::Running),
                    after,
                    limit: PAGE,
                    ..Default::default()
                })
                .await?;
            after = page.last().map(|j| j.id);
            let last_page = page.len() < PAGE;
            for job in page.into_iter().filter(|j| j.source == JobSource::Hook) {
                let since = job.started_at.unwrap_or(job.created_at);
                if now - since <= timeout {
                    continue;
                }
                let reason = format!(
                    "no completion within the job timeout ({} s)",
                    self.config.section.job_timeout_secs
                );
                self.close(&job, reason).await?;
            }
            if last_page {
                return Ok(());
            }
        }
    }

    /// Closes a delegated job whose end was never reported, and removes its
    /// containers.
    pub async fn close(
        &self,
        job: &proxy_runner_domain::Job,
        reason: String,
    ) -> Result<(), ProxyError> {
        let now = self.sources.clock.now();
        let shown = reason.clone();
        let closed = self
            .update(job.id, move |j| {
                let _ = j.timed_out(shown.clone(), now);
                if j.status != JobStatus::Failed {
                    return Vec::new();
                }
                vec![self.audit.event(
                    "orchestrator",
                    "job.closed",
                    Some(j.id),
                    serde_json::json!({"reason": shown}),
                )]
            })
            .await?;
        if closed.status == JobStatus::Failed {
            tracing::warn!(job = %job.id, reason = %reason, "delegated job closed");
        }
        self.release(&closed).await?;
        Ok(())
    }

    /// The runner delegates its next job: a job of it still open has ended
    /// without its completion being reported.
    pub async fn before_delegation(
        &self,
        runner_name: &str,
        next: &proxy_runner_domain::DelegationKey,
    ) -> Result<(), ProxyError> {
        let Some(open) = self.store.find_active_hook_job(runner_name).await? else {
            return Ok(());
        };
        if open.delegation_key().as_ref() == Some(next) {
            // The same job delegated again (a hook retry).
            return Ok(());
        }
        self.close(
            &open,
            "its runner started its next job before reporting this one's end".into(),
        )
        .await
    }

    /// Runs [`Self::reap`] until `stop`.
    pub fn spawn_reaper(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.reap().await {
                    tracing::warn!(error = %e, "reaping proxy-path containers failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REAP_EVERY) => {},
                }
            }
        })
    }
}
