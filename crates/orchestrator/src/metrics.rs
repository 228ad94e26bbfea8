//! Prometheus metrics. One recorder per process (the `metrics` facade is
//! global); every crate records through the facade and `/metrics` renders it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const DELEGATIONS_RECEIVED: &str = "proxy_runner_delegations_received_total";
pub const DELEGATIONS_SUCCEEDED: &str = "proxy_runner_delegations_succeeded_total";
pub const DELEGATIONS_FAILED: &str = "proxy_runner_delegations_failed_total";
pub const TIME_TO_DELEGATE: &str = "proxy_runner_time_to_delegate_seconds";
pub const JOBS_COMPLETED: &str = "proxy_runner_jobs_completed_total";
pub const JOB_TRANSITIONS: &str = "proxy_runner_job_transitions_total";
pub const HTTP_REQUESTS: &str = "proxy_runner_http_requests_total";
pub const WEBHOOKS: &str = "proxy_runner_webhooks_total";
pub const PROVISION_DURATION: &str = "proxy_runner_provision_duration_seconds";
pub const QUEUE_TO_START: &str = "proxy_runner_queue_to_start_seconds";
pub const LIVE_CONTAINERS: &str = "proxy_runner_live_containers";
pub const BACKEND_UP: &str = "proxy_runner_backend_up";
pub const WARM_IDLE: &str = "proxy_runner_warm_idle";
pub const WARM_STARTED: &str = "proxy_runner_warm_started_total";
pub const WARM_TAKEN: &str = "proxy_runner_warm_taken_total";
pub const WARM_RECYCLED: &str = "proxy_runner_warm_recycled_total";
pub const LARGE_BODIES_REFUSED: &str = "proxy_runner_http_large_bodies_refused_total";
// Proxy runners (supervisors' heartbeats, registrations, hook calls).
pub const PROXY_UPTIME: &str = "proxy_runner_proxy_uptime_seconds";
pub const PROXY_SLOTS: &str = "proxy_runner_proxy_slots";
pub const PROXY_BUSY_SLOTS: &str = "proxy_runner_proxy_busy_slots";
pub const PROXY_RESTARTS: &str = "proxy_runner_proxy_listener_restarts";
pub const PROXY_LAST_EXIT_CODE: &str = "proxy_runner_proxy_last_exit_code";
pub const PROXY_HEARTBEATS: &str = "proxy_runner_proxy_heartbeats_total";
pub const PROXY_LAST_HEARTBEAT: &str = "proxy_runner_proxy_last_heartbeat_timestamp_seconds";
pub const PROXY_REGISTRATIONS: &str = "proxy_runner_proxy_registrations_total";
pub const HOOK_EXECUTIONS: &str = "proxy_runner_hook_executions_total";
pub const HOOK_CONNECTION_FAILURES: &str = "proxy_runner_hook_connection_failures_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first use and returns its handle.
/// If another recorder was installed first (an embedding program), a
/// detached recorder is returned so that `/metrics` still answers.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0, 60.0,
                        ],
                    )
                    .expect("bucket list is not empty")
            };
            match builder().install_recorder() {
                Ok(handle) => handle,
                Err(_) => builder().build_recorder().handle(),
            }
        })
        .clone()
}

/// Describes the metrics once so that `/metrics` carries HELP lines.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DELEGATIONS_RECEIVED,
        "Delegation calls received from job hooks."
    );
    describe_counter!(
        DELEGATIONS_SUCCEEDED,
        "Delegation calls accepted (new or repeated)."
    );
    describe_counter!(DELEGATIONS_FAILED, "Delegation calls rejected, by reason.");
    describe_histogram!(
        TIME_TO_DELEGATE,
        "Seconds from a delegation request to its acknowledgement."
    );
    describe_counter!(JOBS_COMPLETED, "Jobs finished, by conclusion.");
    describe_counter!(JOB_TRANSITIONS, "Job state changes, by target state.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route and status.");
    describe_counter!(
        WEBHOOKS,
        "Webhook deliveries, by event, action and outcome."
    );
    describe_histogram!(
        PROVISION_DURATION,
        "Seconds to mint runner credentials and start a container."
    );
    describe_histogram!(
        QUEUE_TO_START,
        "Seconds from a job being queued to its container running."
    );
    describe_gauge!(LIVE_CONTAINERS, "Job containers currently live.");
    describe_gauge!(
        BACKEND_UP,
        "1 when the container engine answered the last ping."
    );
    describe_gauge!(
        WARM_IDLE,
        "Warm runners registered and waiting for a job, by label set."
    );
    describe_counter!(WARM_STARTED, "Warm runners started, by label set.");
    describe_counter!(WARM_TAKEN, "Warm runners that took a job, by label set.");
    describe_counter!(
        WARM_RECYCLED,
        "Idle warm runners deregistered and stopped, by label set and reason (max_age, surplus, capacity)."
    );
    describe_counter!(
        LARGE_BODIES_REFUSED,
        "Requests answered 503 because too many large bodies were being read at once."
    );
    describe_gauge!(
        PROXY_UPTIME,
        "Seconds since the proxy runner supervisor started, by runner (last heartbeat)."
    );
    describe_gauge!(PROXY_SLOTS, "Listener slots of a proxy runner supervisor.");
    describe_gauge!(
        PROXY_BUSY_SLOTS,
        "Slots of a proxy runner supervisor running a job."
    );
    describe_gauge!(
        PROXY_RESTARTS,
        "Listener restarts after a failure since the supervisor started, by runner."
    );
    describe_gauge!(
        PROXY_LAST_EXIT_CODE,
        "Exit code of the last listener of a slot (128 + signal for a crash)."
    );
    describe_counter!(PROXY_HEARTBEATS, "Heartbeats received, by runner.");
    describe_gauge!(
        PROXY_LAST_HEARTBEAT,
        "Unix time of a supervisor's last heartbeat, by runner."
    );
    describe_counter!(
        PROXY_REGISTRATIONS,
        "Runner registrations minted for proxy runners, by kind and outcome."
    );
    describe_counter!(
        HOOK_EXECUTIONS,
        "Hook calls, by hook and outcome (ok, refused, error; unreached as reported by the hook client)."
    );
    describe_counter!(
        HOOK_CONNECTION_FAILURES,
        "Tries of a hook to reach the orchestrator that got no answer, as reported by the hook client."
    );
}
