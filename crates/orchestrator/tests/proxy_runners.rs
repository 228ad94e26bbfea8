//! What a proxy runner supervisor asks of the orchestrator: its token acts
//! for its slot runners (`{name}-{slot}-{n}`) and nothing else, on every
//! route a runner token reaches; JIT configs and registration tokens for
//! slot runners with a proxy label set's labels, minted through the real
//! GitHub client against the emulator; runner deletion; heartbeats and hook
//! calls as metrics.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proxy_runner_domain::job_containers::{
    ExecSpec, JobContainerSpec, JobContainers, RegistryCredentials, StartedJobContainer, StepStream,
};
use proxy_runner_domain::ports::{
    BackendError, ContainerBackend, ContainerInfo, JobStore, RunnerRegistry,
};
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig};
use proxy_runner_orchestrator::config::{Config, JobPath, LabelSetConfig, ProxySection, Secret};
use proxy_runner_orchestrator::dry_run::DryRunBackend;
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System};
use proxy_runner_store::SqliteStore;
use proxy_runner_test_support::rig::{ADMIN, Rig, design_hook_body};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const PAT: &str = "ghp_proxy-runners-SECRET";

#[tokio::test]
async fn a_supervisor_token_acts_for_its_slot_runners_and_nothing_else() {
    let app = Rig::api().await;
    let ci = app.runner_token("ci").await;
    let other = app.runner_token("other").await;
    // Delegation: the slot runners of ci, not a look-alike.
    for (runner, expected) in [
        ("ci-0-1", StatusCode::CREATED),
        ("ci-x", StatusCode::FORBIDDEN),
        ("ci-0-1-2", StatusCode::FORBIDDEN),
        ("ci-01-1", StatusCode::FORBIDDEN),
        ("cix-0-1", StatusCode::FORBIDDEN),
        ("other-0-1", StatusCode::FORBIDDEN),
    ] {
        let body = design_hook_body("build", "7", "o/r", runner, "self-hosted,proxy");
        let r = app
            .call(
                "POST",
                "/api/jobs/delegate",
                Some(&ci),
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(r.status, expected, "{runner}: {}", r.text);
    }
    let jobs = app.store.list_jobs(&Default::default()).await.unwrap();
    assert_eq!(jobs.len(), 1, "only ci-0-1's job is stored");
    let id = jobs[0].id;
    // Another token can neither read nor complete it.
    assert_eq!(
        app.call("GET", &format!("/api/jobs/{id}"), Some(&other), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("GET", &format!("/api/jobs/{id}"), Some(&ci), None)
            .await
            .status,
        StatusCode::OK
    );
    // Completing by job key names the slot runner (hooks/job-completed.sh).
    for (query, token, expected) in [
        ("", &ci, StatusCode::NOT_FOUND),
        ("?runner=other-0-1", &ci, StatusCode::FORBIDDEN),
        ("?runner=ci-0-1", &other, StatusCode::FORBIDDEN),
        ("?runner=ci-0-1", &ci, StatusCode::OK),
    ] {
        let r = app
            .call_with(
                "POST",
                &format!("/api/jobs/build/complete{query}"),
                Some(token),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, expected, "{query}: {}", r.text);
    }
    let job = app.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status.as_str(), "completed");
    // By id too.
    assert_eq!(
        app.call_with(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(&ci),
            None,
            None
        )
        .await
        .status,
        StatusCode::OK
    );
}

/// An engine that cannot be reached: the hook routes' authorization is
/// decided before any container is touched.
struct NoEngine;

fn unreachable() -> BackendError {
    BackendError::DaemonUnreachable("no engine in this test".into())
}

#[async_trait]
impl JobContainers for NoEngine {
    async fn create_job_container(
        &self,
        _spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError> {
        Err(unreachable())
    }
    async fn start_service(
        &self,
        _spec: &JobContainerSpec,
    ) -> Result<StartedJobContainer, BackendError> {
        Err(unreachable())
    }
    async fn exec(&self, _spec: &ExecSpec) -> Result<StepStream, BackendError> {
        Err(unreachable())
    }
    async fn run_to_completion(
        &self,
        _spec: &JobContainerSpec,
    ) -> Result<StepStream, BackendError> {
        Err(unreachable())
    }
    async fn image_present(&self, _image: &str) -> Result<bool, BackendError> {
        Err(unreachable())
    }
    async fn pull_image(
        &self,
        _image: &str,
        _credentials: Option<&RegistryCredentials>,
    ) -> Result<(), BackendError> {
        Err(unreachable())
    }
    async fn remove_job(&self, _instance: &str, _job_id: Uuid) -> Result<usize, BackendError> {
        Ok(0)
    }
    async fn list_proxy_containers(
        &self,
        _instance: &str,
    ) -> Result<Vec<ContainerInfo>, BackendError> {
        Ok(Vec::new())
    }
}

struct Served {
    router: Router,
    store: Arc<SqliteStore>,
}

impl Served {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        self.call_with_header(method, uri, token, body, None).await
    }

    async fn call_with_header(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        header: Option<(&str, &str)>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let req = req
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body, headers)
    }

    async fn token(&self, runner: &str) -> String {
        let (status, body, _) = self
            .call(
                "POST",
                "/api/tokens",
                Some(ADMIN),
                Some(json!({"runner": runner})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        body["token"].as_str().unwrap().to_string()
    }

    async fn metrics(&self) -> String {
        let (_, body, _) = self.call("GET", "/metrics", None, None).await;
        body.as_str().unwrap_or_default().to_string()
    }
}

/// The orchestrator with a proxy label set next to an autoscaled one,
/// GitHub = the emulator (through the real client), proxy path on.
async fn served(registry: Option<Arc<dyn RunnerRegistry>>) -> Served {
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let mut config = Config {
        admin_token: Secret::new(ADMIN),
        ..Config::default()
    };
    config.github.organization = Some("octo".into());
    config.github.web_url = "https://github.example".into();
    config.runners.label_sets = vec![
        LabelSetConfig {
            labels: vec!["self-hosted".into(), "linux".into(), "gpu".into()],
            path: JobPath::Autoscale,
            profile: None,
            image: None,
            hardening: None,
            warm: 0,
            warm_repositories: Vec::new(),
        },
        LabelSetConfig {
            labels: vec!["self-hosted".into(), "proxy".into()],
            path: JobPath::Proxy,
            profile: None,
            image: None,
            hardening: None,
            warm: 0,
            warm_repositories: Vec::new(),
        },
    ];
    config.proxy = Some(ProxySection {
        images: vec!["job-image:1".into()],
        work_root: std::env::temp_dir(),
        ..ProxySection::default()
    });
    let ports = Ports {
        store: store.clone() as Arc<dyn JobStore>,
        backend: Arc::new(DryRunBackend::new()) as Arc<dyn ContainerBackend>,
        registry,
        feed: None,
        job_containers: Some(Arc::new(NoEngine)),
        sources: Sources::system(),
    };
    let system = System::build(&config, ports).unwrap();
    Served {
        router: system.router,
        store,
    }
}

async fn emulator() -> (
    proxy_runner_emulator::RunningEmulator,
    Arc<dyn RunnerRegistry>,
) {
    let emulator = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![PAT.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let client = GitHubClient::new(GitHubConfig::new(
        emulator.url(),
        Auth::Pat(SecretString::from(PAT)),
    ))
    .unwrap();
    (emulator, Arc::new(client))
}

async fn emulator_runners(emulator: &proxy_runner_emulator::RunningEmulator) -> Vec<Value> {
    reqwest::get(format!("{}/_emulator/runners", emulator.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn container_hooks_accept_the_slot_runners_of_the_token() {
    let app = served(None).await;
    let ci = app.token("ci").await;
    // Authorized, but no job delegated yet: 404, not 403.
    let (status, body, _) = app
        .call(
            "POST",
            "/api/hooks/cleanup-job",
            Some(&ci),
            Some(json!({"runnerName": "ci-3-9", "state": null})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for runner in ["ci", "ci-3", "other-3-9", "ci-3-9-1"] {
        let (status, body, _) = app
            .call(
                "POST",
                "/api/hooks/cleanup-job",
                Some(&ci),
                Some(json!({"runnerName": runner, "state": null})),
            )
            .await;
        let expected = if runner == "ci" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, expected, "{runner}: {body}");
    }
}

#[tokio::test]
async fn jit_configs_are_minted_for_slot_runners_with_proxy_labels_only() {
    let (emulator, registry) = emulator().await;
    let app = served(Some(registry)).await;
    let ci = app.token("ci").await;
    let request = |name: &str, labels: Value| json!({"name": name, "labels": labels, "workFolder": "/srv/work/ci-0"});
    let (status, body, headers) = app
        .call(
            "POST",
            "/api/runners/jitconfig",
            Some(&ci),
            Some(request("ci-0-1", json!(["self-hosted", "proxy"]))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["runnerName"], "ci-0-1");
    let first_id = body["runnerId"].as_u64().unwrap();
    let jit = body["encodedJitConfig"].as_str().unwrap().to_string();
    assert!(jit.len() > 20);
    let runners = emulator_runners(&emulator).await;
    assert_eq!(runners.len(), 1, "{runners:?}");
    assert_eq!(runners[0]["name"], "ci-0-1");
    assert_eq!(runners[0]["scope"]["org"], "octo");
    assert_eq!(runners[0]["ephemeral"], true);

    // Refused: autoscaled labels, labels of no proxy set, other names.
    for (name, labels, expected) in [
        (
            "ci-0-2",
            json!(["self-hosted", "linux", "gpu"]),
            StatusCode::FORBIDDEN,
        ),
        (
            "ci-0-2",
            json!(["self-hosted", "linux", "gpu", "proxy"]),
            StatusCode::FORBIDDEN,
        ),
        ("ci-0-2", json!("self-hosted"), StatusCode::FORBIDDEN),
        ("ci-0-2", json!([]), StatusCode::FORBIDDEN),
        ("ci", json!(["self-hosted", "proxy"]), StatusCode::FORBIDDEN),
        (
            "other-0-1",
            json!(["self-hosted", "proxy"]),
            StatusCode::FORBIDDEN,
        ),
        (
            "ci-0-1 x",
            json!(["self-hosted", "proxy"]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, body, _) = app
            .call(
                "POST",
                "/api/runners/jitconfig",
                Some(&ci),
                Some(request(name, labels.clone())),
            )
            .await;
        assert_eq!(status, expected, "{name} {labels}: {body}");
        assert!(body["encodedJitConfig"].is_null());
    }
    let (status, _, _) = app
        .call(
            "POST",
            "/api/runners/jitconfig",
            None,
            Some(request("ci-0-2", json!(["self-hosted", "proxy"]))),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        emulator_runners(&emulator).await.len(),
        1,
        "nothing else registered"
    );

    // The same name again replaces the idle leftover (config.sh --replace).
    let (status, body, _) = app
        .call(
            "POST",
            "/api/runners/jitconfig",
            Some(&ci),
            Some(request("ci-0-1", json!("proxy,self-hosted"))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["runnerId"].as_u64().unwrap(), first_id);
    let runners = emulator_runners(&emulator).await;
    assert_eq!(runners.len(), 1, "{runners:?}");
    assert_eq!(runners[0]["id"].as_u64(), body["runnerId"].as_u64());

    // A repository scope instead of the organization.
    let (status, body, _) = app
        .call(
            "POST",
            "/api/runners/jitconfig",
            Some(&ci),
            Some(json!({"name": "ci-1-1", "labels": ["self-hosted", "proxy"], "repository": "octo/app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Registration tokens for config.sh, with the URL to configure against.
    let (status, body, headers) = app
        .call(
            "POST",
            "/api/runners/registration-token",
            Some(&ci),
            Some(request("ci-2-1", json!(["self-hosted", "proxy"]))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["url"], "https://github.example/octo");
    assert!(body["token"].as_str().unwrap().len() > 10);

    // Deletion: the slot runners of the token only.
    let (status, body, _) = app
        .call("DELETE", "/api/runners/other-0-1", Some(&ci), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body, _) = app
        .call("DELETE", "/api/runners/ci-0-1", Some(&ci), None)
        .await;
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (status, body, _) = app
        .call(
            "DELETE",
            "/api/runners/ci-1-1?repository=octo/app",
            Some(&ci),
            None,
        )
        .await;
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (status, body, _) = app
        .call("DELETE", "/api/runners/ci-0-1", Some(&ci), None)
        .await;
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (StatusCode::OK, Some(0)),
        "{body}"
    );
    assert!(emulator_runners(&emulator).await.is_empty());

    // The credentials were shown to the caller only: not in the audit trail.
    let audit = app.store.list_audit(1000).await.unwrap();
    let text = serde_json::to_string(&audit).unwrap();
    assert!(text.contains("runner.registered"), "{text}");
    assert!(text.contains("runner.deleted"), "{text}");
    assert!(!text.contains(&jit), "the JIT config is in the audit trail");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("proxy_runner_proxy_registrations_total{kind=\"jit\",outcome=\"ok\"}"),
        "{metrics}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn heartbeats_and_hook_calls_become_metrics() {
    let app = served(None).await;
    let token = app.token("beat").await;
    let beat = json!({
        "uptimeSeconds": 42,
        "slots": [
            {"slot": 0, "state": "busy", "runnerName": "beat-0-3", "restarts": 2, "jobs": 2, "lastExitCode": 0},
            {"slot": 1, "state": "idle", "runnerName": "beat-1-1", "restarts": 1, "jobs": 0, "lastExitCode": 137},
            {"slot": 2, "state": "stopped", "restarts": 0, "jobs": 0, "lastExitCode": 7},
        ]
    });
    let (status, body, _) = app
        .call(
            "POST",
            "/api/runners/heartbeat",
            Some(&token),
            Some(beat.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let metrics = app.metrics().await;
    for line in [
        "proxy_runner_proxy_uptime_seconds{runner=\"beat\"} 42",
        "proxy_runner_proxy_slots{runner=\"beat\"} 3",
        "proxy_runner_proxy_busy_slots{runner=\"beat\"} 1",
        "proxy_runner_proxy_listener_restarts{runner=\"beat\"} 3",
        "proxy_runner_proxy_last_exit_code{runner=\"beat\",slot=\"1\"} 137",
        "proxy_runner_proxy_last_exit_code{runner=\"beat\",slot=\"2\"} 7",
        "proxy_runner_proxy_heartbeats_total{runner=\"beat\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("proxy_runner_proxy_last_heartbeat_timestamp_seconds{runner=\"beat\"}")
    );
    // Only a runner token, only its own slot runners, well-formed.
    let (status, _, _) = app
        .call(
            "POST",
            "/api/runners/heartbeat",
            Some(ADMIN),
            Some(beat.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = app
        .call(
            "POST",
            "/api/runners/heartbeat",
            Some(&token),
            Some(json!({"uptimeSeconds": 1, "slots": [{"slot": 0, "state": "idle", "runnerName": "other-0-1"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = app
        .call(
            "POST",
            "/api/runners/heartbeat",
            Some(&token),
            Some(json!({"uptimeSeconds": 1, "slots": [{"slot": 0, "state": "dancing"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Hook calls by hook and outcome; failures the hook client reports.
    let body = design_hook_body("build", "9", "o/r", "beat-0-3", "self-hosted,proxy");
    let (status, _, _) = app
        .call_with_header(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(serde_json::from_str(&body).unwrap()),
            Some((
                "x-proxy-runner-hook-report",
                "job_started:unreached=2, run_container_step:connection_failure=5",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // An anonymous caller's report is ignored.
    let (status, _, _) = app
        .call_with_header(
            "POST",
            "/api/hooks/run-container-step",
            None,
            Some(json!({})),
            Some((
                "x-proxy-runner-hook-report",
                "run_container_step:connection_failure=100",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let metrics = app.metrics().await;
    for line in [
        "proxy_runner_hook_executions_total{hook=\"job_started\",outcome=\"unreached\"} 2",
        "proxy_runner_hook_connection_failures_total{hook=\"run_container_step\"} 5",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("proxy_runner_hook_executions_total{hook=\"job_started\",outcome=\"ok\"}")
    );
    assert!(metrics.contains(
        "proxy_runner_hook_executions_total{hook=\"run_container_step\",outcome=\"refused\"}"
    ));
}
