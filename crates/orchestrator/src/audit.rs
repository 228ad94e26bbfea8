//! The audit trail, written by every use case the same way.

use proxy_runner_domain::ports::{AuditEvent, Clock, JobStore};
use uuid::Uuid;

/// How often a compare-and-set write of a job is retried after another
/// writer won.
pub(crate) const CAS_RETRIES: usize = 5;

/// Appends one audit event. `detail` must never hold a secret. The audit
/// trail must not block the job: a failed write is logged loudly instead.
pub(crate) async fn record(
    store: &dyn JobStore,
    clock: &dyn Clock,
    actor: &str,
    action: &str,
    job_id: Option<Uuid>,
    detail: serde_json::Value,
) {
    let event = AuditEvent {
        at: clock.now(),
        actor: actor.to_string(),
        action: action.to_string(),
        job_id,
        detail,
    };
    if let Err(e) = store.append_audit(&event).await {
        tracing::error!(error = %e, action, "audit write failed");
    }
}
