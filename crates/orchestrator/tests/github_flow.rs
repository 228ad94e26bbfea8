//! The GitHub side end to end, without Docker: the emulator queues a job and
//! sends a signed `queued` webhook; the orchestrator records it, mints a JIT
//! config through the real GitHub client, and "starts a container" whose
//! runner is the emulator's simulated runner, in-process, with that config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use proxy_runner_domain::ports::{
    BackendError, ContainerBackend, ContainerEvent, ContainerInfo, ContainerSpec, JobFilter,
    JobStore, NetworkSpec, StartedContainer,
};
use proxy_runner_domain::{JobSource, JobStatus};
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_emulator::runner::{RunOptions, ShellExecutor, SimRunner};
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, JITCONFIG_ENV};
use proxy_runner_orchestrator::config::{Config, Secret};
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System};
use proxy_runner_store::SqliteStore;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A container engine whose "containers" are in-process simulated runners
/// started with the JIT config the orchestrator passed in the environment.
struct InProcessRunners {
    live: Arc<Mutex<HashMap<String, ContainerInfo>>>,
    events: broadcast::Sender<ContainerEvent>,
    seen_jit: Mutex<Vec<String>>,
}

#[async_trait]
impl ContainerBackend for InProcessRunners {
    fn kind(&self) -> &'static str {
        "in-process"
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn ensure_network(&self, _spec: &NetworkSpec) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, BackendError> {
        let jit = spec
            .stdin_secrets
            .iter()
            .find(|s| s.name == JITCONFIG_ENV)
            .map(|s| s.value.expose_secret().to_string())
            .ok_or_else(|| BackendError::Other("no JIT config handed over on stdin".into()))?;
        self.seen_jit.lock().unwrap().push(jit.clone());
        let runner =
            SimRunner::from_jit_config(&jit).map_err(|e| BackendError::Other(e.to_string()))?;
        let id = format!("inproc-{}", uuid::Uuid::now_v7().simple());
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            running: true,
        };
        self.live.lock().unwrap().insert(id.clone(), info.clone());
        let (live, events) = (self.live.clone(), self.events.clone());
        tokio::spawn(async move {
            let opts = RunOptions {
                job_wait: Some(Duration::from_secs(30)),
                ..RunOptions::default()
            };
            let code = match runner.run(&ShellExecutor::default(), &opts).await {
                Ok(outcome) => outcome.exit_code(),
                Err(e) => e.exit_code(),
            };
            live.lock().unwrap().remove(&id);
            let job_id = info
                .labels
                .get("proxy-runner.job-id")
                .and_then(|s| s.parse().ok());
            let _ = events.send(ContainerEvent::Exited {
                container_id: id,
                job_id,
                exit_code: i64::from(code),
            });
        });
        Ok(StartedContainer {
            id: self
                .live
                .lock()
                .unwrap()
                .keys()
                .last()
                .cloned()
                .unwrap_or_default(),
            name: spec.name.clone(),
        })
    }
    async fn stop(&self, _id: &str, _grace: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.live.lock().unwrap().remove(id);
        Ok(())
    }
    async fn remove_network_if_unused(&self, _name: &str) -> Result<bool, BackendError> {
        Ok(true)
    }
    async fn list_networks(&self, _instance: &str) -> Result<Vec<NetworkSpec>, BackendError> {
        Ok(Vec::new())
    }
    async fn list(&self, _instance: &str) -> Result<Vec<ContainerInfo>, BackendError> {
        Ok(self.live.lock().unwrap().values().cloned().collect())
    }
    fn events(&self, _instance: &str) -> BoxStream<'static, Result<ContainerEvent, BackendError>> {
        let rx = self.events.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|e| (Ok(e), rx))
        })
        .boxed()
    }
}

#[tokio::test]
async fn a_queued_webhook_becomes_a_job_a_jit_config_and_a_runner_that_takes_the_job() {
    let pat = "ghp_flow-SECRET-1";
    let webhook_secret = "whsec_flow-SECRET-2";
    let emulator = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![pat.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();

    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let backend = Arc::new(InProcessRunners {
        live: Default::default(),
        events: broadcast::channel(64).0,
        seen_jit: Default::default(),
    });
    let client = GitHubClient::new(GitHubConfig::new(
        emulator.url(),
        Auth::Pat(SecretString::from(pat)),
    ))
    .unwrap();
    let mut config = Config::default();
    config.github.webhook_secret = Secret::new(webhook_secret);
    let system = System::build_with(
        &config,
        AutoscaleConfig {
            tick: Duration::from_millis(50),
            ..AutoscaleConfig::default()
        },
        Ports {
            store: store.clone(),
            backend: backend.clone(),
            registry: Some(Arc::new(client)),
            feed: None,
            job_containers: None,
            sources: Sources::system(),
        },
    );
    let stop = CancellationToken::new();
    let loops = system.spawn(stop.clone());
    let router = system.router;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orchestrator_url = format!("http://{}", listener.local_addr().unwrap());
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });

    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/_emulator/webhook", emulator.url()))
        .json(&serde_json::json!({"url": format!("{orchestrator_url}/webhooks/github"), "secret": webhook_secret}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let created: serde_json::Value = http
        .post(format!("{}/_emulator/jobs", emulator.url()))
        .json(&serde_json::json!({"repository": "octo/app", "labels": ["self-hosted", "linux"], "steps": ["echo built in $GITHUB_REPOSITORY"], "workflow": "CI", "name": "build"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let github_job_id = created["id"].as_u64().unwrap();

    // Wait for GitHub's side and ours to finish.
    let mut job = None;
    for _ in 0..200 {
        let ej: serde_json::Value = http
            .get(format!("{}/_emulator/jobs/{github_job_id}", emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ours = store.find_by_github_job_id(github_job_id).await.unwrap();
        if ej["status"] == "completed" && ours.as_ref().is_some_and(|j| j.status.is_terminal()) {
            assert_eq!(ej["conclusion"], "success", "{ej}");
            assert_eq!(
                ej["steps"][0]["output"].as_str().unwrap().trim(),
                "built in octo/app"
            );
            job = ours;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = job.expect("the job did not finish");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.source, JobSource::Webhook);
    assert_eq!(job.repository, "octo/app");
    assert_eq!(
        job.runner_name.as_deref(),
        Some(format!("ephemeral-{}", job.id).as_str())
    );
    assert!(
        job.provisioned_runner_id.is_some(),
        "the JIT runner's id is recorded for deregistration"
    );

    // The JIT config reached the runner and nothing else.
    let jit = backend.seen_jit.lock().unwrap().clone();
    assert_eq!(jit.len(), 1);
    let records = format!(
        "{:?}{:?}",
        store
            .list_jobs(&JobFilter {
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap(),
        store.list_audit(100).await.unwrap()
    );
    for secret in [jit[0].as_str(), pat, webhook_secret] {
        assert!(!records.contains(secret));
    }
    // The ephemeral runner is gone from GitHub after its one job.
    let runners: Vec<serde_json::Value> = http
        .get(format!("{}/_emulator/runners", emulator.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(runners.is_empty(), "{runners:?}");

    stop.cancel();
    for l in loops {
        l.await.unwrap();
    }
    server.await.unwrap().unwrap();
    emulator.shutdown().await;
}
