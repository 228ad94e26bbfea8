//! `proxy-runner serve`: wires store, backend and API and runs until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use proxy_runner_domain::ports::{ContainerBackend, JobStore, SystemClock};
use proxy_runner_orchestrator::config::{BackendKind, Config};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::{AppState, Orchestrator, app, metrics};
use proxy_runner_store::SqliteStore;
use tokio::net::TcpListener;

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

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn JobStore> = if config.database.as_os_str() == ":memory:" {
        Arc::new(SqliteStore::in_memory().await?)
    } else {
        Arc::new(SqliteStore::open(&config.database).await?)
    };
    let backend: Arc<dyn ContainerBackend> = match config.backend {
        BackendKind::DryRun => Arc::new(DryRunBackend::new()),
        BackendKind::Docker => anyhow::bail!(
            "the docker backend is not built into this version yet; use --backend dry-run"
        ),
    };
    metrics::describe();
    let orchestrator = Arc::new(Orchestrator::new(
        store,
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
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, db = %config.database.display(), backend = ?config.backend, "orchestrator listening");
    // A line on stdout for scripts and tests that started us with port 0.
    println!("listening on http://{addr}");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    tracing::info!("orchestrator stopped");
    Ok(())
}

async fn shutdown_signal() {
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
