//! proxy-runner's own job hooks (`hooks/*.sh`), run with `bash -e` as the
//! runner runs them, against the real orchestrator binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ADMIN: &str = "hooks-admin-token";

struct Server {
    // Kept for its drop: the process dies with the test.
    _process: common::Server,
    url: String,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let process = common::serve(
        &dir.path().join("jobs.db"),
        None,
        &["--backend", "dry-run"],
        &[("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)],
    );
    let url = process.url.clone();
    Server {
        _process: process,
        url,
        _dir: dir,
    }
}

fn curl(args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl").arg("-s").args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn token(server: &Server, runner: &str) -> String {
    let v = curl(&[
        "-X",
        "POST",
        &format!("{}/api/tokens", server.url),
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!(r#"{{"runner":"{runner}"}}"#),
    ]);
    v["token"].as_str().unwrap().to_string()
}

fn hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../hooks")
        .join(name)
}

/// Runs a hook the way the runner does: `bash -e <path>`, in the runner's
/// environment at hook time plus what `proxy-runner` puts there.
fn run(name: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-e")
        .arg(hook(name))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn runner_env<'a>(url: &'a str, token: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ORCHESTRATOR_URL", url),
        ("PROXY_RUNNER_TOKEN", token),
        ("GITHUB_JOB", "build"),
        ("GITHUB_RUN_ID", "4242"),
        ("GITHUB_RUN_ATTEMPT", "2"),
        ("GITHUB_REPOSITORY", "octo/app"),
        ("GITHUB_WORKFLOW", "CI \"quoted\" $(not run) `nor this`"),
        ("RUNNER_NAME", "proxy-1"),
        ("RUNNER_LABELS", "self-hosted,linux"),
        ("GITHUB_TOKEN_FOR_TEST", "hook-SECRET-1"),
        ("ACTIONS_RUNTIME_TOKEN", "hook-SECRET-2"),
        ("UNRELATED", "not sent"),
    ]
}

fn preconditions() {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .status()
            .unwrap()
            .success();
        assert!(found, "{tool} is needed by the hooks");
    }
}

#[test]
fn started_hook_delegates_and_exits_zero_then_completed_hook_reports() {
    preconditions();
    let server = start();
    let tok = token(&server, "proxy-1");
    let env = runner_env(&server.url, &tok);

    let out = run("job-started.sh", &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("job delegated"), "{stdout}");

    let jobs = curl(&[
        &format!("{}/api/jobs", server.url),
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
    ]);
    let job = &jobs["jobs"][0];
    assert_eq!(job["jobId"], "build");
    assert_eq!(job["runId"], 4242);
    assert_eq!(job["runAttempt"], 2);
    assert_eq!(
        job["workflow"], "CI \"quoted\" $(not run) `nor this`",
        "values are JSON-encoded, not pasted"
    );
    assert_eq!(job["labels"], serde_json::json!(["self-hosted", "linux"]));
    let stored_env = job["environment"].as_object().unwrap();
    assert!(stored_env.contains_key("GITHUB_REPOSITORY"));
    assert!(
        !stored_env.contains_key("UNRELATED"),
        "only GITHUB_*/RUNNER_* are sent"
    );
    let text = jobs.to_string();
    assert!(!text.contains("hook-SECRET") && !text.contains(&tok));

    // Running the started hook again (a retried step) finds the same job.
    assert_eq!(run("job-started.sh", &env).status.code(), Some(0));

    let out = run("job-completed.sh", &env);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("completion reported"));
    let done = curl(&[
        &format!("{}/api/jobs/{}", server.url, job["id"].as_str().unwrap()),
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
    ]);
    assert_eq!(done["status"], "completed");
}

#[test]
fn started_hook_fails_the_job_with_a_reason_when_delegation_fails() {
    preconditions();
    let server = start();
    let tok = token(&server, "proxy-1");

    // Unknown token: the orchestrator's message is shown.
    let env = runner_env(&server.url, "prt_wrong");
    let out = run("job-started.sh", &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("::error::") && stdout.contains("401") && stdout.contains("unknown token"),
        "{stdout}"
    );

    // A token of another runner.
    let other = token(&server, "proxy-2");
    let out = run("job-started.sh", &runner_env(&server.url, &other));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("403"));

    // Nothing listening.
    let out = run("job-started.sh", &runner_env("http://127.0.0.1:9", &tok));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("cannot reach the orchestrator"), "{stdout}");

    // A URL with a password is never echoed into the job log.
    let out = run(
        "job-started.sh",
        &runner_env("http://ci:pw-SECRET-9@127.0.0.1:9", &tok),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("http://127.0.0.1:9") && !stdout.contains("pw-SECRET-9"),
        "{stdout}"
    );
    assert!(!stdout.contains(&tok), "{stdout}");

    // No token at all.
    let mut env = runner_env(&server.url, &tok);
    env.retain(|(k, _)| *k != "PROXY_RUNNER_TOKEN");
    let out = run("job-started.sh", &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no orchestrator token"));
}

#[test]
fn completed_hook_never_fails_the_job() {
    preconditions();
    let out = run(
        "job-completed.sh",
        &runner_env("http://127.0.0.1:9", "prt_x"),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("::warning::"));
    let out = run("job-completed.sh", &[("PATH", "/usr/bin:/bin")]);
    assert_eq!(out.status.code(), Some(0));
}
