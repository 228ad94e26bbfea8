//! [`DockerBackend`]: the Docker implementation of the container port.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, EventMessage, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::{BollardRequest, ClientVersion, Docker};
use futures::stream::{BoxStream, StreamExt};
use proxy_runner_domain::ports::{
    BackendError, ContainerBackend, ContainerEvent, ContainerInfo, ContainerSpec, EnvValue,
    Hardening, NetworkSpec, StartedContainer, labels, stdin_payload,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};
use uuid::Uuid;

use crate::errors::{create_error, engine_error, is_not_found, redact_error, start_error};
use crate::transport::{self, Endpoint, SecretVault, StashedSecret};

/// The write half of an attach connection: a container's standard input.
type StdinWriter = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The socket the Docker CLI uses when `DOCKER_HOST` is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Lets a job reach services on the Docker host (e.g. a GitHub emulator).
pub const HOST_GATEWAY_ENTRY: &str = "host.docker.internal:host-gateway";

/// Label put on images built by this crate (`runner`, `test-busybox`).
pub const IMAGE_LABEL: &str = "proxy-runner.image";

/// How to reach the engine and the defaults for job containers.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// `unix:///path` or `tcp://host:port`. `None` means `DOCKER_HOST`, or
    /// [`DEFAULT_DOCKER_HOST`] when that is unset.
    pub host: Option<String>,
    /// Bound on waiting for the engine's response headers (not on streams).
    pub request_timeout: Duration,
    /// Size of each tmpfs mount of a job container (Docker `size=` syntax).
    pub tmpfs_size: String,
    /// When set, `remove_network_if_unused` only removes networks whose
    /// `proxy-runner.instance` label has this value; otherwise any network
    /// carrying that label key counts as ours.
    pub instance: Option<String>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            host: None,
            request_timeout: Duration::from_secs(120),
            tmpfs_size: "512m".into(),
            instance: None,
        }
    }
}

impl DockerOptions {
    /// Options for an explicit engine address, other fields default.
    pub fn with_host(host: impl Into<String>) -> Self {
        DockerOptions {
            host: Some(host.into()),
            ..DockerOptions::default()
        }
    }

    fn resolved_host(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
    }
}

/// One hardened, ephemeral container per job on a per-repository network.
///
/// Cheap to clone; clones share the connection settings and the negotiated
/// API version.
#[derive(Clone)]
pub struct DockerBackend {
    host: String,
    endpoint: Arc<Endpoint>,
    vault: SecretVault,
    client: Arc<OnceCell<Docker>>,
    options: DockerOptions,
    /// Serialises our own network create/remove so they do not race.
    network_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("host", &self.host)
            .field("negotiated", &self.client.get().map(|d| d.client_version()))
            .finish()
    }
}

impl DockerBackend {
    /// Prepares a backend and tries to negotiate the API version.
    ///
    /// An unreachable engine is not an error here: the orchestrator can start
    /// and report not-ready; negotiation is retried on the next call and
    /// [`ContainerBackend::ping`] reports `DaemonUnreachable` meanwhile. Only
    /// an unusable address fails.
    pub async fn connect(options: DockerOptions) -> Result<Self, BackendError> {
        let host = options.resolved_host();
        let endpoint = Endpoint::parse(&host).map_err(BackendError::Other)?;
        let backend = DockerBackend {
            host,
            endpoint: Arc::new(endpoint),
            vault: SecretVault::default(),
            client: Arc::new(OnceCell::new()),
            options,
            network_lock: Arc::new(Mutex::new(())),
        };
        if let Err(err) = backend.client().await {
            tracing::warn!(host = %backend.host, error = %err, "container engine not reachable yet");
        }
        Ok(backend)
    }

    /// The engine address in use.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where secret values wait for the transport (for sibling modules).
    pub(crate) fn vault(&self) -> &SecretVault {
        &self.vault
    }

    /// Size of each tmpfs mount of a container.
    pub(crate) fn tmpfs_size(&self) -> &str {
        &self.options.tmpfs_size
    }

    /// The engine's socket, when it is reached through one.
    pub(crate) fn socket_path(&self) -> Option<&std::path::Path> {
        match self.endpoint.as_ref() {
            Endpoint::Unix(path) => Some(path),
            Endpoint::Tcp(_) => None,
        }
    }

    /// The bollard client, version-negotiated. Do not pass secrets through
    /// it: bollard logs request bodies; [`DockerBackend::start`] does not.
    pub async fn client(&self) -> Result<&Docker, BackendError> {
        self.client
            .get_or_try_init(|| async {
                let version = self.negotiate().await?;
                tracing::debug!(
                    host = %self.host,
                    api = %format!("{}.{}", version.major_version, version.minor_version),
                    "negotiated Docker API version"
                );
                let endpoint = self.endpoint.clone();
                let vault = self.vault.clone();
                Docker::connect_with_custom_transport(
                    move |request: BollardRequest| {
                        transport::send(endpoint.clone(), vault.clone(), request)
                    },
                    Some("http://docker"),
                    self.options.request_timeout.as_secs().max(1),
                    &version,
                )
                .map_err(engine_error)
            })
            .await
    }

    /// Asks the engine for its API version on an unversioned path.
    ///
    /// bollard's own `negotiate_version` asks on a path carrying its default
    /// version (1.53), which older engines (Docker 20.10: API 1.41) refuse as
    /// "too new" before answering; `/_ping` reports `API-Version` to anyone.
    async fn negotiate(&self) -> Result<ClientVersion, BackendError> {
        let request = http::Request::get("/_ping")
            .body(bollard::body_full(bytes::Bytes::new()))
            .map_err(|e| BackendError::Other(e.to_string()))?;
        let response = tokio::time::timeout(
            self.options.request_timeout,
            transport::send(self.endpoint.clone(), self.vault.clone(), request),
        )
        .await
        .map_err(|_| BackendError::DaemonUnreachable(format!("{}: ping timed out", self.host)))?
        .map_err(|e| match engine_error(e) {
            BackendError::DaemonUnreachable(m) => {
                BackendError::DaemonUnreachable(format!("{}: {m}", self.host))
            }
            other => other,
        })?;
        let server = response
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_api_version)
            .ok_or_else(|| {
                BackendError::Other(format!(
                    "{} answered /_ping (HTTP {}) without a usable API-Version header",
                    self.host,
                    response.status()
                ))
            })?;
        Ok(lower_version(server, bollard::API_DEFAULT_VERSION))
    }

    /// Whether an image (name:tag or id) is present locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, BackendError> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    /// Like [`ContainerBackend::start`], optionally replacing the image's
    /// entrypoint (tests and demos run a shell in a runner image this way).
    pub async fn start_with_entrypoint(
        &self,
        spec: &ContainerSpec,
        entrypoint: Option<Vec<String>>,
    ) -> Result<StartedContainer, BackendError> {
        let secrets: Vec<&str> = spec
            .env
            .iter()
            .filter_map(|var| match &var.value {
                EnvValue::Secret(s) => Some(s.expose_secret()),
                EnvValue::Plain(_) => None,
            })
            .chain(spec.stdin_secrets.iter().map(|s| s.value.expose_secret()))
            .collect();
        self.create_and_start(spec, entrypoint)
            .await
            .map_err(|e| redact_error(e, &secrets))
    }

    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        entrypoint: Option<Vec<String>>,
    ) -> Result<StartedContainer, BackendError> {
        let docker = self.client().await?;
        // Never pull: a create naming an image that is not here fails with
        // 404 "No such image" (`create_error` makes it `ImageMissing`); no
        // separate look first, which would cost a round trip per start.
        // Keeps the placeholders valid until the create request is sent.
        let mut stashed: Vec<StashedSecret> = Vec::new();
        let mut env = Vec::with_capacity(spec.env.len());
        for var in &spec.env {
            if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
                return Err(BackendError::Other(format!(
                    "invalid environment variable name {:?}",
                    var.name
                )));
            }
            match &var.value {
                EnvValue::Plain(value) => env.push(format!("{}={value}", var.name)),
                EnvValue::Secret(secret) => {
                    let s = self.vault.stash(secret.clone());
                    env.push(format!("{}={}", var.name, s.placeholder()));
                    stashed.push(s);
                }
            }
        }
        let handover = if spec.stdin_secrets.is_empty() {
            None
        } else {
            Some(stdin_payload(&spec.stdin_secrets).map_err(BackendError::Other)?)
        };
        let body = ContainerCreateBody {
            // A stdin the entrypoint reads the hand-over from; it ends when
            // our one attachment does (also if this process dies meanwhile).
            open_stdin: handover.is_some().then_some(true),
            stdin_once: handover.is_some().then_some(true),
            attach_stdin: handover.is_some().then_some(true),
            ..self.create_body(spec, env, entrypoint)?
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| create_error(e, &spec.name, &spec.image))?;
        drop(stashed);
        let remove = || async {
            // Do not leave a created-but-dead container behind.
            let _ = docker
                .remove_container(
                    &created.id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        };
        // Attached while the start is under way: an open stdin stays open
        // with nothing in it until our attachment writes and closes it, so
        // the entrypoint waits for the hand-over however the two interleave.
        let attach = async {
            match &handover {
                None => Ok(None),
                Some(_) => self.attach_stdin(docker, &created.id).await.map(Some),
            }
        };
        let (stdin, started) = tokio::join!(attach, docker.start_container(&created.id, None));
        let stdin = match (stdin, started) {
            (Ok(stdin), Ok(())) => stdin,
            (Err(err), _) => {
                remove().await;
                return Err(err);
            }
            (_, Err(err)) => {
                remove().await;
                return Err(start_error(err));
            }
        };
        if let (Some(input), Some(payload)) = (stdin, &handover)
            && let Err(err) = self.hand_over(input, payload).await
        {
            // The runner never got its credential: it must not linger.
            remove().await;
            return Err(err);
        }
        tracing::info!(container = %spec.name, id = %created.id, image = %spec.image, network = %spec.network, "job container started");
        Ok(StartedContainer {
            id: created.id,
            name: spec.name.clone(),
        })
    }

    /// The create request for `spec` with `env` as given (placeholders for
    /// secrets), without a standard input.
    fn create_body(
        &self,
        spec: &ContainerSpec,
        env: Vec<String>,
        entrypoint: Option<Vec<String>>,
    ) -> Result<ContainerCreateBody, BackendError> {
        Ok(ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(spec.hardening.user.clone()),
            env: Some(env),
            cmd: spec.command.clone(),
            entrypoint,
            labels: Some(label_map(&spec.labels)),
            host_config: Some(host_config(spec, &self.options.tmpfs_size)?),
            ..Default::default()
        })
    }

    /// Creates and starts `spec`'s container with two Engine API calls and
    /// nothing else: no hand-over on stdin, no checks. The yardstick that
    /// `proxy-runner bench` measures [`ContainerBackend::start`] against;
    /// `spec` must carry no secret (they would be sent as they are).
    pub async fn create_and_start_plain(
        &self,
        spec: &ContainerSpec,
        entrypoint: Option<Vec<String>>,
    ) -> Result<String, BackendError> {
        let no_secrets = || BackendError::Other("a plain start takes no secrets".into());
        if !spec.stdin_secrets.is_empty() {
            return Err(no_secrets());
        }
        let env = spec
            .env
            .iter()
            .map(|v| match &v.value {
                EnvValue::Plain(value) => Ok(format!("{}={value}", v.name)),
                EnvValue::Secret(_) => Err(no_secrets()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let docker = self.client().await?;
        let body = self.create_body(spec, env, entrypoint)?;
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| create_error(e, &spec.name, &spec.image))?;
        docker
            .start_container(&created.id, None)
            .await
            .map_err(start_error)?;
        Ok(created.id)
    }

    /// Opens the container's standard input (a hijacked attach connection).
    async fn attach_stdin(
        &self,
        docker: &Docker,
        container_id: &str,
    ) -> Result<StdinWriter, BackendError> {
        let attach = docker.attach_container(
            container_id,
            Some(AttachContainerOptions {
                stdin: true,
                stream: true,
                ..Default::default()
            }),
        );
        let attached = tokio::time::timeout(self.options.request_timeout, attach)
            .await
            .map_err(|_| {
                BackendError::Other("attaching to the container's stdin timed out".into())
            })?
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot attach to the container's stdin: {}",
                    engine_error(e)
                ))
            })?;
        Ok(attached.input)
    }

    /// Writes the hand-over and ends the input, which closes the container's
    /// stdin (`StdinOnce`).
    async fn hand_over(
        &self,
        mut input: StdinWriter,
        payload: &SecretString,
    ) -> Result<(), BackendError> {
        let write = async {
            input.write_all(payload.expose_secret().as_bytes()).await?;
            input.flush().await?;
            input.shutdown().await
        };
        match tokio::time::timeout(self.options.request_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            // The error names the operation only: an I/O error carries no data.
            Ok(Err(e)) => Err(BackendError::Other(format!(
                "cannot hand the runner credential over on stdin: {}",
                e.kind()
            ))),
            Err(_) => Err(BackendError::Other(
                "handing the runner credential over on stdin timed out".into(),
            )),
        }
    }

    /// Waits until the container stops and returns its exit code. Needs a
    /// container that is not auto-removed (or is still running).
    pub async fn wait(&self, container_id: &str) -> Result<i64, BackendError> {
        let docker = self.client().await?;
        let mut stream = docker.wait_container(
            container_id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(engine_error(err)),
            None => Err(BackendError::DaemonUnreachable(
                "wait ended without a status".into(),
            )),
        }
    }

    /// The container's stdout and stderr so far, as text.
    pub async fn logs(&self, container_id: &str) -> Result<String, BackendError> {
        let docker = self.client().await?;
        let mut stream = docker.logs(
            container_id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(engine_error)?;
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }

    /// Force-removes a container; false when it was already gone.
    pub async fn remove_container(&self, container_id: &str) -> Result<bool, BackendError> {
        let docker = self.client().await?;
        match docker
            .remove_container(
                container_id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false), // removal already in progress
            Err(err) => Err(engine_error(err)),
        }
    }

    /// Leaves one network named `name`: the one with the smallest id, so
    /// that every client racing here picks the same. Copies with containers
    /// attached stay until a later call.
    async fn deduplicate_network(&self, name: &str) -> Result<(), BackendError> {
        let docker = self.client().await?;
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "name".to_string(),
                    vec![name.to_string()],
                )])),
            }))
            .await
            .map_err(engine_error)?;
        let mut same_name: Vec<(String, Option<HashMap<String, String>>)> = networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.id?, n.labels)))
            .collect();
        same_name.sort_by(|a, b| a.0.cmp(&b.0));
        let Some((_, winner_labels)) = same_name.first() else {
            return Err(BackendError::Other(format!(
                "network {name:?} vanished while being created"
            )));
        };
        check_existing_network(name, winner_labels.as_ref())?;
        for (id, labels) in same_name.iter().skip(1) {
            if !labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::INSTANCE))
            {
                continue;
            }
            let attached = match docker.inspect_network(id, None).await {
                Ok(n) => n.containers.is_some_and(|c| !c.is_empty()),
                Err(_) => continue,
            };
            if !attached && docker.remove_network(id).await.is_ok() {
                tracing::info!(network = %name, id = %id, "duplicate network removed");
            }
        }
        Ok(())
    }

    fn is_ours(&self, network_labels: Option<&HashMap<String, String>>) -> bool {
        let Some(value) = network_labels.and_then(|l| l.get(labels::INSTANCE)) else {
            return false;
        };
        match &self.options.instance {
            Some(instance) => instance == value,
            None => true,
        }
    }
}

#[async_trait]
impl ContainerBackend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.client()
            .await?
            .ping()
            .await
            .map(|_| ())
            .map_err(engine_error)
    }

    async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), BackendError> {
        let docker = self.client().await?;
        let _serialised = self.network_lock.lock().await;
        match docker.inspect_network(&spec.name, None).await {
            Ok(existing) => {
                check_existing_network(&spec.name, existing.labels.as_ref())?;
                // Never let a job join another repository's network.
                let want = spec.labels.get(labels::REPOSITORY);
                let have = existing
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::REPOSITORY));
                if want.is_some() && have.is_some() && want != have {
                    return Err(BackendError::Other(format!(
                        "network {:?} belongs to repository {:?}, not {:?}",
                        spec.name,
                        have.map(String::as_str).unwrap_or_default(),
                        want.map(String::as_str).unwrap_or_default()
                    )));
                }
                return Ok(());
            }
            Err(err) if is_not_found(&err) => {}
            Err(err) if is_ambiguous(&err) => return self.deduplicate_network(&spec.name).await,
            Err(err) => return Err(engine_error(err)),
        }
        let request = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            // Runners must reach GitHub, so the network is not internal.
            internal: Some(false),
            attachable: Some(false),
            labels: Some(label_map(&spec.labels)),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => tracing::info!(network = %spec.name, "network created"),
            // Someone else created it between our inspect and create.
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(err) => return Err(engine_error(err)),
        }
        // The engine's duplicate check is racy across clients: converge on one.
        self.deduplicate_network(&spec.name).await
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, BackendError> {
        self.start_with_entrypoint(spec, None).await
    }

    async fn stop(&self, container_id: &str, grace: Duration) -> Result<(), BackendError> {
        let docker = self.client().await?;
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        match docker
            .stop_container(
                container_id,
                Some(StopContainerOptions {
                    t: Some(seconds),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Auto-remove already under way: it is going away as asked.
            Err(EngineError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        self.remove_container(container_id).await.map(|_| ())
    }

    async fn list_networks(&self, instance: &str) -> Result<Vec<NetworkSpec>, BackendError> {
        let docker = self.client().await?;
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{}={instance}", labels::INSTANCE)],
                )])),
            }))
            .await
            .map_err(engine_error)?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                Some(NetworkSpec {
                    name: n.name?,
                    labels: n.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    async fn remove_network_if_unused(&self, name: &str) -> Result<bool, BackendError> {
        let docker = self.client().await?;
        let _serialised = self.network_lock.lock().await;
        let network = match docker.inspect_network(name, None).await {
            Ok(network) => network,
            Err(err) if is_not_found(&err) => return Ok(false),
            Err(err) => return Err(engine_error(err)),
        };
        if !self.is_ours(network.labels.as_ref()) {
            return Ok(false);
        }
        if network.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Ok(false);
        }
        // Remove by id, so a same-named network created meanwhile is untouched.
        let target = network.id.unwrap_or_else(|| name.to_string());
        match docker.remove_network(&target).await {
            Ok(()) => {
                tracing::info!(network = %name, "unused network removed");
                Ok(true)
            }
            Err(err) if is_not_found(&err) => Ok(false),
            // A container attached meanwhile ("has active endpoints").
            Err(EngineError::DockerResponseServerError {
                status_code: 403 | 409,
                ..
            }) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn list(&self, instance: &str) -> Result<Vec<ContainerInfo>, BackendError> {
        self.labelled(vec![format!("{}={instance}", labels::INSTANCE)])
            .await
    }

    fn events(&self, instance: &str) -> BoxStream<'static, Result<ContainerEvent, BackendError>> {
        let backend = self.clone();
        let options = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("event".to_string(), vec!["die".to_string()]),
                (
                    "label".to_string(),
                    vec![format!("{}={instance}", labels::INSTANCE)],
                ),
            ])),
            ..Default::default()
        };
        futures::stream::once(async move {
            match backend.client().await {
                Ok(docker) => docker
                    .events(Some(options))
                    .map(|item| item.map_err(engine_error))
                    .boxed(),
                Err(err) => futures::stream::once(async move { Err(err) }).boxed(),
            }
        })
        .flatten()
        // After an error the subscription is dead; end so the caller re-subscribes.
        .scan(false, |failed, item| {
            let next = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            futures::future::ready(next)
        })
        .filter_map(|item| {
            futures::future::ready(match item {
                Ok(message) => exit_event(&message).map(Ok),
                Err(err) => Some(Err(err)),
            })
        })
        .boxed()
    }
}

/// Whether the engine found several objects matching a name.
fn is_ambiguous(err: &EngineError) -> bool {
    matches!(
        err,
        EngineError::DockerResponseServerError { status_code: 400, message }
            if message.contains("ambiguous")
    )
}

/// A network of that name exists: fine if it is ours, refused otherwise (a
/// job must never join a network someone else set up).
fn check_existing_network(
    name: &str,
    labels_of_existing: Option<&HashMap<String, String>>,
) -> Result<(), BackendError> {
    if labels_of_existing.is_some_and(|l| l.contains_key(labels::INSTANCE)) {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "network {name:?} exists but was not created by proxy-runner"
        )))
    }
}

/// The engine's `HostConfig` for a job container: the hardening mapped, no
/// mounts of the host, and the host gateway reachable by name.
pub fn host_config(spec: &ContainerSpec, tmpfs_size: &str) -> Result<HostConfig, BackendError> {
    let hardening = &spec.hardening;
    check_not_root(&hardening.user)?;
    let tmpfs = tmpfs_mounts(hardening, tmpfs_size)?;
    let positive = |v: i64| (v > 0).then_some(v);
    Ok(HostConfig {
        network_mode: Some(spec.network.clone()),
        auto_remove: Some(spec.auto_remove),
        privileged: Some(false),
        cap_drop: hardening
            .drop_all_capabilities
            .then(|| vec!["ALL".to_string()]),
        security_opt: hardening
            .no_new_privileges
            .then(|| vec!["no-new-privileges:true".to_string()]),
        pids_limit: positive(hardening.pids_limit),
        memory: positive(hardening.memory_bytes),
        // Same as memory: no swap on top of the limit.
        memory_swap: positive(hardening.memory_bytes),
        nano_cpus: positive(hardening.nano_cpus),
        readonly_rootfs: Some(hardening.read_only_root_filesystem),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        extra_hosts: Some(vec![HOST_GATEWAY_ENTRY.to_string()]),
        binds: None,
        mounts: None,
        ..Default::default()
    })
}

/// Tmpfs mount options per path, writable by the job's (non-root) user.
fn tmpfs_mounts(
    hardening: &Hardening,
    tmpfs_size: &str,
) -> Result<HashMap<String, String>, BackendError> {
    let owner = numeric_user(&hardening.user);
    let mut mounts = HashMap::new();
    for path in &hardening.tmpfs {
        if !path.starts_with('/') || path.contains(',') || path.contains(':') || path == "/" {
            return Err(BackendError::Other(format!(
                "tmpfs path {path:?} must be an absolute path below /"
            )));
        }
        // `exec` explicitly: Docker's tmpfs default is noexec, but the runner
        // runs its own copy, actions and tools out of these mounts.
        let mut options = format!("rw,exec,nosuid,nodev,size={tmpfs_size}");
        match owner {
            // Owned by the job user; sticky and world-writable like /tmp.
            Some((uid, gid)) => options.push_str(&format!(",mode=1777,uid={uid},gid={gid}")),
            None => options.push_str(",mode=1777"),
        }
        mounts.insert(path.clone(), options);
    }
    Ok(mounts)
}

/// `uid[:gid]` as numbers (gid defaults to uid), or None for user names.
fn numeric_user(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid: u32 = uid.parse().ok()?;
    let gid: u32 = match gid {
        Some(g) => g.parse().ok()?,
        None => uid,
    };
    Some((uid, gid))
}

/// Job containers never run as root (nor as the image's default user, which
/// may be root).
fn check_not_root(user: &str) -> Result<(), BackendError> {
    let name = user.split(':').next().unwrap_or_default().trim();
    if name.is_empty() || name == "root" || name.parse::<u32>() == Ok(0) {
        return Err(BackendError::Other(format!(
            "refusing to run a job container as user {user:?}: a non-root user is required"
        )));
    }
    Ok(())
}

/// A `die` event of one of our containers, as the port's event.
pub(crate) fn exit_event(message: &EventMessage) -> Option<ContainerEvent> {
    if message.action.as_deref() != Some("die") {
        return None;
    }
    let actor = message.actor.as_ref()?;
    let container_id = actor.id.clone()?;
    let empty = HashMap::new();
    let attributes = actor.attributes.as_ref().unwrap_or(&empty);
    let job_id = attributes
        .get(labels::JOB_ID)
        .and_then(|v| Uuid::parse_str(v).ok());
    // -1 marks an exit whose code the engine did not report.
    let exit_code = attributes
        .get("exitCode")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(-1);
    Some(ContainerEvent::Exited {
        container_id,
        job_id,
        exit_code,
    })
}

fn parse_api_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

fn lower_version(a: ClientVersion, b: &ClientVersion) -> ClientVersion {
    if (a.major_version, a.minor_version) <= (b.major_version, b.minor_version) {
        a
    } else {
        *b
    }
}

/// Labels as the engine wants them.
pub(crate) fn label_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.clone().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;
    use proxy_runner_domain::ports::EnvVar;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "job-1".into(),
            image: "img:1".into(),
            env: vec![EnvVar::plain("A", "b")],
            stdin_secrets: vec![],
            command: None,
            labels: BTreeMap::new(),
            network: "pr-net-1".into(),
            hardening: Hardening::default(),
            auto_remove: true,
        }
    }

    #[test]
    fn default_hardening_maps_to_a_locked_down_host_config() {
        let hc = host_config(&spec(), "64m").expect("valid spec");
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.pids_limit, Some(512));
        assert_eq!(hc.memory, Some(2 * 1024 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory);
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert_eq!(hc.auto_remove, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("pr-net-1"));
        assert_eq!(hc.binds, None);
        assert_eq!(hc.mounts, None);
        assert_eq!(hc.extra_hosts, Some(vec![HOST_GATEWAY_ENTRY.to_string()]));
        let tmpfs = hc.tmpfs.expect("tmpfs mounts");
        assert_eq!(
            tmpfs.get("/tmp").map(String::as_str),
            Some("rw,exec,nosuid,nodev,size=64m,mode=1777,uid=1001,gid=1001")
        );
        assert!(tmpfs.contains_key("/home/runner"));
    }

    #[test]
    fn root_users_are_refused() {
        for user in ["root", "0", "0:0", "root:root", "", " 0 "] {
            let mut s = spec();
            s.hardening.user = user.into();
            assert!(
                matches!(host_config(&s, "1m"), Err(BackendError::Other(_))),
                "user {user:?} must be refused"
            );
        }
        let mut s = spec();
        s.hardening.user = "runner".into();
        let hc = host_config(&s, "1m").expect("named user is fine");
        assert_eq!(
            hc.tmpfs.expect("tmpfs")["/tmp"],
            "rw,exec,nosuid,nodev,size=1m,mode=1777"
        );
    }

    #[test]
    fn odd_tmpfs_paths_are_refused() {
        for path in ["tmp", "/", "/a,b", "/a:b"] {
            let mut s = spec();
            s.hardening.tmpfs = vec![path.into()];
            assert!(host_config(&s, "1m").is_err(), "path {path:?}");
        }
    }

    #[test]
    fn numeric_users_parse() {
        assert_eq!(numeric_user("1001:1002"), Some((1001, 1002)));
        assert_eq!(numeric_user("1001"), Some((1001, 1001)));
        assert_eq!(numeric_user("runner"), None);
        assert_eq!(numeric_user("1001:runner"), None);
    }

    #[test]
    fn die_events_become_exits_with_job_ids() {
        let job = Uuid::now_v7();
        let message = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".to_string(), "3".to_string()),
                    (labels::JOB_ID.to_string(), job.to_string()),
                ])),
            }),
            ..Default::default()
        };
        assert_eq!(
            exit_event(&message),
            Some(ContainerEvent::Exited {
                container_id: "abc".into(),
                job_id: Some(job),
                exit_code: 3
            })
        );
        let bad_label = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([(
                    labels::JOB_ID.to_string(),
                    "not-a-uuid".to_string(),
                )])),
            }),
            ..Default::default()
        };
        assert_eq!(
            exit_event(&bad_label),
            Some(ContainerEvent::Exited {
                container_id: "abc".into(),
                job_id: None,
                exit_code: -1
            })
        );
        let start = EventMessage {
            action: Some("start".into()),
            ..message
        };
        assert_eq!(exit_event(&start), None);
    }

    #[test]
    fn api_versions_negotiate_down() {
        let server = parse_api_version("1.41").expect("parses");
        let chosen = lower_version(server, bollard::API_DEFAULT_VERSION);
        assert_eq!((chosen.major_version, chosen.minor_version), (1, 41));
        let newer = parse_api_version("1.99").expect("parses");
        let chosen = lower_version(newer, bollard::API_DEFAULT_VERSION);
        assert_eq!(
            (chosen.major_version, chosen.minor_version),
            (
                bollard::API_DEFAULT_VERSION.major_version,
                bollard::API_DEFAULT_VERSION.minor_version
            )
        );
        assert!(parse_api_version("junk").is_none());
    }
}
