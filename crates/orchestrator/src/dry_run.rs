//! A container backend that starts nothing: it records what it would have
//! started. Useful to try a configuration, and as the recording test double.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use proxy_runner_domain::ports::{
    BackendError, ContainerBackend, ContainerEvent, ContainerInfo, ContainerSpec, EnvValue,
    NetworkSpec, StartedContainer, labels,
};
use proxy_runner_domain::sync::lock;
use tokio::sync::broadcast;

/// One thing the dry-run backend was asked to do. Secret env values are
/// recorded as `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunCall {
    EnsureNetwork(String),
    Start {
        name: String,
        image: String,
        network: String,
        env: Vec<(String, String)>,
        /// Names of the secrets handed over on standard input.
        stdin: Vec<String>,
        labels: Vec<(String, String)>,
    },
    Stop(String),
    Remove(String),
    RemoveNetwork(String),
}

#[derive(Debug)]
pub struct DryRunBackend {
    calls: Mutex<Vec<DryRunCall>>,
    live: Mutex<Vec<ContainerInfo>>,
    events: broadcast::Sender<ContainerEvent>,
    unreachable: std::sync::atomic::AtomicBool,
    missing_images: Mutex<Vec<String>>,
    networks: Mutex<Vec<NetworkSpec>>,
}

impl Default for DryRunBackend {
    fn default() -> Self {
        DryRunBackend {
            calls: Mutex::new(Vec::new()),
            live: Mutex::new(Vec::new()),
            events: broadcast::channel(1024).0,
            unreachable: std::sync::atomic::AtomicBool::new(false),
            missing_images: Mutex::new(Vec::new()),
            networks: Mutex::new(Vec::new()),
        }
    }
}

impl DryRunBackend {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn calls(&self) -> Vec<DryRunCall> {
        lock(&self.calls).clone()
    }

    /// Makes the pretend engine unreachable (or reachable again).
    pub fn set_unreachable(&self, down: bool) {
        self.unreachable
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes `start` fail for this image as a real engine without it would.
    pub fn forget_image(&self, image: &str) {
        lock(&self.missing_images).push(image.to_string());
    }

    fn check_reachable(&self) -> Result<(), BackendError> {
        if self.unreachable.load(std::sync::atomic::Ordering::SeqCst) {
            Err(BackendError::DaemonUnreachable(
                "dry-run engine set unreachable".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Puts a container on the pretend engine as an earlier run of the
    /// orchestrator may have left it (`running: false`: created, never
    /// started).
    pub fn plant(&self, info: ContainerInfo) {
        lock(&self.live).push(info);
    }

    /// Containers currently "running".
    pub fn live(&self) -> Vec<ContainerInfo> {
        lock(&self.live).clone()
    }

    fn record(&self, call: DryRunCall) {
        tracing::info!(?call, "dry-run backend: would do");
        lock(&self.calls).push(call);
    }

    /// Pretends the container exited with `exit_code` (tests drive this).
    pub fn exit(&self, container_id: &str, exit_code: i64) {
        let info = {
            let mut live = lock(&self.live);
            let pos = live.iter().position(|c| c.id == container_id);
            pos.map(|p| live.remove(p))
        };
        if let Some(info) = info {
            let job_id = info
                .labels
                .get(proxy_runner_domain::ports::labels::JOB_ID)
                .and_then(|s| s.parse().ok());
            let _ = self.events.send(ContainerEvent::Exited {
                container_id: container_id.to_string(),
                job_id,
                exit_code,
            });
        }
    }
}

#[async_trait]
impl ContainerBackend for DryRunBackend {
    fn kind(&self) -> &'static str {
        "dry-run"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.check_reachable()
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), BackendError> {
        self.check_reachable()?;
        self.record(DryRunCall::EnsureNetwork(spec.name.clone()));
        let mut networks = lock(&self.networks);
        if !networks.iter().any(|n| n.name == spec.name) {
            networks.push(spec.clone());
        }
        Ok(())
    }

    async fn list_networks(&self, instance: &str) -> Result<Vec<NetworkSpec>, BackendError> {
        self.check_reachable()?;
        Ok(lock(&self.networks)
            .iter()
            .filter(|n| n.labels.get(labels::INSTANCE).map(String::as_str) == Some(instance))
            .cloned()
            .collect())
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, BackendError> {
        self.check_reachable()?;
        if lock(&self.missing_images).contains(&spec.image) {
            return Err(BackendError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        let mut live = lock(&self.live);
        if live.iter().any(|c| c.name == spec.name) {
            return Err(BackendError::NameConflict(spec.name.clone()));
        }
        let id = format!("dry-run-{}", uuid::Uuid::now_v7().simple());
        live.push(ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            running: true,
        });
        drop(live);
        self.record(DryRunCall::Start {
            name: spec.name.clone(),
            image: spec.image.clone(),
            network: spec.network.clone(),
            env: spec
                .env
                .iter()
                .map(|e| {
                    let v = match &e.value {
                        EnvValue::Plain(v) => v.clone(),
                        EnvValue::Secret(_) => "***".into(),
                    };
                    (e.name.clone(), v)
                })
                .collect(),
            stdin: spec.stdin_secrets.iter().map(|s| s.name.clone()).collect(),
            labels: spec.labels.clone().into_iter().collect(),
        });
        Ok(StartedContainer {
            id,
            name: spec.name.clone(),
        })
    }

    async fn stop(&self, container_id: &str, _grace: Duration) -> Result<(), BackendError> {
        self.record(DryRunCall::Stop(container_id.to_string()));
        let known = lock(&self.live).iter().any(|c| c.id == container_id);
        if !known {
            return Err(BackendError::NotFound(container_id.to_string()));
        }
        self.exit(container_id, 137);
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        self.record(DryRunCall::Remove(container_id.to_string()));
        let known = lock(&self.live).iter().any(|c| c.id == container_id);
        if known {
            self.exit(container_id, 137);
        }
        Ok(())
    }

    async fn remove_network_if_unused(&self, name: &str) -> Result<bool, BackendError> {
        self.record(DryRunCall::RemoveNetwork(name.to_string()));
        lock(&self.networks).retain(|n| n.name != name);
        Ok(true)
    }

    async fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, BackendError> {
        self.check_reachable()?;
        Ok(lock(&self.live)
            .iter()
            .filter(|c| {
                c.labels
                    .get(proxy_runner_domain::ports::labels::INSTANCE)
                    .map(String::as_str)
                    == Some(instance)
            })
            .cloned()
            .collect())
    }

    fn events(&self, _instance: &str) -> BoxStream<'static, Result<ContainerEvent, BackendError>> {
        let rx = self.events.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}
