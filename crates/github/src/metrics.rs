//! Metric names (recorded through the `metrics` facade; the binary installs
//! the exporter).

/// Counter, labels `endpoint` and `status` (HTTP code, `timeout`,
/// `transport`, `too_large`, `circuit_open`).
pub const REQUESTS_TOTAL: &str = "github_requests_total";
/// Histogram of one HTTP attempt, label `endpoint`.
pub const REQUEST_DURATION_SECONDS: &str = "github_request_duration_seconds";
/// Gauge, label `resource`: the last `x-ratelimit-remaining` seen.
pub const RATE_LIMIT_REMAINING: &str = "github_rate_limit_remaining";
/// Gauge, label `host`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "github_circuit_state";

/// One more request of `endpoint` that ended with `status`.
pub(crate) fn count_request(endpoint: &'static str, status: &str) {
    metrics::counter!(REQUESTS_TOTAL, "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
}
