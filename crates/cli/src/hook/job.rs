//! `proxy-runner hook job-started` and `hook job-completed`: the job hooks.
//! `hooks/job-started.sh` and `hooks/job-completed.sh` exec them when the
//! binary is there; they do what those scripts' curl path does (the same
//! environment, body, messages and exit codes) without starting `jq` and
//! `curl`, through the container hook's client.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Call, Client, Failure, Output, Reply, endpoint, one_line, read_capped, token_from_env,
    url_from_env,
};

/// Tries of a call: the scripts' `curl --retry 3`.
const ATTEMPTS: u32 = 4;
/// How long one try may take: the scripts' `curl --max-time 30`.
const PER_TRY: Duration = Duration::from_secs(30);
const OVERALL: Duration = Duration::from_secs(150);
/// First pause between tries (then 2 s, 4 s, with jitter): about the
/// scripts' three pauses of 2 s.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Largest answer read (the delegated job, or an error).
const MAX_REPLY: usize = 256 * 1024;

fn call(hook: &'static str, path: String) -> Call {
    Call {
        hook,
        path,
        per_try: PER_TRY,
        overall: OVERALL,
        attempts: ATTEMPTS,
        first_backoff: FIRST_BACKOFF,
    }
}

/// The job-started hook: exit 0 once the orchestrator recorded the job, 1
/// with an `::error::` line otherwise (the job fails visibly instead of
/// running unaccounted).
pub(super) async fn started() -> i32 {
    let mut out = Output::new();
    let code = match delegate(&mut out).await {
        Ok(()) => 0,
        Err(failure) => out.fail(failure).await,
    };
    out.flush().await;
    code
}

async fn delegate(out: &mut Output) -> Result<(), Failure> {
    let url = url_from_env().ok_or("ORCHESTRATOR_URL is not set")?;
    let token = token_from_env()
        .ok_or("no orchestrator token (PROXY_RUNNER_TOKEN) in the runner's environment")?;
    let body = delegation_body(utf8_env(), &token);
    let client = Client::new(endpoint(url, token)?)?;
    let shown_url = client.endpoint.shown_url.clone();
    let reply = client
        .send(
            &call("job_started", "/api/jobs/delegate".into()),
            Some(&body),
        )
        .await;
    let (status, raw) = match reply {
        Reply::Answer(response) => {
            let status = response.status().as_u16();
            (
                status,
                read_capped(response, MAX_REPLY).await.unwrap_or_default(),
            )
        }
        Reply::ServerError { status, body, .. } => (status.as_u16(), body),
        Reply::Unreached { last, .. } => {
            return Err(format!(
                "cannot reach the orchestrator at {shown_url}: {}",
                last.cause()
            )
            .into());
        }
    };
    let answer: Option<Value> = serde_json::from_slice(&raw).ok();
    if matches!(status, 200 | 201) {
        let id = answer
            .as_ref()
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .unwrap_or("?");
        out.line(&format!(
            "proxy-runner: job delegated (orchestrator job {id})"
        ))
        .await;
        return Ok(());
    }
    Err(format!(
        "delegation refused (HTTP {status}): {}",
        refusal_message(answer.as_ref(), &String::from_utf8_lossy(&raw))
    )
    .into())
}

/// The orchestrator's `error.message`, else the answer itself.
fn refusal_message(answer: Option<&Value>, text: &str) -> String {
    answer
        .and_then(|a| a.pointer("/error/message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| one_line(text))
}

/// The process's environment; entries that are not UTF-8 are left out.
fn utf8_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The delegate body: the job's context and its `GITHUB_*`/`RUNNER_*`
/// variables, without credentials (by name or value, the orchestrator's own
/// rule, and anything holding the orchestrator token).
fn delegation_body(env: Vec<(String, String)>, token: &str) -> Value {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let get = |name: &str| env.get(name).cloned().unwrap_or_default();
    let context: BTreeMap<String, String> = env
        .iter()
        .filter(|(name, value)| {
            (name.starts_with("GITHUB_") || name.starts_with("RUNNER_")) && !value.contains(token)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let (environment, _) = proxy_runner_domain::env_filter::filter_environment(context);
    let run_attempt = env
        .get("GITHUB_RUN_ATTEMPT")
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| "1".into());
    json!({
        "jobId": get("GITHUB_JOB"),
        "runId": get("GITHUB_RUN_ID"),
        "runAttempt": run_attempt,
        "repository": get("GITHUB_REPOSITORY"),
        "workflow": get("GITHUB_WORKFLOW"),
        "runnerName": get("RUNNER_NAME"),
        "labels": get("RUNNER_LABELS"),
        "environment": environment,
    })
}

/// The job-completed hook: always exit 0 (a failed report must not turn a
/// passing job red; the orchestrator's reconciler settles jobs whose report
/// never came), with a `::warning::` line when the report did not land.
pub(super) async fn completed() -> i32 {
    let mut out = Output::new();
    match report_completion().await {
        Ok(()) => out.line("proxy-runner: completion reported").await,
        Err(failure) => out.warn(&failure.0).await,
    }
    out.flush().await;
    0
}

async fn report_completion() -> Result<(), Failure> {
    let job = std::env::var("GITHUB_JOB").unwrap_or_default();
    let (Some(url), Some(token), false) = (url_from_env(), token_from_env(), job.is_empty()) else {
        return Err(
            "ORCHESTRATOR_URL, PROXY_RUNNER_TOKEN or GITHUB_JOB missing; completion not reported"
                .into(),
        );
    };
    // GITHUB_JOB is a job key; the orchestrator resolves it to this
    // runner's active job.
    if !is_key(&job) {
        return Err("unexpected GITHUB_JOB; completion not reported".into());
    }
    // A supervisor's token acts for its slot runners: the runner whose job
    // ended is named.
    let query = std::env::var("RUNNER_NAME")
        .ok()
        .filter(|name| is_key(name))
        .map(|name| format!("?runner={name}"))
        .unwrap_or_default();
    let not_reported = |why: String| Failure(format!("completion not reported ({why})"));
    let client = endpoint(url, token)
        .and_then(Client::new)
        .map_err(|failure| not_reported(failure.0))?;
    let path = format!("/api/jobs/{job}/complete{query}");
    match client.send(&call("job_completed", path), None).await {
        Reply::Answer(response) if response.status().as_u16() == 200 => Ok(()),
        Reply::Answer(response) => Err(not_reported(response.status().as_u16().to_string())),
        Reply::ServerError { status, .. } => Err(not_reported(status.as_u16().to_string())),
        Reply::Unreached { last, .. } => Err(not_reported(format!(
            "unreachable (cannot reach the orchestrator at {}: {})",
            client.endpoint.shown_url,
            last.cause()
        ))),
    }
}

/// `[A-Za-z0-9_.-]+`: safe in a path segment and a query value as it is.
fn is_key(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_body_carries_the_jobs_context_and_no_credential() {
        let body = delegation_body(
            env(&[
                ("GITHUB_JOB", "build"),
                ("GITHUB_RUN_ID", "42"),
                ("GITHUB_REPOSITORY", "o/r"),
                ("RUNNER_NAME", "p-1"),
                ("RUNNER_LABELS", "a,b"),
                ("RUNNER_TOKEN", "by-name"),
                ("GITHUB_API_KEY", "by-name-too"),
                ("GITHUB_NOTE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
                ("GITHUB_MIRROR", "https://u:pw@mirror.example/x"),
                ("GITHUB_ECHO", "has prt_orchestrator-token inside"),
                ("HOME", "/home/runner"),
            ]),
            "prt_orchestrator-token",
        );
        assert_eq!(
            body,
            json!({
                "jobId": "build", "runId": "42", "runAttempt": "1", "repository": "o/r",
                "workflow": "", "runnerName": "p-1", "labels": "a,b",
                "environment": {
                    "GITHUB_JOB": "build", "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "42",
                    "RUNNER_LABELS": "a,b", "RUNNER_NAME": "p-1",
                },
            })
        );
        let attempt = delegation_body(env(&[("GITHUB_RUN_ATTEMPT", "3")]), "t0k");
        assert_eq!(attempt["runAttempt"], "3");
    }

    #[test]
    fn a_refusal_shows_the_orchestrators_message_else_its_answer() {
        let error = json!({"error": {"code": "invalid_field", "message": "runId: bad"}});
        assert_eq!(refusal_message(Some(&error), "ignored"), "runId: bad");
        assert_eq!(refusal_message(None, "bad\ngateway"), "bad gateway");
    }

    #[test]
    fn job_keys_are_plain() {
        assert!(is_key("build_1.x-y"));
        assert!(!is_key(""));
        assert!(!is_key("a/b"));
        assert!(!is_key("a?b"));
        assert!(!is_key("é"));
    }
}
