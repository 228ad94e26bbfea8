//! `proxy-runner serve`: wires store, container engine, GitHub, autoscaler
//! and API, and runs until SIGTERM/SIGINT. `start` is also used by the demo.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proxy_runner_docker::{DockerBackend, DockerOptions};
use proxy_runner_domain::JobSource;
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::ports::{ContainerBackend, JobStore, RunnerRegistry, SystemClock};
use proxy_runner_domain::schedule::Caps;
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig, Poller, load_private_key};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, Autoscaler, JobAction, Pool};
use proxy_runner_orchestrator::config::{BackendKind, Config};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::webhook::{self, WebhookState};
use proxy_runner_orchestrator::{AppState, Orchestrator, app, metrics};
use proxy_runner_store::SqliteStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROXY_RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("PROXY_RUNNER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
}

impl Running {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for l in self.loops {
            let _ = l.await;
        }
        self.server.await.context("server task panicked")?
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

fn autoscale_config(config: &Config) -> anyhow::Result<AutoscaleConfig> {
    let r = &config.runners;
    let mut pools = Vec::new();
    for set in &r.label_sets {
        pools.push(Pool {
            labels: LabelSet::parse_list(set.labels.iter().map(String::as_str))
                .context("runners.label_sets")?,
            image: set.image.clone(),
            hardening: set.hardening.clone(),
        });
    }
    Ok(AutoscaleConfig {
        instance: config.instance.clone(),
        image: r.image.clone(),
        network_prefix: r.network_prefix.clone(),
        caps: Caps {
            global: r.max_concurrent,
            per_repository: r.max_per_repository,
        },
        max_attempts: r.max_attempts,
        registration: config.github.registration,
        runner_group_id: config.github.runner_group_id,
        web_url: config.github.web_url.clone(),
        organization: config.github.organization.clone(),
        pools,
        hardening: r.hardening.clone(),
        idle_timeout: Duration::from_secs(r.idle_timeout_secs),
        ..AutoscaleConfig::default()
    })
}

/// Starts the orchestrator and returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let store: Arc<dyn JobStore> = if config.database.as_os_str() == ":memory:" {
        Arc::new(SqliteStore::in_memory().await?)
    } else {
        Arc::new(SqliteStore::open(&config.database).await?)
    };
    let backend: Arc<dyn ContainerBackend> = match config.backend {
        BackendKind::DryRun => Arc::new(DryRunBackend::new()),
        BackendKind::Docker => Arc::new(
            DockerBackend::connect(DockerOptions {
                instance: Some(config.instance.clone()),
                ..DockerOptions::default()
            })
            .await
            .context("cannot set up the Docker backend")?,
        ),
    };
    metrics::describe();
    let stop = CancellationToken::new();
    let mut loops = Vec::new();

    let github = github_client(&config)?;
    let autoscaler = match &github {
        Some(client) => {
            let registry: Arc<dyn RunnerRegistry> = Arc::new(client.clone());
            let scaler = Arc::new(Autoscaler::new(
                store.clone(),
                backend.clone(),
                registry,
                Arc::new(SystemClock),
                autoscale_config(&config)?,
            ));
            loops.extend(scaler.spawn(stop.clone()));
            Some(scaler)
        }
        None => {
            tracing::warn!(
                "no GitHub credentials configured: webhooks and autoscaling are off, the delegation API works"
            );
            None
        }
    };
    if let (Some(client), Some(scaler)) = (&github, &autoscaler)
        && !config.github.poll.repositories.is_empty()
    {
        // Runs leave `queued` when their first job starts: later jobs of a
        // run (needs:, matrix) are only found in in-progress runs.
        let poller = Poller::new(
            client.clone(),
            config.github.poll.repositories.clone(),
            Duration::from_secs(config.github.poll.interval_secs),
        )
        .scan_in_progress_runs(true);
        loops.push(spawn_poller(poller, scaler.clone(), stop.clone()));
    }

    let orchestrator = Arc::new(Orchestrator::new(
        store.clone(),
        backend,
        Arc::new(SystemClock),
        config.admin_token.get().cloned(),
    ));
    if !config.admin_token.is_set() {
        tracing::warn!(
            "no admin token configured (PROXY_RUNNER_ADMIN_TOKEN): admin calls will be refused"
        );
    }
    let state = AppState {
        orchestrator,
        metrics: metrics::prometheus(),
        started: Instant::now(),
    };
    let router = app(state).merge(webhook::routes(WebhookState {
        secret: config.github.webhook_secret.get().cloned(),
        autoscaler,
        store: store.clone(),
    }));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, db = %config.database.display(), backend = ?config.backend, "orchestrator listening");
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
            .context("HTTP server failed")
    });
    Ok(Running {
        url: format!("http://{addr}"),
        store,
        stop,
        server,
        loops,
    })
}

fn spawn_poller(
    poller: Poller,
    scaler: Arc<Autoscaler>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let outcome = poller.poll_once().await;
            for job in &outcome.jobs {
                if let Err(e) = scaler.ingest(JobAction::Queued, job, JobSource::Poll).await {
                    tracing::warn!(error = %e, github_job = job.id, "cannot record polled job");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poller.next_delay()) => {},
            }
        }
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
