//! The audit trail, written by every use case the same way, and the one
//! compare-and-set retry bound.

use std::future::Future;
use std::sync::Arc;

use proxy_runner_domain::ports::{AuditEvent, Clock, JobStore};
use uuid::Uuid;

/// How often a compare-and-set write of a job is retried after another
/// writer won.
pub(crate) const CAS_RETRIES: usize = 5;

/// Runs one read-modify-write `attempt` until it reports a result
/// (`Some`), at most [`CAS_RETRIES`] times; `None` means another writer won
/// and the attempt is to be made again on a fresh read.
pub(crate) async fn retry_cas<T, E, F, Fut>(
    mut attempt: F,
    kept_changing: impl FnOnce() -> E,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    for _ in 0..CAS_RETRIES {
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
    }
    Err(kept_changing())
}

/// Makes audit events, and writes those that record no write of the store
/// (an event that records a write goes to the store with that write, so
/// both commit together). `detail` must never hold a secret.
#[derive(Clone)]
pub(crate) struct Auditor {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
}

impl Auditor {
    pub(crate) fn new(store: Arc<dyn JobStore>, clock: Arc<dyn Clock>) -> Self {
        Auditor { store, clock }
    }

    /// The event `action` of `actor`, now.
    pub(crate) fn event(
        &self,
        actor: &str,
        action: &str,
        job_id: Option<Uuid>,
        detail: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            at: self.clock.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            job_id,
            detail,
        }
    }

    /// Appends one event that records no write of the store. The audit
    /// trail must not block the job: a failed write is logged loudly instead.
    pub(crate) async fn record(
        &self,
        actor: &str,
        action: &str,
        job_id: Option<Uuid>,
        detail: serde_json::Value,
    ) {
        let event = self.event(actor, action, job_id, detail);
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, action, "audit write failed");
        }
    }
}
