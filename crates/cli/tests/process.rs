//! The real binary as a process: durability across SIGKILL, and planted
//! secrets that must appear nowhere (database files, logs, responses).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Server;
use serde_json::Value;

const ADMIN: &str = "admin-SECRET-planted-0001";

fn start(db: &Path, log: &Path) -> Server {
    start_with(db, log, &["--backend", "dry-run"], &[])
}

fn start_with(db: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut all_env = vec![
        ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
        ("PROXY_RUNNER_LOG", "trace"),
    ];
    all_env.extend_from_slice(env);
    common::serve(db, Some(log), args, &all_env)
}

async fn call(method: &str, url: &str, token: &str, body: Option<String>) -> (u16, Value, String) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

#[tokio::test]
async fn an_acknowledged_job_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let log = dir.path().join("log");
    let server = start(&db, &log);
    let (s, body, _) = call(
        "POST",
        &format!("{}/api/tokens", server.url),
        ADMIN,
        Some(r#"{"runner":"p1"}"#.into()),
    )
    .await;
    assert_eq!(s, 201);
    let token = body["token"].as_str().unwrap().to_string();
    let delegation = r#"{"jobId":"build","runId":"77","repository":"o/r","workflow":"CI","runnerName":"p1","labels":"self-hosted","environment":{}}"#;
    let (s, job, _) = call(
        "POST",
        &format!("{}/api/jobs/delegate", server.url),
        &token,
        Some(delegation.into()),
    )
    .await;
    assert_eq!(s, 201);
    let id = job["id"].as_str().unwrap().to_string();

    // SIGKILL: no shutdown path runs.
    drop(server);

    let server = start(&db, &log);
    let (s, again, _) = call("GET", &format!("{}/api/jobs/{id}", server.url), ADMIN, None).await;
    assert_eq!(s, 200);
    assert_eq!(again["status"], "running");
    assert_eq!(again["runId"], 77);
    // The issued token survived too, and the completion hook still finds the job by key.
    let (s, done, _) = call(
        "POST",
        &format!("{}/api/jobs/build/complete", server.url),
        &token,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["status"], "completed");
}

#[tokio::test]
async fn planted_secrets_appear_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let log = dir.path().join("log");
    let server = start(&db, &log);
    let (_, body, _) = call(
        "POST",
        &format!("{}/api/tokens", server.url),
        ADMIN,
        Some(r#"{"runner":"p1"}"#.into()),
    )
    .await;
    let runner_token = body["token"].as_str().unwrap().to_string();

    let planted = [
        "planted-MY_API_TOKEN-7f3a",
        "planted-GITHUB_TOKEN-9c1e",
        "planted-ACTIONS_RUNTIME_TOKEN-44b0",
        "planted-DB_PASSWORD-e21d",
        "planted-secrets-field-0b5c",
        "planted-url-password-a8d2",
        "planted-RUNNER_TOKEN-55aa",
    ];
    let delegation = serde_json::json!({
        "jobId": "build", "runId": "1", "repository": "o/r", "workflow": "CI", "runnerName": "p1",
        "labels": "self-hosted",
        "environment": {
            "MY_API_TOKEN": planted[0],
            "GITHUB_TOKEN": planted[1],
            "ACTIONS_RUNTIME_TOKEN": planted[2],
            "DB_PASSWORD": planted[3],
            "HTTPS_PROXY": format!("http://user:{}@proxy:3128", planted[5]),
            "RUNNER_TOKEN": planted[6],
            "GITHUB_REPOSITORY": "o/r"
        },
        "secrets": {"DEPLOY_KEY": planted[4]}
    });
    let mut responses = Vec::new();
    let (s, job, text) = call(
        "POST",
        &format!("{}/api/jobs/delegate", server.url),
        &runner_token,
        Some(delegation.to_string()),
    )
    .await;
    assert_eq!(s, 201, "{text}");
    assert_eq!(
        job["environment"]["GITHUB_REPOSITORY"], "o/r",
        "harmless variables are kept"
    );
    responses.push(text);
    let id = job["id"].as_str().unwrap();
    // Bad calls that echo what they can: unknown tokens, bad bodies.
    responses.push(
        call("GET", &format!("{}/api/jobs", server.url), planted[0], None)
            .await
            .2,
    );
    responses.push(
        call(
            "POST",
            &format!("{}/api/jobs/delegate", server.url),
            &runner_token,
            Some(format!("{{\"jobId\": \"{}", planted[1])),
        )
        .await
        .2,
    );
    responses.push(
        call("GET", &format!("{}/api/jobs/{id}", server.url), ADMIN, None)
            .await
            .2,
    );
    responses.push(
        call("GET", &format!("{}/api/jobs", server.url), ADMIN, None)
            .await
            .2,
    );
    responses.push(
        call(
            "POST",
            &format!("{}/api/jobs/build/complete", server.url),
            &runner_token,
            None,
        )
        .await
        .2,
    );
    responses.push(
        call("GET", &format!("{}/metrics", server.url), ADMIN, None)
            .await
            .2,
    );
    drop(server);

    let mut places: Vec<(String, Vec<u8>)> = responses
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("response {i}"), r.into_bytes()))
        .collect();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        places.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    assert!(places.iter().any(|(p, _)| p.ends_with("jobs.db")));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("job delegated"),
        "the log is the real one:\n{log_text}"
    );
    let mut secrets: Vec<&str> = planted.to_vec();
    secrets.push(ADMIN);
    secrets.push(&runner_token);
    for (place, bytes) in &places {
        for s in &secrets {
            let hit = bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!hit, "secret {s:?} found in {place}");
        }
    }
}

#[tokio::test]
async fn the_design_hook_scripts_run_verbatim_against_the_api() {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} is needed to run the design's hook scripts");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("jobs.db"), &dir.path().join("log"));
    let (_, body, _) = call(
        "POST",
        &format!("{}/api/tokens", server.url),
        ADMIN,
        Some(r#"{"runner":"proxy-1"}"#.into()),
    )
    .await;
    let token = body["token"].as_str().unwrap().to_string();

    let started = common::run_design_hook("job-started.sh", &server.url, &token, &[]);
    let stdout = String::from_utf8_lossy(&started.stdout);
    // The design ends with `exit 78`, which a real runner treats as a failed
    // step; the delegation itself went through.
    assert_eq!(started.status.code(), Some(78), "{stdout}");
    assert!(stdout.contains("\"status\":\"running\""), "{stdout}");
    let (_, list, _) = call("GET", &format!("{}/api/jobs", server.url), ADMIN, None).await;
    let job = &list["jobs"][0];
    assert_eq!(job["jobId"], "build");
    assert_eq!(job["runId"], 123456789);
    assert_eq!(job["repository"], "octo-org/octo-repo");
    assert_eq!(
        job["labels"],
        serde_json::json!(["self-hosted", "linux", "proxy"])
    );
    assert!(
        job["environment"].get("RUNNER_TOKEN").is_none(),
        "the token in the hook's env is not stored"
    );
    assert_eq!(job["environment"]["GITHUB_WORKFLOW"], "CI");

    let completed = common::run_design_hook("job-completed.sh", &server.url, &token, &[]);
    assert!(
        completed.status.success(),
        "{}",
        String::from_utf8_lossy(&completed.stderr)
    );
    let (_, after, _) = call(
        "GET",
        &format!("{}/api/jobs/{}", server.url, job["id"].as_str().unwrap()),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(after["status"], "completed");
}

#[tokio::test]
async fn an_unreachable_docker_engine_fails_readiness_not_liveness() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        &dir.path().join("jobs.db"),
        &dir.path().join("log"),
        &["--backend", "docker"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let (s, health, _) = call("GET", &format!("{}/healthz", server.url), ADMIN, None).await;
    assert_eq!(s, 200, "{health}");
    let (s, ready, _) = call("GET", &format!("{}/readyz", server.url), ADMIN, None).await;
    assert_eq!(s, 503);
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["store"]["ok"], true);
    assert!(
        ready["checks"]["backend"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{ready}"
    );
    let (_, metrics, _) = call("GET", &format!("{}/metrics", server.url), ADMIN, None).await;
    let _ = metrics;
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("proxy_runner_backend_up 0"), "{text}");
}

fn cli(args: &[&str], url: &str, admin: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy-runner"));
    cmd.args(args)
        .env("ORCHESTRATOR_URL", url)
        .env_remove("PROXY_RUNNER_ADMIN_TOKEN");
    if let Some(a) = admin {
        cmd.env("PROXY_RUNNER_ADMIN_TOKEN", a);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn the_client_commands_talk_to_a_running_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir.path().join("jobs.db"), &dir.path().join("log"));

    let out = cli(
        &["token", "create", "--runner", "proxy-9"],
        &server.url,
        Some(ADMIN),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.trim();
    assert!(
        token.starts_with("prt_") && !token.contains('\n'),
        "stdout is the token alone: {stdout:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("issued for runner proxy-9") && !stderr.contains(token),
        "the id, not the token, on stderr: {stderr:?}"
    );

    let body = r#"{"jobId":"lint","runId":"5","repository":"o/r","runnerName":"proxy-9","labels":"self-hosted",
        "environment":{"HOME":"/home/runner","GITHUB_TOKEN":"planted-token-value"}}"#;
    let (s, job, _) = call(
        "POST",
        &format!("{}/api/jobs/delegate", server.url),
        token,
        Some(body.into()),
    )
    .await;
    assert_eq!(s, 201);
    let id = job["id"].as_str().unwrap();

    let out = cli(&["jobs", "list"], &server.url, Some(ADMIN));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(
        table.contains(id) && table.contains("running") && table.contains("o/r"),
        "{table}"
    );

    let out = cli(
        &["jobs", "list", "--status", "completed", "--json"],
        &server.url,
        Some(ADMIN),
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]));

    let out = cli(&["jobs", "show", id, "--json"], &server.url, Some(ADMIN));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["jobId"], "lint");
    // What was dropped as a credential is counted on the job, never shown.
    assert_eq!(shown["droppedSecrets"], 1);
    let out = cli(&["jobs", "show", id], &server.url, Some(ADMIN));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["droppedSecrets", "1"]),
        "{text}"
    );
    assert!(!text.contains("planted-token-value"), "{text}");

    // Errors are clear and exit non-zero.
    let out = cli(
        &["jobs", "list", "--status", "bogus"],
        &server.url,
        Some(ADMIN),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["jobs", "list"], &server.url, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROXY_RUNNER_ADMIN_TOKEN"));
    let out = cli(&["jobs", "list"], "http://127.0.0.1:9", Some(ADMIN));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the orchestrator"));
    let out = cli(&["token", "revoke", "nope"], &server.url, Some(ADMIN));
    assert!(!out.status.success());
}

fn cli_with_stdin(args: &[&str], url: &str, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(args)
        .env("ORCHESTRATOR_URL", url)
        .env("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `token create --json`: (id, token).
fn issue(url: &str, runner: &str) -> (String, String) {
    let out = cli(
        &["token", "create", "--runner", runner, "--json"],
        url,
        Some(ADMIN),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(issued["runner"], runner);
    (
        issued["id"].as_str().unwrap().to_string(),
        issued["token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn tokens_issued_from_the_cli_are_listed_and_revoked_by_id_or_by_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let server = start(&dir.path().join("jobs.db"), &log);
    let url = server.url.as_str();
    let (id_a, token_a) = issue(url, "proxy-a");
    let (id_b, token_b) = issue(url, "proxy-b");
    let (id_c, token_c) = issue(url, "proxy-c");

    // The table: every token, no value.
    let out = cli(&["token", "list"], url, Some(ADMIN));
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("RUNNER") && header.contains("REVOKED"));
    for (id, runner) in [(&id_a, "proxy-a"), (&id_b, "proxy-b"), (&id_c, "proxy-c")] {
        let row = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .expect(id);
        assert!(
            row.contains(runner) && row.trim_end().ends_with('-'),
            "{row}"
        );
    }
    for token in [&token_a, &token_b, &token_c] {
        assert!(!table.contains(token.as_str()), "{table}");
    }

    // Revoked by id, by value on stdin, by value as an argument.
    let out = cli(&["token", "revoke", &id_a], url, Some(ADMIN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("revoked {id_a}")
    );
    let out = cli_with_stdin(
        &["token", "revoke", "--stdin"],
        url,
        &format!("{token_b}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("revoked {id_b}")
    );
    let out = cli(&["token", "revoke", &token_c], url, Some(ADMIN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("revoked {id_c}")
    );

    // Revoked tokens no longer authenticate, and are listed as revoked.
    for token in [&token_a, &token_b, &token_c] {
        let (status, _, _) = call("GET", &format!("{url}/api/jobs/x"), token, None).await;
        assert_eq!(status, 401);
    }
    let out = cli(&["token", "list", "--json"], url, Some(ADMIN));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|t| t["revokedAt"].is_string()),
        "{listed:?}"
    );
    let out = cli(
        &["token", "list", "--runner", "proxy-b", "--json"],
        url,
        Some(ADMIN),
    );
    let of_b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(of_b.as_array().unwrap().len(), 1);
    assert_eq!(of_b[0]["id"], id_b.as_str());

    // Again, or nothing on stdin: a clear failure that names no value.
    let out = cli_with_stdin(&["token", "revoke", "--stdin"], url, &token_b);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no active token with this value"),
        "{stderr}"
    );
    assert!(!stderr.contains(token_b.as_str()), "{stderr}");
    let out = cli_with_stdin(&["token", "revoke", "--stdin"], url, "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token on standard input"));
    let out = cli(&["token", "revoke"], url, Some(ADMIN));
    assert!(
        !out.status.success(),
        "an id, a value or --stdin is required"
    );

    // The server logged and audited no token value (it traces at TRACE).
    drop(server);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("token"), "the log was captured");
    for token in [&token_a, &token_b, &token_c] {
        assert!(
            !logged.contains(token.as_str()),
            "a token value is in the log"
        );
    }
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\n[github]\ntoken = \"ghp_file-SECRET-77\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("PROXY_RUNNER_WEBHOOK_SECRET", "whsec-env-SECRET-78")
        .env("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(
        text.contains("token = \"***\"") && text.contains("webhook_secret = \"***\""),
        "{text}"
    );
    for s in ["ghp_file-SECRET-77", "whsec-env-SECRET-78", ADMIN] {
        assert!(!text.contains(s), "{s} leaked");
    }
    assert!(text.contains("# autoscaling path: on"), "{text}");
    assert!(text.contains("# proxy path: delegation API only"), "{text}");

    // A proxy-only setup: no GitHub credentials, a [proxy] section.
    std::fs::write(
        &file,
        "[proxy]\nimages = [\"node:22\", \"ghcr.io/acme/*\"]\nwork_root = \"/srv/runner/_work\"\n\n[[runners.label_sets]]\nlabels = [\"self-hosted\", \"proxy\"]\npath = \"proxy\"\nprofile = \"strict\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# autoscaling path: off (no GitHub credentials"),
        "{text}"
    );
    assert!(text.contains("# proxy path: on"), "{text}");
    assert!(text.contains("path = \"proxy\""), "{text}");
    // A proxy label set without a [proxy] section is refused, naming it.
    std::fs::write(
        &file,
        "[[runners.label_sets]]\nlabels = [\"x\"]\npath = \"proxy\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[proxy]"));
    std::fs::write(&file, "lisen = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
}

#[tokio::test]
async fn polling_finds_queued_jobs_when_webhooks_cannot_reach_us() {
    let emulator = proxy_runner_emulator::spawn(
        proxy_runner_emulator::EmulatorConfig {
            pats: vec!["ghp_poll".into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/_emulator/jobs", emulator.url()))
        .json(&serde_json::json!({"repository": "octo/polled", "labels": ["self-hosted"], "steps": ["true"], "workflow": "CI", "name": "build"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[github.poll]\nrepositories = [\"octo/polled\"]\ninterval_secs = 1\n",
    )
    .unwrap();
    let server = start_with(
        &dir.path().join("jobs.db"),
        &dir.path().join("log"),
        &["--backend", "dry-run", "--config", cfg.to_str().unwrap()],
        &[
            ("PROXY_RUNNER_GITHUB_API_URL", &emulator.url()),
            ("PROXY_RUNNER_GITHUB_TOKEN", "ghp_poll"),
        ],
    );
    let mut found = Value::Null;
    for _ in 0..100 {
        let (_, list, _) = call("GET", &format!("{}/api/jobs", server.url), ADMIN, None).await;
        if let Some(j) = list["jobs"].as_array().and_then(|a| a.first()) {
            found = j.clone();
            if j["status"] == "provisioning" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found["source"], "poll", "{found}");
    assert_eq!(found["githubJobId"], created["id"]);
    assert_eq!(found["repository"], "octo/polled");
    assert_eq!(
        found["status"], "provisioning",
        "the dry-run engine was asked for a runner: {found}"
    );
    drop(server);
    emulator.shutdown().await;
}

/// SIGTERM stops intake at once, lets the request under way finish (its
/// write acknowledged and kept), exits 0, and the next start has it.
#[tokio::test]
async fn sigterm_stops_intake_finishes_the_request_under_way_and_exits_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let log = dir.path().join("log");
    let mut server = start(&db, &log);
    let (s, body, _) = call(
        "POST",
        &format!("{}/api/tokens", server.url),
        ADMIN,
        Some(r#"{"runner":"p1"}"#.into()),
    )
    .await;
    assert_eq!(s, 201);
    let token = body["token"].as_str().unwrap().to_string();
    let delegation = r#"{"jobId":"build","runId":"78","repository":"o/r","workflow":"CI","runnerName":"p1","labels":"self-hosted","environment":{}}"#;
    let (first, rest) = delegation.split_at(40);

    // A delegation whose body is still on its way when SIGTERM arrives.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut under_way = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/jobs/delegate HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        delegation.len()
    );
    under_way.write_all(head.as_bytes()).await.unwrap();
    // Its handler is running once the delegation is counted.
    let metrics_url = format!("{}/metrics", server.url);
    proxy_runner_test_support::eventually(
        "the delegation under way reached its handler",
        Duration::from_secs(20),
        || {
            let url = metrics_url.clone();
            async move {
                let (_, _, text) = call("GET", &url, ADMIN, None).await;
                text.lines()
                    .any(|l| l.starts_with("proxy_runner_delegations_received_total 1"))
            }
        },
    )
    .await;

    server.sigterm();
    // Intake stops: new connections are refused.
    proxy_runner_test_support::eventually(
        "new connections are refused after SIGTERM",
        Duration::from_secs(20),
        || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_err() }
        },
    )
    .await;

    // The request under way still completes and is acknowledged.
    under_way.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    under_way.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the delegation under way is served: {answer}"
    );
    let status = server.wait();
    assert!(status.success(), "a SIGTERM stop exits 0: {status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("orchestrator stopped"), "{logged}");

    // The next start has the acknowledged job.
    let server = start(&db, &log);
    let (s, body, _) = call(
        "GET",
        &format!("{}/api/jobs?repository=o/r", server.url),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["runId"], 78);
}
