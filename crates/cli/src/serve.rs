//! `proxy-runner serve`: builds the adapters the configuration names (store,
//! container engine, GitHub, poller), hands them to the orchestrator's
//! composition root and serves until SIGTERM/SIGINT. `start` is also used by
//! the demo and the benchmark.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proxy_runner_docker::{DockerBackend, DockerOptions};
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::ports::{
    ContainerBackend, JobStore, QueuedJobFeed, RunnerRegistry, WorkflowJobInfo,
};
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig, Poller, load_private_key};
use proxy_runner_orchestrator::autoscaler::Autoscaler;
use proxy_runner_orchestrator::config::{BackendKind, Config};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System, server};
use proxy_runner_store::SqliteStore;
use proxy_runner_store_postgres::PostgresStore;
use tokio::net::TcpListener;

use crate::store_url::{StoreLocation, shown, store_location};
use tokio_util::sync::CancellationToken;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROXY_RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("PROXY_RUNNER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A running orchestrator.
pub struct Running {
    pub url: String,
    pub store: Arc<dyn JobStore>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    autoscaler: Option<Arc<Autoscaler>>,
    grace: Duration,
}

impl Running {
    /// The autoscaler (none with the dry-run or proxy-only setups).
    pub fn autoscaler(&self) -> Option<&Arc<Autoscaler>> {
        self.autoscaler.as_ref()
    }

    /// Stops intake (no new connections, no new scheduling rounds, no
    /// polling), lets requests and provisioning under way finish within the
    /// grace, and leaves running jobs and their containers alone: the next
    /// start adopts them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for l in self.loops {
            let _ = l.await;
        }
        let served = self.server.await.context("server task panicked")?;
        if let Some(scaler) = &self.autoscaler {
            let left = scaler.finish_in_flight(self.grace).await;
            if left > 0 {
                tracing::warn!(
                    left,
                    "provisioning still under way at the end of the grace; the next start adopts or cleans it"
                );
            }
        }
        served
    }

    /// Runs until SIGTERM/SIGINT, then stops.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        self.shutdown().await
    }
}

fn github_client(config: &Config) -> anyhow::Result<Option<GitHubClient>> {
    let gh = &config.github;
    let auth = match (&gh.app_id, &gh.private_key_path, gh.token.get()) {
        (Some(app_id), Some(path), _) => Auth::App {
            app_id: *app_id,
            private_key_pem: load_private_key(path)
                .with_context(|| format!("github.private_key_path {}", path.display()))?,
        },
        (_, _, Some(token)) => Auth::Pat(token.clone()),
        _ => return Ok(None),
    };
    let client = GitHubClient::new(GitHubConfig::new(gh.api_url.clone(), auth))
        .context("cannot build the GitHub client")?;
    Ok(Some(client))
}

/// The poller as the orchestrator's feed of queued jobs.
struct PollFeed(Poller);

#[async_trait::async_trait]
impl QueuedJobFeed for PollFeed {
    async fn poll_once(&self) -> Vec<WorkflowJobInfo> {
        self.0.poll_once().await.jobs
    }
    fn next_delay(&self) -> Duration {
        self.0.next_delay()
    }
}

/// Builds the adapters the configuration names.
async fn ports(config: &Config) -> anyhow::Result<Ports> {
    // The database setting's scheme picks the store.
    let store: Arc<dyn JobStore> = match store_location(&config.database)? {
        StoreLocation::SqliteMemory => Arc::new(SqliteStore::in_memory().await?),
        StoreLocation::SqliteFile(path) => Arc::new(SqliteStore::open(&path).await?),
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::connect(&url).await?),
    };
    let (backend, job_containers): (Arc<dyn ContainerBackend>, Option<Arc<dyn JobContainers>>) =
        match config.backend {
            BackendKind::DryRun => (Arc::new(DryRunBackend::new()), None),
            BackendKind::Docker => {
                let docker = Arc::new(
                    DockerBackend::connect(DockerOptions {
                        instance: Some(config.instance.clone()),
                        ..DockerOptions::default()
                    })
                    .await
                    .context("cannot set up the Docker backend")?,
                );
                (docker.clone(), Some(docker))
            }
        };
    let github = github_client(config)?;
    let feed = match &github {
        // Runs leave `queued` when their first job starts: later jobs of a
        // run (needs:, matrix) are only found in in-progress runs.
        Some(client) if !config.github.poll.repositories.is_empty() => {
            let poller = Poller::new(
                client.clone(),
                config.github.poll.repositories.clone(),
                Duration::from_secs(config.github.poll.interval_secs),
            )
            .scan_in_progress_runs(true);
            Some(Arc::new(PollFeed(poller)) as Arc<dyn QueuedJobFeed>)
        }
        _ => None,
    };
    Ok(Ports {
        store,
        backend,
        registry: github.map(|c| Arc::new(c) as Arc<dyn RunnerRegistry>),
        feed,
        job_containers,
        sources: Sources::system(),
    })
}

/// Starts the orchestrator and returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let ports = ports(&config).await?;
    let store = ports.store.clone();
    let system = System::build(&config, ports).context("runners.label_sets")?;
    let stop = CancellationToken::new();
    let loops = system.spawn(stop.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, db = %shown(&config.database), backend = ?config.backend, "orchestrator listening");
    let server_stop = stop.clone();
    let router = system.router.clone();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let limits = server::ServerLimits {
        drain: grace,
        ..config.http.limits()
    };
    let server = tokio::spawn(async move {
        server::serve(listener, router, limits, server_stop)
            .await
            .context("HTTP server failed")
    });
    Ok(Running {
        url: format!("http://{addr}"),
        store,
        stop,
        server,
        loops,
        autoscaler: system.autoscaler.clone(),
        grace,
    })
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    // A line on stdout for scripts and tests that started us with port 0.
    println!("listening on {}", running.url);
    running.until_signal().await?;
    tracing::info!("orchestrator stopped");
    Ok(())
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}
