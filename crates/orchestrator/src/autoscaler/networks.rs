//! Repository networks: created before a job's container starts, removed
//! once no container uses them, never one while a job of its repository is
//! starting.

use std::time::Duration;

use proxy_runner_domain::names::network_name;
use proxy_runner_domain::ports::BackendError;
use proxy_runner_domain::runner_plan;
use proxy_runner_domain::sync::lock;

use super::Autoscaler;

impl Autoscaler {
    /// Creates the repository's network unless it exists.
    pub(super) async fn ensure_network(
        &self,
        network: &str,
        repository: &str,
    ) -> Result<(), BackendError> {
        let spec =
            runner_plan::network_spec(network.to_string(), repository, &self.config.instance);
        let _guard = self.network_lock.lock().await;
        self.backend.ensure_network(&spec).await
    }

    /// Removes the repository's network once no container uses it. The exit
    /// event comes before the engine has removed the container, so this
    /// tries a few times while the network still looks in use.
    pub(super) async fn remove_network_when_unused(&self, repository: &str) {
        let network = network_name(&self.config.network_prefix, repository);
        for attempt in 0..8u32 {
            {
                // Under the lock, a job of this repository that is starting
                // is in `in_flight` (it was put there before its
                // `ensure_network`): leave the network to its exit.
                let _guard = self.network_lock.lock().await;
                let starting = lock(&self.in_flight)
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
}
