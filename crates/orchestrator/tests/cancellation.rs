//! Clients that give up mid-request: the handlers of delegations and
//! completions are dropped at many different points (time-outs from nothing
//! to a few milliseconds, aborted tasks) against the served router over a
//! SQLite file. Afterwards every stored job has exactly its `job.delegated`
//! line, every completed job exactly its `job.completed` line, and every
//! acknowledged write is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use proxy_runner_domain::JobStatus;
use proxy_runner_domain::ports::{JobFilter, JobStore};
use proxy_runner_test_support::rig::{Rig, RigOptions, design_hook_body};
use uuid::Uuid;

const RUNNERS: usize = 8;
const JOBS_PER_RUNNER: usize = 40;

/// A spread of give-up times from "before the first poll" to a few
/// milliseconds, different for every request.
fn patience(n: usize) -> Option<Duration> {
    match n % 5 {
        0 => None,
        1 => Some(Duration::ZERO),
        _ => Some(Duration::from_micros(((n * 7919) % 4000) as u64)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_requests_leave_every_job_with_exactly_its_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let app = std::sync::Arc::new(
        Rig::build(RigOptions {
            db: Some(&db),
            ..Default::default()
        })
        .await,
    );
    let mut tokens = Vec::new();
    for r in 0..RUNNERS {
        tokens.push(app.runner_token(&format!("proxy-{r}")).await);
    }

    // Delegations, most of them given up at some point.
    let mut tasks = Vec::new();
    for j in 0..JOBS_PER_RUNNER {
        for (r, token) in tokens.iter().enumerate() {
            let n = j * RUNNERS + r;
            let (app, token) = (app.clone(), token.clone());
            let body = design_hook_body(
                &format!("job-{j}"),
                &(5000 + j).to_string(),
                "octo/repo",
                &format!("proxy-{r}"),
                "self-hosted,linux",
            );
            let call = async move {
                let reply = app
                    .call(
                        "POST",
                        "/api/jobs/delegate",
                        Some(&token),
                        Some(body.as_bytes()),
                    )
                    .await;
                (reply.status == StatusCode::CREATED)
                    .then(|| reply.body["id"].as_str().map(str::to_string))
                    .flatten()
            };
            tasks.push(tokio::spawn(async move {
                match patience(n) {
                    None => call.await,
                    Some(limit) => tokio::time::timeout(limit, call).await.ok().flatten(),
                }
            }));
        }
        if j % 3 == 0 {
            // Some handlers are aborted wherever they are.
            if let Some(t) = tasks.iter().rev().nth(j % RUNNERS) {
                t.abort();
            }
        }
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Ok(Some(id)) = t.await {
            acknowledged.push(Uuid::parse_str(&id).unwrap());
        }
    }
    assert!(!acknowledged.is_empty(), "some delegations were answered");

    // Completions of every stored job, again mostly given up.
    let store = app.store.clone();
    let delegated = store
        .list_jobs(&JobFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut completions = Vec::new();
    for (n, job) in delegated.iter().enumerate() {
        let runner: usize = job.runner_name.as_deref().unwrap()["proxy-".len()..]
            .parse()
            .unwrap();
        let (app, token, id) = (app.clone(), tokens[runner].clone(), job.id);
        let call = async move {
            let reply = app
                .call_with(
                    "POST",
                    &format!("/api/jobs/{id}/complete"),
                    Some(&token),
                    None,
                    None,
                )
                .await;
            (reply.status == StatusCode::OK).then_some(id)
        };
        completions.push(tokio::spawn(async move {
            match patience(n + 1) {
                None => call.await,
                Some(limit) => tokio::time::timeout(limit, call).await.ok().flatten(),
            }
        }));
    }
    let mut completed = Vec::new();
    for t in completions {
        if let Ok(Some(id)) = t.await {
            completed.push(id);
        }
    }

    // A write made now commits after every write handed over before it.
    let marker = app.runner_token("proxy-marker").await;
    assert!(!marker.is_empty());

    let jobs = store
        .list_jobs(&JobFilter {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    let audit = store.list_audit(10_000).await.unwrap();
    let mut lines: BTreeMap<(Uuid, String), usize> = BTreeMap::new();
    for line in audit.iter().filter(|l| l.action.starts_with("job.")) {
        *lines
            .entry((
                line.job_id.expect("a job line names its job"),
                line.action.clone(),
            ))
            .or_default() += 1;
    }
    for job in &jobs {
        assert_eq!(
            lines.get(&(job.id, "job.delegated".to_string())),
            Some(&1),
            "job {} has exactly its delegation line",
            job.id
        );
        let done = lines
            .get(&(job.id, "job.completed".to_string()))
            .copied()
            .unwrap_or(0);
        let expected = usize::from(job.status == JobStatus::Completed);
        assert_eq!(
            done, expected,
            "job {} ({}) has {done} completion lines",
            job.id, job.status
        );
    }
    let ids: std::collections::BTreeSet<Uuid> = jobs.iter().map(|j| j.id).collect();
    for (id, action) in lines.keys() {
        assert!(
            ids.contains(id),
            "{action} line of {id}, which is not stored"
        );
    }
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged delegation {id} is stored");
    }
    for id in &completed {
        let job = store.get_job(*id).await.unwrap().unwrap();
        assert_eq!(
            job.status,
            JobStatus::Completed,
            "acknowledged completion of {id}"
        );
    }
    assert!(jobs.len() <= RUNNERS * JOBS_PER_RUNNER);
}
