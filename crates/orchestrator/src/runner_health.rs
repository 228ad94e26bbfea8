//! How proxy runners are doing, as metrics: their supervisors' heartbeats
//! (uptime, slots, busy slots, listener restarts, last exit code per slot)
//! and every hook call (by hook and outcome). Calls that never reached us
//! are reported by the hook client on its next call that does, in the
//! `X-Proxy-Runner-Hook-Report` header.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use proxy_runner_domain::proxy_runner::Heartbeat;

use crate::metrics as m;

/// The header a hook client reports earlier failures in:
/// `hook:kind=count[, ...]`, kind `unreached` (a call that got no answer)
/// or `connection_failure` (a try that got no answer).
pub const HOOK_REPORT_HEADER: &str = "x-proxy-runner-hook-report";

/// The hooks a proxy runner runs, as metric label values.
pub const HOOKS: &[&str] = &[
    "job_started",
    "job_completed",
    "prepare_job",
    "run_script_step",
    "run_container_step",
    "cleanup_job",
];

/// Largest count one report may carry per entry (a report is advisory).
const MAX_REPORTED: u64 = 10_000;

/// The hook a route serves, if any.
fn hook_of(method: &Method, route: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    Some(match route {
        "/api/jobs/delegate" => "job_started",
        "/api/jobs/{id}/complete" => "job_completed",
        "/api/hooks/prepare-job" => "prepare_job",
        "/api/hooks/run-script-step" => "run_script_step",
        "/api/hooks/run-container-step" => "run_container_step",
        "/api/hooks/cleanup-job" => "cleanup_job",
        _ => return None,
    })
}

/// What a report says: (hook, kind, count) entries with known hooks and
/// kinds; anything else in it is ignored.
pub fn parse_hook_report(value: &str) -> Vec<(&'static str, &'static str, u64)> {
    value
        .split(',')
        .take(64)
        .filter_map(|entry| {
            let (key, count) = entry.trim().split_once('=')?;
            let (hook, kind) = key.split_once(':')?;
            let hook = HOOKS.iter().copied().find(|h| *h == hook)?;
            let kind = ["unreached", "connection_failure"]
                .into_iter()
                .find(|k| *k == kind)?;
            let count = count.parse::<u64>().ok()?.min(MAX_REPORTED);
            (count > 0).then_some((hook, kind, count))
        })
        .collect()
}

/// Counts hook calls by hook and outcome (`ok`, `refused`, `error`), and
/// what the caller reports of calls that never got here (`unreached`, and
/// connection failures). Reports from callers we turned away as
/// unauthenticated are ignored.
pub async fn count_hook_calls(req: Request, next: axum::middleware::Next) -> Response {
    let hook = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| hook_of(req.method(), p.as_str()));
    let report = req
        .headers()
        .get(HOOK_REPORT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(parse_hook_report)
        .unwrap_or_default();
    let resp = next.run(req).await;
    let status = resp.status();
    if let Some(hook) = hook {
        let outcome = if status.is_success() {
            "ok"
        } else if status.is_server_error() {
            "error"
        } else {
            "refused"
        };
        metrics::counter!(m::HOOK_EXECUTIONS, "hook" => hook, "outcome" => outcome).increment(1);
    }
    if status != StatusCode::UNAUTHORIZED {
        for (hook, kind, count) in report {
            match kind {
                "unreached" => {
                    metrics::counter!(m::HOOK_EXECUTIONS, "hook" => hook, "outcome" => "unreached")
                        .increment(count)
                }
                _ => {
                    metrics::counter!(m::HOOK_CONNECTION_FAILURES, "hook" => hook).increment(count)
                }
            }
        }
    }
    resp
}

/// Records a supervisor's heartbeat; `runner` is the name its token was
/// issued for.
pub fn record_heartbeat(runner: &str, beat: &Heartbeat, now_unix: f64) {
    let runner = runner.to_string();
    metrics::gauge!(m::PROXY_UPTIME, "runner" => runner.clone()).set(beat.uptime_seconds as f64);
    metrics::gauge!(m::PROXY_SLOTS, "runner" => runner.clone()).set(beat.slots.len() as f64);
    metrics::gauge!(m::PROXY_BUSY_SLOTS, "runner" => runner.clone()).set(beat.busy_slots() as f64);
    metrics::gauge!(m::PROXY_RESTARTS, "runner" => runner.clone()).set(beat.restarts() as f64);
    metrics::gauge!(m::PROXY_LAST_HEARTBEAT, "runner" => runner.clone()).set(now_unix);
    metrics::counter!(m::PROXY_HEARTBEATS, "runner" => runner.clone()).increment(1);
    for slot in &beat.slots {
        if let Some(code) = slot.last_exit_code {
            metrics::gauge!(m::PROXY_LAST_EXIT_CODE, "runner" => runner.clone(), "slot" => slot.slot.to_string())
                .set(f64::from(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_their_hooks() {
        assert_eq!(
            hook_of(&Method::POST, "/api/jobs/delegate"),
            Some("job_started")
        );
        assert_eq!(
            hook_of(&Method::POST, "/api/jobs/{id}/complete"),
            Some("job_completed")
        );
        assert_eq!(
            hook_of(&Method::POST, "/api/hooks/run-script-step"),
            Some("run_script_step")
        );
        assert_eq!(hook_of(&Method::GET, "/api/jobs/delegate"), None);
        assert_eq!(hook_of(&Method::POST, "/api/tokens"), None);
    }

    #[test]
    fn reports_keep_only_known_hooks_and_kinds() {
        assert_eq!(
            parse_hook_report(
                "job_started:unreached=1, prepare_job:connection_failure=3,bogus:unreached=2,cleanup_job:other=1,cleanup_job:unreached=x,run_script_step:unreached=0,job_completed:unreached=99999999"
            ),
            vec![
                ("job_started", "unreached", 1),
                ("prepare_job", "connection_failure", 3),
                ("job_completed", "unreached", MAX_REPORTED),
            ]
        );
        assert!(parse_hook_report("").is_empty());
    }
}
