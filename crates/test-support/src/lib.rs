//! Shared test support: fixtures from the repository's `fixtures/`, a manual
//! clock, fixed jitter, a recording GitHub double, a rig that builds the
//! orchestrator through its composition root (the router exactly as
//! served), and waiting for a condition instead of for a time window.

pub mod registry;
pub mod rig;
pub mod store_contract;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{Clock, Jitter};
use proxy_runner_domain::sync::lock;

/// The absolute path of `fixtures/{rel}` in the repository.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

pub fn fixture_text(rel: &str) -> String {
    let path = fixture_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn fixture_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&fixture_text(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }

    /// Starts at the system's present time (stored records look recent).
    pub fn starting_now() -> Self {
        ManualClock::new(Utc::now())
    }

    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.0);
        *now += chrono::Duration::from_std(by).expect("duration fits");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *lock(&self.0)
    }
}

/// Jitter that is always the same number.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn sample(&self) -> f64 {
        self.0
    }
}

/// Polls `condition` until it holds, failing the test with `what` after
/// `limit`. The limit only bounds a broken run; no test relies on it.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
