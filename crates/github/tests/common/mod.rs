//! Test helpers: a scripted HTTP server on 127.0.0.1:0 that records every
//! request and answers from a closure, clients pointed at it, and a metrics
//! recorder that keeps what was recorded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http_body_util::BodyExt;
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig};
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// `METHOD /path?query`
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waited (tokio time) before answering.
    pub delay: Duration,
}

impl Scripted {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Scripted {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn empty(status: u16) -> Self {
        Scripted {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: impl ToString) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded, usize) -> Scripted + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    handler: Handler,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

pub struct ScriptedServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl ScriptedServer {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Starts a server; `handler(request, index)` decides each answer (index
/// counts all requests from 0).
pub async fn serve(
    handler: impl Fn(&Recorded, usize) -> Scripted + Send + Sync + 'static,
) -> ScriptedServer {
    let state = ServerState {
        handler: Arc::new(handler),
        requests: Arc::new(Mutex::new(Vec::new())),
    };
    let requests = state.requests.clone();
    let app = axum::Router::new().fallback(answer).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    ScriptedServer {
        url: format!("http://{addr}"),
        requests,
    }
}

async fn answer(State(state): State<ServerState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body,
    };
    let index = {
        let mut all = state.requests.lock().unwrap();
        all.push(recorded.clone());
        all.len() - 1
    };
    let scripted = (state.handler)(&recorded, index);
    if !scripted.delay.is_zero() {
        tokio::time::sleep(scripted.delay).await;
    }
    let mut response = Response::builder().status(scripted.status);
    for (k, v) in &scripted.headers {
        response = response.header(k, v);
    }
    response.body(Body::from(scripted.body)).unwrap()
}

pub const PAT: &str = "ghp_test_pat_value_0123456789";

pub fn config(url: &str, auth: Auth) -> GitHubConfig {
    let mut c = GitHubConfig::new(url, auth);
    // Short back-off so tests stay readable; paused time makes it free anyway.
    c.retry.min_delay = Duration::from_millis(100);
    c.retry.max_delay = Duration::from_secs(1);
    c
}

pub fn pat_client(url: &str, tweak: impl FnOnce(&mut GitHubConfig)) -> GitHubClient {
    let mut c = config(url, Auth::Pat(SecretString::from(PAT)));
    tweak(&mut c);
    GitHubClient::new(c).unwrap()
}

pub fn fixture(rel: &str) -> String {
    proxy_runner_test_support::fixture_text(rel)
}

pub fn runner_json(id: u64, name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": name, "os": "linux", "status": "online", "busy": false,
        "ephemeral": true, "runner_group_id": 1,
        "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]
    })
}

pub fn rate_headers(s: Scripted, limit: u64, remaining: u64, reset_epoch: i64) -> Scripted {
    s.header("x-ratelimit-limit", limit)
        .header("x-ratelimit-remaining", remaining)
        .header("x-ratelimit-used", limit - remaining)
        .header("x-ratelimit-reset", reset_epoch)
        .header("x-ratelimit-resource", "core")
}

// ------------------------------------------------------------ metrics

/// Keeps counters (sum), gauges (last value) and histograms (sample count)
/// keyed by `name{k=v,...}` with labels sorted.
#[derive(Default, Clone)]
pub struct CapturedMetrics {
    values: Arc<Mutex<HashMap<String, f64>>>,
}

impl CapturedMetrics {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.lock().unwrap().get(key).copied()
    }
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.values.lock().unwrap().keys().cloned().collect();
        k.sort();
        k
    }
    fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Cell {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: self.values.clone(),
        })
    }
}

struct Cell {
    key: String,
    values: Arc<Mutex<HashMap<String, f64>>>,
}

impl Cell {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut v = self.values.lock().unwrap();
        let e = v.entry(self.key.clone()).or_insert(0.0);
        *e = f(*e);
    }
}

impl metrics::CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.update(|v| v + value as f64)
    }
    fn absolute(&self, value: u64) {
        self.update(|_| value as f64)
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| v + value)
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value)
    }
    fn set(&self, value: f64) {
        self.update(|_| value)
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, _value: f64) {
        self.update(|v| v + 1.0)
    }
}

impl metrics::Recorder for CapturedMetrics {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.cell(key))
    }
}
