//! The autoscaling path in-process: GitHub events in, containers out, with
//! the dry-run engine recording what a real one would be asked to do.

use std::sync::Arc;
use std::time::Duration;

use proxy_runner_domain::names::network_name;
use proxy_runner_domain::ports::{GitHubError, JobFilter, JobStore, WorkflowJobInfo};
use proxy_runner_domain::schedule::Caps;
use proxy_runner_domain::{JobSource, JobStatus};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, Autoscaler, Ingested, JobAction};
use proxy_runner_orchestrator::dry_run::{DryRunBackend, DryRunCall};
use proxy_runner_store::SqliteStore;
use proxy_runner_test_support::ManualClock;
use proxy_runner_test_support::registry::{FakeRegistry, JIT_SECRET_PREFIX, RegistryCall};
use proxy_runner_test_support::rig::{Rig as Served, RigOptions};

struct Rig {
    store: Arc<SqliteStore>,
    backend: Arc<DryRunBackend>,
    registry: Arc<FakeRegistry>,
    clock: Arc<ManualClock>,
    scaler: Arc<Autoscaler>,
}

async fn rig(config: AutoscaleConfig) -> Rig {
    let served = Served::build(RigOptions {
        github: true,
        autoscale: Some(config),
        ..Default::default()
    })
    .await;
    Rig {
        scaler: served.scaler().clone(),
        store: served.store,
        backend: served.backend,
        registry: served.registry,
        clock: served.clock,
    }
}

fn info(id: u64, repo: &str, labels: &[&str]) -> WorkflowJobInfo {
    WorkflowJobInfo {
        id,
        run_id: 1000 + id,
        run_attempt: 1,
        repository: repo.into(),
        name: format!("job-{id}"),
        workflow_name: "CI".into(),
        status: "queued".into(),
        conclusion: None,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        runner_id: None,
        runner_name: None,
    }
}

/// Feeds a `queued` event for a job we serve and returns the new job's id.
async fn queue(r: &Rig, ev: &WorkflowJobInfo, source: JobSource) -> uuid::Uuid {
    match r
        .scaler
        .ingest(JobAction::Queued, ev, source)
        .await
        .unwrap()
    {
        Ingested::Created(id) => id,
        other => panic!("job not created: {other:?}"),
    }
}

/// Half a second of scheduling: rounds until nothing more starts and every
/// start has finished, with the manual clock moved 10 ms between them (so
/// that retry backoffs of a few milliseconds come due, and graces of more
/// than half a second do not).
async fn settle(r: &Rig) {
    for _ in 0..50 {
        let _ = r.scaler.run_until_quiet().await;
        r.clock.advance(Duration::from_millis(10));
    }
}

async fn jobs(r: &Rig, status: JobStatus) -> Vec<proxy_runner_domain::Job> {
    r.store
        .list_jobs(&JobFilter {
            status: Some(status),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_queued_job_gets_its_own_hardened_runner_container_and_is_followed_to_the_end() {
    let r = rig(AutoscaleConfig::default()).await;
    let queued = info(1, "Octo/Repo", &["self-hosted", "linux"]);
    let id = queue(&r, &queued, JobSource::Webhook).await;
    // The same event again changes nothing.
    assert_eq!(
        r.scaler
            .ingest(JobAction::Queued, &queued, JobSource::Webhook)
            .await
            .unwrap(),
        Ingested::Unchanged(id)
    );

    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Provisioning);
    assert_eq!(job.attempts, 1);
    let container = job.container_id.clone().expect("container recorded");

    let calls = r.backend.calls();
    assert_eq!(
        calls[0],
        DryRunCall::EnsureNetwork(network_name("proxy-runner", "octo/repo"))
    );
    let DryRunCall::Start {
        name,
        image,
        network,
        env,
        stdin,
        labels,
    } = &calls[1]
    else {
        panic!("{calls:?}")
    };
    assert_eq!(name, &format!("runner-{id}"));
    assert_eq!(image, "github-runner:latest");
    assert_eq!(network, &network_name("proxy-runner", "Octo/Repo"));
    assert!(network.starts_with("proxy-runner-octo-repo-"));
    let env: std::collections::BTreeMap<_, _> = env.iter().cloned().collect();
    assert_eq!(env["RUNNER_NAME"], format!("ephemeral-{id}"));
    assert_eq!(
        env["RUNNER_LABELS"],
        "ephemeral,container,self-hosted,linux"
    );
    assert_eq!(env["GITHUB_URL"], "https://github.com/Octo/Repo");
    assert_eq!(env["JOB_ID"], "job-1");
    assert_eq!(env["RUN_ID"], "1001");
    assert!(
        !env.contains_key("ACTIONS_RUNNER_INPUT_JITCONFIG"),
        "the JIT config is in no container's configuration"
    );
    assert_eq!(
        stdin,
        &["ACTIONS_RUNNER_INPUT_JITCONFIG"],
        "the JIT config reaches the container on its standard input"
    );
    let labels: std::collections::BTreeMap<_, _> = labels.iter().cloned().collect();
    assert_eq!(labels["proxy-runner.job-id"], id.to_string());
    assert_eq!(labels["proxy-runner.repository"], "octo/repo");
    assert_eq!(labels["proxy-runner.instance"], "default");
    assert!(
        matches!(&r.registry.calls()[0], RegistryCall::Jit { name, labels, .. }
        if name == &format!("ephemeral-{id}") && labels == &["ephemeral", "container", "self-hosted", "linux"])
    );

    // GitHub: the runner took the job, then finished it.
    let mut running = queued.clone();
    running.runner_name = Some(format!("ephemeral-{id}"));
    running.runner_id = Some(1);
    assert_eq!(
        r.scaler
            .ingest(JobAction::InProgress, &running, JobSource::Webhook)
            .await
            .unwrap(),
        Ingested::Updated(id)
    );
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.runner_id, Some(1));
    let mut done = running.clone();
    done.conclusion = Some("success".into());
    r.scaler
        .ingest(JobAction::Completed, &done, JobSource::Webhook)
        .await
        .unwrap();

    // The runner exits 0; the container is gone, the network removed, the
    // runner deleted on GitHub if it were still there.
    r.backend.exit(&container, 0);
    r.scaler
        .on_container_exit(&container, Some(id), Some(0))
        .await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(r.registry.deleted(), vec![1]);
    assert!(
        r.backend
            .calls()
            .contains(&DryRunCall::RemoveNetwork(network_name(
                "proxy-runner",
                "octo/repo"
            )))
    );
    let audit: Vec<String> = r
        .store
        .list_audit(50)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in [
        "job.queued",
        "container.started",
        "job.running",
        "job.completed",
        "container.exited",
    ] {
        assert!(audit.contains(&a.to_string()), "{a} missing from {audit:?}");
    }
    // The JIT config is nowhere in the records.
    let everything = format!(
        "{:?}{:?}",
        r.store
            .list_jobs(&JobFilter {
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap(),
        r.store.list_audit(100).await.unwrap()
    );
    assert!(!everything.contains(JIT_SECRET_PREFIX));
}

#[tokio::test]
async fn jobs_we_do_not_serve_are_ignored() {
    let r = rig(AutoscaleConfig::default()).await;
    for labels in [&["ubuntu-latest"][..], &[][..]] {
        let out = r
            .scaler
            .ingest(
                JobAction::Queued,
                &info(2, "o/r", labels),
                JobSource::Webhook,
            )
            .await
            .unwrap();
        assert!(matches!(out, Ingested::Ignored(_)), "{labels:?}");
    }
    settle(&r).await;
    assert!(r.backend.calls().is_empty());
}

#[tokio::test]
async fn a_runner_started_for_one_job_may_take_another() {
    let r = rig(AutoscaleConfig::default()).await;
    let a = info(10, "o/r", &["self-hosted"]);
    let b = info(11, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    let jb = queue(&r, &b, JobSource::Webhook).await;
    settle(&r).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let own_b = r
        .store
        .get_job(jb)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    assert_ne!(own_b, container_a);
    // GitHub gives job B to the runner started for job A.
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    let job_b = r.store.get_job(jb).await.unwrap().unwrap();
    assert_eq!(job_b.status, JobStatus::Running);
    assert_eq!(
        job_b.runner_name.as_deref(),
        Some(format!("ephemeral-{ja}").as_str())
    );
    assert_eq!(
        job_b.ran_in_container_id.as_deref(),
        Some(container_a.as_str()),
        "B ran in A's container"
    );
    assert_eq!(
        job_b.container_id.as_deref(),
        Some(own_b.as_str()),
        "B's own container is still recorded"
    );
    // A lost its runner to B; B's own runner is free, so A waits for it.
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Queued);
    assert_eq!(job_a.container_id, None);
    assert!(job_a.not_before.is_some(), "waits out the hand-off grace");

    // B's runner takes A.
    let mut a_running = a.clone();
    a_running.runner_name = Some(format!("ephemeral-{jb}"));
    r.scaler
        .ingest(JobAction::InProgress, &a_running, JobSource::Webhook)
        .await
        .unwrap();
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Running);
    assert_eq!(job_a.ran_in_container_id.as_deref(), Some(own_b.as_str()));
    assert_eq!(job_a.attempts, 0, "no attempt was used by the swap");

    // Both containers exit after their swapped jobs: no failure, no retry,
    // and each exit code lands on the job that ran in that container.
    for (job, c, code) in [(ja, &container_a, 7), (jb, &own_b, 0)] {
        r.backend.exit(c, code);
        r.scaler.on_container_exit(c, Some(job), Some(code)).await;
    }
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    let job_b = r.store.get_job(jb).await.unwrap().unwrap();
    assert_eq!(
        (job_a.status, job_b.status),
        (JobStatus::Running, JobStatus::Running)
    );
    assert_eq!(job_b.exit_code, Some(7), "B ran in A's container");
    assert_eq!(job_a.exit_code, Some(0), "A ran in B's container");
    assert_eq!(
        r.backend.live().len(),
        0,
        "no runner was started for the swap"
    );
}

#[tokio::test]
async fn a_job_whose_runner_was_taken_by_another_job_waits_for_a_free_runner_then_gets_its_own() {
    let config = AutoscaleConfig {
        max_attempts: 1,
        handoff_grace: Duration::from_secs(10),
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    let a = info(20, "o/r", &["self-hosted"]);
    let b = info(21, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    let jb = queue(&r, &b, JobSource::Webhook).await;
    settle(&r).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    // A's runner ran B and exits; B's runner is still free for A.
    r.backend.exit(&container_a, 0);
    r.scaler
        .on_container_exit(&container_a, Some(ja), Some(0))
        .await;
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Queued, "{:?}", job_a.last_error);
    assert_eq!(job_a.attempts, 0, "a hand-off is not a failed attempt");
    assert!(job_a.last_error.unwrap().contains(&jb.to_string()));
    settle(&r).await;
    assert_eq!(
        r.store.get_job(ja).await.unwrap().unwrap().status,
        JobStatus::Queued,
        "no new runner within the grace"
    );
    assert_eq!(r.backend.live().len(), 1, "only B's runner is live");
    // Nobody took A within the grace: it gets a runner of its own.
    r.clock.advance(Duration::from_secs(10));
    settle(&r).await;
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Provisioning);
    assert_ne!(job_a.container_id.as_deref(), Some(container_a.as_str()));
    assert_eq!(r.backend.live().len(), 2);
}

#[tokio::test]
async fn a_job_whose_runner_went_to_a_job_without_a_runner_gets_a_new_one_at_once() {
    let config = AutoscaleConfig {
        caps: Caps {
            global: 1,
            per_repository: 1,
        },
        handoff_grace: Duration::from_secs(3600),
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    let a = info(40, "o/r", &["self-hosted"]);
    let b = info(41, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    settle(&r).await;
    // B is queued but the cap keeps it from getting a runner; A's runner takes B.
    let jb = queue(&r, &b, JobSource::Webhook).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    assert!(
        r.store
            .get_job(jb)
            .await
            .unwrap()
            .unwrap()
            .container_id
            .is_none()
    );
    r.backend.exit(&container_a, 0);
    r.scaler
        .on_container_exit(&container_a, Some(ja), Some(0))
        .await;
    settle(&r).await;
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(
        job_a.status,
        JobStatus::Provisioning,
        "no runner was owed to A: {:?}",
        job_a.last_error
    );
    assert_eq!(job_a.attempts, 1, "the hand-off used no attempt");
}

#[tokio::test]
async fn cancelling_a_job_does_not_stop_a_runner_that_serves_another_job() {
    let r = rig(AutoscaleConfig::default()).await;
    let a = info(30, "o/r", &["self-hosted"]);
    let b = info(31, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    r.scaler
        .ingest(JobAction::Queued, &b, JobSource::Webhook)
        .await
        .unwrap();
    settle(&r).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    let mut a_cancelled = a.clone();
    a_cancelled.conclusion = Some("cancelled".into());
    r.scaler
        .ingest(JobAction::Completed, &a_cancelled, JobSource::Webhook)
        .await
        .unwrap();
    assert_eq!(
        r.store.get_job(ja).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(
        !r.backend.calls().contains(&DryRunCall::Stop(container_a)),
        "B is running in A's container"
    );
}

#[tokio::test]
async fn hook_delegations_and_webhooks_for_one_job_end_on_one_record() {
    let r = rig(AutoscaleConfig::default()).await;
    let hook_job = proxy_runner_domain::NewJob {
        job_key: "build".into(),
        run_id: 1010,
        run_attempt: 1,
        repository: "o/r".into(),
        workflow: "CI".into(),
        runner_name: Some("proxy-1".into()),
        labels: vec!["self-hosted".into()],
        environment: Default::default(),
        matrix: None,
        needs: vec![],
        github_job_id: None,
        source: JobSource::Hook,
        dropped_secrets: 0,
    }
    .into_job(uuid::Uuid::now_v7(), chrono::Utc::now());
    r.store.insert_job(&hook_job, &[]).await.unwrap();
    let mut ev = info(10, "o/r", &["self-hosted"]);
    ev.runner_name = Some("proxy-1".into());
    ev.runner_id = Some(77);
    assert_eq!(
        r.scaler
            .ingest(JobAction::InProgress, &ev, JobSource::Webhook)
            .await
            .unwrap(),
        Ingested::Updated(hook_job.id)
    );
    let linked = r.store.find_by_github_job_id(10).await.unwrap().unwrap();
    assert_eq!(linked.id, hook_job.id);
    assert_eq!(linked.runner_id, Some(77));
    assert_eq!(
        r.store
            .list_jobs(&JobFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn caps_hold_under_a_burst_of_fifty_jobs_and_repositories_take_turns() {
    let config = AutoscaleConfig {
        caps: Caps {
            global: 10,
            per_repository: 4,
        },
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    let repos = ["a/one", "b/two", "c/three"];
    for i in 0..50u64 {
        let repo = if i < 30 {
            repos[0]
        } else {
            repos[(i % 2 + 1) as usize]
        };
        r.scaler
            .ingest(
                JobAction::Queued,
                &info(100 + i, repo, &["self-hosted"]),
                JobSource::Webhook,
            )
            .await
            .unwrap();
    }
    let mut finished = 0;
    let mut max_live = 0;
    while finished < 50 {
        settle(&r).await;
        let live = r.backend.live();
        max_live = max_live.max(live.len());
        assert!(live.len() <= 10, "global cap broken: {}", live.len());
        for repo in repos {
            let n = live
                .iter()
                .filter(|c| c.labels["proxy-runner.repository"] == repo)
                .count();
            assert!(n <= 4, "per-repository cap broken for {repo}: {n}");
        }
        let provisioning = jobs(&r, JobStatus::Provisioning).await;
        if finished == 0 {
            // The first round serves every repository, not just the busiest.
            for repo in repos {
                assert!(
                    provisioning.iter().any(|j| j.repository == repo),
                    "{repo} starved"
                );
            }
        }
        assert!(
            !provisioning.is_empty(),
            "no progress with {finished} finished"
        );
        for job in provisioning {
            let mut ev = info(
                job.github_job_id.unwrap(),
                &job.repository,
                &["self-hosted"],
            );
            ev.runner_name = Some(format!("ephemeral-{}", job.id));
            ev.conclusion = Some("success".into());
            r.scaler
                .ingest(JobAction::Completed, &ev, JobSource::Webhook)
                .await
                .unwrap();
            let c = job.container_id.unwrap();
            r.backend.exit(&c, 0);
            r.scaler.on_container_exit(&c, Some(job.id), Some(0)).await;
            finished += 1;
        }
    }
    assert_eq!(max_live, 10);
    assert_eq!(jobs(&r, JobStatus::Completed).await.len(), 50);
}

#[tokio::test]
async fn a_runner_that_dies_before_taking_its_job_is_retried_then_given_up() {
    let config = AutoscaleConfig {
        max_attempts: 2,
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    let id = queue(&r, &info(5, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    for attempt in 1..=2 {
        settle(&r).await;
        let job = r.store.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Provisioning, "attempt {attempt}");
        assert_eq!(job.attempts, attempt);
        let c = job.container_id.unwrap();
        r.backend.exit(&c, 1);
        r.scaler.on_container_exit(&c, Some(id), Some(1)).await;
    }
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(
        job.last_error
            .unwrap()
            .contains("exited with code 1 before taking the job")
    );
    assert_eq!(
        r.registry.deleted().len(),
        2,
        "each attempt's runner is deregistered"
    );
}

#[tokio::test]
async fn github_failures_requeue_or_fail_by_kind() {
    let config = AutoscaleConfig {
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(2),
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    r.registry.fail_next_jit(GitHubError::Http {
        status: 502,
        message: "bad gateway".into(),
    });
    let id = queue(&r, &info(6, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Provisioning, "retried after a 502");
    assert_eq!(job.attempts, 2);

    r.registry
        .fail_next_jit(GitHubError::NotFound("repository".into()));
    let id = queue(&r, &info(7, "o/gone", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.last_error.unwrap().contains("not found"));
}

#[tokio::test]
async fn a_missing_image_fails_the_job_with_a_clear_error() {
    let r = rig(AutoscaleConfig::default()).await;
    r.backend.forget_image("github-runner:latest");
    let id = queue(&r, &info(8, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    let err = job.last_error.unwrap();
    assert!(
        err.contains("github-runner:latest") && err.contains("not present"),
        "{err}"
    );
    assert_eq!(
        r.registry.deleted(),
        vec![1],
        "the minted runner is deregistered"
    );
}

#[tokio::test]
async fn an_unreachable_engine_makes_jobs_wait_not_fail() {
    let r = rig(AutoscaleConfig::default()).await;
    r.backend.set_unreachable(true);
    let id = queue(&r, &info(9, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    assert!(
        r.scaler
            .tick()
            .await
            .unwrap_err()
            .to_string()
            .contains("not ready")
    );
    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempts, 0);
    assert!(
        r.registry.calls().is_empty(),
        "no runner minted while the engine is down"
    );
    r.backend.set_unreachable(false);
    settle(&r).await;
    assert_eq!(
        r.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Provisioning
    );
}

#[tokio::test]
async fn cancelling_a_job_stops_its_idle_runner() {
    let r = rig(AutoscaleConfig::default()).await;
    let ev = info(12, "o/r", &["self-hosted"]);
    let id = queue(&r, &ev, JobSource::Webhook).await;
    settle(&r).await;
    let container = r
        .store
        .get_job(id)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let mut cancelled = ev.clone();
    cancelled.conclusion = Some("cancelled".into());
    r.scaler
        .ingest(JobAction::Completed, &cancelled, JobSource::Webhook)
        .await
        .unwrap();
    assert_eq!(
        r.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(r.backend.calls().contains(&DryRunCall::Stop(container)));
}

#[tokio::test]
async fn a_runner_that_exits_before_we_heard_of_its_job_is_settled_from_github_not_retried() {
    // Poll-only setups (and late webhooks) learn nothing between queued and
    // the container's exit: GitHub is asked before anything is retried.
    let r = rig(AutoscaleConfig::default()).await;
    let ev = info(50, "o/r", &["self-hosted"]);
    let id = queue(&r, &ev, JobSource::Poll).await;
    settle(&r).await;
    let container = r
        .store
        .get_job(id)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    let mut done = ev.clone();
    done.status = "completed".into();
    done.conclusion = Some("success".into());
    done.runner_name = Some(format!("ephemeral-{id}"));
    r.registry.github_jobs.lock().unwrap().insert(50, done);
    r.backend.exit(&container, 0);
    r.scaler
        .on_container_exit(&container, Some(id), Some(0))
        .await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.last_error);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.attempts, 1, "not retried");
}

#[tokio::test]
async fn reconcile_settles_running_jobs_whose_completion_never_arrived() {
    let r = rig(AutoscaleConfig {
        settle_after: Duration::ZERO,
        ..AutoscaleConfig::default()
    })
    .await;
    let ev = info(51, "o/r", &["self-hosted"]);
    let id = queue(&r, &ev, JobSource::Webhook).await;
    settle(&r).await;
    let mut running = ev.clone();
    running.runner_name = Some(format!("ephemeral-{id}"));
    r.scaler
        .ingest(JobAction::InProgress, &running, JobSource::Webhook)
        .await
        .unwrap();
    r.clock.advance(Duration::from_secs(1));
    r.scaler.reconcile().await;
    assert_eq!(
        r.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Running,
        "GitHub knows nothing new"
    );
    let mut done = running.clone();
    done.status = "completed".into();
    done.conclusion = Some("failure".into());
    r.registry.github_jobs.lock().unwrap().insert(51, done);
    r.clock.advance(Duration::from_secs(1));
    r.scaler.reconcile().await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("failure"));
}

#[tokio::test]
async fn the_idle_timeout_spares_a_runner_that_runs_another_job_and_the_owner_gets_a_runner_at_once()
 {
    let r = rig(AutoscaleConfig {
        idle_timeout: Duration::ZERO,
        caps: Caps {
            global: 1,
            per_repository: 1,
        },
        ..AutoscaleConfig::default()
    })
    .await;
    let a = info(60, "o/r", &["self-hosted"]);
    let b = info(61, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    settle(&r).await;
    let jb = queue(&r, &b, JobSource::Webhook).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    // GitHub gives B (no runner of its own yet) to A's runner.
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    // A learns at once that it needs another runner: no waiting for B to end.
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Queued, "{:?}", job_a.last_error);
    assert_eq!(job_a.container_id, None);
    assert!(job_a.last_error.unwrap().contains(&jb.to_string()));
    // The idle timeout (zero here) must not stop the container running B.
    r.scaler.reconcile().await;
    assert!(
        !r.backend
            .calls()
            .contains(&DryRunCall::Stop(container_a.clone())),
        "B's runner was killed"
    );
    assert!(r.backend.live().iter().any(|c| c.id == container_a));
}

#[tokio::test]
async fn registration_token_mode_passes_a_token_and_cleans_up_by_runner_name() {
    use proxy_runner_orchestrator::config::Registration;
    let r = rig(AutoscaleConfig {
        registration: Registration::RegistrationToken,
        max_attempts: 1,
        ..AutoscaleConfig::default()
    })
    .await;
    let id = queue(&r, &info(70, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    let calls = r.backend.calls();
    let (env, stdin) = calls
        .iter()
        .find_map(|c| match c {
            DryRunCall::Start { env, stdin, .. } => Some((env.clone(), stdin.clone())),
            _ => None,
        })
        .unwrap();
    let env: std::collections::BTreeMap<_, _> = env.into_iter().collect();
    assert!(!env.contains_key("RUNNER_TOKEN"));
    assert_eq!(
        stdin,
        ["RUNNER_TOKEN"],
        "the registration token reaches the container on its standard input"
    );
    assert!(!env.contains_key("ACTIONS_RUNNER_INPUT_JITCONFIG"));
    assert_eq!(env["RUNNER_NAME"], format!("ephemeral-{id}"));
    assert!(
        r.registry
            .calls()
            .iter()
            .any(|c| matches!(c, RegistryCall::RegistrationToken(_)))
    );
    assert!(
        !r.registry
            .calls()
            .iter()
            .any(|c| matches!(c, RegistryCall::Jit { .. }))
    );
    // The runner dies before taking the job: it is looked up by name to be deleted.
    let c = r
        .store
        .get_job(id)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    r.backend.exit(&c, 1);
    r.scaler.on_container_exit(&c, Some(id), Some(1)).await;
    assert!(
        r.registry
            .calls()
            .iter()
            .any(|c| matches!(c, RegistryCall::List(_)))
    );
    assert_eq!(
        r.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Failed
    );
}

#[tokio::test]
async fn a_new_runner_after_a_hand_off_never_touches_the_old_one_still_running_a_job() {
    let r = rig(AutoscaleConfig {
        caps: Caps {
            global: 1,
            per_repository: 1,
        },
        ..AutoscaleConfig::default()
    })
    .await;
    let a = info(80, "o/r", &["self-hosted"]);
    let b = info(81, "o/r", &["self-hosted"]);
    let ja = queue(&r, &a, JobSource::Webhook).await;
    settle(&r).await;
    let jb = queue(&r, &b, JobSource::Webhook).await;
    let container_a = r
        .store
        .get_job(ja)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    // A's runner takes B (which never had a runner): A gets a new one at once,
    // while A's first container still runs B.
    let mut b_running = b.clone();
    b_running.runner_name = Some(format!("ephemeral-{ja}"));
    r.scaler
        .ingest(JobAction::InProgress, &b_running, JobSource::Webhook)
        .await
        .unwrap();
    // The cap (1) counts A's first container, busy with B: free it as B ends.
    let mut b_done = b_running.clone();
    b_done.conclusion = Some("success".into());
    r.scaler
        .ingest(JobAction::Completed, &b_done, JobSource::Webhook)
        .await
        .unwrap();
    r.backend.exit(&container_a, 0);
    r.scaler
        .on_container_exit(&container_a, Some(ja), Some(0))
        .await;
    settle(&r).await;
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Provisioning);
    let second = job_a.container_id.clone().unwrap();
    assert_ne!(second, container_a);
    let starts: Vec<String> = r
        .backend
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            DryRunCall::Start { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0], format!("runner-{ja}"));
    assert!(
        starts[1].starts_with(&format!("runner-{ja}-")),
        "a fresh name: {starts:?}"
    );
    let jit_names: Vec<String> = r
        .registry
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            RegistryCall::Jit { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert!(
        jit_names[1].starts_with(&format!("ephemeral-{ja}-")),
        "{jit_names:?}"
    );
    assert!(
        !r.backend
            .calls()
            .iter()
            .any(|c| matches!(c, DryRunCall::Stop(_))),
        "nothing was stopped"
    );
    // A late event for B does not move B onto A's new container.
    r.scaler
        .ingest(JobAction::Completed, &b_done, JobSource::Webhook)
        .await
        .unwrap();
    let job_b = r.store.get_job(jb).await.unwrap().unwrap();
    assert_eq!(
        job_b.ran_in_container_id.as_deref(),
        Some(container_a.as_str())
    );
    assert_eq!(
        r.store
            .get_job(ja)
            .await
            .unwrap()
            .unwrap()
            .container_id
            .as_deref(),
        Some(second.as_str())
    );
    // A runner with a suffixed name still names its job.
    let mut a_running = a.clone();
    a_running.runner_name = Some(jit_names[1].clone());
    r.scaler
        .ingest(JobAction::InProgress, &a_running, JobSource::Webhook)
        .await
        .unwrap();
    let job_a = r.store.get_job(ja).await.unwrap().unwrap();
    assert_eq!(job_a.status, JobStatus::Running);
    assert_eq!(
        job_a.ran_in_container_id, None,
        "A ran in its own (second) container"
    );
}

#[tokio::test]
async fn the_idle_reaper_asks_github_before_stopping_a_runner_we_heard_nothing_from() {
    let r = rig(AutoscaleConfig {
        idle_timeout: Duration::ZERO,
        ..AutoscaleConfig::default()
    })
    .await;
    let ev = info(90, "o/r", &["self-hosted"]);
    let id = queue(&r, &ev, JobSource::Poll).await;
    settle(&r).await;
    let container = r
        .store
        .get_job(id)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    // Polling never says in_progress; GitHub does when asked.
    let mut running = ev.clone();
    running.status = "in_progress".into();
    running.runner_name = Some(format!("ephemeral-{id}"));
    r.registry.github_jobs.lock().unwrap().insert(90, running);
    r.scaler.reconcile().await;
    assert!(
        !r.backend
            .calls()
            .contains(&DryRunCall::Stop(container.clone())),
        "a busy runner was stopped"
    );
    assert_eq!(
        r.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    // A runner GitHub gave nothing to is stopped.
    let ev2 = info(91, "o/r", &["self-hosted"]);
    let id2 = queue(&r, &ev2, JobSource::Poll).await;
    settle(&r).await;
    let idle = r
        .store
        .get_job(id2)
        .await
        .unwrap()
        .unwrap()
        .container_id
        .unwrap();
    r.registry
        .github_jobs
        .lock()
        .unwrap()
        .insert(91, ev2.clone());
    r.scaler.reconcile().await;
    assert!(r.backend.calls().contains(&DryRunCall::Stop(idle)));
}

#[tokio::test]
async fn a_container_created_and_never_started_is_removed_on_the_second_sighting() {
    use proxy_runner_domain::ports::{ContainerInfo, labels};
    let r = rig(AutoscaleConfig::default()).await;
    // A kill between create and start left a container of this job that
    // never ran; the job was queued again and runs in another container.
    let id = queue(&r, &info(70, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    let job = r.store.get_job(id).await.unwrap().unwrap();
    let recorded = job.container_id.clone().unwrap();
    let instance = r.scaler.config().instance.clone();
    let leftover = ContainerInfo {
        id: "never-started".into(),
        name: format!("runner-{id}-0badf00d"),
        labels: [
            (labels::INSTANCE.to_string(), instance.clone()),
            (labels::JOB_ID.to_string(), id.to_string()),
            (labels::REPOSITORY.to_string(), "o/r".to_string()),
        ]
        .into(),
        running: false,
    };
    r.backend.plant(leftover);
    let removed = |r: &Rig| {
        r.backend
            .calls()
            .contains(&DryRunCall::Remove("never-started".into()))
    };
    r.scaler.reconcile().await;
    assert!(!removed(&r), "removed at its first sighting");
    r.scaler.reconcile().await;
    assert!(removed(&r), "a container that never ran was left");
    assert!(r.backend.live().iter().all(|c| c.id != "never-started"));
    assert!(
        r.backend.live().iter().any(|c| c.id == recorded),
        "the job's own container stays"
    );
    assert!(
        !r.backend
            .calls()
            .iter()
            .any(|c| matches!(c, DryRunCall::Remove(x) | DryRunCall::Stop(x) if *x == recorded)),
        "the running container of the job was touched"
    );
}

/// Registers a runner named `name` at the fake GitHub as minting a JIT
/// config for it would; returns its id.
async fn mint(r: &Rig, repo: &str, name: String) -> u64 {
    use proxy_runner_domain::ports::{JitRequest, RunnerRegistry, Scope};
    let scope = Scope::repository(repo).unwrap();
    let request = JitRequest {
        name,
        labels: vec!["self-hosted".into()],
        runner_group_id: 1,
        work_folder: "_work".into(),
    };
    r.registry
        .generate_jit_config(&scope, &request)
        .await
        .unwrap()
        .runner_id
}

#[tokio::test]
async fn runners_left_registered_for_ended_jobs_are_deleted_also_after_a_restart() {
    use proxy_runner_orchestrator::sources::Sources;
    let r = rig(AutoscaleConfig::default()).await;
    let ev = info(81, "o/r", &["self-hosted"]);
    let id = queue(&r, &ev, JobSource::Webhook).await;
    let other = queue(&r, &info(82, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    settle(&r).await;
    // Runners minted for the jobs whose containers never came (a kill
    // between minting and create), and one named for a job this store does
    // not know (another instance's).
    let stray = mint(&r, "o/r", format!("ephemeral-{id}-0badf00d")).await;
    let of_running = mint(&r, "o/r", format!("ephemeral-{other}-0badf00d")).await;
    let foreign = mint(
        &r,
        "o/r",
        format!("ephemeral-{}-00000000", uuid::Uuid::now_v7()),
    )
    .await;

    // The job ends, served by a runner of someone else.
    let mut done = ev.clone();
    done.status = "completed".into();
    done.conclusion = Some("success".into());
    done.runner_name = Some("someone-else".into());
    r.scaler
        .ingest(JobAction::Completed, &done, JobSource::Webhook)
        .await
        .unwrap();
    r.scaler.reconcile().await;
    let deleted = r.registry.deleted();
    assert!(
        deleted.contains(&stray),
        "the ended job's stray runner stays"
    );
    assert!(
        !deleted.contains(&of_running),
        "a running job's runner went"
    );
    assert!(
        !deleted.contains(&foreign),
        "another instance's runner went"
    );

    // The same after a restart that came before any reconciliation: the
    // new process finds the repository from the store.
    let late = mint(&r, "o/r", format!("ephemeral-{id}-0ddba11")).await;
    let restarted = Autoscaler::new(
        r.store.clone(),
        r.backend.clone(),
        r.registry.clone(),
        Sources {
            clock: r.clock.clone(),
            ..Sources::system()
        },
        r.scaler.config().clone(),
    );
    restarted.reconcile().await;
    assert!(
        r.registry.deleted().contains(&late),
        "a stray runner stays after a restart"
    );
    assert!(!r.registry.deleted().contains(&of_running));
}

#[tokio::test]
async fn the_reconciler_removes_networks_left_empty_but_not_one_in_use() {
    use proxy_runner_domain::ports::ContainerBackend;
    use proxy_runner_domain::runner_plan::network_spec;
    let r = rig(AutoscaleConfig::default()).await;
    // A job of o/busy runs; o/left's network was left behind by a crash.
    let id = queue(
        &r,
        &info(60, "o/busy", &["self-hosted"]),
        JobSource::Webhook,
    )
    .await;
    settle(&r).await;
    assert!(
        r.store
            .get_job(id)
            .await
            .unwrap()
            .unwrap()
            .container_id
            .is_some()
    );
    let left = network_name("proxy-runner", "o/left");
    r.backend
        .ensure_network(&network_spec(left.clone(), "o/left", "default"))
        .await
        .unwrap();
    let removed = |r: &Rig| {
        r.backend
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                DryRunCall::RemoveNetwork(n) => Some(n),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    r.scaler.reconcile().await;
    assert!(removed(&r).is_empty(), "one empty sighting is not enough");
    r.scaler.reconcile().await;
    assert_eq!(removed(&r), vec![left], "empty twice: removed");
    let busy = network_name("proxy-runner", "o/busy");
    assert!(
        r.backend
            .list_networks("default")
            .await
            .unwrap()
            .iter()
            .any(|n| n.name == busy),
        "the network in use stays"
    );
}

/// A stop (SIGTERM) lets a provisioning under way finish: its container is
/// recorded on the job before the stop returns, so nothing is left started
/// but unknown.
#[tokio::test]
async fn a_stop_waits_for_the_start_under_way_and_records_its_container() {
    let r = rig(AutoscaleConfig::default()).await;
    let hold = r.registry.jit_gate.write().await;
    let id = queue(&r, &info(31, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    r.scaler.tick().await.unwrap();
    proxy_runner_test_support::eventually(
        "the JIT call is under way",
        Duration::from_secs(10),
        || {
            let calls = r.registry.calls();
            async move { calls.iter().any(|c| matches!(c, RegistryCall::Jit { .. })) }
        },
    )
    .await;
    let (scaler, store) = (r.scaler.clone(), r.store.clone());
    let stopping = tokio::spawn(async move {
        let left = scaler.finish_in_flight(Duration::from_secs(60)).await;
        (left, store.get_job(id).await.unwrap().unwrap())
    });
    // A stop that did not wait would return now, while the start is held.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "the stop waits for the start under way"
    );
    drop(hold);
    let (left, job) = stopping.await.unwrap();
    assert_eq!(left, 0);
    assert!(
        job.container_id.is_some(),
        "the started container is recorded before the stop returns: {job:?}"
    );
    assert_eq!(r.backend.live().len(), 1, "and it is left running");
}

/// Past the grace, a stop returns and says how much is still under way.
#[tokio::test]
async fn a_stop_gives_up_waiting_after_the_grace_and_counts_what_is_left() {
    let r = rig(AutoscaleConfig::default()).await;
    let hold = r.registry.jit_gate.write().await;
    queue(&r, &info(32, "o/r", &["self-hosted"]), JobSource::Webhook).await;
    r.scaler.tick().await.unwrap();
    assert_eq!(
        r.scaler.finish_in_flight(Duration::from_millis(20)).await,
        1
    );
    drop(hold);
    assert_eq!(r.scaler.finish_in_flight(Duration::from_secs(60)).await, 0);
}
