//! A job of a proxy label set: GitHub's events are recorded for tracking but
//! start no ephemeral runner, and the proxy runner's delegation and GitHub's
//! events for the job end on one record, whichever comes first.

use axum::http::StatusCode;
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::ports::{JobFilter, JobStore, WorkflowJobInfo};
use proxy_runner_domain::{JobSource, JobStatus};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, Ingested, JobAction, Pool};
use proxy_runner_orchestrator::config::JobPath;
use proxy_runner_test_support::rig::{Rig, RigOptions, design_hook_body};

async fn rig() -> Rig {
    let pool = |labels: &[&str], path| {
        Pool::new(LabelSet::parse_list(labels.iter().copied()).unwrap(), path)
    };
    Rig::build(RigOptions {
        github: true,
        autoscale: Some(AutoscaleConfig {
            pools: vec![
                pool(&["self-hosted", "proxy"], JobPath::Proxy),
                pool(&["self-hosted", "linux"], JobPath::Autoscale),
            ],
            ..AutoscaleConfig::default()
        }),
        ..Default::default()
    })
    .await
}

fn event(id: u64, labels: &[&str], runner: Option<&str>, status: &str) -> WorkflowJobInfo {
    WorkflowJobInfo {
        id,
        run_id: 500 + id,
        run_attempt: 1,
        repository: "octo/app".into(),
        name: "build".into(),
        workflow_name: "CI".into(),
        status: status.into(),
        conclusion: (status == "completed").then(|| "success".to_string()),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        runner_id: runner.map(|_| 77),
        runner_name: runner.map(String::from),
    }
}

async fn all_jobs(r: &Rig) -> Vec<proxy_runner_domain::Job> {
    r.store
        .list_jobs(&JobFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn delegate(r: &Rig, token: &str, ev: &WorkflowJobInfo) -> serde_json::Value {
    let body = design_hook_body(
        "build",
        &ev.run_id.to_string(),
        &ev.repository,
        "proxy-1",
        "self-hosted,proxy",
    );
    let reply = r
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

#[tokio::test]
async fn queued_jobs_of_proxy_label_sets_are_tracked_but_start_no_runner() {
    let r = rig().await;
    let proxy_job = r
        .scaler()
        .ingest(
            JobAction::Queued,
            &event(1, &["self-hosted", "proxy"], None, "queued"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    assert!(matches!(proxy_job, Ingested::Created(_)));
    let autoscaled = r
        .scaler()
        .ingest(
            JobAction::Queued,
            &event(2, &["self-hosted", "linux"], None, "queued"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    let Ingested::Created(autoscaled) = autoscaled else {
        panic!("{autoscaled:?}")
    };
    r.settle().await;
    let live = r.backend.live();
    assert_eq!(live.len(), 1, "only the autoscaled job got a runner");
    assert_eq!(
        live[0].labels["proxy-runner.job-id"],
        autoscaled.to_string()
    );
    let jobs = all_jobs(&r).await;
    let tracked = jobs.iter().find(|j| j.github_job_id == Some(1)).unwrap();
    assert_eq!(tracked.status, JobStatus::Queued);
    assert_eq!(tracked.attempts, 0);
}

#[tokio::test]
async fn delegation_then_github_events_end_on_one_record() {
    let r = rig().await;
    let token = r.runner_token("proxy-1").await;
    let queued = event(3, &["self-hosted", "proxy"], None, "queued");
    r.scaler()
        .ingest(JobAction::Queued, &queued, JobSource::Webhook)
        .await
        .unwrap();
    let delegated = delegate(&r, &token, &queued).await;
    let hook_id = delegated["id"].as_str().unwrap().to_string();
    assert_eq!(
        all_jobs(&r).await.len(),
        2,
        "tracked and delegated, until linked"
    );

    r.scaler()
        .ingest(
            JobAction::InProgress,
            &event(3, &["self-hosted", "proxy"], Some("proxy-1"), "in_progress"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    r.scaler()
        .ingest(
            JobAction::Completed,
            &event(3, &["self-hosted", "proxy"], Some("proxy-1"), "completed"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    let jobs = all_jobs(&r).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].id.to_string(), hook_id);
    assert_eq!(jobs[0].github_job_id, Some(3));
    assert_eq!(jobs[0].status, JobStatus::Completed);
    assert_eq!(jobs[0].source, JobSource::Hook);
    assert!(r.backend.live().is_empty());
}

#[tokio::test]
async fn github_events_then_delegation_end_on_one_record() {
    let r = rig().await;
    let token = r.runner_token("proxy-1").await;
    let queued = event(4, &["self-hosted", "proxy"], None, "queued");
    r.scaler()
        .ingest(JobAction::Queued, &queued, JobSource::Webhook)
        .await
        .unwrap();
    r.scaler()
        .ingest(
            JobAction::InProgress,
            &event(4, &["self-hosted", "proxy"], Some("proxy-1"), "in_progress"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    let delegated = delegate(&r, &token, &queued).await;
    assert_eq!(delegated["githubJobId"], 4, "{delegated}");
    let jobs = all_jobs(&r).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");

    // Later events land on the delegated record.
    r.scaler()
        .ingest(
            JobAction::Completed,
            &event(4, &["self-hosted", "proxy"], Some("proxy-1"), "completed"),
            JobSource::Webhook,
        )
        .await
        .unwrap();
    let jobs = all_jobs(&r).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Completed);
    assert_eq!(jobs[0].source, JobSource::Hook);
    let audit = r.store.list_audit(50).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "job.merged"), "{audit:?}");
}
