//! Hook calls that never reached the orchestrator are counted all the same:
//! the container hook (the real binary) notes them in the runner's report
//! file, next to what the job hooks noted, and reports them on its next call
//! that gets an answer; the orchestrator (the real `serve`) turns the report
//! into `proxy_runner_hook_executions_total{outcome="unreached"}` and
//! `proxy_runner_hook_connection_failures_total`.

mod common;

use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

const ADMIN: &str = "admin-SECRET-hook-report";

async fn hook(url: &str, token: &str, report: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["hook", "container"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORCHESTRATOR_URL", url)
        .env("PROXY_RUNNER_TOKEN", token)
        .env("RUNNER_NAME", "rep-0-1")
        .env("PROXY_RUNNER_HOOK_REPORT", report)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(br#"{"command":"cleanup_job","responseFile":null,"args":{},"state":null}"#)
        .await
        .unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn calls_that_never_reached_the_orchestrator_are_reported_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::serve(
        &dir.path().join("db.sqlite"),
        None,
        &["--backend", "dry-run"],
        &[("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)],
    );
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/api/tokens", server.url))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"runner": "rep"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let report = dir.path().join("hook-report");
    // The job-started hook could not reach the orchestrator earlier.
    std::fs::write(&report, "job_started unreached\n").unwrap();

    // Nothing listens here: every try fails without an answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = hook(&closed_url, &token, &report).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("cannot reach the orchestrator"), "{stdout}");
    let noted = std::fs::read_to_string(&report).unwrap();
    assert!(noted.contains("job_started unreached 1"), "{noted}");
    assert!(noted.contains("cleanup_job unreached 1"), "{noted}");
    assert!(
        noted.contains("cleanup_job connection_failure 5"),
        "{noted}"
    );
    assert!(!noted.contains(&token));

    // The next call reaches it (the dry-run engine has no proxy path: 503),
    // and the report goes with it.
    let out = hook(&server.url, &token, &report).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        "",
        "report delivered"
    );
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "proxy_runner_hook_executions_total{hook=\"job_started\",outcome=\"unreached\"} 1",
        "proxy_runner_hook_executions_total{hook=\"cleanup_job\",outcome=\"unreached\"} 1",
        "proxy_runner_hook_connection_failures_total{hook=\"cleanup_job\"} 5",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        metrics
            .contains("proxy_runner_hook_executions_total{hook=\"cleanup_job\",outcome=\"error\"}"),
        "{metrics}"
    );
}
