//! The proxy path's container port: the per-job container the runner's
//! container hooks run every step in, its services, container steps, and
//! their clean-up.
//!
//! The orchestrator is the only holder of the engine; the hook client on the
//! proxy runner asks it (over HTTP) and it drives a [`JobContainers`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use secrecy::SecretString;
use uuid::Uuid;

use crate::ports::{BackendError, ContainerInfo, EnvVar, labels};

/// Value of [`labels::PATH`] on everything of the proxy path.
pub const PROXY_PATH: &str = "proxy";

/// What a proxy-path container is for (value of [`labels::ROLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerRole {
    /// The long-lived container every script step runs in.
    Job,
    /// A `services:` container next to it.
    Service,
    /// A container action, run to completion.
    Step,
}

impl ContainerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRole::Job => "job",
            ContainerRole::Service => "service",
            ContainerRole::Step => "step",
        }
    }

    pub fn parse(text: &str) -> Option<ContainerRole> {
        match text {
            "job" => Some(ContainerRole::Job),
            "service" => Some(ContainerRole::Service),
            "step" => Some(ContainerRole::Step),
            _ => None,
        }
    }
}

/// The labels of a proxy-path container: instance, repository, job, path
/// and role. Clean-up finds a job's containers by instance and job id.
pub fn proxy_labels(
    instance: &str,
    repository: &str,
    job_id: Uuid,
    role: ContainerRole,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::INSTANCE.to_string(), instance.to_string()),
        (labels::REPOSITORY.to_string(), repository.to_string()),
        (labels::JOB_ID.to_string(), job_id.to_string()),
        (labels::PATH.to_string(), PROXY_PATH.to_string()),
        (labels::ROLE.to_string(), role.as_str().to_string()),
    ])
}

/// The entry point that keeps a job container alive between steps.
pub const KEEP_ALIVE_ENTRYPOINT: [&str; 3] = ["tail", "-f", "/dev/null"];

/// Capabilities a job container may be given back after all are dropped;
/// [`Confinement::validate`] refuses anything else.
pub const ALLOWED_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
];

/// How a proxy-path container is confined. What is not here is not
/// negotiable: every capability is dropped before `capabilities` are added
/// back, `no-new-privileges` is always set, containers are never privileged,
/// never share the host's network, PID or IPC namespaces, and never get the
/// engine's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Capabilities kept (a subset of [`ALLOWED_CAPABILITIES`]).
    pub capabilities: Vec<String>,
    pub read_only_root_filesystem: bool,
    /// Writable tmpfs mounts (absolute paths), for read-only roots.
    pub tmpfs: Vec<String>,
    pub pids_limit: i64,
    pub memory_bytes: i64,
    /// CPU in billionths of a CPU (Docker's NanoCPUs).
    pub nano_cpus: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid confinement: {0}")]
pub struct ConfinementError(pub String);

impl Confinement {
    /// Checks what an adapter relies on: known capabilities, positive
    /// limits, absolute tmpfs paths.
    pub fn validate(&self) -> Result<(), ConfinementError> {
        if let Some(cap) = self
            .capabilities
            .iter()
            .find(|c| !ALLOWED_CAPABILITIES.contains(&c.as_str()))
        {
            return Err(ConfinementError(format!(
                "capability {cap:?} is not one a job container may keep"
            )));
        }
        for (name, value) in [
            ("pids limit", self.pids_limit),
            ("memory limit", self.memory_bytes),
            ("CPU limit", self.nano_cpus),
        ] {
            if value <= 0 {
                return Err(ConfinementError(format!("{name} must be positive")));
            }
        }
        if let Some(path) = self
            .tmpfs
            .iter()
            .find(|p| !p.starts_with('/') || p.as_str() == "/" || p.contains([',', ':', '\0']))
        {
            return Err(ConfinementError(format!(
                "tmpfs path {path:?} must be an absolute path below /"
            )));
        }
        Ok(())
    }
}

/// A host directory bind-mounted into a container. `source` has passed the
/// policy's mount check (canonical, inside an allowed root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// A container port, published on the host only when `publish` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: PortProtocol,
    /// None: any free host port (when published).
    pub host_port: Option<u16>,
    /// None: the engine's default address (when published).
    pub host_ip: Option<String>,
    pub publish: bool,
}

impl PortMapping {
    /// The engine's name of the container port, e.g. `8080/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol.as_str())
    }
}

/// A job, service or step container to create.
#[derive(Debug, Clone)]
pub struct JobContainerSpec {
    pub name: String,
    pub image: String,
    /// Job env values are plain; values marked secret stay out of logs and
    /// errors (the engine itself stores container env).
    pub env: Vec<EnvVar>,
    /// Replaces the image's entry point (e.g. [`KEEP_ALIVE_ENTRYPOINT`]).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command (arguments after the entry point).
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// None: the image's default user.
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<BindMount>,
    /// See [`proxy_labels`].
    pub labels: BTreeMap<String, String>,
    /// The repository's network; the container joins no other.
    pub network: String,
    /// Names other containers on the network reach this one by.
    pub network_aliases: Vec<String>,
    pub confinement: Confinement,
    pub ports: Vec<PortMapping>,
    /// Run a minimal init as PID 1 that reaps orphaned processes (the job
    /// container's steps leave some behind).
    pub init: bool,
}

/// A created and running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedJobContainer {
    pub id: String,
    pub name: String,
    /// Published ports: container port (`8080/tcp`) -> host port.
    pub ports: BTreeMap<String, String>,
}

/// One command in a running container (a script step).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub container_id: String,
    /// Program and arguments, e.g. `["bash", "-e", "/__w/_temp/x.sh"]`.
    pub command: Vec<String>,
    pub env: Vec<EnvVar>,
    /// Put in front of the container's own `PATH`, first entry first.
    pub prepend_path: Vec<String>,
    pub working_dir: Option<String>,
    /// None: the container's user.
    pub user: Option<String>,
}

/// What a step produces, in order. A stream of these ends right after
/// `Exit`; an error ends it early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutput {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(i64),
}

pub type StepStream = BoxStream<'static, Result<StepOutput, BackendError>>;

/// Credentials for pulling one image; held in memory only.
#[derive(Debug, Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: SecretString,
    /// e.g. `ghcr.io`; None: the registry named by the image.
    pub server: Option<String>,
}

/// Creates, runs and removes the containers of proxy-path jobs.
#[async_trait]
pub trait JobContainers: Send + Sync + 'static {
    /// Creates and starts the long-lived job container. Never pulls: a
    /// missing image is `ImageMissing`.
    async fn create_job_container(
        &self,
        spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError>;

    /// Creates and starts a service container (reachable on the network by
    /// `spec.network_aliases`). Never pulls.
    async fn start_service(
        &self,
        spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError>;

    /// Runs a command in a running container. Output is streamed as it
    /// comes, stdout and stderr apart, then the exit code. Errors before
    /// anything ran are returned directly.
    async fn exec(&self, spec: &ExecSpec) -> Result<StepStream, BackendError>;

    /// Creates a container, runs it to completion streaming its output and
    /// exit code like [`JobContainers::exec`], and removes it (also when
    /// the stream is dropped early). Never pulls.
    async fn run_to_completion(&self, spec: &JobContainerSpec) -> Result<StepStream, BackendError>;

    /// Whether the image is present on the engine.
    async fn image_present(&self, image: &str) -> Result<bool, BackendError>;

    /// Pulls an image, with credentials if given. Only when asked: nothing
    /// else here ever pulls.
    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), BackendError>;

    /// Force-removes every container labelled with this instance and job
    /// (job, services, steps); how many were removed.
    async fn remove_job(&self, instance: &str, job_id: Uuid) -> Result<usize, BackendError>;

    /// Proxy-path containers of this instance, running or not.
    async fn list_proxy_containers(
        &self,
        instance: &str,
    ) -> Result<Vec<ContainerInfo>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confinement() -> Confinement {
        Confinement {
            capabilities: vec!["CHOWN".into(), "SETUID".into()],
            read_only_root_filesystem: false,
            tmpfs: vec![],
            pids_limit: 10,
            memory_bytes: 1 << 20,
            nano_cpus: 1,
        }
    }

    #[test]
    fn labels_carry_path_role_and_job() {
        let job = Uuid::now_v7();
        let l = proxy_labels("inst", "octo/repo", job, ContainerRole::Service);
        assert_eq!(l[labels::INSTANCE], "inst");
        assert_eq!(l[labels::REPOSITORY], "octo/repo");
        assert_eq!(l[labels::JOB_ID], job.to_string());
        assert_eq!(l[labels::PATH], "proxy");
        assert_eq!(l[labels::ROLE], "service");
        for role in [
            ContainerRole::Job,
            ContainerRole::Service,
            ContainerRole::Step,
        ] {
            assert_eq!(ContainerRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(ContainerRole::parse("other"), None);
    }

    #[test]
    fn confinement_refuses_unknown_capabilities_and_bad_limits() {
        assert_eq!(confinement().validate(), Ok(()));
        let mut c = confinement();
        c.capabilities.push("SYS_ADMIN".into());
        assert!(c.validate().expect_err("refused").0.contains("SYS_ADMIN"));
        let mut c = confinement();
        c.pids_limit = 0;
        assert!(c.validate().is_err());
        let mut c = confinement();
        c.memory_bytes = -1;
        assert!(c.validate().is_err());
        for path in ["tmp", "/", "/a,b", "/a:b"] {
            let mut c = confinement();
            c.tmpfs = vec![path.into()];
            assert!(c.validate().is_err(), "{path}");
        }
    }

    #[test]
    fn port_keys_name_port_and_protocol() {
        let p = PortMapping {
            container_port: 53,
            protocol: PortProtocol::Udp,
            host_port: None,
            host_ip: None,
            publish: false,
        };
        assert_eq!(p.key(), "53/udp");
    }
}
