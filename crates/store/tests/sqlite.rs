//! The SQLite store against real database files.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{AuditEvent, JobFilter, JobStore, TokenRecord};
use proxy_runner_domain::{Job, JobSource, JobStatus, NewJob};
use proxy_runner_store::SqliteStore;
use uuid::Uuid;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

fn hook_job(repo: &str, key: &str, runner: &str, run_id: u64) -> Job {
    NewJob {
        job_key: key.into(),
        run_id,
        run_attempt: 1,
        repository: repo.into(),
        workflow: "CI".into(),
        runner_name: Some(runner.into()),
        labels: vec!["self-hosted".into(), "linux".into()],
        environment: BTreeMap::from([("GITHUB_JOB".to_string(), key.to_string())]),
        matrix: Some(serde_json::json!({"os": "linux"})),
        needs: vec!["lint".into()],
        github_job_id: None,
        source: JobSource::Hook,
    }
    .into_job(Uuid::now_v7(), t(0))
}

fn webhook_job(repo: &str, github_job_id: u64) -> Job {
    let mut j = hook_job(repo, "build", "unused", 7);
    j.runner_name = None;
    j.source = JobSource::Webhook;
    j.github_job_id = Some(github_job_id);
    j
}

#[tokio::test]
async fn delegations_are_idempotent_and_round_trip() {
    let store = SqliteStore::in_memory().await.unwrap();
    let job = hook_job("octo/repo", "build", "proxy-1", 42);
    let first = store.insert_job(&job).await.unwrap();
    assert!(first.is_new());
    assert_eq!(first.job(), &job);

    // Same key, fresh id (a retried hook call): the first job comes back.
    let mut again = hook_job("Octo/Repo", "build", "proxy-1", 42);
    again.workflow = "other".into();
    let second = store.insert_job(&again).await.unwrap();
    assert!(!second.is_new());
    assert_eq!(second.job(), &job);

    // A different attempt is a different job.
    let mut attempt2 = hook_job("octo/repo", "build", "proxy-1", 42);
    attempt2.run_attempt = 2;
    assert!(store.insert_job(&attempt2).await.unwrap().is_new());

    assert_eq!(store.get_job(job.id).await.unwrap(), Some(job.clone()));
    assert_eq!(store.get_job(Uuid::now_v7()).await.unwrap(), None);
}

#[tokio::test]
async fn webhook_jobs_are_unique_by_github_job_id() {
    let store = SqliteStore::in_memory().await.unwrap();
    let a = webhook_job("o/r", 1001);
    assert!(store.insert_job(&a).await.unwrap().is_new());
    let dup = webhook_job("o/r", 1001);
    assert_eq!(store.insert_job(&dup).await.unwrap().into_job().id, a.id);
    assert_eq!(
        store.find_by_github_job_id(1001).await.unwrap().unwrap().id,
        a.id
    );
    assert!(store.find_by_github_job_id(1002).await.unwrap().is_none());
}

#[tokio::test]
async fn compare_and_set_updates() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut job = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&job).await.unwrap();
    job.transition(JobStatus::Provisioning, t(1)).unwrap();
    job.container_id = Some("abc".into());
    assert!(store.update_job(&mut job, JobStatus::Queued).await.unwrap());
    // A second writer that still thinks the job is queued loses.
    let mut stale = job.clone();
    stale.status = JobStatus::Cancelled;
    assert!(
        !store
            .update_job(&mut stale, JobStatus::Queued)
            .await
            .unwrap()
    );
    let stored = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Provisioning);
    assert_eq!(stored.container_id.as_deref(), Some("abc"));
    assert_eq!(stored.revision, 1);
    assert_eq!(job.revision, 1, "the writer's copy follows its own write");

    // Two writers read the same revision; both keep the status. The second
    // must not overwrite what the first wrote.
    let mut first = store.get_job(job.id).await.unwrap().unwrap();
    let mut second = first.clone();
    first.runner_id = Some(7);
    assert!(
        store
            .update_job(&mut first, JobStatus::Provisioning)
            .await
            .unwrap()
    );
    second.container_id = None;
    assert!(
        !store
            .update_job(&mut second, JobStatus::Provisioning)
            .await
            .unwrap()
    );
    let stored = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.runner_id, stored.container_id.as_deref()),
        (Some(7), Some("abc"))
    );
    // The same writer can write again with its updated copy.
    first.exit_code = Some(0);
    assert!(
        store
            .update_job(&mut first, JobStatus::Provisioning)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn linking_a_github_job_id_twice_is_refused() {
    let store = SqliteStore::in_memory().await.unwrap();
    let a = webhook_job("o/r", 5);
    store.insert_job(&a).await.unwrap();
    let mut b = hook_job("o/r", "build", "p", 9);
    store.insert_job(&b).await.unwrap();
    b.github_job_id = Some(5);
    let err = store
        .update_job(&mut b, JobStatus::Queued)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already linked"), "{err}");
}

#[tokio::test]
async fn active_job_of_a_runner_by_key() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut old = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&old).await.unwrap();
    old.transition(JobStatus::Completed, t(5)).unwrap();
    assert!(store.update_job(&mut old, JobStatus::Queued).await.unwrap());
    let new = hook_job("o/r", "build", "proxy-1", 2);
    store.insert_job(&new).await.unwrap();
    let other_runner = hook_job("o/r", "build", "proxy-2", 3);
    store.insert_job(&other_runner).await.unwrap();

    let found = store
        .find_active_for_runner("proxy-1", "build")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, new.id);
    assert!(
        store
            .find_active_for_runner("proxy-1", "test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_active_for_runner("proxy-3", "build")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let repo = if i % 2 == 0 { "a/one" } else { "b/two" };
        let mut j = hook_job(repo, "build", "p", i);
        if i == 3 {
            j.transition(JobStatus::Running, t(1)).unwrap();
        }
        store.insert_job(&j).await.unwrap();
        ids.push(j.id);
    }
    let all = store
        .list_jobs(&JobFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids,
        "creation order"
    );

    let page1 = store
        .list_jobs(&JobFilter {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let page2 = store
        .list_jobs(&JobFilter {
            limit: 3,
            after: Some(page1[2].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len(), 3);
    assert_eq!(page2[0].id, ids[3]);

    let running = store
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Running),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, ids[3]);

    let b = store
        .list_jobs(&JobFilter {
            repository: Some("B/Two".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(b.len(), 3, "repository filter ignores case");
}

#[tokio::test]
async fn tokens_audit_and_deliveries() {
    let store = SqliteStore::in_memory().await.unwrap();
    let tok = TokenRecord {
        id: Uuid::now_v7(),
        runner: "proxy-1".into(),
        hash: "ab".repeat(32),
        created_at: t(0),
        revoked_at: None,
    };
    store.insert_token(&tok).await.unwrap();
    assert_eq!(
        store.find_token_by_hash(&tok.hash).await.unwrap(),
        Some(tok.clone())
    );
    assert!(store.find_token_by_hash("cd").await.unwrap().is_none());
    assert!(store.revoke_token(tok.id, t(9)).await.unwrap());
    assert!(
        !store.revoke_token(tok.id, t(10)).await.unwrap(),
        "revoking twice"
    );
    assert_eq!(
        store
            .find_token_by_hash(&tok.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(t(9))
    );

    for i in 0..3 {
        store
            .append_audit(&AuditEvent {
                at: t(i),
                actor: "admin".into(),
                action: format!("a{i}"),
                job_id: None,
                detail: serde_json::json!({"n": i}),
            })
            .await
            .unwrap();
    }
    let audit = store.list_audit(2).await.unwrap();
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["a2", "a1"]
    );

    assert!(
        store
            .record_delivery("d-1", "workflow_job", t(0))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_delivery("d-1", "workflow_job", t(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_delivery("d-2", "workflow_job", t(1))
            .await
            .unwrap()
    );
    store.forget_delivery("d-1").await.unwrap();
    assert!(
        store
            .record_delivery("d-1", "workflow_job", t(2))
            .await
            .unwrap(),
        "forgotten deliveries count as new"
    );
}

#[tokio::test]
async fn the_job_that_ran_in_another_jobs_container_is_found() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut j = webhook_job("o/r", 9);
    j.ran_in_container_id = Some("c-1".into());
    store.insert_job(&j).await.unwrap();
    store.insert_job(&webhook_job("o/r", 10)).await.unwrap();
    assert_eq!(
        store
            .find_job_ran_in_container("c-1")
            .await
            .unwrap()
            .map(|x| x.id),
        Some(j.id)
    );
    assert!(
        store
            .find_job_ran_in_container("c-2")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn hook_jobs_are_found_for_linking_until_linked() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut job = hook_job("o/r", "build", "proxy-1", 42);
    store.insert_job(&job).await.unwrap();
    let found = store
        .find_unlinked_hook_job("proxy-1", "O/R", 42, 1)
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(job.id));
    assert!(
        store
            .find_unlinked_hook_job("proxy-1", "o/r", 42, 2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_unlinked_hook_job("proxy-2", "o/r", 42, 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_unlinked_hook_job("proxy-1", "o/r", 43, 1)
            .await
            .unwrap()
            .is_none()
    );
    job.github_job_id = Some(555);
    assert!(store.update_job(&mut job, JobStatus::Queued).await.unwrap());
    assert!(
        store
            .find_unlinked_hook_job("proxy-1", "o/r", 42, 1)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.find_by_github_job_id(555).await.unwrap().unwrap().id,
        job.id
    );
}

#[tokio::test]
async fn a_file_database_survives_reopening_and_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/jobs.db");
    let job = hook_job("o/r", "build", "p", 1);
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert_job(&job).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 3);
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_job(job.id).await.unwrap(), Some(job));
}
