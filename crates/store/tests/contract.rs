//! The `JobStore` contract (shared with every adapter) against SQLite, in
//! memory and on file.

mod in_memory {
    use std::sync::Arc;

    use proxy_runner_store::SqliteStore;
    use proxy_runner_test_support::store_contract::Subject;

    async fn make() -> Option<Subject> {
        let store = SqliteStore::in_memory().await.expect("in-memory store");
        Some(Subject::new(Arc::new(store), ()))
    }

    proxy_runner_test_support::job_store_contract!(make);
}

mod file {
    use std::sync::Arc;

    use proxy_runner_store::SqliteStore;
    use proxy_runner_test_support::store_contract::Subject;

    async fn make() -> Option<Subject> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(&dir.path().join("jobs.db"))
            .await
            .expect("file store");
        Some(Subject::new(Arc::new(store), dir))
    }

    proxy_runner_test_support::job_store_contract!(make);
}
