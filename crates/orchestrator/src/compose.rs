//! The composition root: from a configuration and the ports, the whole
//! served router (API, webhooks, metrics layer) and the background tasks.
//! `serve`, the demo, the benchmark and the tests all build through here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::labels::{LabelError, LabelSet};
use proxy_runner_domain::ports::{ContainerBackend, JobStore, QueuedJobFeed, RunnerRegistry};
use proxy_runner_domain::schedule::Caps;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::autoscaler::{AutoscaleConfig, Autoscaler, Pool};
use crate::config::{Config, JobPath};
use crate::hook_api::{self, HookApiState};
use crate::metrics as m;
use crate::proxy::{ProxyConfig, ProxyJobs};
use crate::runners_api::{self, RunnersApiState, RunnersSettings};
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
    /// The engine's side of the proxy path (the Docker backend); with a
    /// `[proxy]` section it serves the container hooks.
    pub job_containers: Option<Arc<dyn JobContainers>>,
    pub sources: Sources,
}

/// Everything one orchestrator process serves and runs.
pub struct System {
    /// Exactly what is served.
    pub router: Router,
    pub orchestrator: Arc<Orchestrator>,
    pub autoscaler: Option<Arc<Autoscaler>>,
    pub proxy: Option<Arc<ProxyJobs>>,
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
        let autoscaler = ports.registry.clone().map(|registry| {
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
        let proxy = proxy_jobs(config, &ports);
        let orchestrator = Arc::new(
            Orchestrator::new(
                ports.store.clone(),
                ports.backend,
                ports.sources.clone(),
                config.admin_token.get().cloned(),
            )
            .with_proxy(proxy.clone()),
        );
        let state = AppState {
            orchestrator: orchestrator.clone(),
            metrics: crate::metrics::prometheus(),
            started: Instant::now(),
        };
        let runners = RunnersApiState::new(
            state.clone(),
            ports.registry.clone(),
            RunnersSettings::from_config(config),
        );
        let router = app(
            state.clone(),
            HookApiState {
                app: state,
                proxy: proxy.clone(),
            },
            runners,
            WebhookState {
                secret: config.github.webhook_secret.get().cloned(),
                autoscaler: autoscaler.clone(),
                store: ports.store,
                clock: ports.sources.clock,
                body_limit: config.http.webhook_body_limit_bytes,
            },
            config.http.body_limits(),
        );
        System {
            router,
            orchestrator,
            autoscaler,
            proxy,
            feed: ports.feed,
        }
    }

    /// Starts the background tasks (scheduler, engine events, reconciler,
    /// poller) until `stop`.
    pub fn spawn(&self, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(proxy) = &self.proxy {
            tasks.push(proxy.spawn_reaper(stop.clone()));
        }
        let Some(scaler) = &self.autoscaler else {
            return tasks;
        };
        tasks.extend(scaler.spawn(stop.clone()));
        if let Some(feed) = &self.feed {
            tasks.push(scaler.spawn_poller(feed.clone(), stop));
        }
        tasks
    }
}

/// The proxy path's use cases, when configured and the engine can serve it.
fn proxy_jobs(config: &Config, ports: &Ports) -> Option<Arc<ProxyJobs>> {
    let section = config.proxy.clone()?;
    let Some(containers) = ports.job_containers.clone() else {
        tracing::warn!(
            "[proxy] is configured but the container engine cannot run job containers (dry-run backend): container hooks are off"
        );
        return None;
    };
    let label_sets = config
        .runners
        .label_sets
        .iter()
        .filter(|s| s.path == JobPath::Proxy)
        .filter_map(|s| {
            let labels = LabelSet::parse_list(s.labels.iter().map(String::as_str)).ok()?;
            Some((labels, s.profile.unwrap_or(section.profile)))
        })
        .collect();
    Some(Arc::new(ProxyJobs::new(
        ports.store.clone(),
        containers,
        ports.backend.clone(),
        ports.sources.clone(),
        ProxyConfig {
            instance: config.instance.clone(),
            network_prefix: config.runners.network_prefix.clone(),
            section,
            label_sets,
        },
    )))
}

/// The served router: the API and the webhook receiver, one JSON answer for
/// unknown routes and methods, and every request counted.
pub fn app(
    state: AppState,
    hooks: HookApiState,
    runners: RunnersApiState,
    webhooks: WebhookState,
    limits: BodyLimits,
) -> Router {
    let large_bodies = Arc::new(Semaphore::new(limits.max_large_bodies.max(1)));
    api::routes(state)
        .merge(hook_api::routes(hooks))
        .merge(runners_api::routes(runners))
        .merge(webhook::routes(webhooks))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn(
            crate::runner_health::count_hook_calls,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (large_bodies, limits.large_body_wait),
            limit_large_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            refuse_declared_oversize,
        ))
        // A body that stops coming is not waited for, nor one that comes
        // too slowly to ever stop.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.read_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            limits.read_deadline,
            within_body_deadline,
        ))
        .layer(axum::middleware::from_fn(count_requests))
}

/// What bounds the request bodies the server holds (`[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest webhook delivery.
    pub webhook: usize,
    /// How long reading a body may stall.
    pub read_timeout: Duration,
    /// Bodies over `LARGE_BODY` (or of undeclared length) read at once.
    pub max_large_bodies: usize,
    /// How long a large body waits for its turn before a 503.
    pub large_body_wait: Duration,
    /// How long reading a whole body may take, however steadily it comes.
    pub read_deadline: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            webhook: webhook::WEBHOOK_BODY_LIMIT,
            read_timeout: Duration::from_secs(30),
            max_large_bodies: 8,
            large_body_wait: Duration::from_secs(10),
            read_deadline: Duration::from_secs(60),
        }
    }
}

/// The body-read deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} s")]
struct BodyDeadlinePassed(u64);

/// Cuts a request body off at `deadline` after the request arrived. The stall
/// limit alone lets a client that sends a byte now and then hold a
/// connection for as long as it likes.
async fn within_body_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    use futures::StreamExt;
    let (parts, body) = req.into_parts();
    let ends = tokio::time::Instant::now() + deadline;
    let frames = futures::stream::unfold(Some(body.into_data_stream()), move |frames| async move {
        let mut frames = frames?;
        match tokio::time::timeout_at(ends, frames.next()).await {
            Ok(Some(frame)) => Some((frame, Some(frames))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(BodyDeadlinePassed(deadline.as_secs()))),
                None,
            )),
        }
    });
    next.run(Request::from_parts(
        parts,
        axum::body::Body::from_stream(frames),
    ))
    .await
}

impl BodyLimits {
    /// The largest body a route accepts.
    fn of(&self, path: &str) -> usize {
        if path.starts_with("/webhooks/") {
            self.webhook
        } else if path.starts_with("/api/hooks/") {
            proxy_runner_domain::container_hooks::limits::INPUT_BYTES
        } else {
            api::API_BODY_LIMIT
        }
    }
}

/// A body up to this size is small: every open connection may send one.
/// Larger ones (a container hook's input, a big webhook) take a permit, so
/// the memory held in bodies stays bounded whatever the clients do.
pub const LARGE_BODY: u64 = 64 * 1024;

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A `Content-Length` over the route's limit is answered at once, before
/// authentication and without reading a byte of the body.
async fn refuse_declared_oversize(
    axum::extract::State(limits): axum::extract::State<BodyLimits>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = limits.of(req.uri().path());
    if declared_length(&req).is_some_and(|n| n > limit as u64) {
        return crate::error::ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Holds a permit while a large body (declared over `LARGE_BODY`, or sent
/// without a length) is read and handled; a request that finds none within
/// the wait gets 503 with `Retry-After`.
async fn limit_large_bodies(
    axum::extract::State((permits, wait)): axum::extract::State<(Arc<Semaphore>, Duration)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let chunked = req
        .headers()
        .contains_key(axum::http::header::TRANSFER_ENCODING);
    let large = match declared_length(&req) {
        Some(n) => n > LARGE_BODY,
        None => chunked,
    };
    if !large {
        return next.run(req).await;
    }
    let Ok(Ok(_permit)) = tokio::time::timeout(wait, permits.acquire_owned()).await else {
        metrics::counter!(m::LARGE_BODIES_REFUSED).increment(1);
        let mut resp = crate::error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many large request bodies at once; retry shortly",
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return resp;
    };
    next.run(req).await
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
                path: set.path,
                image: set.image.clone(),
                hardening: set.hardening.clone(),
                warm: set.warm,
                warm_repositories: set.warm_repositories.clone(),
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
        warm_max_age: Duration::from_secs(r.warm_max_age_secs),
        warm_wait: Duration::from_secs(r.warm_wait_secs),
        ..AutoscaleConfig::default()
    })
}
