//! The `JobStore` contract (shared with the SQLite store) against
//! PostgreSQL: every property on a database of its own.

mod support;

use std::sync::Arc;

use proxy_runner_test_support::store_contract::Subject;
use support::TestDb;

async fn make() -> Option<Subject> {
    let db = TestDb::create().await?;
    let store = db.store().await;
    Some(Subject::new(Arc::new(store), db))
}

proxy_runner_test_support::job_store_contract!(make);

#[test]
fn pages_are_capped_like_the_sqlite_stores() {
    assert_eq!(
        proxy_runner_store_postgres::MAX_PAGE,
        proxy_runner_test_support::store_contract::MAX_PAGE
    );
}
