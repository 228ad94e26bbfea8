//! What only the SQLite store has: a database file that outlives the
//! process and a schema version. Everything a `JobStore` promises is checked
//! by the shared contract suite (tests/contract.rs).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::JobStore;
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
        matrix: None,
        needs: vec![],
        github_job_id: None,
        source: JobSource::Hook,
        dropped_secrets: 0,
    }
    .into_job(Uuid::now_v7(), t(0))
}

#[tokio::test]
async fn a_file_database_survives_reopening_and_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/jobs.db");
    let mut job = hook_job("o/r", "build", "p", 1);
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert_job(&job, &[]).await.unwrap();
        job.transition(JobStatus::Running, t(1)).unwrap();
        assert!(
            store
                .update_job(&mut job, JobStatus::Queued, &[])
                .await
                .unwrap()
        );
        assert_eq!(store.schema_version().await.unwrap(), 4);
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_job(job.id).await.unwrap(), Some(job.clone()));
    assert_eq!(store.schema_version().await.unwrap(), 4);
    // The delegation key is still held after reopening.
    let retry = hook_job("o/r", "build", "p", 1);
    assert_eq!(
        store.insert_job(&retry, &[]).await.unwrap().into_job().id,
        job.id
    );
}
