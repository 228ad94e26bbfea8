//! `proxy-runner hook container`, the real binary, against a small
//! orchestrator that speaks the hook contract (prepare-job, streamed
//! run-script-step, cleanup-job), and behind the simulated runner.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

const TOKEN: &str = "planted-orchestrator-token-7f3a9c";
const PASSWORD: &str = "planted-registry-password-51d2e8";
const RUNNER: &str = "proxy-1";
const JOB_ID: &str = "0193b2a4-5c6d-7e8f-9a0b-1c2d3e4f5a6b";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../fixtures/container-hooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ------------------------------------------------------------ the orchestrator

/// One part of a step's answer stream.
#[derive(Clone)]
enum Part {
    Line(String),
    /// Hold the stream until the test releases it.
    Wait,
    /// Break the connection.
    Abort,
}

fn stdout(bytes: &[u8]) -> Part {
    Part::Line(format!("{}\n", json!({"stdout": b64(bytes)})))
}

fn stderr(bytes: &[u8]) -> Part {
    Part::Line(format!("{}\n", json!({"stderr": b64(bytes)})))
}

fn exit(code: Value) -> Part {
    Part::Line(format!("{}\n", json!({"exitCode": code})))
}

/// A request as the orchestrator saw it.
#[derive(Debug, Clone)]
struct Seen {
    call: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

/// The orchestrator side of the contract, scripted by the test.
struct Fake {
    seen: Mutex<Vec<Seen>>,
    /// Answers given before the contract's own ones (status, body).
    refusals: Mutex<VecDeque<(u16, Value)>>,
    prepare: Mutex<Value>,
    step: Mutex<Vec<Part>>,
    release: Notify,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            seen: Mutex::new(Vec::new()),
            refusals: Mutex::new(VecDeque::new()),
            prepare: Mutex::new(json!({
                "jobId": JOB_ID,
                "response": {
                    "state": {"jobId": JOB_ID, "container": "c0ffee", "network": "proxy-runner-octo-app", "services": {"redis": "beef"}},
                    "context": {
                        "container": {"id": "c0ffee", "network": "proxy-runner-octo-app", "ports": {}},
                        "services": [{"id": "beef", "network": "proxy-runner-octo-app", "ports": {"6379": "6379"}}],
                    },
                    "isAlpine": false,
                },
                "notices": ["pulled node:22", "two\nlines"],
            })),
            step: Mutex::new(vec![stdout(b"hello\n"), exit(json!(0))]),
            release: Notify::new(),
        })
    }

    fn refuse(&self, status: u16, times: usize) {
        let mut refusals = self.refusals.lock().unwrap();
        for _ in 0..times {
            refusals.push_back((
                status,
                json!({"error": {"code": "scripted", "message": format!("scripted {status}")}}),
            ));
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn hook_call(
    State(fake): State<Arc<Fake>>,
    UrlPath(call): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.seen.lock().unwrap().push(Seen {
        call: call.clone(),
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        body: body.clone(),
    });
    let error = |status: StatusCode, code: &str, message: &str| {
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    };
    if header(header::AUTHORIZATION).as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token");
    }
    if let Some((status, answer)) = fake.refusals.lock().unwrap().pop_front() {
        return (StatusCode::from_u16(status).unwrap(), axum::Json(answer)).into_response();
    }
    match call.as_str() {
        "prepare-job" => axum::Json(fake.prepare.lock().unwrap().clone()).into_response(),
        "cleanup-job" => axum::Json(json!({"jobId": JOB_ID, "removed": 2})).into_response(),
        "run-script-step" | "run-container-step" => {
            let parts: VecDeque<Part> = fake.step.lock().unwrap().clone().into();
            let stream =
                futures::stream::unfold((parts, fake.clone()), |(mut parts, fake)| async move {
                    loop {
                        match parts.pop_front()? {
                            Part::Wait => fake.release.notified().await,
                            Part::Line(line) => {
                                return Some((
                                    Ok::<Bytes, std::io::Error>(Bytes::from(line)),
                                    (parts, fake),
                                ));
                            }
                            Part::Abort => {
                                parts.clear();
                                return Some((Err(std::io::Error::other("cut")), (parts, fake)));
                            }
                        }
                    }
                });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such call"),
    }
}

/// Serves the fake orchestrator on a free loopback port.
async fn orchestrator(fake: Arc<Fake>) -> String {
    let app = Router::new()
        .route("/api/hooks/{call}", post(hook_call))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// A URL where nothing listens.
async fn nobody_listening() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ------------------------------------------------------------ the hook

struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ran {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Exactly one line of output, an `::error::`, and exit code 1.
    fn assert_one_error(&self, about: &str) -> String {
        assert_eq!(self.code, Some(1), "{}{}", self.out(), self.err());
        let out = self.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {out:?}");
        assert!(lines[0].starts_with("::error::"), "{out:?}");
        assert!(lines[0].contains(about), "{about:?} in {out:?}");
        assert_eq!(self.err(), "", "nothing on stderr");
        lines[0].to_string()
    }
}

fn hook_command(url: &str, extra: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxy-runner"));
    cmd.args(["hook", "container"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("ORCHESTRATOR_URL", url)
        .env("PROXY_RUNNER_TOKEN", TOKEN)
        .env("RUNNER_NAME", RUNNER)
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_command(mut cmd: tokio::process::Command, input: Vec<u8>) -> Ran {
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        // The hook may stop reading early (oversized input): that is fine.
        let _ = stdin.write_all(&input).await;
    });
    let output = child.wait_with_output().await.unwrap();
    Ran {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

async fn run_hook(url: &str, input: &Value) -> Ran {
    run_command(hook_command(url, &[]), format!("{input}\n").into_bytes()).await
}

/// Runs the hook on a step whose stream waits (`Part::Wait`) until `seen`
/// came out of the hook's stdout: the stream had surely started.
async fn run_hook_releasing_after(fake: &Arc<Fake>, url: &str, input: &Value, seen: &[u8]) -> Ran {
    let mut child = hook_command(url, &[]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{input}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let mut out = child.stdout.take().unwrap();
    let mut stdout = Vec::new();
    let mut buf = [0u8; 4096];
    while !stdout.ends_with(seen) {
        let n = out.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the hook ended first: {:?}",
            String::from_utf8_lossy(&stdout)
        );
        stdout.extend_from_slice(&buf[..n]);
    }
    fake.release.notify_one();
    out.read_to_end(&mut stdout).await.unwrap();
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .await
        .unwrap();
    Ran {
        code: child.wait().await.unwrap().code(),
        stdout,
        stderr,
    }
}

/// The upstream prepare_job example with a response file of ours and a
/// planted registry password.
fn prepare_input(response_file: &Path) -> Value {
    let mut input = fixture("prepare-job.json");
    input["responseFile"] = json!(response_file.display().to_string());
    input["args"]["container"]["registry"]["password"] = json!(PASSWORD);
    input["args"]["services"][0]["registry"]["password"] = json!(PASSWORD);
    input
}

fn step_input() -> Value {
    fixture("run-script-step.json")
}

fn empty_response_file(dir: &Path) -> PathBuf {
    let path = dir.join("_runner_hook_responses").join("b0a5.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "").unwrap();
    path
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn prepare_writes_the_response_file_exactly_and_prints_the_notices() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let response_file = empty_response_file(dir.path());
    let input = prepare_input(&response_file);
    let ran = run_hook(&url, &input).await;
    assert_eq!(ran.code, Some(0), "{}{}", ran.out(), ran.err());
    assert_eq!(ran.out(), "pulled node:22\ntwo lines\n");
    assert_eq!(ran.err(), "");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].call, "prepare-job");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        seen[0].body,
        json!({"runnerName": RUNNER, "args": input["args"], "state": input["state"]}),
        "args and state verbatim"
    );

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&response_file).unwrap()).unwrap();
    let answer = fake.prepare.lock().unwrap()["response"].clone();
    assert_eq!(written, answer);

    // Anything else in the answer's response stays out of the file.
    fake.prepare.lock().unwrap()["response"]["extra"] = json!("not for the runner");
    std::fs::write(&response_file, "").unwrap();
    let ran = run_hook(&url, &input).await;
    assert_eq!(ran.code, Some(0));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&response_file).unwrap()).unwrap();
    assert_eq!(written, answer);

    // A job container needs isAlpine.
    fake.prepare.lock().unwrap()["response"] = json!({"state": {"jobId": JOB_ID}});
    run_hook(&url, &input).await.assert_one_error("no isAlpine");
}

#[tokio::test]
async fn cleanup_sends_the_state_back() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let state = json!({"jobId": JOB_ID, "container": "c0ffee"});
    let ran = run_hook(
        &url,
        &json!({"command": "cleanup_job", "responseFile": "/nonexistent/r.json", "args": {}, "state": state}),
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.out());
    assert!(ran.out().contains("2 containers removed"), "{}", ran.out());
    let seen = fake.seen();
    assert_eq!(seen[0].call, "cleanup-job");
    assert_eq!(seen[0].body, json!({"runnerName": RUNNER, "state": state}));
}

#[tokio::test]
async fn step_exit_codes_propagate_and_stdout_and_stderr_stay_apart() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    for (sent, expected) in [(0, 0), (1, 1), (2, 2), (255, 255), (300, 255)] {
        *fake.step.lock().unwrap() = vec![
            stdout(b"out one\n"),
            stderr(b"err one\n"),
            stdout(&[0xff, 0x00, b'\n']),
            stderr(b"err two\n"),
            exit(json!(sent)),
        ];
        let ran = run_hook(&url, &step_input()).await;
        assert_eq!(ran.code, Some(expected), "exit code {sent}");
        assert_eq!(ran.stdout, b"out one\n\xff\x00\n");
        assert_eq!(ran.stderr, b"err one\nerr two\n");
    }
    let seen = fake.seen();
    let input = step_input();
    assert!(seen.iter().all(|s| s.call == "run-script-step"));
    assert_eq!(
        seen[0].body,
        json!({"runnerName": RUNNER, "state": input["state"], "args": input["args"]})
    );

    // run_container_step streams the same way.
    let mut container_step = fixture("run-container-step.json");
    container_step["args"]["registry"] =
        json!({"username": "u", "password": PASSWORD, "serverUrl": ""});
    *fake.step.lock().unwrap() = vec![stdout(b"built\n"), exit(json!(3))];
    let ran = run_hook(&url, &container_step).await;
    assert_eq!((ran.code, ran.out().as_str()), (Some(3), "built\n"));
    assert_eq!(fake.seen().last().unwrap().call, "run-container-step");
}

#[tokio::test]
async fn an_error_line_mid_stream_ends_the_step() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    *fake.step.lock().unwrap() = vec![
        stdout(b"partial line"),
        Part::Line(format!(
            "{}\n",
            json!({"error": {"code": "container_gone", "message": "the container 100% died"}})
        )),
        stdout(b"never shown\n"),
        exit(json!(0)),
    ];
    let ran = run_hook(&url, &step_input()).await;
    assert_eq!(ran.code, Some(1));
    // The error starts a line of its own after the step's partial output.
    assert_eq!(
        ran.out(),
        "partial line\n::error::proxy-runner: the orchestrator stopped the step: container_gone: the container 100%25 died\n"
    );
}

#[tokio::test]
async fn a_stream_without_an_exit_code_fails() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    for (parts, about) in [
        (vec![stdout(b"some output\n")], "ended before its exit code"),
        (
            vec![stdout(b"some output\n"), exit(json!(-1))],
            "exit code -1",
        ),
        (
            vec![stdout(b"some output\n"), exit(Value::Null)],
            "without an exit code",
        ),
        (
            vec![stdout(b"some output\n"), Part::Line("not json\n".into())],
            "not a JSON object",
        ),
    ] {
        *fake.step.lock().unwrap() = parts;
        let ran = run_hook(&url, &step_input()).await;
        assert_eq!(ran.code, Some(1), "{about}");
        let out = ran.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        assert_eq!(lines[0], "some output");
        assert!(lines[1].starts_with("::error::"), "{out:?}");
        assert!(lines[1].contains(about), "{about:?} in {out:?}");
    }
    // A connection that breaks after output arrived.
    *fake.step.lock().unwrap() = vec![stdout(b"some output\n"), Part::Wait, Part::Abort];
    let ran = run_hook_releasing_after(&fake, &url, &step_input(), b"some output\n").await;
    assert_eq!(ran.code, Some(1));
    let out = ran.out();
    assert!(out.starts_with("some output\n::error::"), "{out:?}");
    assert!(out.contains("broke before its exit code"), "{out:?}");
    assert_eq!(out.lines().count(), 2, "{out:?}");

    // Blank lines keep a quiet stream alive and are not output.
    *fake.step.lock().unwrap() = vec![Part::Line("\n\n".into()), stdout(b"x\n"), exit(json!(0))];
    let ran = run_hook(&url, &step_input()).await;
    assert_eq!((ran.code, ran.out().as_str()), (Some(0), "x\n"));
}

#[tokio::test]
async fn an_unreachable_orchestrator_is_tried_again_then_reported() {
    let url = nobody_listening().await;
    let line = run_hook(&url, &step_input())
        .await
        .assert_one_error("cannot reach the orchestrator at http://127.0.0.1:");
    assert!(line.contains("gave up after 5 tries"), "{line}");

    // Server errors are tried again for prepare and clean-up ...
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    fake.refuse(503, 10);
    let dir = tempfile::tempdir().unwrap();
    let input = prepare_input(&empty_response_file(dir.path()));
    let line = run_hook(&url, &input).await.assert_one_error("HTTP 503");
    assert!(line.contains("scripted 503"), "{line}");
    assert_eq!(fake.seen().len(), 5, "five tries");

    // ... and succeed when the orchestrator recovers.
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    fake.refuse(502, 2);
    let ran = run_hook(&url, &input).await;
    assert_eq!(ran.code, Some(0), "{}", ran.out());
    assert_eq!(fake.seen().len(), 3);

    // A step is tried again only before its stream started.
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    fake.refuse(500, 2);
    let ran = run_hook(&url, &step_input()).await;
    assert_eq!((ran.code, ran.out().as_str()), (Some(0), "hello\n"));
    assert_eq!(fake.seen().len(), 3);
    *fake.step.lock().unwrap() = vec![stdout(b"started\n"), Part::Wait, Part::Abort];
    let ran = run_hook_releasing_after(&fake, &url, &step_input(), b"started\n").await;
    assert_eq!(ran.code, Some(1));
    assert_eq!(fake.seen().len(), 4, "a broken stream is not run again");
}

#[tokio::test]
async fn client_errors_are_final() {
    for (status, hint) in [
        (401, "token"),
        (403, "another runner"),
        (404, "no such job"),
        (409, ""),
    ] {
        let fake = Fake::new();
        let url = orchestrator(fake.clone()).await;
        fake.refuse(status, 1);
        let line = run_hook(&url, &step_input())
            .await
            .assert_one_error(&format!("HTTP {status}"));
        assert!(line.contains(hint), "{line}");
        assert_eq!(fake.seen().len(), 1, "no second try after {status}");
    }
    // A wrong token is the orchestrator's 401.
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let ran = run_command(
        hook_command(&url, &[("PROXY_RUNNER_TOKEN", "wrong-token")]),
        format!("{}\n", step_input()).into_bytes(),
    )
    .await;
    ran.assert_one_error("HTTP 401: unauthorized: bad token");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn malformed_input_is_refused_before_any_call() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let run_raw = |input: Vec<u8>| run_command(hook_command(&url, &[]), input);
    for (input, about) in [
        (b"{not json\n".to_vec(), "not JSON"),
        (b"\n".to_vec(), "no hook input"),
        (Vec::new(), "no hook input"),
        (b"[1, 2]\n".to_vec(), "not a JSON object"),
        (b"{\"args\": {}}\n".to_vec(), "no command"),
        (b"{\"command\": 7}\n".to_vec(), "command is not a string"),
        (
            b"{\"command\": \"run_everything\"}\n".to_vec(),
            "unknown hook command \"run_everything\"",
        ),
        (
            b"{\"command\": \"run_script_step\", \"state\": {}}\n".to_vec(),
            "no args",
        ),
        (
            b"{\"command\": \"prepare_job\", \"args\": {}}\n".to_vec(),
            "no responseFile",
        ),
    ] {
        run_raw(input).await.assert_one_error(about);
    }
    // One line over the limit (the orchestrator's own, 4 MiB).
    let mut huge = b"{\"command\": \"prepare_job\", \"x\": \"".to_vec();
    huge.resize(17 * 1024 * 1024, b'a');
    run_raw(huge).await.assert_one_error("larger than 4 MiB");
    // A JSON error never quotes the input (it may hold a password).
    let leaky = format!("{{\"command\": \"prepare_job\", \"password\": \"{PASSWORD}\" oops}}\n");
    let line = run_raw(leaky.into_bytes())
        .await
        .assert_one_error("not JSON");
    assert!(!line.contains(PASSWORD));
    assert!(fake.seen().is_empty(), "no call was made");

    // The environment is checked too.
    for (missing, about) in [
        ("ORCHESTRATOR_URL", "ORCHESTRATOR_URL is not set"),
        ("PROXY_RUNNER_TOKEN", "no orchestrator token"),
        ("RUNNER_NAME", "RUNNER_NAME is not set"),
    ] {
        let mut cmd = hook_command(&url, &[]);
        cmd.env_remove(missing);
        run_command(cmd, format!("{}\n", step_input()).into_bytes())
            .await
            .assert_one_error(about);
    }
    // RUNNER_TOKEN stands in for PROXY_RUNNER_TOKEN.
    let mut cmd = hook_command(&url, &[("RUNNER_TOKEN", TOKEN)]);
    cmd.env_remove("PROXY_RUNNER_TOKEN");
    let ran = run_command(cmd, format!("{}\n", step_input()).into_bytes()).await;
    assert_eq!(ran.code, Some(0), "{}", ran.out());
}

#[tokio::test]
async fn planted_secrets_never_appear_in_the_output() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = prepare_input(&empty_response_file(dir.path()));
    let leak = format!("token {TOKEN} password {PASSWORD}");
    let mut outputs = Vec::new();

    // An orchestrator that echoes them in errors and notices.
    fake.refusals.lock().unwrap().push_back((
        403,
        json!({"error": {"code": "forbidden", "message": leak}}),
    ));
    outputs.push(run_hook(&url, &input).await);
    fake.refusals.lock().unwrap().push_back((500, json!(leak)));
    fake.refusals.lock().unwrap().push_back((418, json!(leak)));
    outputs.push(run_hook(&url, &input).await);
    fake.prepare.lock().unwrap()["notices"] = json!([leak]);
    outputs.push(run_hook(&url, &input).await);
    // A step's input holds no password; the token is known to every call.
    *fake.step.lock().unwrap() = vec![Part::Line(format!(
        "{}\n",
        json!({"error": {"code": "x", "message": format!("token {TOKEN}")}})
    ))];
    outputs.push(run_hook(&url, &step_input()).await);
    let mut container_step = fixture("run-container-step.json");
    container_step["args"]["registry"] =
        json!({"username": "u", "password": PASSWORD, "serverUrl": "ghcr.io"});
    *fake.step.lock().unwrap() = vec![Part::Line(format!(
        "{}\n",
        json!({"error": {"code": "x", "message": leak}})
    ))];
    outputs.push(run_hook(&url, &container_step).await);
    // An unreachable orchestrator whose URL carries credentials.
    let down = nobody_listening()
        .await
        .replace("http://", &format!("http://user:{PASSWORD}@"));
    outputs.push(run_hook(&down, &input).await);
    for ran in &outputs {
        for text in [ran.out(), ran.err()] {
            assert!(!text.contains(TOKEN), "{text}");
            assert!(!text.contains(PASSWORD), "{text}");
        }
    }
    assert!(
        outputs[2].out().contains("token *** password ***"),
        "{}",
        outputs[2].out()
    );
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Streams `chunks` chunks of 64 KiB through the hook; when all of them
/// reached the hook's stdout (the stream is still open), returns the
/// hook's peak memory.
async fn stream_through(fake: &Arc<Fake>, url: &str, chunks: usize) -> u64 {
    const CHUNK: usize = 64 * 1024;
    let byte = |i: usize| b'a' + (i % 26) as u8;
    let mut parts: Vec<Part> = (0..chunks).map(|i| stdout(&vec![byte(i); CHUNK])).collect();
    parts.push(Part::Wait);
    parts.push(exit(json!(0)));
    *fake.step.lock().unwrap() = parts;

    let mut child = hook_command(url, &[]).spawn().unwrap();
    let pid = child.id().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", step_input()).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    while total < chunks * CHUNK {
        let n = out.read(&mut buf).await.unwrap();
        assert!(n > 0, "the output stopped after {total} bytes");
        for (offset, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                byte((total + offset) / CHUNK),
                "byte {}",
                total + offset
            );
        }
        total += n;
    }
    // All output arrived while the orchestrator still holds the exit code:
    // nothing waited for the end of the step.
    let peak = peak_rss_kib(pid);
    fake.release.notify_one();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    peak
}

#[tokio::test]
async fn a_10_mb_step_streams_through_with_flat_memory() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let small = stream_through(&fake, &url, 1).await;
    let large = stream_through(&fake, &url, 160).await;
    // Holding the step (13 MB of base64, 10 MB decoded) would show.
    assert!(
        large < small + 6 * 1024,
        "peak memory grew from {small} KiB to {large} KiB for 10 MiB of output"
    );
}

#[tokio::test]
async fn the_wrapper_finds_the_binary() {
    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hooks/container-hook.sh");
    let cleanup = format!(
        "{}\n",
        json!({"command": "cleanup_job", "responseFile": null, "args": {}, "state": {"jobId": JOB_ID}})
    );
    let run_wrapper = |path: String, bin: Option<&str>| {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-e")
            .arg(&wrapper)
            .env_clear()
            .env("PATH", path)
            .env("ORCHESTRATOR_URL", &url)
            .env("PROXY_RUNNER_TOKEN", TOKEN)
            .env("RUNNER_NAME", RUNNER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(bin) = bin {
            cmd.env("PROXY_RUNNER_BIN", bin);
        }
        run_command(cmd, cleanup.clone().into_bytes())
    };
    let system_path = std::env::var("PATH").unwrap();
    let ran = run_wrapper(
        system_path.clone(),
        Some(env!("CARGO_BIN_EXE_proxy-runner")),
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}{}", ran.out(), ran.err());
    assert!(ran.out().contains("cleaned up"));

    // Without PROXY_RUNNER_BIN: proxy-runner on the PATH.
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_proxy-runner"),
        bin_dir.path().join("proxy-runner"),
    )
    .unwrap();
    let ran = run_wrapper(format!("{}:{system_path}", bin_dir.path().display()), None).await;
    assert_eq!(ran.code, Some(0), "{}{}", ran.out(), ran.err());
    assert_eq!(fake.seen().len(), 2);
}

/// The whole proxy path on this side: the simulated runner calls
/// `hooks/container-hook.sh`, which calls the orchestrator.
#[tokio::test]
async fn the_simulated_runner_runs_a_container_job_through_the_hook_client() {
    use proxy_runner_emulator::runner::{RunOptions, RunnerHost, ShellExecutor, SimRunner};

    let fake = Fake::new();
    let url = orchestrator(fake.clone()).await;
    *fake.step.lock().unwrap() = vec![
        stdout(b"in the container\n"),
        stderr(b"warned\n"),
        exit(json!(7)),
    ];
    const PAT: &str = "ghp_containerhooktestpat000000000000000001";
    let emulator = proxy_runner_emulator::spawn(
        proxy_runner_emulator::EmulatorConfig {
            pats: vec![PAT.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/_emulator/jobs", emulator.url()))
        .json(&json!({"repository": "octo/app", "labels": ["self-hosted"], "container": "node:22", "steps": ["make test"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jit: Value = http
        .post(format!("{}/repos/octo/app/actions/runners/generate-jitconfig", emulator.url()))
        .bearer_auth(PAT)
        .json(&json!({"name": RUNNER, "runner_group_id": 1, "labels": ["self-hosted"], "work_folder": "_work"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hooks/container-hook.sh");
    let env = [
        ("PATH", std::env::var("PATH").unwrap()),
        (
            "ACTIONS_RUNNER_CONTAINER_HOOKS",
            wrapper.display().to_string(),
        ),
        (
            "PROXY_RUNNER_BIN",
            env!("CARGO_BIN_EXE_proxy-runner").to_string(),
        ),
        ("ORCHESTRATOR_URL", url),
        ("PROXY_RUNNER_TOKEN", TOKEN.to_string()),
    ];
    let runner = SimRunner::from_jit_config(jit["encoded_jit_config"].as_str().unwrap())
        .unwrap()
        .with_host(RunnerHost {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            root: Some(root.path().to_path_buf()),
            ..RunnerHost::default()
        });
    let outcome = runner
        .run(
            &ShellExecutor::default(),
            &RunOptions {
                job_wait: Some(Duration::from_secs(10)),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    let job = outcome.job().unwrap();
    assert_eq!(job.job_id, created["id"].as_u64().unwrap());
    assert_eq!(job.conclusion, "failure");
    assert_eq!(job.steps[0].exit_code, 7);
    assert!(
        job.steps[0]
            .output
            .starts_with("in the container\nwarned\n"),
        "{:?}",
        job.steps[0].output
    );
    let sections: Vec<&str> = job.log.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        sections,
        ["Initialize containers", "Run make test", "Stop containers"]
    );
    assert_eq!(job.log[0].output, "pulled node:22\ntwo lines\n");

    let seen = fake.seen();
    let calls: Vec<&str> = seen.iter().map(|s| s.call.as_str()).collect();
    assert_eq!(calls, ["prepare-job", "run-script-step", "cleanup-job"]);
    assert!(seen.iter().all(|s| s.body["runnerName"] == RUNNER));
    let state = fake.prepare.lock().unwrap()["response"]["state"].clone();
    assert_eq!(seen[1].body["state"], state);
    assert_eq!(seen[2].body["state"], state);
    assert_eq!(seen[1].body["args"]["entryPoint"], "sh");
    assert_eq!(seen[0].body["args"]["container"]["image"], "node:22");
    emulator.shutdown().await;
}
