//! Shared helpers of the API tests: the real router over a real SQLite store.

#![allow(dead_code)]

pub mod registry;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proxy_runner_domain::ports::{JobStore, SystemClock};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::{AppState, Orchestrator, app, metrics};
use proxy_runner_store::SqliteStore;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-for-tests";

pub struct TestApp {
    pub router: Router,
    pub store: Arc<SqliteStore>,
    pub backend: Arc<DryRunBackend>,
}

pub async fn test_app(db: Option<&Path>) -> TestApp {
    let store = Arc::new(match db {
        Some(p) => SqliteStore::open(p).await.unwrap(),
        None => SqliteStore::in_memory().await.unwrap(),
    });
    let backend = Arc::new(DryRunBackend::new());
    let orchestrator = Orchestrator::new(
        store.clone() as Arc<dyn JobStore>,
        backend.clone(),
        Arc::new(SystemClock),
        Some(SecretString::from(ADMIN)),
    );
    let router = app(AppState {
        orchestrator: Arc::new(orchestrator),
        metrics: metrics::prometheus(),
        started: Instant::now(),
    });
    TestApp {
        router,
        store,
        backend,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl TestApp {
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
        let req = req
            .body(Body::from(body.unwrap_or_default().to_vec()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
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
        r.body["token"].as_str().unwrap().to_string()
    }
}

/// The body `hooks/job-started.sh` of the seed builds, byte for byte in shape:
/// every value a string, labels one comma-joined string, no runAttempt.
pub fn seed_hook_body(job: &str, run_id: &str, repo: &str, runner: &str, labels: &str) -> String {
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
