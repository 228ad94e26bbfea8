//! The client against the GitHub emulator: both auth modes, paging, error
//! mapping, runner lifecycle, queued jobs, rate limits and the breaker.
//! Rate-limit windows in the emulator are wall-clock time, so those tests
//! use short real waits (seconds).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use proxy_runner_domain::ports::{GitHubError, JitRequest, RunnerRegistry, Scope};
use proxy_runner_emulator::runner::{RunOptions, SimRunner, StepContext, StepExecutor, StepResult};
use proxy_runner_emulator::{EmulatorApp, EmulatorConfig, RunningEmulator, spawn};
use proxy_runner_github::{Auth, CircuitState, GitHubClient, GitHubConfig, Poller, poll_queued};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Notify;

const PAT: &str = "ghp_github_crate_emulator_test_0001";
const APP_ID: u64 = 31337;

fn repo() -> Scope {
    Scope::Repository {
        owner: "octo".into(),
        repo: "hello".into(),
    }
}

fn org() -> Scope {
    Scope::Organization { org: "octo".into() }
}

async fn emulator(token_ttl: Option<Duration>) -> RunningEmulator {
    let config = EmulatorConfig {
        pats: vec![PAT.to_string()],
        app: Some(EmulatorApp {
            app_id: APP_ID,
            public_key_pem: common::fixture("test-keys/github-app-test.public.pem"),
        }),
        installation_token_ttl: token_ttl,
        ..EmulatorConfig::default()
    };
    spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts")
}

fn pat_config(em: &RunningEmulator) -> GitHubConfig {
    common::config(&em.url(), Auth::Pat(SecretString::from(PAT)))
}

fn pat_client(em: &RunningEmulator) -> GitHubClient {
    GitHubClient::new(pat_config(em)).unwrap()
}

fn app_client(em: &RunningEmulator) -> GitHubClient {
    GitHubClient::new(common::config(
        &em.url(),
        Auth::App {
            app_id: APP_ID,
            private_key_pem: SecretString::from(common::fixture(
                "test-keys/github-app-test.private.pem",
            )),
        },
    ))
    .unwrap()
}

fn jit(name: &str) -> JitRequest {
    JitRequest {
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into()],
        runner_group_id: 1,
        work_folder: "_work".into(),
    }
}

/// Calls the emulator's admin API (no auth, never faulted).
async fn admin(em: &RunningEmulator, method: reqwest::Method, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .request(method, format!("{}/_emulator{path}", em.url()))
        .json(&body)
        .send()
        .await
        .expect("admin call");
    assert!(
        response.status().is_success(),
        "admin {path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

async fn faults(em: &RunningEmulator, body: Value) {
    admin(em, reqwest::Method::POST, "/faults", body).await;
}

async fn clear_faults(em: &RunningEmulator) {
    admin(em, reqwest::Method::DELETE, "/faults", Value::Null).await;
}

async fn queue_job(
    em: &RunningEmulator,
    repository: &str,
    labels: &[&str],
    steps: &[&str],
) -> (u64, u64) {
    let created = admin(
        em,
        reqwest::Method::POST,
        "/jobs",
        json!({"repository": repository, "labels": labels, "steps": steps, "workflow": "CI", "name": "build"}),
    )
    .await;
    (
        created["id"].as_u64().expect("job id"),
        created["runId"].as_u64().expect("run id"),
    )
}

#[tokio::test]
async fn pat_runner_lifecycle() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    for scope in [repo(), org()] {
        let name = format!("ephemeral-{}", scope.api_path().replace('/', "-"));
        let config = client
            .generate_jit_config(&scope, &jit(&name))
            .await
            .unwrap();
        assert_eq!(config.runner_name, name);
        assert!(!config.encoded_jit_config.expose_secret().is_empty());
        // The config is what a runner starts from.
        let sim = SimRunner::from_jit_config(config.encoded_jit_config.expose_secret()).unwrap();
        assert_eq!(sim.id(), config.runner_id);

        let got = client.get_runner(&scope, config.runner_id).await.unwrap();
        assert_eq!(got.name, name);
        assert!(got.ephemeral);
        assert!(got.labels.iter().any(|l| l == "linux"), "{:?}", got.labels);
        let listed = RunnerRegistry::list_runners(&client, &scope).await.unwrap();
        assert_eq!(
            listed.iter().filter(|r| r.id == config.runner_id).count(),
            1
        );
        let found = client.find_runner_by_name(&scope, &name).await.unwrap();
        assert_eq!(found.map(|r| r.id), Some(config.runner_id));

        RunnerRegistry::delete_runner(&client, &scope, config.runner_id)
            .await
            .unwrap();
        assert!(matches!(
            client.get_runner(&scope, config.runner_id).await,
            Err(GitHubError::NotFound(_))
        ));
        assert!(matches!(
            client.delete_runner(&scope, config.runner_id).await,
            Err(GitHubError::NotFound(_))
        ));
        assert_eq!(
            client.find_runner_by_name(&scope, &name).await.unwrap(),
            None
        );

        let before = Utc::now();
        let reg = RunnerRegistry::create_registration_token(&client, &scope)
            .await
            .unwrap();
        assert!(!reg.token.expose_secret().is_empty());
        assert!(reg.expires_at > before + chrono::TimeDelta::minutes(50));
        let remove = client.create_remove_token(&scope).await.unwrap();
        assert_ne!(remove.token.expose_secret(), reg.token.expose_secret());
    }
}

#[tokio::test]
async fn lists_more_than_one_page_of_runners() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    const COUNT: usize = 130;
    let mut created = Vec::new();
    for i in 0..COUNT {
        let config = client
            .generate_jit_config(&repo(), &jit(&format!("paging-{i:03}")))
            .await
            .unwrap();
        created.push(config.runner_id);
    }
    // Another scope's runners stay out of the listing.
    client
        .generate_jit_config(&org(), &jit("org-runner"))
        .await
        .unwrap();

    let mut listed: Vec<u64> = client
        .list_runners(&repo())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    listed.sort();
    created.sort();
    assert_eq!(listed, created, "two pages of 100");

    // Smaller pages: five round trips, same result.
    let mut small = pat_config(&em);
    small.per_page = 30;
    let small_pages = GitHubClient::new(small).unwrap();
    let mut listed: Vec<u64> = small_pages
        .list_runners(&repo())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    listed.sort();
    assert_eq!(listed, created);
}

#[tokio::test]
async fn errors_map_to_the_port() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    assert!(matches!(
        client.get_runner(&repo(), 999_999).await,
        Err(GitHubError::NotFound(_))
    ));

    client
        .generate_jit_config(&repo(), &jit("taken"))
        .await
        .unwrap();
    let conflict = client
        .generate_jit_config(&repo(), &jit("taken"))
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, GitHubError::Conflict(m) if m.contains("already exists")),
        "{conflict:?}"
    );

    let mut no_labels = jit("no-labels");
    no_labels.labels.clear();
    let invalid = client
        .generate_jit_config(&repo(), &no_labels)
        .await
        .unwrap_err();
    let GitHubError::Validation(message) = &invalid else {
        panic!("{invalid:?}")
    };
    assert!(
        message.contains("labels must have at least 1 item"),
        "{message}"
    );

    let mut too_many = jit("too-many");
    too_many.labels = (0..101).map(|i| format!("l{i}")).collect();
    assert!(matches!(
        client.generate_jit_config(&repo(), &too_many).await,
        Err(GitHubError::Validation(_))
    ));

    let bad_pat = GitHubClient::new(common::config(
        &em.url(),
        Auth::Pat(SecretString::from("ghp_not_a_known_token")),
    ))
    .unwrap();
    let unauthorized = bad_pat.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(&unauthorized, GitHubError::Unauthorized(m) if m.contains("Bad credentials")),
        "{unauthorized:?}"
    );
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn app_auth_mints_and_renews_installation_tokens() {
    // Tokens live 6 s: the client renews them at half-life (3 s).
    let em = emulator(Some(Duration::from_secs(6))).await;
    let recorder = common::CapturedMetrics::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let client = app_client(&em);

    let config = client
        .generate_jit_config(&repo(), &jit("app-runner"))
        .await
        .unwrap();
    let listed = client.list_runners(&repo()).await.unwrap();
    assert!(listed.iter().any(|r| r.id == config.runner_id));
    let minted = |r: &common::CapturedMetrics| {
        r.get("github_requests_total{endpoint=installation_token,status=201}")
            .unwrap_or(0.0)
    };
    // One token serves both calls (they follow each other closely; on a very
    // slow machine a renewal in between would still be correct).
    let before = minted(&recorder);
    assert!(before >= 1.0, "{:?}", recorder.keys());

    // At least past the token's half-life: a new token is minted before use.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let listed = client.list_runners(&repo()).await.unwrap();
    assert!(listed.iter().any(|r| r.id == config.runner_id));
    assert!(minted(&recorder) > before, "no renewal past the half-life");
    // Past its expiry the old token would be refused; the client never sent one.
    assert_eq!(
        recorder.get("github_requests_total{endpoint=list_runners,status=401}"),
        None
    );

    // Organization scope works through the same App.
    client
        .generate_jit_config(&org(), &jit("app-org-runner"))
        .await
        .unwrap();
    client
        .delete_runner(&repo(), config.runner_id)
        .await
        .unwrap();
}

#[tokio::test]
async fn app_with_the_wrong_key_is_unauthorized() {
    let em = spawn(
        EmulatorConfig {
            app: Some(EmulatorApp {
                app_id: APP_ID + 1,
                public_key_pem: common::fixture("test-keys/github-app-test.public.pem"),
            }),
            ..EmulatorConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // Signed by the right key but for another App id.
    let err = app_client(&em).list_runners(&repo()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Unauthorized(_)), "{err:?}");
}

/// Runs steps without a shell: step "block" waits until released.
struct GatedExecutor {
    release: Arc<Notify>,
    started: Arc<Notify>,
}

#[async_trait]
impl StepExecutor for GatedExecutor {
    async fn run_step(&self, step: &StepContext) -> StepResult {
        if step.command == "block" {
            self.started.notify_one();
            self.release.notified().await;
        }
        StepResult {
            output: format!("ran {}", step.command),
            exit_code: 0,
        }
    }
}

#[tokio::test]
async fn queued_jobs_busy_runners_and_reruns() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    let (job_a, run_a) = queue_job(&em, "octo/hello", &["self-hosted", "linux"], &["block"]).await;
    let (job_b, _) = queue_job(&em, "octo/hello", &["self-hosted", "gpu"], &["true"]).await;
    let (job_other, _) = queue_job(&em, "octo/other", &["self-hosted"], &["true"]).await;

    let queued = RunnerRegistry::list_queued_jobs(&client, "octo", "hello")
        .await
        .unwrap();
    let mut ids: Vec<u64> = queued.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, vec![job_a, job_b]);
    let a = queued.iter().find(|j| j.id == job_a).unwrap();
    assert_eq!(a.run_id, run_a);
    assert_eq!(a.repository, "octo/hello");
    assert_eq!(a.labels, vec!["self-hosted", "linux"]);
    assert_eq!(a.status, "queued");
    assert_eq!(a.runner_id, None);
    assert_eq!(
        client
            .get_workflow_job("octo", "hello", job_a)
            .await
            .unwrap(),
        *a
    );

    let repos = vec!["octo/hello".to_string(), "octo/other".to_string()];
    let polled = poll_queued(&client, &repos).await.unwrap();
    assert_eq!(polled.len(), 3);
    assert!(
        polled
            .iter()
            .any(|j| j.id == job_other && j.repository == "octo/other")
    );
    let poller = Poller::new(client.clone(), repos.clone(), Duration::from_secs(30));
    let outcome = poller.poll_once().await;
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(outcome.jobs.len(), 3);
    assert_eq!(
        poller.next_delay(),
        Duration::from_secs(30),
        "plenty of budget"
    );

    // A JIT runner takes job A and blocks in its step: it is busy.
    let config = client
        .generate_jit_config(&repo(), &jit("worker-1"))
        .await
        .unwrap();
    let sim = SimRunner::from_jit_config(config.encoded_jit_config.expose_secret()).unwrap();
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let executor = GatedExecutor {
        release: release.clone(),
        started: started.clone(),
    };
    let run = tokio::spawn(async move {
        let opts = RunOptions {
            job_wait: Some(Duration::from_secs(30)),
            poll_wait: Duration::from_secs(5),
            transport_retries: 2,
        };
        sim.run(&executor, &opts).await
    });
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the runner took job A");

    let in_progress = client
        .get_workflow_job("octo", "hello", job_a)
        .await
        .unwrap();
    assert_eq!(in_progress.status, "in_progress");
    assert_eq!(in_progress.runner_id, Some(config.runner_id));
    assert_eq!(in_progress.runner_name.as_deref(), Some("worker-1"));
    let busy = client.get_runner(&repo(), config.runner_id).await.unwrap();
    assert!(busy.busy);
    let refused = client
        .delete_runner(&repo(), config.runner_id)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, GitHubError::Validation(m) if m.contains("still running")),
        "{refused:?}"
    );
    let queued = client.list_queued_jobs("octo", "hello").await.unwrap();
    assert_eq!(queued.iter().map(|j| j.id).collect::<Vec<_>>(), vec![job_b]);

    release.notify_one();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.job().map(|j| j.job_id), Some(job_a));
    let done = client
        .get_workflow_job("octo", "hello", job_a)
        .await
        .unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.conclusion.as_deref(), Some("success"));

    // Re-running the finished job queues a new attempt.
    client.rerun_job("octo", "hello", job_a).await.unwrap();
    let queued = client.list_queued_jobs("octo", "hello").await.unwrap();
    let again = queued
        .iter()
        .find(|j| j.run_id == run_a)
        .expect("the re-run job is queued");
    assert_eq!(again.run_attempt, 2);
    assert!(matches!(
        client.rerun_job("octo", "hello", 987_654).await,
        Err(GitHubError::NotFound(_))
    ));
}

#[tokio::test]
async fn waits_out_the_primary_rate_limit() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    client.list_runners(&repo()).await.unwrap();
    let budget = client.rate_limit("core").expect("rate-limit headers seen");
    assert_eq!(budget.resource, "core");
    assert!(budget.remaining < budget.limit);

    faults(&em, json!({"rateLimit": {"resetInSecs": 2}})).await;
    let started = std::time::Instant::now();
    client.list_runners(&repo()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for the reset"
    );

    // A reset beyond the call's deadline is reported, not waited for.
    faults(&em, json!({"rateLimit": {"resetInSecs": 3600}})).await;
    let err = client.list_runners(&repo()).await.unwrap_err();
    let GitHubError::RateLimited { until } = err else {
        panic!("{err:?}")
    };
    assert!(
        until > Utc::now() + chrono::TimeDelta::minutes(50),
        "{until}"
    );
    let exhausted = client.rate_limit("core").unwrap();
    assert_eq!(exhausted.remaining, 0);
    let poller = Poller::new(
        client.clone(),
        vec!["octo/hello".into()],
        Duration::from_secs(30),
    );
    assert!(
        poller.next_delay() > Duration::from_secs(50 * 60),
        "polling waits for the reset too"
    );
    let outcome = poller.poll_once().await;
    assert!(matches!(
        outcome.failures.as_slice(),
        [proxy_runner_github::PollError::GitHub {
            source: GitHubError::RateLimited { .. },
            ..
        }]
    ));
    // GitHub named the reset: this client sends nothing before it, even
    // where the limit lifted early (here: the knob cleared).
    clear_faults(&em).await;
    let sent_before = requests_seen(&em).await;
    let err = client.list_runners(&repo()).await.unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited { .. }), "{err:?}");
    assert_eq!(requests_seen(&em).await, sent_before, "a call was sent");
    pat_client(&em).list_runners(&repo()).await.unwrap();
}

/// How many REST requests the emulator has seen.
async fn requests_seen(em: &RunningEmulator) -> usize {
    let log: serde_json::Value = reqwest::get(format!("{}/_emulator/requests", em.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    log.as_array().unwrap().len()
}

#[tokio::test]
async fn honours_the_secondary_rate_limit() {
    let em = emulator(None).await;
    let recorder = common::CapturedMetrics::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let client = pat_client(&em);
    faults(&em, json!({"secondaryRateLimit": {"retryAfterSecs": 1}})).await;
    let started = std::time::Instant::now();
    client.list_runners(&repo()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited retry-after"
    );
    assert!(
        recorder
            .get("github_requests_total{endpoint=list_runners,status=403}")
            .unwrap_or(0.0)
            >= 1.0,
        "{:?}",
        recorder.keys()
    );

    faults(&em, json!({"secondaryRateLimit": {"retryAfterSecs": 600}})).await;
    assert!(matches!(
        client.list_runners(&repo()).await,
        Err(GitHubError::RateLimited { .. })
    ));
}

#[tokio::test]
async fn retries_a_few_server_errors() {
    let em = emulator(None).await;
    let client = pat_client(&em);
    faults(&em, json!({"errorStatus": 503, "errorCount": 2})).await;
    client.list_runners(&repo()).await.unwrap();
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn breaker_opens_under_503_and_recovers() {
    let em = emulator(None).await;
    let recorder = common::CapturedMetrics::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut config = pat_config(&em);
    config.retry.max_retries = 1;
    config.breaker.failure_threshold = 4;
    config.breaker.cool_down = Duration::from_millis(300);
    let client = GitHubClient::new(config).unwrap();
    let host_gauge = format!(
        "github_circuit_state{{host={}}}",
        em.url().trim_start_matches("http://")
    );

    faults(&em, json!({"errorStatus": 503, "errorShare": 1.0})).await;
    for _ in 0..2 {
        let err = client.list_runners(&repo()).await.unwrap_err();
        assert!(
            matches!(err, GitHubError::Http { status: 503, .. }),
            "{err:?}"
        );
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    assert_eq!(
        recorder.get(&host_gauge),
        Some(2.0),
        "{:?}",
        recorder.keys()
    );
    let err = client.list_runners(&repo()).await.unwrap_err();
    assert!(matches!(err, GitHubError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(
        recorder.get("github_requests_total{endpoint=list_runners,status=circuit_open}"),
        Some(1.0)
    );
    assert_eq!(
        recorder.get("github_requests_total{endpoint=list_runners,status=503}"),
        Some(4.0)
    );

    // Still failing: the probe re-opens the circuit.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.circuit_state(), CircuitState::HalfOpen);
    assert_eq!(recorder.get(&host_gauge), Some(1.0));
    assert!(client.list_runners(&repo()).await.is_err());
    assert_eq!(client.circuit_state(), CircuitState::Open);

    // Healthy again: the next probe closes it.
    clear_faults(&em).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    client.list_runners(&repo()).await.unwrap();
    assert_eq!(client.circuit_state(), CircuitState::Closed);
    assert_eq!(recorder.get(&host_gauge), Some(0.0));
}
