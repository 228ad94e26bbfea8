//! A local GitHub for tests and the demo: the self-hosted-runner REST API
//! (repository and organization scope), GitHub App authentication, workflow
//! jobs handed to runners by label, signed `workflow_job` webhooks, fault
//! injection, and a simulated actions runner ([`runner`]).
//!
//! github.com cannot be reached where this project is tested, so everything
//! that talks to GitHub is tested against this emulator instead. Response
//! shapes follow GitHub's published OpenAPI description; the runner side
//! (how a runner takes a job) is our own small protocol, described in the
//! crate README.

mod admin;
mod auth;
mod http_util;
mod model;
mod protocol;
mod rest;
mod runner_api;
mod state;
mod webhook;

pub mod runner;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use webhook::{SIGNATURE_HEADER, sign_payload};

/// Installation tokens live one hour on GitHub.
pub const DEFAULT_INSTALLATION_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How the emulator authenticates callers and where it sends webhooks.
#[derive(Clone, Default)]
pub struct EmulatorConfig {
    /// Accepted personal access tokens (`Authorization: Bearer X` or `token X`).
    pub pats: Vec<String>,
    /// A GitHub App whose JWTs are verified with its RSA public key.
    pub app: Option<EmulatorApp>,
    /// Where signed `workflow_job` webhooks go.
    pub webhook: Option<WebhookTarget>,
    /// Base URL written into JIT configs and runner credentials (default: the
    /// listen URL). Containers use e.g. `http://host.docker.internal:PORT`.
    pub public_url: Option<String>,
    /// Lifetime of installation access tokens (default one hour).
    pub installation_token_ttl: Option<Duration>,
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("pats", &format_args!("[{} redacted]", self.pats.len()))
            .field("app", &self.app)
            .field("webhook", &self.webhook)
            .field("public_url", &self.public_url)
            .field("installation_token_ttl", &self.installation_token_ttl)
            .finish()
    }
}

/// A GitHub App known to the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorApp {
    pub app_id: u64,
    /// PEM of the App's RSA public key (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_pem: String,
}

/// A webhook receiver and the secret used to sign deliveries to it.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the GitHub App public key is not a valid RSA public key in PEM form")]
    InvalidAppKey,
    #[error("public URL {0:?} is not an http(s) URL")]
    InvalidPublicUrl(String),
    #[error("webhook URL {0:?} is not an http(s) URL")]
    InvalidWebhookUrl(String),
    #[error("cannot build the HTTP client for webhook deliveries: {0}")]
    HttpClient(String),
}

/// A handle on one emulated GitHub: its state and its HTTP routes. Cheap to
/// clone. Use [`spawn`] to serve it, or [`Emulator::router`] to mount it in
/// an in-process test server.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<state::Shared>,
}

impl Emulator {
    /// Builds an emulator whose URLs (JIT configs, payload links) start with
    /// `config.public_url`, or `default_base_url` when that is unset.
    pub fn new(config: EmulatorConfig, default_base_url: &str) -> Result<Emulator, EmulatorError> {
        let shared = state::Shared::new(config, default_base_url)?;
        Ok(Emulator {
            shared: Arc::new(shared),
        })
    }

    /// The REST API at the root, `/_emulator/*` (admin) and `/_runner/*`
    /// (runner protocol). Serve it with connect info
    /// (`into_make_service_with_connect_info::<SocketAddr>()`) so that
    /// unauthenticated callers are rate limited per address like on GitHub.
    pub fn router(&self) -> axum::Router {
        let rest = rest::router(self.shared.clone());
        axum::Router::new()
            .nest("/_emulator", admin::router(self.shared.clone()))
            .nest("/_runner", runner_api::router(self.shared.clone()))
            .merge(rest)
    }

    /// The base URL written into JIT configs and payloads.
    pub fn public_url(&self) -> String {
        self.shared.settings.public_url.clone()
    }
}

/// A running emulator; dropping it stops the server too.
pub struct RunningEmulator {
    addr: SocketAddr,
    emulator: Emulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`: the REST API is served at the root, like
    /// `https://api.github.com`.
    pub fn url(&self) -> String {
        listen_url(self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The emulator being served (for in-process inspection).
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops accepting connections, ends open long polls and waits for the
    /// other open requests to finish.
    pub async fn shutdown(mut self) {
        self.emulator.shared.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.emulator.shared.close();
            task.abort();
        }
    }
}

impl fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Binds `listen` (port 0 picks a free port) and serves the emulator in the
/// background.
pub async fn spawn(
    config: EmulatorConfig,
    listen: SocketAddr,
) -> Result<RunningEmulator, EmulatorError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: listen,
            source,
        })?;
    let emulator = Emulator::new(config, &listen_url(addr))?;
    let emulator_handle = emulator.clone();
    let app = emulator
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "emulator server stopped with an error");
        }
    });
    tracing::info!(%addr, "GitHub emulator listening");
    Ok(RunningEmulator {
        addr,
        emulator: emulator_handle,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// `http://IP:PORT` for a bound address; a wildcard address is reached
/// through loopback.
fn listen_url(addr: SocketAddr) -> String {
    let ip = addr.ip();
    let host = if ip.is_unspecified() {
        if ip.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("http://{host}:{}", addr.port())
}
