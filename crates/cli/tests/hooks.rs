//! proxy-runner's own job hooks (`hooks/*.sh`), run with `bash -e` as the
//! runner runs them, against the real orchestrator binary, through each of
//! their clients: the native one (`proxy-runner hook job-started` /
//! `job-completed`, found by `PROXY_RUNNER_BIN` or on `PATH`) and the
//! curl+jq fallback when no binary is found.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const ADMIN: &str = "hooks-admin-token";

/// Which client the hook scripts end up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// `PROXY_RUNNER_BIN` names the binary; `PATH` has no curl and no jq,
    /// so only the native client can succeed.
    NativeByVariable,
    /// `proxy-runner` is the only program on `PATH`.
    NativeOnPath,
    /// No binary anywhere: the scripts' curl+jq path.
    Fallback,
}

const CLIENTS: [Client; 3] = [
    Client::NativeByVariable,
    Client::NativeOnPath,
    Client::Fallback,
];

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

fn curl(args: &[&str]) -> Value {
    let out = Command::new("curl").arg("-s").args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
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

fn admin_get(server: &Server, path: &str) -> Value {
    curl(&[
        &format!("{}{path}", server.url),
        "-H",
        &format!("Authorization: Bearer {ADMIN}"),
    ])
}

fn hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../hooks")
        .join(name)
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_proxy-runner")
}

/// Where a program is on the test's own `PATH`.
fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is needed by the hooks"))
}

/// The test's `PATH` without any folder that holds a `proxy-runner`.
fn path_without_binary() -> String {
    let dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .filter(|dir| !dir.join("proxy-runner").exists())
        .collect();
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

/// Runs a hook the way the runner does: `bash -e <path>`, in the runner's
/// environment at hook time (what `proxy-runner runner` puts there), with
/// `client` deciding what the script finds.
fn run(client: Client, name: &str, env: &[(&str, &str)]) -> Output {
    spawn(client, name, env).wait()
}

struct Spawned {
    child: std::process::Child,
    // Folders the child's PATH names; removed after it ended.
    _dirs: Vec<tempfile::TempDir>,
}

impl Spawned {
    fn wait(self) -> Output {
        self.child.wait_with_output().unwrap()
    }
}

fn spawn(client: Client, name: &str, env: &[(&str, &str)]) -> Spawned {
    let mut cmd = Command::new(which("bash"));
    cmd.arg("-e")
        .arg(hook(name))
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut dirs = Vec::new();
    match client {
        Client::NativeByVariable => {
            let empty = tempfile::tempdir().unwrap();
            cmd.env("PATH", empty.path())
                .env("PROXY_RUNNER_BIN", binary());
            dirs.push(empty);
        }
        Client::NativeOnPath => {
            let bin = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(binary(), bin.path().join("proxy-runner")).unwrap();
            cmd.env("PATH", bin.path());
            dirs.push(bin);
        }
        Client::Fallback => {
            for tool in ["curl", "jq"] {
                which(tool);
            }
            cmd.env("PATH", path_without_binary());
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Spawned {
        child: cmd.spawn().unwrap(),
        _dirs: dirs,
    }
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn all_output(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// A loopback port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn every_client_delegates_and_exits_zero_then_reports_completion() {
    for client in CLIENTS {
        let server = start();
        let tok = token(&server, "proxy-1");
        let env = runner_env(&server.url, &tok);

        let out = run(client, "job-started.sh", &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{client:?}: {}",
            all_output(&out)
        );
        let printed = stdout(&out);
        assert!(
            printed.starts_with("proxy-runner: job delegated (orchestrator job ")
                && !printed.contains("job ?)"),
            "{client:?}: {printed}"
        );

        let jobs = admin_get(&server, "/api/jobs");
        let job = &jobs["jobs"][0];
        assert!(printed.contains(job["id"].as_str().unwrap()), "{printed}");
        assert_eq!(job["jobId"], "build");
        assert_eq!(job["runId"], 4242);
        assert_eq!(job["runAttempt"], 2);
        assert_eq!(
            job["workflow"], "CI \"quoted\" $(not run) `nor this`",
            "{client:?}: values are JSON-encoded, not pasted"
        );
        assert_eq!(job["labels"], serde_json::json!(["self-hosted", "linux"]));
        let stored_env = job["environment"].as_object().unwrap();
        assert!(stored_env.contains_key("GITHUB_REPOSITORY"));
        assert!(
            !stored_env.contains_key("UNRELATED"),
            "{client:?}: only GITHUB_*/RUNNER_* are sent"
        );
        let text = jobs.to_string();
        assert!(!text.contains("hook-SECRET") && !text.contains(&tok));

        // Running the started hook again (a retried step) finds the same job.
        assert_eq!(run(client, "job-started.sh", &env).status.code(), Some(0));
        assert_eq!(
            admin_get(&server, "/api/jobs")["jobs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let out = run(client, "job-completed.sh", &env);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(stdout(&out), "proxy-runner: completion reported\n");
        let done = admin_get(
            &server,
            &format!("/api/jobs/{}", job["id"].as_str().unwrap()),
        );
        assert_eq!(done["status"], "completed", "{client:?}");
    }
}

/// The job as stored, without what differs from one server to another
/// (ids and instants).
fn comparable(mut job: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|k, _| k != "id" && !k.ends_with("At"));
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut job);
    job
}

#[test]
fn both_clients_store_the_same_job_for_the_same_environment() {
    let ghp = format!("ghp_{}", "p".repeat(36));
    let mut stored = Vec::new();
    for client in [Client::Fallback, Client::NativeByVariable] {
        let server = start();
        let tok = token(&server, "proxy-1");
        let mut env = runner_env(&server.url, &tok);
        env.extend([
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_REF", "refs/heads/main"),
            ("RUNNER_OS", "Linux"),
            ("RUNNER_NOTE", "two\nlines, = signs = and ünïcödé"),
            ("RUNNER_EMPTY", ""),
            // Credentials by name and by value: never stored.
            ("RUNNER_AUTH_COOKIE", "plant-name-2"),
            ("GITHUB_NOTE", ghp.as_str()),
            ("GITHUB_MIRROR", "https://ci:plant-url-pw@mirror.example/x"),
        ]);
        let out = run(client, "job-started.sh", &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{client:?}: {}",
            all_output(&out)
        );
        let jobs = admin_get(&server, "/api/jobs");
        let id = jobs["jobs"][0]["id"].as_str().unwrap().to_string();
        let job = admin_get(&server, &format!("/api/jobs/{id}"));
        let text = job.to_string();
        for planted in ["plant-name-2", "plant-url-pw", ghp.as_str(), "hook-SECRET"] {
            assert!(
                !text.contains(planted),
                "{client:?} stored {planted}: {text}"
            );
        }
        assert_eq!(
            job["environment"]["RUNNER_NOTE"],
            "two\nlines, = signs = and ünïcödé"
        );
        stored.push(comparable(job));
    }
    // The fallback sends what looks like a credential by value and the
    // server drops it (and counts it); the native client drops it before
    // sending. Everything else is the same.
    assert_eq!(
        stored[0]["droppedSecrets"], 3,
        "fallback: the server dropped them"
    );
    assert_eq!(stored[1]["droppedSecrets"], 0, "native: none were sent");
    let without_count = |mut v: Value| {
        v.as_object_mut().unwrap().remove("droppedSecrets");
        v
    };
    assert_eq!(
        without_count(stored[0].clone()),
        without_count(stored[1].clone()),
        "fallback, then native"
    );
}

#[test]
fn refusals_and_missing_settings_read_the_same_on_both_clients() {
    let server = start();
    let tok = token(&server, "proxy-1");
    let other = token(&server, "proxy-2");
    let without = |name: &str| {
        let mut env = runner_env(&server.url, &tok);
        env.retain(|(k, _)| *k != name);
        env
    };
    let mut no_run_id = runner_env(&server.url, &tok);
    no_run_id.retain(|(k, _)| *k != "GITHUB_RUN_ID");
    /// (what, script, environment, exit code, the start of the one line printed)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown token",
            "job-started.sh",
            runner_env(&server.url, "prt_wrong"),
            1,
            "::error::proxy-runner: delegation refused (HTTP 401): unknown token",
        ),
        (
            "another runner's token",
            "job-started.sh",
            runner_env(&server.url, &other),
            1,
            "::error::proxy-runner: delegation refused (HTTP 403): ",
        ),
        (
            "a body the orchestrator refuses",
            "job-started.sh",
            no_run_id,
            1,
            "::error::proxy-runner: delegation refused (HTTP 422): ",
        ),
        (
            "no token",
            "job-started.sh",
            without("PROXY_RUNNER_TOKEN"),
            1,
            "::error::proxy-runner: no orchestrator token (PROXY_RUNNER_TOKEN) in the runner's environment",
        ),
        (
            "no job to complete",
            "job-completed.sh",
            runner_env(&server.url, &tok),
            0,
            "::warning::proxy-runner: completion not reported (404)",
        ),
        (
            "completion without a token",
            "job-completed.sh",
            without("PROXY_RUNNER_TOKEN"),
            0,
            "::warning::proxy-runner: ORCHESTRATOR_URL, PROXY_RUNNER_TOKEN or GITHUB_JOB missing; completion not reported",
        ),
        (
            "completion without a URL",
            "job-completed.sh",
            without("ORCHESTRATOR_URL"),
            0,
            "::warning::proxy-runner: ORCHESTRATOR_URL, PROXY_RUNNER_TOKEN or GITHUB_JOB missing; completion not reported",
        ),
        (
            "an odd job key",
            "job-completed.sh",
            {
                let mut env = runner_env(&server.url, &tok);
                env.push(("GITHUB_JOB", "../tokens"));
                env
            },
            0,
            "::warning::proxy-runner: unexpected GITHUB_JOB; completion not reported",
        ),
    ];
    for (what, script, env, code, expected) in cases {
        let mut printed = Vec::new();
        for client in [Client::Fallback, Client::NativeByVariable] {
            let out = run(client, script, &env);
            let text = stdout(&out);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{what}, {client:?}: {}",
                all_output(&out)
            );
            assert!(text.starts_with(expected), "{what}, {client:?}: {text}");
            assert_eq!(text.lines().count(), 1, "{what}, {client:?}: {text}");
            assert!(!all_output(&out).contains(&tok), "{what}, {client:?}");
            printed.push(text);
        }
        assert_eq!(printed[0], printed[1], "{what}: fallback, then native");
    }

    // No URL at all: the job fails with the reason on both.
    for client in [Client::Fallback, Client::NativeByVariable] {
        let out = run(client, "job-started.sh", &without("ORCHESTRATOR_URL"));
        assert_eq!(out.status.code(), Some(1), "{client:?}");
        assert!(
            all_output(&out).contains("ORCHESTRATOR_URL is not set"),
            "{client:?}: {}",
            all_output(&out)
        );
    }
}

#[test]
fn an_unreachable_orchestrator_fails_the_started_hook_after_retries_on_both_clients() {
    let dir = tempfile::tempdir().unwrap();
    let down = closed_port_url();
    let with_password = down.replace("http://", "http://ci:pw-SECRET-9@");
    let tok = "prt_SECRET-unreachable-token";
    for client in [Client::Fallback, Client::NativeByVariable] {
        let report = dir.path().join(format!("{client:?}-report"));
        let report_path = report.to_str().unwrap();
        let mut env = runner_env(&with_password, tok);
        env.push(("PROXY_RUNNER_HOOK_REPORT", report_path));
        let out = run(client, "job-started.sh", &env);
        let printed = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{client:?}: {}",
            all_output(&out)
        );
        // The URL is shown without its password; the token nowhere.
        assert!(
            printed.starts_with(&format!(
                "::error::proxy-runner: cannot reach the orchestrator at {down}: "
            )),
            "{client:?}: {printed}"
        );
        assert!(!all_output(&out).contains("pw-SECRET-9"), "{printed}");
        assert!(!all_output(&out).contains(tok), "{printed}");
        // The failed call is noted for the container hook to report.
        let noted = std::fs::read_to_string(&report).unwrap();
        assert!(
            noted.contains("job_started unreached"),
            "{client:?}: {noted}"
        );
        if client != Client::Fallback {
            // Every try is noted: the scripts' attempt budget (curl --retry 3).
            assert!(
                noted.contains("job_started connection_failure 4"),
                "{noted}"
            );
        }

        let out = run(client, "job-completed.sh", &env);
        assert_eq!(out.status.code(), Some(0), "{client:?}");
        assert!(
            stdout(&out)
                .starts_with("::warning::proxy-runner: completion not reported (unreachable ("),
            "{client:?}: {}",
            stdout(&out)
        );
        assert!(!all_output(&out).contains(tok) && !all_output(&out).contains("pw-SECRET-9"));
        let noted = std::fs::read_to_string(&report).unwrap();
        assert!(
            noted.contains("job_completed unreached"),
            "{client:?}: {noted}"
        );
    }
}

#[test]
fn the_native_client_reports_noted_failures_with_its_next_call() {
    let server = start();
    let tok = token(&server, "proxy-1");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    std::fs::write(
        &report,
        "prepare_job unreached\nprepare_job connection_failure 3\n",
    )
    .unwrap();
    let mut env = runner_env(&server.url, &tok);
    env.push(("PROXY_RUNNER_HOOK_REPORT", report.to_str().unwrap()));
    let out = run(Client::NativeByVariable, "job-started.sh", &env);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "", "delivered");
    let text = Command::new("curl")
        .args(["-s", &format!("{}/metrics", server.url)])
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8_lossy(&text);
    for line in [
        "proxy_runner_hook_executions_total{hook=\"prepare_job\",outcome=\"unreached\"} 1",
        "proxy_runner_hook_connection_failures_total{hook=\"prepare_job\"} 3",
        "proxy_runner_hook_executions_total{hook=\"job_started\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

/// What one HTTP request carried: its head and body.
struct Captured {
    head: String,
    body: String,
}

/// Accepts one request on `listener`, runs `while_held` before answering
/// (the client is blocked on its answer then), and answers `201` with a job.
fn capture_one(listener: &std::net::TcpListener, while_held: impl FnOnce()) -> Captured {
    let (stream, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    while_held();
    let answer = r#"{"id":"captured-job"}"#;
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
    .unwrap();
    Captured {
        head,
        body: String::from_utf8(body).unwrap(),
    }
}

#[test]
fn planted_credentials_never_leave_the_native_client() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tok = "prt_SECRET-planted-orchestrator-token";
    let ghp = format!("ghp_{}", "q".repeat(36));
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLXBsYW50ZWQ";
    let mut env = runner_env(&url, tok);
    let planted_by_name = [
        ("RUNNER_TOKEN", "plant-by-name-1"),
        ("GITHUB_PASSWORD", "plant-by-name-2"),
        ("RUNNER_AUTH_COOKIE", "plant-by-name-3"),
        ("GITHUB_JITCONFIG", "plant-by-name-4"),
        ("GITHUB_DEPLOY_KEY", "plant-by-name-5"),
    ];
    let by_value = [
        ("GITHUB_NOTE", ghp.as_str()),
        ("RUNNER_CLAIMS", jwt),
        ("GITHUB_MIRROR", "https://ci:plant-by-url@mirror.example/x"),
        (
            "GITHUB_ECHO",
            "the token prt_SECRET-planted-orchestrator-token inside",
        ),
    ];
    env.extend(planted_by_name);
    env.extend(by_value);
    let spawned = spawn(Client::NativeByVariable, "job-started.sh", &env);
    let pid = spawned.child.id();
    let captured = capture_one(&listener, || {
        // While the hook waits for its answer: its command line (the script
        // exec'd the binary, same process) holds no token.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.ends_with("hook job-started "), "{cmdline}");
        assert!(!cmdline.contains(tok), "{cmdline}");
    });
    let out = spawned.wait();
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    assert_eq!(
        stdout(&out),
        "proxy-runner: job delegated (orchestrator job captured-job)\n"
    );
    assert!(
        captured
            .head
            .starts_with("POST /api/jobs/delegate HTTP/1.1\r\n")
    );
    assert!(
        captured.head.to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            tok.to_ascii_lowercase()
        )),
        "{}",
        captured.head
    );
    let body: Value = serde_json::from_str(&captured.body).unwrap();
    assert_eq!(body["jobId"], "build");
    assert_eq!(body["environment"]["GITHUB_REPOSITORY"], "octo/app");
    for (name, value) in planted_by_name.iter().chain(by_value.iter()) {
        assert!(
            !captured.body.contains(value) && body["environment"].get(name).is_none(),
            "{name} was sent: {}",
            captured.body
        );
    }
    for secret in [tok, "hook-SECRET-1", "hook-SECRET-2", "plant-by-url"] {
        assert!(!captured.body.contains(secret), "{secret}");
        assert!(!all_output(&out).contains(secret), "{secret}");
    }
}
