//! The orchestrator as served, in process: built through the composition
//! root over an in-memory (or file) SQLite store, the dry-run engine, the
//! recording GitHub double and manual time; called with `oneshot`.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proxy_runner_domain::ports::{ContainerBackend, JobStore, RunnerRegistry};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, Autoscaler};
use proxy_runner_orchestrator::config::{Config, Secret};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System};
use proxy_runner_store::SqliteStore;
use serde_json::Value;
use tower::ServiceExt;

use crate::registry::FakeRegistry;
use crate::{FixedJitter, ManualClock};

pub const ADMIN: &str = "admin-token-for-tests";
pub const WEBHOOK_SECRET: &str = "webhook-SECRET-for-tests";

/// What a rig is built from; `Default` is the API alone (no GitHub).
#[derive(Default)]
pub struct RigOptions<'a> {
    /// A SQLite file instead of an in-memory store.
    pub db: Option<&'a Path>,
    /// Serve webhooks and autoscale with the recording GitHub double.
    pub github: bool,
    pub autoscale: Option<AutoscaleConfig>,
    /// `[http]` settings other than the defaults.
    pub http: Option<proxy_runner_orchestrator::config::HttpSection>,
}

pub struct Rig {
    /// The router exactly as `serve` serves it.
    pub router: Router,
    pub store: Arc<SqliteStore>,
    pub backend: Arc<DryRunBackend>,
    pub registry: Arc<FakeRegistry>,
    pub clock: Arc<ManualClock>,
    pub scaler: Option<Arc<Autoscaler>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Rig {
    /// The API alone over an in-memory store.
    pub async fn api() -> Rig {
        Rig::build(RigOptions::default()).await
    }

    pub async fn build(options: RigOptions<'_>) -> Rig {
        let store = Arc::new(match options.db {
            Some(p) => SqliteStore::open(p).await.expect("open SQLite file"),
            None => SqliteStore::in_memory().await.expect("in-memory SQLite"),
        });
        let backend = Arc::new(DryRunBackend::new());
        let registry = Arc::new(FakeRegistry::default());
        let clock = Arc::new(ManualClock::starting_now());
        let mut config = Config {
            admin_token: Secret::new(ADMIN),
            ..Config::default()
        };
        config.github.webhook_secret = Secret::new(WEBHOOK_SECRET);
        if let Some(http) = options.http {
            config.http = http;
        }
        let ports = Ports {
            store: store.clone() as Arc<dyn JobStore>,
            backend: backend.clone() as Arc<dyn ContainerBackend>,
            registry: options
                .github
                .then(|| registry.clone() as Arc<dyn RunnerRegistry>),
            feed: None,
            job_containers: None,
            sources: Sources {
                clock: clock.clone(),
                jitter: Arc::new(FixedJitter(0.5)),
                ..Sources::system()
            },
        };
        let system = System::build_with(&config, options.autoscale.unwrap_or_default(), ports);
        Rig {
            router: system.router,
            store,
            backend,
            registry,
            clock,
            scaler: system.autoscaler,
        }
    }

    /// The autoscaler (a rig built with `github: true`).
    pub fn scaler(&self) -> &Arc<Autoscaler> {
        self.scaler
            .as_ref()
            .expect("rig built without GitHub: no autoscaler")
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        self.call_with(method, uri, token, body, Some("application/json"))
            .await
    }

    pub async fn call_with(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        content_type: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some()
            && let Some(ct) = content_type
        {
            req = req.header("content-type", ct);
        }
        self.send(
            req.body(Body::from(body.unwrap_or_default().to_vec()))
                .expect("request"),
        )
        .await
    }

    /// Sends a prepared request to the router.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    /// Issues a runner token through the API.
    pub async fn runner_token(&self, runner: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/tokens",
                Some(ADMIN),
                Some(format!(r#"{{"runner":"{runner}"}}"#).as_bytes()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["token"]
            .as_str()
            .expect("token in the answer")
            .to_string()
    }

    /// Runs scheduling rounds until nothing more starts and every start has
    /// finished.
    pub async fn settle(&self) {
        self.scaler()
            .run_until_quiet()
            .await
            .expect("scheduling round");
    }
}

/// The body the design's `hooks/job-started.sh` builds, byte for byte in
/// shape: every value a string, labels one comma-joined string, no runAttempt.
pub fn design_hook_body(job: &str, run_id: &str, repo: &str, runner: &str, labels: &str) -> String {
    format!(
        r#"{{
  "jobId": "{job}",
  "runId": "{run_id}",
  "repository": "{repo}",
  "workflow": "CI",
  "runnerName": "{runner}",
  "labels": "{labels}",
  "environment": {{"GITHUB_JOB":"{job}","GITHUB_RUN_ID":"{run_id}","RUNNER_NAME":"{runner}","HOME":"/home/runner"}}
}}"#
    )
}
