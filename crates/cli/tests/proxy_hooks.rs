//! The container hooks' API on the real binary and the real engine: what the
//! policy refuses creates nothing, bad input gets a 4xx naming it, secrets
//! stay out of every output, two runners' jobs are apart, a killed runner's
//! containers are reaped, and a step's output streams through the hook client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::proxy::{ADMIN, Rig, binary, containers_of, docker, images, inspect};
use serde_json::{Value, json};

/// One hook call straight to the API.
async fn hook(rig: &Rig, token: &str, path: &str, body: Value) -> (u16, Value, String) {
    let r = rig
        .http
        .post(format!("{}/api/hooks/{path}", rig.server.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

/// A prepare call that declares a body of `length` bytes and sends none;
/// returns the raw answer.
async fn declared_oversize(rig: &Rig, token: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(rig.server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/hooks/prepare-job HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Delegates a job for `runner` (as its job-started hook does).
async fn delegate(rig: &Rig, token: &str, runner: &str, job: &str) -> String {
    let r: Value = rig
        .http
        .post(format!("{}/api/jobs/delegate", rig.server.url))
        .bearer_auth(token)
        .json(&json!({
            "jobId": job, "runId": 7, "repository": rig.repository, "workflow": "CI",
            "runnerName": runner, "labels": "self-hosted,proxy",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not delegated: {r}"))
        .to_string()
}

/// `prepare_job` args as the runner sends them, with the runner's mounts.
fn prepare_args(rig: &Rig, image: &str, options: &str, services: Value) -> Value {
    let work = rig.root.path().join("_work");
    let externals = rig.root.path().join("externals");
    json!({
        "container": {
            "image": image,
            "createOptions": options,
            "environmentVariables": {"JOB_ENV": "from-the-job"},
            "workingDirectory": "/__w",
            "systemMountVolumes": [
                {"sourceVolumePath": "/var/run/docker.sock", "targetVolumePath": "/var/run/docker.sock", "readOnly": false},
                {"sourceVolumePath": work, "targetVolumePath": "/__w", "readOnly": false},
                {"sourceVolumePath": externals, "targetVolumePath": "/__e", "readOnly": true},
            ],
            "userMountVolumes": [],
            "portMappings": [],
        },
        "services": services,
    })
}

fn service(image: &str) -> Value {
    json!([{"contextName": "cache", "image": image, "environmentVariables": {}, "portMappings": [], "userMountVolumes": [], "systemMountVolumes": []}])
}

/// Runs the hook client as the runner would, for one step.
fn run_step(
    rig: &Rig,
    token: &str,
    runner: &str,
    state: &Value,
    script: &str,
) -> (i32, Vec<u8>, String) {
    let input = json!({
        "command": "run_script_step",
        "responseFile": null,
        "state": state,
        "args": {
            "entryPoint": "sh",
            "entryPointArgs": ["-c", script],
            "environmentVariables": {"STEP_ENV": "from-the-step"},
            "prependPath": ["/opt/tools/bin"],
            "workingDirectory": "/tmp",
        },
    });
    let mut child = Command::new(binary())
        .args(["hook", "container"])
        .env("ORCHESTRATOR_URL", &rig.server.url)
        .env("PROXY_RUNNER_TOKEN", token)
        .env("RUNNER_NAME", runner)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{input}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn prepared(rig: &Rig, token: &str, runner: &str, args: Value) -> Value {
    let (status, body, text) = hook(
        rig,
        token,
        "prepare-job",
        json!({"runnerName": runner, "args": args}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    body["response"]["state"].clone()
}

#[tokio::test]
async fn refused_prepares_name_what_was_refused_and_leave_nothing() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-a").await;
    delegate(&rig, &token, "runner-a", "build").await;
    let mut outside = prepare_args(&rig, &job_image, "", json!([]));
    outside["container"]["userMountVolumes"] =
        json!([{"sourceVolumePath": "/etc", "targetVolumePath": "/host-etc", "readOnly": true}]);
    let mut named = prepare_args(&rig, &job_image, "", json!([]));
    named["container"]["userMountVolumes"] = json!([{"sourceVolumePath": "my_docker_volume", "targetVolumePath": "/v", "readOnly": false}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "image not allowed",
            prepare_args(&rig, "evil/miner:latest", "", json!([])),
            "evil/miner:latest",
        ),
        (
            "service image not allowed",
            prepare_args(&rig, &job_image, "", service("evil/redis:7")),
            "evil/redis:7",
        ),
        (
            "--privileged",
            prepare_args(&rig, &job_image, "--privileged", json!([])),
            "--privileged",
        ),
        (
            "--cap-add",
            prepare_args(&rig, &job_image, "--cap-add SYS_ADMIN", json!([])),
            "--cap-add",
        ),
        (
            "-v",
            prepare_args(&rig, &job_image, "-v /:/host", json!([])),
            "-v",
        ),
        (
            "--network",
            prepare_args(&rig, &job_image, "--network host", json!([])),
            "--network",
        ),
        (
            "--pid",
            prepare_args(&rig, &job_image, "--pid=host", json!([])),
            "--pid",
        ),
        (
            "unknown option",
            prepare_args(&rig, &job_image, "--frobnicate", json!([])),
            "--frobnicate",
        ),
        (
            "memory over the limit",
            prepare_args(&rig, &job_image, "--memory 64g", json!([])),
            "--memory",
        ),
        ("mount outside the runner's folders", outside, "/etc"),
        ("named volume", named, "my_docker_volume"),
    ];
    for (what, args, named) in cases {
        let (status, body, text) = hook(
            &rig,
            &token,
            "prepare-job",
            json!({"runnerName": "runner-a", "args": args}),
        )
        .await;
        assert_eq!(status, 422, "{what}: {text}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{what}: {message}");
    }
    assert!(
        containers_of(&rig.instance).await.is_empty(),
        "a refused prepare created something"
    );
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn bad_hook_input_gets_a_4xx_naming_it() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-b").await;
    let other = rig.token("runner-c").await;
    let url = |p: &str| format!("{}/api/hooks/{p}", rig.server.url);

    // No delegated job yet.
    let (status, body, _) = hook(
        &rig,
        &token,
        "prepare-job",
        json!({"runnerName": "runner-b", "args": prepare_args(&rig, &job_image, "", json!([]))}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    delegate(&rig, &token, "runner-b", "build").await;

    let raw = |body: &'static str, token: String| {
        let http = rig.http.clone();
        let url = url("prepare-job");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, t) = raw("{not json", token.clone()).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("bad_json"));
    let (s, t) = raw(r#"{"args": {}}"#, token.clone()).await;
    assert_eq!(s, 422, "{t}");
    assert!(t.contains("runnerName"));
    let (s, t) = raw(r#"{"runnerName": "runner-b", "args": [1]}"#, token.clone()).await;
    assert_eq!(s, 422, "{t}");
    assert!(t.contains("args"));
    let (s, t) = raw(
        r#"{"runnerName": "runner-b", "args": {"container": {"image": 5}}}"#,
        token.clone(),
    )
    .await;
    assert_eq!(s, 422, "{t}");
    assert!(t.contains("container.image"), "{t}");
    let (s, t) = raw(r#"{"runnerName": "runner-b", "args": {}}"#, other.clone()).await;
    assert_eq!(s, 403, "another runner's name: {t}");
    let (s, t) = raw(
        r#"{"runnerName": "runner-b", "args": {}}"#,
        "not-a-token".into(),
    )
    .await;
    assert_eq!(s, 401, "{t}");

    // A step before prepare, and after cleanup.
    let step = json!({"runnerName": "runner-b", "state": null, "args": {"entryPoint": "sh", "entryPointArgs": ["-c", "true"]}});
    let (status, _, text) = hook(&rig, &token, "run-script-step", step.clone()).await;
    assert_eq!(status, 404, "{text}");
    let state = prepared(
        &rig,
        &token,
        "runner-b",
        prepare_args(&rig, &job_image, "", json!([])),
    )
    .await;
    let (status, body, text) = hook(
        &rig,
        &token,
        "cleanup-job",
        json!({"runnerName": "runner-b", "state": state}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["removed"], 1);
    let mut step = step;
    step["state"] = state;
    let (status, _, text) = hook(&rig, &token, "run-script-step", step).await;
    assert_eq!(status, 404, "a step for a cleaned-up job: {text}");

    // An environment over the body limit: refused from its declared length,
    // before a byte of it is read.
    let answer = declared_oversize(&rig, &token, 5 * 1024 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // The hook client refuses such an input itself, saying why.
    let huge = json!({"command": "prepare_job", "responseFile": "/tmp/x", "state": null,
        "args": {"container": {"image": job_image, "environmentVariables": {"HUGE": "x".repeat(5 * 1024 * 1024)}}}});
    let mut child = Command::new(binary())
        .args(["hook", "container"])
        .env("ORCHESTRATOR_URL", &rig.server.url)
        .env("PROXY_RUNNER_TOKEN", &token)
        .env("RUNNER_NAME", "runner-b")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        let _ = writeln!(stdin, "{huge}");
    }
    let out = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("larger than 4 MiB"), "{printed}");
    assert!(containers_of(&rig.instance).await.is_empty());
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn steps_stream_through_the_hook_client_with_their_exit_code_env_path_and_directory() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-d").await;
    delegate(&rig, &token, "runner-d", "build").await;
    let state = prepared(
        &rig,
        &token,
        "runner-d",
        prepare_args(&rig, &job_image, "", json!([])),
    )
    .await;

    let (code, stdout, stderr) = run_step(
        &rig,
        &token,
        "runner-d",
        &state,
        "echo out; echo err >&2; exit 7",
    );
    assert_eq!(code, 7, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout), "out\n");
    assert_eq!(stderr, "err\n");

    let (code, stdout, stderr) = run_step(
        &rig,
        &token,
        "runner-d",
        &state,
        "echo \"$STEP_ENV $JOB_ENV $(pwd)\"; echo \"$PATH\"",
    );
    assert_eq!(code, 0, "{stderr}");
    let text = String::from_utf8_lossy(&stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("from-the-step from-the-job /tmp"));
    assert!(
        lines.next().unwrap().starts_with("/opt/tools/bin:"),
        "{text}"
    );

    // 10 MiB of output reaches the runner whole, streamed.
    let (code, stdout, stderr) = run_step(
        &rig,
        &token,
        "runner-d",
        &state,
        "dd if=/dev/zero bs=1048576 count=10 2>/dev/null | tr '\\0' a",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.len(), 10 * 1024 * 1024);
    assert!(stdout.iter().all(|b| *b == b'a'));

    let jobs = rig.jobs().await;
    assert_eq!(jobs[0]["jobContainer"]["stepsRun"], 3, "{}", jobs[0]);
    assert_eq!(jobs[0]["jobContainer"]["lastStepExitCode"], 0);
    let (status, _, _) = hook(
        &rig,
        &token,
        "cleanup-job",
        json!({"runnerName": "runner-d", "state": state}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(containers_of(&rig.instance).await.is_empty());
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn two_runners_jobs_run_apart_and_a_runner_acts_only_for_its_own() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let mut rig = Rig::start(&job_image, &service_image).await;
    let first_repo = rig.repository.clone();
    let a = rig.token("runner-e").await;
    delegate(&rig, &a, "runner-e", "build").await;
    let state_a = prepared(
        &rig,
        &a,
        "runner-e",
        prepare_args(&rig, &job_image, "", service(&service_image)),
    )
    .await;
    rig.repository = format!("{first_repo}-other");
    let b = rig.token("runner-f").await;
    delegate(&rig, &b, "runner-f", "build").await;
    let state_b = prepared(
        &rig,
        &b,
        "runner-f",
        prepare_args(&rig, &job_image, "", json!([])),
    )
    .await;
    assert_ne!(state_a["network"], state_b["network"]);
    assert_ne!(state_a["container"], state_b["container"]);

    let fetch = "for i in $(seq 1 100); do timeout 5 wget -q -O - http://cache:8080/ && exit 0; sleep 0.2; done; exit 1";
    let (code, stdout, stderr) = run_step(&rig, &a, "runner-e", &state_a, fetch);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&stdout), "PONG\n");
    // From the other repository's job: neither the name nor the address.
    let service_id = state_a["services"]["cache"].as_str().unwrap();
    let seen = inspect(service_id).await;
    let address =
        seen["NetworkSettings"]["Networks"][state_a["network"].as_str().unwrap()]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string();
    let (code, stdout, _) = run_step(
        &rig,
        &b,
        "runner-f",
        &state_b,
        "timeout 5 wget -q -O - http://cache:8080/",
    );
    assert_ne!(code, 0, "{}", String::from_utf8_lossy(&stdout));
    let (code, stdout, _) = run_step(
        &rig,
        &b,
        "runner-f",
        &state_b,
        &format!("timeout 5 wget -q -O - http://{address}:8080/"),
    );
    assert_ne!(code, 0, "{}", String::from_utf8_lossy(&stdout));
    // Runner B cannot act on runner A's job, even with A's state.
    let (status, _, text) = hook(
        &rig,
        &b,
        "run-script-step",
        json!({"runnerName": "runner-e", "state": state_a, "args": {"entryPoint": "sh", "entryPointArgs": ["-c", "true"]}}),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    let (status, _, text) = hook(
        &rig,
        &b,
        "cleanup-job",
        json!({"runnerName": "runner-f", "state": state_a}),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    for (token, runner, state) in [(&a, "runner-e", &state_a), (&b, "runner-f", &state_b)] {
        let (status, _, _) = hook(
            &rig,
            token,
            "cleanup-job",
            json!({"runnerName": runner, "state": state}),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(containers_of(&rig.instance).await.is_empty());
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn containers_of_a_killed_runner_go_with_its_completion_or_its_next_job() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-g").await;

    // The runner is killed mid-job: no cleanup_job comes; the completion does.
    let job = delegate(&rig, &token, "runner-g", "build").await;
    prepared(
        &rig,
        &token,
        "runner-g",
        prepare_args(&rig, &job_image, "", service(&service_image)),
    )
    .await;
    assert_eq!(containers_of(&rig.instance).await.len(), 2);
    let r = rig
        .http
        .post(format!("{}/api/jobs/{job}/complete", rig.server.url))
        .bearer_auth(&token)
        .json(&json!({"exitCode": 137}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        containers_of(&rig.instance).await.is_empty(),
        "reaped at completion"
    );

    // Killed again, and not even the completion comes: its next job closes it.
    let first = delegate(&rig, &token, "runner-g", "test").await;
    prepared(
        &rig,
        &token,
        "runner-g",
        prepare_args(&rig, &job_image, "", json!([])),
    )
    .await;
    assert_eq!(containers_of(&rig.instance).await.len(), 1);
    delegate(&rig, &token, "runner-g", "deploy").await;
    assert!(
        containers_of(&rig.instance).await.is_empty(),
        "reaped at the next delegation"
    );
    let closed: Value = rig
        .http
        .get(format!("{}/api/jobs/{first}", rig.server.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["status"], "failed", "{closed}");
    assert!(closed["lastError"].as_str().unwrap().contains("next job"));
    assert!(closed["jobContainer"]["removedAt"].is_string());
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn planted_secrets_reach_no_log_record_response_or_container() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-h").await;
    delegate(&rig, &token, "runner-h", "build").await;
    let password = "registry-SECRET-d41d8cd9";
    let mut args = prepare_args(&rig, &job_image, "", service(&service_image));
    let registry =
        json!({"username": "robot", "password": password, "serverUrl": "https://registry.example"});
    args["container"]["registry"] = registry.clone();
    args["services"][0]["registry"] = registry;
    let (status, body, prepare_text) = hook(
        &rig,
        &token,
        "prepare-job",
        json!({"runnerName": "runner-h", "args": args}),
    )
    .await;
    assert_eq!(status, 200, "{prepare_text}");
    let state = body["response"]["state"].clone();
    let mut seen = prepare_text;
    for id in containers_of(&rig.instance).await {
        seen.push_str(&inspect(&id).await.to_string());
    }
    let (_, _, step_text) = hook(
        &rig,
        &token,
        "run-script-step",
        json!({"runnerName": "runner-h", "state": state, "args": {"entryPoint": "sh", "entryPointArgs": ["-c", "env"]}}),
    )
    .await;
    seen.push_str(&step_text);
    let (_, _, cleanup_text) = hook(
        &rig,
        &token,
        "cleanup-job",
        json!({"runnerName": "runner-h", "state": state}),
    )
    .await;
    seen.push_str(&cleanup_text);
    let jobs = rig.jobs().await;
    seen.push_str(&serde_json::to_string(&jobs).unwrap());
    // Acknowledged writes are on disk; the log is written as it happens.
    for name in ["orchestrator.log", "db.sqlite", "db.sqlite-wal"] {
        if let Ok(bytes) = std::fs::read(rig.root.path().join(name)) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    for secret in [password, token.as_str()] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
    rig.emulator.shutdown().await;
}

#[tokio::test]
async fn a_restarted_orchestrator_keeps_running_jobs_containers_and_closes_jobs_past_the_timeout() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let mut rig = Rig::start(&job_image, &service_image).await;
    let token = rig.token("runner-i").await;
    let job = delegate(&rig, &token, "runner-i", "build").await;
    prepared(
        &rig,
        &token,
        "runner-i",
        prepare_args(&rig, &job_image, "", service(&service_image)),
    )
    .await;
    assert_eq!(containers_of(&rig.instance).await.len(), 2);

    let restart = |rig: &Rig, timeout: &str| {
        let images = format!("{job_image},{service_image}");
        let work = rig.root.path().join("_work");
        let externals = rig.root.path().join("externals");
        common::serve(
            &rig.root.path().join("db.sqlite"),
            Some(&rig.root.path().join("orchestrator.log")),
            &["--backend", "docker"],
            &[
                ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
                ("PROXY_RUNNER_INSTANCE", &rig.instance),
                ("PROXY_RUNNER_PROXY_IMAGES", &images),
                ("PROXY_RUNNER_PROXY_WORK_ROOT", work.to_str().unwrap()),
                (
                    "PROXY_RUNNER_PROXY_EXTERNALS_ROOT",
                    externals.to_str().unwrap(),
                ),
                ("PROXY_RUNNER_PROXY_JOB_TIMEOUT_SECS", timeout),
            ],
        )
    };
    // Killed (SIGKILL) and started again: the running job's containers stay.
    rig.server = restart(&rig, "21600");
    let log = rig.root.path().join("orchestrator.log");
    proxy_runner_test_support::eventually(
        "the reaper's first pass",
        std::time::Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("kept=1")
        },
    )
    .await;
    assert_eq!(containers_of(&rig.instance).await.len(), 2);

    // With a job timeout the job has outlived: closed, its containers gone.
    rig.server = restart(&rig, "1");
    proxy_runner_test_support::eventually(
        "the job past the timeout is closed and its containers removed",
        std::time::Duration::from_secs(60),
        || async { containers_of(&rig.instance).await.is_empty() },
    )
    .await;
    let closed: Value = rig
        .http
        .get(format!("{}/api/jobs/{job}", rig.server.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(closed["status"], "failed", "{closed}");
    assert!(
        closed["lastError"]
            .as_str()
            .unwrap()
            .contains("job timeout")
    );
    rig.emulator.shutdown().await;
}
