//! The autoscaler on the real Docker Engine with a GitHub double: container
//! exit codes and engine errors become job states, and what it created is
//! cleaned up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_domain::ports::{
    ContainerBackend, GitHubError, JitConfig, JitRequest, JobStore, RegistrationToken, RunnerInfo,
    RunnerRegistry, Scope, WorkflowJobInfo,
};
use proxy_runner_domain::{JobSource, JobStatus};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, Autoscaler, Ingested, JobAction};
use proxy_runner_orchestrator::config::Config;
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System};
use proxy_runner_store::SqliteStore;
use secrecy::SecretString;
use sha2::Digest;

/// The autoscaler of an orchestrator built through the composition root.
fn autoscaler(
    store: Arc<SqliteStore>,
    backend: Arc<DockerBackend>,
    registry: Arc<UselessJit>,
    config: AutoscaleConfig,
) -> Arc<Autoscaler> {
    let system = System::build_with(
        &Config::default(),
        config,
        Ports {
            store,
            backend,
            registry: Some(registry),
            feed: None,
            job_containers: None,
            sources: Sources::system(),
        },
    );
    system.autoscaler.expect("GitHub is configured")
}

/// Mints JIT configs the runner cannot use, so each runner container exits
/// with the listener's "terminated" code (1) before taking a job.
#[derive(Default)]
struct UselessJit {
    deleted: Mutex<Vec<u64>>,
}

#[async_trait]
impl RunnerRegistry for UselessJit {
    async fn generate_jit_config(
        &self,
        _s: &Scope,
        r: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        Ok(JitConfig {
            runner_id: 7,
            runner_name: r.name.clone(),
            encoded_jit_config: SecretString::from("not-a-jit-config"),
        })
    }
    async fn create_registration_token(
        &self,
        _s: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        Err(GitHubError::NotFound("unused".into()))
    }
    async fn delete_runner(&self, _s: &Scope, id: u64) -> Result<(), GitHubError> {
        self.deleted.lock().unwrap().push(id);
        Ok(())
    }
    async fn list_runners(&self, _s: &Scope) -> Result<Vec<RunnerInfo>, GitHubError> {
        Ok(vec![])
    }
    async fn get_workflow_job(
        &self,
        _o: &str,
        _r: &str,
        id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError> {
        Err(GitHubError::NotFound(format!("job {id}")))
    }
    async fn list_queued_jobs(
        &self,
        _o: &str,
        _r: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        Ok(vec![])
    }
}

fn docker_available() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn job(id: u64, repo: &str) -> WorkflowJobInfo {
    WorkflowJobInfo {
        id,
        run_id: id,
        run_attempt: 1,
        repository: repo.into(),
        name: "build".into(),
        workflow_name: "CI".into(),
        status: "queued".into(),
        conclusion: None,
        labels: vec!["self-hosted".into()],
        runner_id: None,
        runner_name: None,
    }
}

async fn runner_image(docker: &DockerBackend) -> String {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_proxy-runner"));
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&binary).unwrap()));
    let tag = format!("proxy-runner-local-runner:{}", &digest[..16]);
    ensure_runner_image(docker, &RunnerImageOptions::new(tag.clone(), binary))
        .await
        .unwrap();
    tag
}

async fn networks_of(instance: &str) -> usize {
    let out = tokio::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=proxy-runner.instance={instance}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_engine_errors_become_job_states() {
    if !docker_available() {
        assert!(std::env::var_os("CI").is_none(), "Docker is required in CI");
        eprintln!("skipping: docker not reachable");
        return;
    }
    let instance = format!("test-{}", uuid::Uuid::now_v7().simple());
    let docker = DockerBackend::connect(DockerOptions {
        instance: Some(instance.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let image = runner_image(&docker).await;
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let registry = Arc::new(UselessJit::default());
    let config = AutoscaleConfig {
        instance: instance.clone(),
        image,
        network_prefix: format!("pr-{instance}"),
        max_attempts: 2,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(100),
        tick: Duration::from_millis(50),
        ..AutoscaleConfig::default()
    };
    let scaler = autoscaler(
        store.clone(),
        Arc::new(docker.clone()),
        registry.clone(),
        config,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let loops = scaler.spawn(stop.clone());

    // A runner that exits 1 before taking its job: retried once, then failed.
    let Ingested::Created(id) = scaler
        .ingest(
            JobAction::Queued,
            &job(1, "octo/exit-code"),
            JobSource::Webhook,
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let failed = loop {
        let j = store.get_job(id).await.unwrap().unwrap();
        if j.status.is_terminal() {
            break j;
        }
        assert!(Instant::now() < deadline, "job stuck in {}", j.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.attempts, 2);
    assert_eq!(failed.exit_code, Some(1));
    let err = failed.last_error.clone().unwrap();
    assert!(
        err.contains("exited with code 1 before taking the job"),
        "{err}"
    );
    assert_eq!(
        *registry.deleted.lock().unwrap(),
        vec![7, 7],
        "each attempt's runner is deregistered"
    );

    // Everything of ours is gone: containers auto-removed, network removed.
    let until = Instant::now() + Duration::from_secs(20);
    while (!docker.list(&instance).await.unwrap().is_empty() || networks_of(&instance).await > 0)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        docker.list(&instance).await.unwrap().is_empty(),
        "containers left"
    );
    assert_eq!(networks_of(&instance).await, 0, "network left");
    stop.cancel();
    for l in loops {
        l.await.unwrap();
    }

    // An image the engine does not have: the job fails at once with a clear error.
    let scaler = autoscaler(
        store.clone(),
        Arc::new(docker.clone()),
        registry.clone(),
        AutoscaleConfig {
            instance: instance.clone(),
            image: "proxy-runner-no-such-image:0".into(),
            ..AutoscaleConfig::default()
        },
    );
    let Ingested::Created(id) = scaler
        .ingest(
            JobAction::Queued,
            &job(2, "octo/no-image"),
            JobSource::Webhook,
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    for _ in 0..100 {
        let _ = scaler.tick().await;
        if store
            .get_job(id)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let j = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    let err = j.last_error.unwrap();
    assert!(
        err.contains("proxy-runner-no-such-image:0") && err.contains("will not be pulled"),
        "{err}"
    );
    // The network ensured for the failed start does not outlive it.
    let until = Instant::now() + Duration::from_secs(10);
    while networks_of(&instance).await > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        networks_of(&instance).await,
        0,
        "network left after a failed start"
    );
}
#[tokio::test]
async fn an_unreachable_engine_makes_jobs_wait_and_readiness_fail() {
    let docker =
        DockerBackend::connect(DockerOptions::with_host("unix:///nonexistent/docker.sock"))
            .await
            .unwrap();
    assert!(docker.ping().await.is_err());
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let registry = Arc::new(UselessJit::default());
    let scaler = autoscaler(
        store.clone(),
        Arc::new(docker),
        registry.clone(),
        AutoscaleConfig::default(),
    );
    let Ingested::Created(id) = scaler
        .ingest(JobAction::Queued, &job(3, "octo/app"), JobSource::Webhook)
        .await
        .unwrap()
    else {
        panic!()
    };
    for _ in 0..5 {
        let err = scaler.tick().await.unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
    let j = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.attempts, 0);
    assert!(registry.deleted.lock().unwrap().is_empty());
}
