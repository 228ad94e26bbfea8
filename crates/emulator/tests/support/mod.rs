//! Shared test support: an emulator with a client that checks every REST
//! response against the OpenAPI fragment, App JWTs, a webhook receiver and
//! step executors for in-process runners.
#![allow(dead_code)]

pub mod openapi;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use proxy_runner_emulator::runner::{StepContext, StepExecutor, StepResult};
use proxy_runner_emulator::{EmulatorApp, EmulatorConfig, RunningEmulator, spawn};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub use openapi::{Coverage, OpenApi};

pub const PAT: &str = "ghp_emulatortestpat0000000000000000000001";
pub const OTHER_PAT: &str = "ghp_emulatortestpat0000000000000000000002";
pub const APP_ID: u64 = 424242;

/// The repository's `fixtures/{path}`, as a path string.
pub fn fixture(path: &str) -> String {
    proxy_runner_test_support::fixture_path(path)
        .to_string_lossy()
        .into_owned()
}

pub fn app_private_key() -> Vec<u8> {
    std::fs::read(fixture("test-keys/github-app-test.private.pem")).expect("test private key")
}

pub fn app_public_key() -> String {
    std::fs::read_to_string(fixture("test-keys/github-app-test.public.pem"))
        .expect("test public key")
}

pub fn config() -> EmulatorConfig {
    EmulatorConfig {
        pats: vec![PAT.to_string(), OTHER_PAT.to_string()],
        app: Some(EmulatorApp {
            app_id: APP_ID,
            public_key_pem: app_public_key(),
        }),
        ..EmulatorConfig::default()
    }
}

/// An App JWT with the given claims, signed with the test key.
pub fn jwt(iat: i64, exp: i64, iss: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&app_private_key()).expect("RSA key");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &json!({"iat": iat, "exp": exp, "iss": iss}), &key)
        .expect("JWT signs")
}

/// A JWT like a well-behaved client makes: iat a minute back, nine minutes to live.
pub fn good_jwt() -> String {
    let now = chrono::Utc::now().timestamp();
    jwt(now - 60, now + 540, json!(APP_ID))
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub coverage: Option<Coverage>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Harness {
    pub emulator: RunningEmulator,
    pub http: reqwest::Client,
    pub api: OpenApi,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with_config(config()).await
    }

    pub async fn with_config(config: EmulatorConfig) -> Harness {
        let emulator = spawn(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("emulator starts");
        Harness {
            emulator,
            http: reqwest::Client::new(),
            api: OpenApi::load(),
        }
    }

    pub fn url(&self) -> String {
        self.emulator.url()
    }

    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Vec<u8>) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.url()))
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("Accept", "application/vnd.github+json");
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request reaches the emulator");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body").to_vec();
        (status, headers, bytes)
    }

    /// A REST call whose response must validate against the OpenAPI fragment
    /// and carry GitHub's headers.
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let (status, headers, bytes) = self.send(method, path_and_query, auth, body).await;
        let path = path_and_query.split('?').next().unwrap();
        let coverage = self
            .api
            .check_response(method, path, status, &bytes)
            .unwrap_or_else(|e| {
                panic!(
                    "response does not conform: {e}\nbody: {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
        assert_github_headers(&headers);
        Reply {
            status,
            headers,
            body: parse_body(&bytes),
            coverage: Some(coverage),
        }
    }

    /// A REST call to a path the fragment does not describe (checked by the caller).
    pub async fn call_unlisted(
        &self,
        method: &str,
        path_and_query: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let (status, headers, bytes) = self.send(method, path_and_query, auth, body).await;
        assert_github_headers(&headers);
        Reply {
            status,
            headers,
            body: parse_body(&bytes),
            coverage: None,
        }
    }

    /// A call with a PAT.
    pub async fn pat(&self, method: &str, path_and_query: &str, body: Option<Value>) -> Reply {
        self.call(method, path_and_query, Some(&format!("Bearer {PAT}")), body)
            .await
    }

    /// An admin API call; answers are plain JSON (not GitHub's API).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, bytes) = self
            .send(method, &format!("/_emulator{path}"), None, body)
            .await;
        (status, parse_body(&bytes))
    }

    pub async fn create_job(
        &self,
        repository: &str,
        labels: &[&str],
        steps: &[&str],
    ) -> (u64, u64) {
        let (status, body) = self
            .admin(
                "POST",
                "/jobs",
                Some(json!({"repository": repository, "labels": labels, "steps": steps})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_u64().unwrap(),
            body["runId"].as_u64().unwrap(),
        )
    }

    pub async fn job(&self, id: u64) -> Value {
        let (status, body) = self.admin("GET", &format!("/jobs/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A JIT config minted through the REST API with the PAT.
    pub async fn jit(&self, scope_path: &str, name: &str, labels: &[&str]) -> (u64, String) {
        let r = self
            .pat(
                "POST",
                &format!("{scope_path}/actions/runners/generate-jitconfig"),
                Some(json!({"name": name, "runner_group_id": 1, "labels": labels, "work_folder": "_work"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["runner"]["id"].as_u64().unwrap(),
            r.body["encoded_jit_config"].as_str().unwrap().to_string(),
        )
    }

    /// Waits (bounded) until `check` holds for the admin view of job `id`.
    pub async fn wait_job(&self, id: u64, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let job = self.job(id).await;
            if check(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never reached the state: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    }
}

pub fn assert_github_headers(h: &HeaderMap) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-ratelimit-resource",
        "x-github-request-id",
    ] {
        assert!(h.contains_key(name), "missing header {name}");
    }
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
    ] {
        let v = h[name].to_str().unwrap();
        assert!(v.parse::<u64>().is_ok(), "{name}: {v}");
    }
}

// ---------------------------------------------------------------- webhook receiver

#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("payload is JSON")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A webhook receiver on 127.0.0.1; it answers 500 to the first
/// `fail_first` deliveries.
pub struct Receiver {
    pub url: String,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let seen = Arc::new(Mutex::new(0usize));
        let store = deliveries.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let store = store.clone();
                let seen = seen.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        *s += 1;
                        *s
                    };
                    store.lock().unwrap().push(Delivery {
                        headers,
                        body: body.to_vec(),
                    });
                    if n <= fail_first {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            deliveries,
            task,
        }
    }

    pub fn all(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.all();
            if all.len() >= n {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} deliveries arrived",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- executors

/// Records the steps it is asked to run and answers from a script:
/// a command `exit N` fails with N, anything else succeeds.
#[derive(Default)]
pub struct RecordingExecutor {
    pub seen: Mutex<Vec<StepContext>>,
}

#[async_trait]
impl StepExecutor for RecordingExecutor {
    async fn run_step(&self, step: &StepContext) -> StepResult {
        self.seen.lock().unwrap().push(step.clone());
        let exit_code = step
            .command
            .strip_prefix("exit ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        StepResult {
            output: format!("ran {}", step.command),
            exit_code,
        }
    }
}

/// Holds every step until released, to keep a job (and its runner) busy.
#[derive(Default)]
pub struct GateExecutor {
    pub started: Notify,
    pub release: Notify,
}

#[async_trait]
impl StepExecutor for GateExecutor {
    async fn run_step(&self, _step: &StepContext) -> StepResult {
        self.started.notify_one();
        self.release.notified().await;
        StepResult {
            output: "released".into(),
            exit_code: 0,
        }
    }
}
