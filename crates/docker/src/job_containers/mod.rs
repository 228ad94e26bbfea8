//! [`JobContainers`] for [`DockerBackend`]: the proxy path's long-lived job
//! container, its services, container steps, and their removal.
//!
//! Output of steps is streamed frame by frame as the engine sends it; nothing
//! collects a whole step. Images are never pulled unless asked, the engine's
//! socket is never mounted, and secret values (env marked secret, registry
//! passwords) stay out of bollard's logs and of errors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountType, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use proxy_runner_domain::job_containers::{
    ExecSpec, JobContainerSpec, JobContainers, PROXY_PATH, PortMapping, RegistryCredentials,
    StartedJobContainer, StepOutput, StepStream,
};
use proxy_runner_domain::ports::{BackendError, ContainerInfo, EnvValue, EnvVar, labels};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::backend::{DockerBackend, HOST_GATEWAY_ENTRY, label_map};
use crate::errors::{create_error, engine_error, is_not_found, redact, redact_error, start_error};
use crate::transport::StashedSecret;

/// `PATH` when neither the step nor the container sets one (Docker's and
/// Debian's default for root).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where engines put their socket; never mounted, nor any folder above it.
const ENGINE_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

#[async_trait]
impl JobContainers for DockerBackend {
    async fn create_job_container(
        &self,
        spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError> {
        self.create_and_start_proxy(spec).await
    }

    async fn start_service(
        &self,
        spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError> {
        self.create_and_start_proxy(spec).await
    }

    async fn exec(&self, spec: &ExecSpec) -> Result<StepStream, BackendError> {
        if spec.command.is_empty() {
            return Err(BackendError::Other("a step needs a command".into()));
        }
        let docker = self.client().await?;
        let info = docker
            .inspect_container(&spec.container_id, None)
            .await
            .map_err(engine_error)?;
        if info.state.as_ref().and_then(|s| s.running) != Some(true) {
            return Err(BackendError::Other(format!(
                "container {} is not running",
                spec.container_id
            )));
        }
        let container_env = info.config.and_then(|c| c.env).unwrap_or_default();
        let env_with_path = with_prepended_path(&spec.env, &spec.prepend_path, &container_env);
        let secrets = secret_values(&env_with_path);
        let (env, stashed) = self.engine_env(&env_with_path)?;
        let config = ExecConfig {
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(spec.command.clone()),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            ..Default::default()
        };
        let created = docker
            .create_exec(&spec.container_id, config)
            .await
            .map_err(|e| redact_error(engine_error(e), &secrets))?;
        drop(stashed);
        let started = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(engine_error)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::Other("the step started detached".into()));
        };
        let backend = self.clone();
        let exit = Box::pin(async move { exec_exit_code(&backend, &created.id).await });
        // The write half belongs to the same connection: keep it until the end.
        Ok(step_stream(output, exit, Box::new(input)))
    }

    async fn run_to_completion(&self, spec: &JobContainerSpec) -> Result<StepStream, BackendError> {
        let started = self.create_and_start_proxy(spec).await?;
        let removed = Arc::new(AtomicBool::new(false));
        let guard = RemoveOnDrop {
            backend: self.clone(),
            id: started.id.clone(),
            removed: removed.clone(),
        };
        let docker = self.client().await?;
        // Following the logs of a container that already stopped still
        // yields all of them, then ends.
        let output = docker.logs(
            &started.id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        let backend = self.clone();
        let id = started.id;
        let exit = Box::pin(async move {
            let code = backend.wait(&id).await?;
            remove_with_volumes(&backend, &id).await?;
            removed.store(true, Ordering::SeqCst);
            Ok(code)
        });
        Ok(step_stream(output, exit, Box::new(guard)))
    }

    async fn image_present(&self, image: &str) -> Result<bool, BackendError> {
        self.image_exists(image).await
    }

    async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), BackendError> {
        let docker = self.client().await?;
        let (from_image, tag) = split_reference(image);
        let password = credentials.map(|c| c.password.expose_secret().to_string());
        let secrets: Vec<&str> = password.iter().map(String::as_str).collect();
        let auth = credentials.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: password.clone(),
            serveraddress: c.server.clone(),
            ..Default::default()
        });
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag: Some(tag),
            ..Default::default()
        };
        let mut progress = docker.create_image(Some(options), None, auth);
        while let Some(item) = progress.next().await {
            match item {
                Ok(_) => {}
                Err(EngineError::DockerStreamError { error }) => {
                    return Err(BackendError::Other(format!(
                        "pulling {image}: {}",
                        redact(error, &secrets)
                    )));
                }
                Err(err) => return Err(redact_error(engine_error(err), &secrets)),
            }
        }
        if self.image_exists(image).await? {
            tracing::info!(%image, "image pulled");
            Ok(())
        } else {
            Err(BackendError::ImageMissing {
                image: image.to_string(),
            })
        }
    }

    async fn remove_job(&self, instance: &str, job_id: Uuid) -> Result<usize, BackendError> {
        let containers = self
            .labelled(vec![
                format!("{}={instance}", labels::INSTANCE),
                format!("{}={job_id}", labels::JOB_ID),
            ])
            .await?;
        let mut removed = 0;
        for container in containers {
            if remove_with_volumes(self, &container.id).await? {
                removed += 1;
            }
        }
        tracing::info!(%instance, job = %job_id, removed, "job containers removed");
        Ok(removed)
    }

    async fn list_proxy_containers(
        &self,
        instance: &str,
    ) -> Result<Vec<ContainerInfo>, BackendError> {
        self.labelled(vec![
            format!("{}={instance}", labels::INSTANCE),
            format!("{}={PROXY_PATH}", labels::PATH),
        ])
        .await
    }
}

impl DockerBackend {
    /// Creates and starts a proxy-path container (never pulling), and reads
    /// back the host ports it got.
    async fn create_and_start_proxy(
        &self,
        spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError> {
        spec.confinement
            .validate()
            .map_err(|e| BackendError::Other(e.to_string()))?;
        for mount in &spec.mounts {
            self.check_mount_source(&mount.source)?;
        }
        let docker = self.client().await?;
        if !self.image_exists(&spec.image).await? {
            return Err(BackendError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        let secrets = secret_values(&spec.env);
        let (env, stashed) = self.engine_env(&spec.env)?;
        let body = create_body(spec, env, self.tmpfs_size());
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| redact_error(create_error(e, &spec.name, &spec.image), &secrets))?;
        drop(stashed);
        if let Err(err) = docker.start_container(&created.id, None).await {
            // Do not leave a created-but-dead container behind.
            let _ = remove_with_volumes(self, &created.id).await;
            return Err(redact_error(start_error(err), &secrets));
        }
        let ports = match docker.inspect_container(&created.id, None).await {
            Ok(info) => published_ports(info.network_settings.and_then(|n| n.ports)),
            Err(err) => {
                let _ = remove_with_volumes(self, &created.id).await;
                return Err(engine_error(err));
            }
        };
        tracing::info!(
            container = %spec.name,
            id = %created.id,
            image = %spec.image,
            network = %spec.network,
            role = spec.labels.get(labels::ROLE).map(String::as_str).unwrap_or_default(),
            "proxy-path container started"
        );
        Ok(StartedJobContainer {
            id: created.id,
            name: spec.name.clone(),
            ports,
        })
    }

    /// Refuses the engine's socket (and any folder holding it) whatever the
    /// caller's policy said.
    fn check_mount_source(&self, source: &str) -> Result<(), BackendError> {
        let source = lexical(Path::new(source));
        if !source.is_absolute() {
            return Err(BackendError::Other(format!(
                "mount source {} must be an absolute host path",
                source.display()
            )));
        }
        let mut sockets: Vec<PathBuf> = ENGINE_SOCKETS.iter().map(PathBuf::from).collect();
        sockets.extend(self.socket_path().map(lexical));
        if source.file_name().is_some_and(|n| n == "docker.sock")
            || sockets.iter().any(|socket| socket.starts_with(&source))
        {
            return Err(BackendError::Other(format!(
                "refusing to mount {}: the Docker socket is never mounted into job containers",
                source.display()
            )));
        }
        Ok(())
    }

    /// `NAME=value` strings with secret values replaced by placeholders
    /// that the transport swaps back on the wire; the guards keep them
    /// valid until dropped.
    fn engine_env(
        &self,
        env: &[EnvVar],
    ) -> Result<(Vec<String>, Vec<StashedSecret>), BackendError> {
        let mut stashed = Vec::new();
        let mut out = Vec::with_capacity(env.len());
        for var in env {
            if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
                return Err(BackendError::Other(format!(
                    "invalid environment variable name {:?}",
                    var.name
                )));
            }
            match &var.value {
                EnvValue::Plain(value) => out.push(format!("{}={value}", var.name)),
                EnvValue::Secret(secret) => {
                    let s = self.vault().stash(secret.clone());
                    out.push(format!("{}={}", var.name, s.placeholder()));
                    stashed.push(s);
                }
            }
        }
        Ok((out, stashed))
    }

    /// Containers (running or not) carrying all of these `key=value` labels.
    pub(crate) async fn labelled(
        &self,
        filters: Vec<String>,
    ) -> Result<Vec<ContainerInfo>, BackendError> {
        let docker = self.client().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), filters)])),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                Some(ContainerInfo {
                    id,
                    name,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                })
            })
            .collect())
    }
}

/// The engine's create request for a proxy-path container.
pub(crate) fn create_body(
    spec: &JobContainerSpec,
    env: Vec<String>,
    tmpfs_size: &str,
) -> ContainerCreateBody {
    let networking_config = (!spec.network_aliases.is_empty()).then(|| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            spec.network.clone(),
            EndpointSettings {
                aliases: Some(spec.network_aliases.clone()),
                ..Default::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: spec.user.clone(),
        env: Some(env),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.command.clone(),
        working_dir: spec.working_dir.clone(),
        hostname: spec.hostname.clone(),
        labels: Some(label_map(&spec.labels)),
        exposed_ports: (!spec.ports.is_empty())
            .then(|| spec.ports.iter().map(PortMapping::key).collect()),
        tty: Some(false),
        host_config: Some(proxy_host_config(spec, tmpfs_size)),
        networking_config,
        ..Default::default()
    }
}

/// The confinement as the engine's `HostConfig`. What the spec cannot
/// change: all capabilities dropped first, no new privileges, never
/// privileged, private IPC and PID namespaces, only the given network.
pub(crate) fn proxy_host_config(spec: &JobContainerSpec, tmpfs_size: &str) -> HostConfig {
    let c = &spec.confinement;
    let tmpfs: HashMap<String, String> = c
        .tmpfs
        .iter()
        .map(|path| {
            (
                path.clone(),
                tmpfs_options(spec.user.as_deref(), tmpfs_size),
            )
        })
        .collect();
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .filter(|p| p.publish)
        .map(|p| {
            (
                p.key(),
                Some(vec![PortBinding {
                    host_ip: p.host_ip.clone(),
                    // Empty: any free port.
                    host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
                }]),
            )
        })
        .collect();
    HostConfig {
        network_mode: Some(spec.network.clone()),
        auto_remove: Some(false),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: (!c.capabilities.is_empty()).then(|| c.capabilities.clone()),
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        ipc_mode: Some("private".to_string()),
        pids_limit: Some(c.pids_limit),
        memory: Some(c.memory_bytes),
        // Same as memory: no swap on top of the limit.
        memory_swap: Some(c.memory_bytes),
        nano_cpus: Some(c.nano_cpus),
        readonly_rootfs: Some(c.read_only_root_filesystem),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        mounts: Some(
            spec.mounts
                .iter()
                .map(|m| Mount {
                    typ: Some(MountType::BIND),
                    source: Some(m.source.clone()),
                    target: Some(m.target.clone()),
                    read_only: Some(m.read_only),
                    bind_options: Some(MountBindOptions {
                        propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        extra_hosts: Some(vec![HOST_GATEWAY_ENTRY.to_string()]),
        init: Some(spec.init),
        ..Default::default()
    }
}

/// Writable and executable (tools run from there), never setuid or
/// devices; owned by a numeric user when there is one.
fn tmpfs_options(user: Option<&str>, size: &str) -> String {
    let mut options = format!("rw,exec,nosuid,nodev,size={size},mode=1777");
    let numeric = user.and_then(|u| {
        let (uid, gid) = u.split_once(':').unwrap_or((u, u));
        Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?))
    });
    if let Some((uid, gid)) = numeric {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    options
}

/// The step's env with `PATH` = the prepended folders, then the step's own
/// `PATH` if it sets one, else the container's, else [`DEFAULT_PATH`].
pub(crate) fn with_prepended_path(
    env: &[EnvVar],
    prepend: &[String],
    container_env: &[String],
) -> Vec<EnvVar> {
    if prepend.is_empty() {
        return env.to_vec();
    }
    let own = env.iter().rev().find_map(|v| match &v.value {
        EnvValue::Plain(value) if v.name == "PATH" => Some(value.clone()),
        _ => None,
    });
    let base = own
        .or_else(|| {
            container_env
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let mut path: Vec<&str> = prepend.iter().map(String::as_str).collect();
    if !base.is_empty() {
        path.push(&base);
    }
    let mut out: Vec<EnvVar> = env.iter().filter(|v| v.name != "PATH").cloned().collect();
    out.push(EnvVar::plain("PATH", path.join(":")));
    out
}

fn secret_values(env: &[EnvVar]) -> Vec<&str> {
    env.iter()
        .filter_map(|v| match &v.value {
            EnvValue::Secret(s) => Some(s.expose_secret()),
            EnvValue::Plain(_) => None,
        })
        .collect()
}

/// Container port (`8080/tcp`) -> the host port it was published on.
fn published_ports(
    ports: Option<HashMap<String, Option<Vec<PortBinding>>>>,
) -> BTreeMap<String, String> {
    ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, bindings)| {
            let host = bindings?
                .into_iter()
                .find_map(|b| b.host_port.filter(|p| !p.is_empty()))?;
            Some((key, host))
        })
        .collect()
}

/// `repo[:tag]` or `repo@digest` as the engine's `fromImage` and `tag`;
/// without either, `latest` (an empty tag would pull every tag).
pub(crate) fn split_reference(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (image[..at].to_string(), image[at + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Force-removes a container and its anonymous volumes (service images
/// declare some); false when it was already gone.
async fn remove_with_volumes(backend: &DockerBackend, id: &str) -> Result<bool, BackendError> {
    let docker = backend.client().await?;
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(true),
        Err(err) if is_not_found(&err) => Ok(false),
        // Removal already in progress.
        Err(EngineError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(false),
        Err(err) => Err(engine_error(err)),
    }
}

/// The exit code of a finished exec. The output can end a moment before
/// the engine records the exit, so this asks until it has.
async fn exec_exit_code(backend: &DockerBackend, exec_id: &str) -> Result<i64, BackendError> {
    let docker = backend.client().await?;
    let mut delay = Duration::from_millis(5);
    for _ in 0..200 {
        let info = docker.inspect_exec(exec_id).await.map_err(engine_error)?;
        if info.running != Some(true) {
            return info.exit_code.ok_or_else(|| {
                BackendError::Other("the engine reported no exit code for the step".into())
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    Err(BackendError::Other(
        "the step's output ended but the engine still reports it running".into(),
    ))
}

/// Removes a step container when its stream is dropped before the end.
struct RemoveOnDrop {
    backend: DockerBackend,
    id: String,
    removed: Arc<AtomicBool>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(container = %self.id, "step container left behind: no runtime to remove it");
            return;
        };
        let backend = self.backend.clone();
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            if let Err(err) = remove_with_volumes(&backend, &id).await {
                tracing::warn!(container = %id, error = %err, "could not remove an abandoned step container");
            }
        });
    }
}

type EngineOutput = Pin<Box<dyn Stream<Item = Result<LogOutput, EngineError>> + Send>>;

struct StepState {
    output: BoxStream<'static, Result<StepOutput, BackendError>>,
    exit: Option<BoxFuture<'static, Result<i64, BackendError>>>,
    /// Dropped with the stream (a connection half, a clean-up guard).
    _keep: Box<dyn Send>,
}

/// Engine frames as they come, stdout and stderr apart, then the exit
/// code; the stream ends after the exit code or the first error.
fn step_stream<S>(
    output: S,
    exit: BoxFuture<'static, Result<i64, BackendError>>,
    keep: Box<dyn Send>,
) -> StepStream
where
    S: Stream<Item = Result<LogOutput, EngineError>> + Send + 'static,
{
    let output: EngineOutput = Box::pin(output);
    let output = output
        .filter_map(|item| {
            futures::future::ready(match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(StepOutput::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(StepOutput::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(err) => Some(Err(engine_error(err))),
            })
        })
        .boxed();
    let state = StepState {
        output,
        exit: Some(exit),
        _keep: keep,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.output.next().await {
            Some(Ok(item)) => Some((Ok(item), Some(state))),
            Some(Err(err)) => Some((Err(err), None)),
            None => {
                let exit = state.exit.take()?;
                let result = exit.await.map(StepOutput::Exit);
                // The guard goes only after the exit code is known.
                drop(state);
                Some((result, None))
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests;
