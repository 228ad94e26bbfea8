//! PostgreSQL goes away under a running store and comes back: writes answer
//! `Unavailable` with nothing half-written (no job, no orphan audit line),
//! acknowledged writes survive, and the same store object works again
//! without being rebuilt. Runs on a throw-away server of its own.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_runner_domain::ports::{AuditEvent, JobFilter, JobStore, StoreError};
use proxy_runner_domain::{Job, JobStatus};
use proxy_runner_store_postgres::{PostgresSettings, PostgresStore};
use proxy_runner_test_support::eventually;
use proxy_runner_test_support::store_contract::{hook_job, t};
use support::{ThrowAwayServer, patient};
use uuid::Uuid;

fn delegated(job_id: Uuid) -> AuditEvent {
    AuditEvent {
        at: t(0),
        actor: "runner:proxy-1".into(),
        action: "job.delegated".into(),
        job_id: Some(job_id),
        detail: serde_json::json!({}),
    }
}

#[derive(Default)]
struct Outcomes {
    /// Stored and audited: the write was acknowledged.
    acknowledged: Vec<Job>,
    /// A write answered an error (the job and its audit line may or may not
    /// be stored, but only together).
    refused: Vec<Job>,
}

fn count(outcomes: &Mutex<Outcomes>) -> usize {
    outcomes.lock().expect("outcomes").acknowledged.len()
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>, target: &str) {
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(
                message.contains(target),
                "{what}: names the server: {message}"
            )
        }
        other => panic!("{what}: expected Unavailable while the server is down, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_cleanly_while_postgres_is_down_and_the_same_store_resumes() {
    let Some(server) = ThrowAwayServer::start() else {
        return;
    };
    // The store under test answers quickly while the server is down; a
    // patient one sets up and checks (it never decides the outcome by time).
    let quick = PostgresSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
    };
    let concrete = PostgresStore::connect_with(&server.url(), quick)
        .await
        .expect("store on the throw-away server");
    let target = concrete.target().to_string();
    let store: Arc<dyn JobStore> = Arc::new(concrete);
    let checker = PostgresStore::connect_with(&server.url(), patient())
        .await
        .expect("checking store");

    let before = hook_job("o/r", "build", "proxy-1", 1);
    checker
        .insert_job(&before, &[delegated(before.id)])
        .await
        .unwrap();

    // A writer that keeps delegating (job, then its audit line) as the API
    // does, across the outage.
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, outcomes, stop) = (store.clone(), outcomes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut run_id = 1000;
            while !stop.load(Ordering::SeqCst) {
                run_id += 1;
                let job = hook_job("o/r", "build", "proxy-w", run_id);
                // The job and its audit line in one write, as the API does.
                let written = store
                    .insert_job(&job, &[delegated(job.id)])
                    .await
                    .map(|inserted| assert!(inserted.is_new(), "a fresh key makes a new job"));
                let mut outcomes = outcomes.lock().expect("outcomes");
                match written {
                    Ok(()) => outcomes.acknowledged.push(job),
                    Err(StoreError::Unavailable(_)) => outcomes.refused.push(job),
                    Err(e) => panic!("only Unavailable is expected during an outage: {e}"),
                }
            }
        })
    };
    eventually(
        "writes before the outage",
        Duration::from_secs(60),
        || async { count(&outcomes) >= 10 },
    )
    .await;

    server.stop().expect("stop the server");

    let during = hook_job("o/r", "build", "proxy-1", 2);
    assert_unavailable(
        "insert_job",
        store.insert_job(&during, &[delegated(during.id)]).await,
        &target,
    );
    assert_unavailable(
        "append_audit",
        store.append_audit(&delegated(during.id)).await,
        &target,
    );
    let mut stale = before.clone();
    stale.transition(JobStatus::Running, t(1)).unwrap();
    assert_unavailable(
        "update_job",
        store.update_job(&mut stale, JobStatus::Queued, &[]).await,
        &target,
    );
    assert_eq!(
        stale.revision, 0,
        "a failed write leaves the copy as it was"
    );
    assert_unavailable(
        "record_delivery",
        store
            .record_delivery("d-outage", "workflow_job", t(1))
            .await,
        &target,
    );
    assert_unavailable("ping", store.ping().await, &target);
    assert_unavailable("get_job", store.get_job(before.id).await, &target);
    eventually(
        "the writer meets the outage",
        Duration::from_secs(120),
        || async { !outcomes.lock().expect("outcomes").refused.is_empty() },
    )
    .await;
    let acknowledged_while_down = count(&outcomes);

    server.start_again().expect("start the server again");
    eventually(
        "the same store answers again",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        },
    )
    .await;
    eventually(
        "writes after the outage",
        Duration::from_secs(120),
        || async { count(&outcomes) >= acknowledged_while_down + 10 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    writer
        .await
        .expect("the writer never saw anything but Unavailable");

    // Nothing half-written by the refused calls.
    assert_eq!(checker.get_job(during.id).await.unwrap(), None);
    assert_eq!(
        checker.get_job(before.id).await.unwrap(),
        Some(before.clone())
    );
    assert!(
        store
            .record_delivery("d-outage", "workflow_job", t(2))
            .await
            .unwrap(),
        "the delivery refused during the outage was not recorded"
    );

    // Every acknowledged write survived whole; no audit line lacks its job.
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    assert!(!outcomes.refused.is_empty(), "the writer met the outage");
    for job in &outcomes.acknowledged {
        assert_eq!(checker.get_job(job.id).await.unwrap().as_ref(), Some(job));
    }
    let audit = checker.list_audit(10_000).await.unwrap();
    for job in &outcomes.refused {
        // A commit whose answer was lost may have happened; then it is
        // whole, audit line included.
        let lines = audit.iter().filter(|l| l.job_id == Some(job.id)).count();
        match checker.get_job(job.id).await.unwrap() {
            Some(stored) => {
                assert_eq!(&stored, job);
                assert_eq!(lines, 1, "a stored job has its audit line");
            }
            None => assert_eq!(lines, 0, "no audit line without its job"),
        }
    }
    for line in &audit {
        let id = line.job_id.expect("every line names its job");
        assert!(
            checker.get_job(id).await.unwrap().is_some(),
            "orphan audit line for {id}"
        );
        assert_ne!(id, during.id);
    }
    let audited: std::collections::BTreeSet<Uuid> = audit.iter().filter_map(|l| l.job_id).collect();
    for job in &outcomes.acknowledged {
        assert!(
            audited.contains(&job.id),
            "acknowledged audit line of {} kept",
            job.id
        );
    }

    // And the store writes as before.
    let mut before = before;
    before.transition(JobStatus::Running, t(3)).unwrap();
    assert!(
        store
            .update_job(&mut before, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert!(store.insert_job(&during, &[]).await.unwrap().is_new());
    let all = JobFilter {
        limit: 10,
        ..Default::default()
    };
    assert!(!store.list_jobs(&all).await.unwrap().is_empty());
}
