//! The real binary as a process: durability across SIGKILL, and planted
//! secrets that must appear nowhere (database files, logs, responses).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const ADMIN: &str = "admin-SECRET-planted-0001";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &Path, log: &Path) -> Server {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "dry-run",
            "--db",
        ])
        .arg(db)
        .env("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)
        .env("PROXY_RUNNER_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, url }
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

/// Runs one of the seed's hook scripts with bash as the runner would
/// (`bash -e`), in an environment like the runner's at hook time.
fn run_seed_hook(script: &str, url: &str, token: &str) -> std::process::Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/seed-hooks")
        .join(script);
    Command::new("bash")
        .arg("-e")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", "/tmp")
        .env("GITHUB_JOB", "build")
        .env("GITHUB_RUN_ID", "123456789")
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_REPOSITORY", "octo-org/octo-repo")
        .env("GITHUB_WORKFLOW", "CI")
        .env("GITHUB_ACTIONS", "true")
        .env("CI", "true")
        .env("RUNNER_NAME", "proxy-1")
        .env("RUNNER_LABELS", "self-hosted,linux,proxy")
        .env("ORCHESTRATOR_URL", url)
        .env("RUNNER_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_seed_hook_scripts_run_verbatim_against_the_api() {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} is needed to run the seed's hook scripts");
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

    let started = run_seed_hook("job-started.sh", &server.url, &token);
    let stdout = String::from_utf8_lossy(&started.stdout);
    // The seed ends with `exit 78`, which a real runner treats as a failed
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

    let completed = run_seed_hook("job-completed.sh", &server.url, &token);
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
