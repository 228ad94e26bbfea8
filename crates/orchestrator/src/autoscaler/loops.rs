//! The autoscaler's background tasks: the scheduler, the engine's event
//! watch, the reconciler and the poller.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use proxy_runner_domain::JobSource;
use proxy_runner_domain::ports::{ContainerEvent, QueuedJobFeed};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Autoscaler, JobAction};

impl Autoscaler {
    /// Runs the scheduler, the event watcher and the reconciler until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).schedule_loop(stop.clone())),
            tokio::spawn(Arc::clone(self).watch_loop(stop.clone())),
            tokio::spawn(Arc::clone(self).reconcile_loop(stop)),
        ]
    }

    /// Feeds the jobs `feed` finds into the store until `stop`.
    pub fn spawn_poller(
        self: &Arc<Self>,
        feed: Arc<dyn QueuedJobFeed>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                for job in feed.poll_once().await {
                    if let Err(e) = this.ingest(JobAction::Queued, &job, JobSource::Poll).await {
                        tracing::warn!(error = %e, github_job = job.id, "cannot record polled job");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(feed.next_delay()) => {},
                }
            }
        })
    }

    async fn schedule_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::debug!(error = %e, "scheduling round skipped");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.config.tick) => {},
            }
        }
    }

    /// Follows the engine's exit events; after the stream drops, exits
    /// missed while not subscribed are found by reconciling.
    async fn watch_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let mut events = self.backend.events(&self.config.instance);
            self.reconcile().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = events.next() => match ev {
                        Some(Ok(ContainerEvent::Exited { container_id, job_id, exit_code })) => {
                            // On its own task: cleanup waits must not hold up other exits.
                            let this = Arc::clone(&self);
                            self.tasks.spawn(async move {
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
    }

    async fn reconcile_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.reconcile_every) => self.reconcile().await,
            }
        }
    }
}
