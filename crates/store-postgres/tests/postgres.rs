//! What only the PostgreSQL store has: migrations that several replicas run
//! at once, replicas sharing one database, and errors at start that name the
//! server but never the password.

mod support;

use std::sync::Arc;

use proxy_runner_domain::JobStatus;
use proxy_runner_domain::ports::{JobStore, StoreError};
use proxy_runner_store_postgres::PostgresStore;
use proxy_runner_test_support::store_contract::{hook_job, t};
use support::{TestDb, patient};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

#[tokio::test]
async fn migrations_are_versioned_and_reopening_keeps_the_data() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let job = hook_job("o/r", "build", "proxy-1", 1);
    {
        let store = db.store().await;
        assert_eq!(store.schema_version().await.unwrap(), 4);
        store.insert_job(&job, &[]).await.unwrap();
        store.close().await;
    }
    let store = db.store().await;
    assert_eq!(store.schema_version().await.unwrap(), 4);
    assert_eq!(store.get_job(job.id).await.unwrap(), Some(job));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let mut starts = JoinSet::new();
    for _ in 0..4 {
        let url = db.url.clone();
        starts.spawn(async move { PostgresStore::connect_with(&url, patient()).await });
    }
    while let Some(started) = starts.join_next().await {
        let store = started.expect("task").expect("every replica starts");
        assert_eq!(store.schema_version().await.unwrap(), 4);
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_idempotency_keys_deliveries_and_compare_and_set() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a: Arc<dyn JobStore> = Arc::new(db.store().await);
    let b: Arc<dyn JobStore> = Arc::new(db.store().await);

    let job = hook_job("o/r", "build", "proxy-1", 1);
    assert!(a.insert_job(&job, &[]).await.unwrap().is_new());
    let retry = hook_job("O/R", "build", "proxy-1", 1);
    assert_eq!(b.insert_job(&retry, &[]).await.unwrap().into_job(), job);

    assert!(
        a.record_delivery("d-1", "workflow_job", t(0))
            .await
            .unwrap()
    );
    assert!(
        !b.record_delivery("d-1", "workflow_job", t(0))
            .await
            .unwrap()
    );

    // Writers on both replicas race for the same revision: one wins.
    let barrier = Arc::new(Barrier::new(16));
    let mut writers = JoinSet::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (barrier, mut mine) = (barrier.clone(), job.clone());
        writers.spawn(async move {
            mine.last_error = Some(format!("writer {i}"));
            barrier.wait().await;
            store.update_job(&mut mine, JobStatus::Queued, &[]).await
        });
    }
    let mut wins = 0;
    while let Some(done) = writers.join_next().await {
        wins += usize::from(done.expect("task").expect("update"));
    }
    assert_eq!(wins, 1);
    assert_eq!(b.get_job(job.id).await.unwrap().unwrap().revision, 1);
}

#[tokio::test]
async fn an_unusable_database_is_unavailable_naming_the_server_not_the_password() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The test server trusts loopback, so a password in the URL is never
    // asked for; it must not show up either way.
    let missing = format!("{}_missing", db.name);
    let authority = db.url.split_once("://").map_or("", |x| x.1);
    let authority = authority.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |x| x.1);
    let url = format!("postgres://postgres:pw-SECRET-9@{host}/{missing}");
    let err = PostgresStore::connect(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
    assert!(text.contains(&missing), "names the database: {text}");
    assert!(!text.contains("pw-SECRET-9"), "{text}");

    let store = db.store().await;
    assert!(!format!("{store:?}").contains("pw"), "{store:?}");
    assert!(store.target().ends_with(&db.name), "{}", store.target());
}
