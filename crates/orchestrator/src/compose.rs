//! The composition root: from a configuration and the ports, the whole
//! served router (API, webhooks, metrics layer) and the background tasks.
//! `serve`, the demo, the benchmark and the tests all build through here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use proxy_runner_domain::labels::{LabelError, LabelSet};
use proxy_runner_domain::ports::{ContainerBackend, JobStore, QueuedJobFeed, RunnerRegistry};
use proxy_runner_domain::schedule::Caps;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::autoscaler::{AutoscaleConfig, Autoscaler, Pool};
use crate::config::Config;
use crate::metrics as m;
use crate::service::Orchestrator;
use crate::sources::Sources;
use crate::webhook::{self, WebhookState};

/// The adapters the orchestrator runs on.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn JobStore>,
    pub backend: Arc<dyn ContainerBackend>,
    /// GitHub; `None` without credentials (webhooks and autoscaling off).
    pub registry: Option<Arc<dyn RunnerRegistry>>,
    /// The poller, for setups webhooks cannot reach.
    pub feed: Option<Arc<dyn QueuedJobFeed>>,
    pub sources: Sources,
}

/// Everything one orchestrator process serves and runs.
pub struct System {
    /// Exactly what is served.
    pub router: Router,
    pub orchestrator: Arc<Orchestrator>,
    pub autoscaler: Option<Arc<Autoscaler>>,
    feed: Option<Arc<dyn QueuedJobFeed>>,
}

impl System {
    /// Builds the system with the autoscaling settings of `config`.
    pub fn build(config: &Config, ports: Ports) -> Result<System, LabelError> {
        let autoscale = autoscale_config(config)?;
        Ok(System::build_with(config, autoscale, ports))
    }

    /// Builds the system with explicit autoscaling settings (tests tune
    /// ticks and graces this way).
    pub fn build_with(config: &Config, autoscale: AutoscaleConfig, ports: Ports) -> System {
        crate::metrics::describe();
        let autoscaler = ports.registry.map(|registry| {
            Arc::new(Autoscaler::new(
                ports.store.clone(),
                ports.backend.clone(),
                registry,
                ports.sources.clone(),
                autoscale,
            ))
        });
        if autoscaler.is_none() {
            tracing::warn!(
                "no GitHub credentials configured: webhooks and autoscaling are off, the delegation API works"
            );
        }
        if !config.admin_token.is_set() {
            tracing::warn!(
                "no admin token configured (PROXY_RUNNER_ADMIN_TOKEN): admin calls will be refused"
            );
        }
        let orchestrator = Arc::new(Orchestrator::new(
            ports.store.clone(),
            ports.backend,
            ports.sources.clone(),
            config.admin_token.get().cloned(),
        ));
        let router = app(
            AppState {
                orchestrator: orchestrator.clone(),
                metrics: crate::metrics::prometheus(),
                started: Instant::now(),
            },
            WebhookState {
                secret: config.github.webhook_secret.get().cloned(),
                autoscaler: autoscaler.clone(),
                store: ports.store,
                clock: ports.sources.clock,
            },
        );
        System {
            router,
            orchestrator,
            autoscaler,
            feed: ports.feed,
        }
    }

    /// Starts the background tasks (scheduler, engine events, reconciler,
    /// poller) until `stop`.
    pub fn spawn(&self, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let Some(scaler) = &self.autoscaler else {
            return Vec::new();
        };
        let mut tasks = scaler.spawn(stop.clone());
        if let Some(feed) = &self.feed {
            tasks.push(scaler.spawn_poller(feed.clone(), stop));
        }
        tasks
    }
}

/// The served router: the API and the webhook receiver, one JSON answer for
/// unknown routes and methods, and every request counted.
pub fn app(state: AppState, webhooks: WebhookState) -> Router {
    api::routes(state)
        .merge(webhook::routes(webhooks))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn(count_requests))
}

async fn count_requests(req: Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "method" => method, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// The autoscaler's settings from the configuration.
pub fn autoscale_config(config: &Config) -> Result<AutoscaleConfig, LabelError> {
    let r = &config.runners;
    let pools = r
        .label_sets
        .iter()
        .map(|set| {
            Ok(Pool {
                labels: LabelSet::parse_list(set.labels.iter().map(String::as_str))?,
                image: set.image.clone(),
                hardening: set.hardening.clone(),
            })
        })
        .collect::<Result<Vec<_>, LabelError>>()?;
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
