//! Jobs handed to runners like GitHub hands them, run by the simulated
//! runner, and the signed workflow_job webhooks they cause.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use proxy_runner_emulator::runner::{
    EXIT_SUCCESS, EXIT_TERMINATED_ERROR, JobResult, RunOptions, RunOutcome, RunnerError,
    ShellExecutor, SimRunner,
};
use proxy_runner_emulator::{EmulatorConfig, WebhookTarget, sign_payload};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{GateExecutor, Harness, PAT, Receiver, RecordingExecutor};

const SECRET: &str = "webhook-test-secret";

fn wait(secs: u64) -> RunOptions {
    RunOptions {
        job_wait: Some(Duration::from_secs(secs)),
        poll_wait: Duration::from_millis(500),
        ..RunOptions::default()
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn fixture_payload(name: &str) -> Value {
    proxy_runner_test_support::fixture_json(&format!("github/{name}.payload.json"))
}

/// Verifies X-Hub-Signature-256 independently of the emulator's code.
fn signature_ok(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[test]
fn signature_matches_githubs_test_vector() {
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        sign_payload(b"It's a Secret to Everybody", b"Hello, World!"),
        expected
    );
    assert!(signature_ok(
        "It's a Secret to Everybody",
        b"Hello, World!",
        expected
    ));
    assert!(!signature_ok(
        "It's a Secret to Everybody",
        b"Hello, World?",
        expected
    ));
}

#[tokio::test]
async fn jit_runner_takes_a_job_and_is_removed() {
    let h = Harness::start().await;
    let (job, run) = h
        .create_job(
            "octo/app",
            &["self-hosted", "linux"],
            &[
                "echo hello from $GITHUB_REPOSITORY",
                "echo run $GITHUB_RUN_ID by $RUNNER_NAME; echo ci=$CI actions=$GITHUB_ACTIONS >&2",
            ],
        )
        .await;
    let (runner_id, config) = h
        .jit("/repos/octo/app", "jit-1", &["self-hosted", "Linux", "X64"])
        .await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    assert_eq!(runner.id(), runner_id);
    assert_eq!(runner.server_url(), h.url());

    let outcome = runner
        .run(&ShellExecutor::default(), &wait(10))
        .await
        .unwrap();
    assert_eq!(outcome.exit_code(), EXIT_SUCCESS);
    let ran = outcome.job().unwrap();
    assert_eq!((ran.job_id, ran.run_id), (job, run));
    assert_eq!(ran.result, JobResult::Succeeded);
    assert_eq!(ran.conclusion, "success");

    let view = h.job(job).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(view["conclusion"], "success");
    assert_eq!(view["runnerId"], runner_id);
    assert_eq!(view["runnerName"], "jit-1");
    assert_eq!(view["steps"][0]["output"], "hello from octo/app\n");
    assert_eq!(view["steps"][0]["exitCode"], 0);
    assert_eq!(
        view["steps"][1]["output"],
        format!("run {run} by jit-1\nci=true actions=true\n")
    );
    // GitHub removes a JIT (ephemeral) runner after its job.
    let (_, runners) = h.admin("GET", "/runners", None).await;
    assert_eq!(runners, json!([]));
    let gone = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runners/{runner_id}"),
            None,
        )
        .await;
    assert_eq!(gone.status, 404);
    // Its credential is dead: running again is a terminated error (exit 1).
    let again = runner
        .run(&ShellExecutor::default(), &wait(1))
        .await
        .unwrap_err();
    assert!(matches!(again, RunnerError::Deregistered));
    assert_eq!(again.exit_code(), EXIT_TERMINATED_ERROR);
}

#[tokio::test]
async fn a_runner_without_every_label_does_not_get_the_job() {
    let h = Harness::start().await;
    let (job, _) = h
        .create_job("octo/app", &["self-hosted", "gpu"], &["true"])
        .await;
    let (_, config) = h
        .jit("/repos/octo/app", "no-gpu", &["self-hosted", "linux"])
        .await;
    let outcome = SimRunner::from_jit_config(&config)
        .unwrap()
        .run(&RecordingExecutor::default(), &wait(1))
        .await
        .unwrap();
    assert!(matches!(outcome, RunOutcome::NoJob));
    assert_eq!(outcome.exit_code(), 2);
    assert_eq!(h.job(job).await["status"], "queued");

    // Labels match without regard to case; a runner of another repository or
    // organization never gets the job.
    let (_, elsewhere) = h
        .jit("/repos/octo/other", "other-repo", &["self-hosted", "GPU"])
        .await;
    let (_, other_org) = h
        .jit("/orgs/someone", "other-org", &["self-hosted", "GPU"])
        .await;
    for config in [elsewhere, other_org] {
        let outcome = SimRunner::from_jit_config(&config)
            .unwrap()
            .run(&RecordingExecutor::default(), &wait(1))
            .await
            .unwrap();
        assert!(matches!(outcome, RunOutcome::NoJob));
    }
    assert_eq!(h.job(job).await["status"], "queued");

    let (_, org_runner) = h
        .jit("/orgs/OCTO", "org-gpu", &["SELF-HOSTED", "GPU"])
        .await;
    let outcome = SimRunner::from_jit_config(&org_runner)
        .unwrap()
        .run(&RecordingExecutor::default(), &wait(5))
        .await
        .unwrap();
    assert_eq!(outcome.job().unwrap().job_id, job);
}

#[tokio::test]
async fn an_ephemeral_runner_takes_exactly_one_job() {
    let h = Harness::start().await;
    let (first, _) = h
        .create_job("octo/app", &["self-hosted"], &["exit 0"])
        .await;
    let (second, _) = h
        .create_job("octo/app", &["self-hosted"], &["exit 0"])
        .await;
    let (_, config) = h.jit("/repos/octo/app", "once", &["self-hosted"]).await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let exec = RecordingExecutor::default();
    let outcome = runner.run(&exec, &wait(5)).await.unwrap();
    assert_eq!(
        outcome.job().unwrap().job_id,
        first,
        "the oldest job goes first"
    );
    assert_eq!(exec.seen.lock().unwrap().len(), 1);
    assert_eq!(h.job(second).await["status"], "queued");
    assert!(matches!(
        runner.run(&exec, &wait(1)).await,
        Err(RunnerError::Deregistered)
    ));
    assert_eq!(h.job(second).await["status"], "queued");
}

#[tokio::test]
async fn a_registered_runner_takes_many_jobs_one_at_a_time() {
    let h = Harness::start().await;
    let token = h
        .pat(
            "POST",
            "/repos/octo/app/actions/runners/registration-token",
            None,
        )
        .await;
    let token = SecretString::from(token.body["token"].as_str().unwrap().to_string());
    let url = format!("{}/octo/app", h.url());
    let runner = SimRunner::register(&url, &token, "long-lived", &["gpu".into()], false)
        .await
        .unwrap();
    // Names are unique per scope; bad tokens and other scopes are refused.
    let dup = SimRunner::register(&url, &token, "long-lived", &[], false).await;
    assert!(matches!(
        dup,
        Err(RunnerError::Registration { status: 409, .. })
    ));
    let bad = SimRunner::register(&url, &SecretString::from("nope"), "x", &[], false).await;
    assert!(matches!(
        bad,
        Err(RunnerError::Registration { status: 401, .. })
    ));
    let other =
        SimRunner::register(&format!("{}/octo/other", h.url()), &token, "x", &[], false).await;
    assert!(matches!(
        other,
        Err(RunnerError::Registration { status: 403, .. })
    ));

    let listed = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runners/{}", runner.id()),
            None,
        )
        .await;
    let labels: Vec<&str> = listed.body["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["self-hosted", "Linux", "X64", "gpu"]);
    assert_eq!(listed.body["ephemeral"], false);

    let (a, _) = h
        .create_job("octo/app", &["self-hosted", "gpu"], &["echo a"])
        .await;
    let (b, _) = h.create_job("octo/app", &["linux"], &["echo b"]).await;
    let exec = RecordingExecutor::default();
    let first = runner.run(&exec, &wait(5)).await.unwrap();
    let second = runner.run(&exec, &wait(5)).await.unwrap();
    assert_eq!(first.job().unwrap().job_id, a);
    assert_eq!(second.job().unwrap().job_id, b);
    let still = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runners/{}", runner.id()),
            None,
        )
        .await;
    assert_eq!(still.status, 200);
    assert_eq!(still.body["busy"], false);
    assert_eq!(still.body["status"], "online");
    assert_eq!(
        still.body["version"],
        proxy_runner_emulator::runner::SIM_RUNNER_VERSION
    );
}

#[tokio::test]
async fn a_failing_step_fails_the_job_and_skips_the_rest() {
    let h = Harness::start().await;
    let (job, _) = h
        .create_job(
            "octo/app",
            &["self-hosted"],
            &["echo one", "echo two >&2; exit 7", "echo never"],
        )
        .await;
    let (_, config) = h.jit("/repos/octo/app", "fails", &["self-hosted"]).await;
    let outcome = SimRunner::from_jit_config(&config)
        .unwrap()
        .run(&ShellExecutor::default(), &wait(5))
        .await
        .unwrap();
    let ran = outcome.job().unwrap();
    assert_eq!(ran.result, JobResult::Failed);
    assert_eq!(ran.conclusion, "failure");
    assert_eq!(ran.steps.len(), 2);
    assert_eq!(
        outcome.exit_code(),
        EXIT_SUCCESS,
        "a failed job is not a failed runner"
    );

    let view = h.job(job).await;
    assert_eq!(view["conclusion"], "failure");
    let exit_codes: Vec<Value> = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["exitCode"].clone())
        .collect();
    assert_eq!(exit_codes, vec![json!(0), json!(7), Value::Null]);
    assert_eq!(view["steps"][1]["output"], "two\n");
    assert_eq!(view["steps"][2]["output"], Value::Null);
    assert_eq!(view["steps"][2]["conclusion"], "skipped");

    let rest = h
        .pat("GET", &format!("/repos/octo/app/actions/jobs/{job}"), None)
        .await;
    let conclusions: Vec<&str> = rest.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["conclusion"].as_str().unwrap())
        .collect();
    assert_eq!(conclusions, vec!["success", "failure", "skipped"]);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_runner() {
    let h = Harness::start().await;
    let (job, run) = h
        .create_job("octo/app", &["self-hosted"], &["one", "two"])
        .await;
    let (_, config) = h
        .jit("/repos/octo/app", "cancel-me", &["self-hosted"])
        .await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let gate = Arc::new(GateExecutor::default());
    let exec = gate.clone();
    let task = tokio::spawn(async move { runner.run(exec.as_ref(), &wait(10)).await });
    tokio::time::timeout(Duration::from_secs(10), gate.started.notified())
        .await
        .unwrap();
    let cancel = h
        .pat(
            "POST",
            &format!("/repos/octo/app/actions/runs/{run}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancel.status, 202);
    gate.release.notify_one();
    let outcome = task.await.unwrap().unwrap();
    assert_eq!(outcome.job().unwrap().result, JobResult::Cancelled);
    let view = h.job(job).await;
    assert_eq!(view["conclusion"], "cancelled");
    assert_eq!(view["steps"][1]["conclusion"], "cancelled");
}

#[tokio::test]
async fn webhooks_arrive_signed_and_in_order() {
    let receiver = Receiver::start(0).await;
    let mut config = support::config();
    config.webhook = Some(WebhookTarget {
        url: receiver.url.clone(),
        secret: SecretString::from(SECRET),
    });
    let h = Harness::with_config(config).await;
    let (job, run) = h
        .create_job("octo/app", &["self-hosted"], &["echo a", "echo b"])
        .await;
    let (runner_id, cfg) = h.jit("/repos/octo/app", "hooked", &["self-hosted"]).await;
    SimRunner::from_jit_config(&cfg)
        .unwrap()
        .run(&RecordingExecutor::default(), &wait(5))
        .await
        .unwrap();

    let deliveries = receiver.wait_for(3).await;
    assert_eq!(deliveries.len(), 3);
    let mut ids = BTreeSet::new();
    for d in &deliveries {
        assert_eq!(d.header("x-github-event"), "workflow_job");
        assert!(d.header("user-agent").starts_with("GitHub-Hookshot/"));
        assert!(d.header("content-type").starts_with("application/json"));
        assert!(signature_ok(
            SECRET,
            &d.body,
            d.header("x-hub-signature-256")
        ));
        assert!(!signature_ok(
            "other secret",
            &d.body,
            d.header("x-hub-signature-256")
        ));
        let id = uuid::Uuid::parse_str(d.header("x-github-delivery")).expect("delivery GUID");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "each delivery has its own GUID");

    let payloads: Vec<Value> = deliveries.iter().map(|d| d.json()).collect();
    let actions: Vec<&str> = payloads
        .iter()
        .map(|p| p["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["queued", "in_progress", "completed"]);
    for p in &payloads {
        assert_eq!(p["workflow_job"]["id"], job);
        assert_eq!(p["workflow_job"]["run_id"], run);
        assert_eq!(p["workflow_job"]["run_attempt"], 1);
        assert_eq!(p["repository"]["full_name"], "octo/app");
        assert!(p["installation"]["id"].is_u64(), "an App is configured");
    }
    let queued = &payloads[0]["workflow_job"];
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["runner_id"], Value::Null);
    assert_eq!(queued["runner_group_id"], Value::Null);
    let running = &payloads[1]["workflow_job"];
    assert_eq!(running["status"], "in_progress");
    assert_eq!(running["runner_id"], runner_id);
    assert_eq!(running["runner_name"], "hooked");
    assert_eq!(running["runner_group_id"], 1);
    assert_eq!(running["runner_group_name"], "Default");
    let completed = &payloads[2]["workflow_job"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["conclusion"], "success");
    assert_eq!(completed["steps"].as_array().unwrap().len(), 2);
    assert!(completed["completed_at"].is_string());

    let (_, log) = h.admin("GET", "/deliveries", None).await;
    let outcomes: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["delivered"; 3]);
}

#[tokio::test]
async fn webhook_payloads_have_the_shape_of_githubs_examples() {
    let receiver = Receiver::start(0).await;
    let h = Harness::start().await;
    let (status, _) = h
        .admin(
            "PUT",
            "/webhook",
            Some(json!({"url": receiver.url, "secret": SECRET})),
        )
        .await;
    assert_eq!(status, 204);
    let (job, _) = h
        .create_job("octo/app", &["self-hosted"], &["ok", "exit 1"])
        .await;
    let (_, cfg) = h.jit("/repos/octo/app", "shape", &["self-hosted"]).await;
    SimRunner::from_jit_config(&cfg)
        .unwrap()
        .run(&RecordingExecutor::default(), &wait(5))
        .await
        .unwrap();
    let payloads: Vec<Value> = receiver
        .wait_for(3)
        .await
        .iter()
        .map(|d| d.json())
        .collect();

    let examples = [
        ("queued", fixture_payload("queued")),
        ("in_progress", fixture_payload("in_progress")),
        (
            "completed",
            fixture_payload("completed.failure.with-organization"),
        ),
    ];
    for (p, (action, example)) in payloads.iter().zip(&examples) {
        assert_eq!(p["action"], *action);
        assert_eq!(p["action"], example["action"]);
        assert_eq!(
            keys(&p["workflow_job"]),
            keys(&example["workflow_job"]),
            "workflow_job keys of {action}"
        );
        assert_eq!(keys(&p["repository"]), keys(&example["repository"]));
        assert_eq!(
            keys(&p["repository"]["owner"]),
            keys(&example["repository"]["owner"])
        );
        assert_eq!(keys(&p["sender"]), keys(&example["sender"]));
        // Types match the example field by field (null where GitHub allows it).
        for (k, v) in example["workflow_job"].as_object().unwrap() {
            let ours = &p["workflow_job"][k];
            let same_kind = std::mem::discriminant(ours) == std::mem::discriminant(v)
                || ours.is_null()
                || v.is_null();
            assert!(
                same_kind,
                "{action}: workflow_job.{k} is {ours}, example has {v}"
            );
        }
        // And the job object validates against GitHub's `job` schema.
        h.api
            .check_schema("#/components/schemas/job", &p["workflow_job"])
            .unwrap();
        assert!(p.get("installation").is_some(), "an App is configured");
        assert_eq!(
            keys(&p["installation"]),
            keys(&fixture_payload("queued")["installation"])
        );
    }
    let org_example = fixture_payload("completed.success.with-organization");
    assert_eq!(
        keys(&payloads[2]["organization"]),
        keys(&org_example["organization"])
    );
    let failed_steps = &payloads[2]["workflow_job"]["steps"];
    assert_eq!(
        keys(&failed_steps[0]),
        keys(&examples[2].1["workflow_job"]["steps"][0])
    );
    assert_eq!(payloads[2]["workflow_job"]["conclusion"], "failure");
    assert_eq!(h.job(job).await["conclusion"], "failure");
}

#[tokio::test]
async fn without_an_app_payloads_have_no_installation() {
    let receiver = Receiver::start(0).await;
    let h = Harness::with_config(EmulatorConfig {
        pats: vec![PAT.into()],
        webhook: Some(WebhookTarget {
            url: receiver.url.clone(),
            secret: SecretString::from(SECRET),
        }),
        ..EmulatorConfig::default()
    })
    .await;
    h.create_job("octo/app", &["x"], &[]).await;
    let payload = receiver.wait_for(1).await[0].json();
    assert_eq!(payload["action"], "queued");
    assert!(payload.get("installation").is_none());
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_guid() {
    let receiver = Receiver::start(2).await;
    let h = Harness::start().await;
    h.admin(
        "PUT",
        "/webhook",
        Some(json!({"url": receiver.url, "secret": SECRET})),
    )
    .await;
    h.create_job("octo/app", &["x"], &[]).await;
    let deliveries = receiver.wait_for(3).await;
    let guids: BTreeSet<&str> = deliveries
        .iter()
        .map(|d| d.header("x-github-delivery"))
        .collect();
    assert_eq!(guids.len(), 1, "a redelivery keeps its GUID");
    for d in &deliveries {
        assert!(signature_ok(
            SECRET,
            &d.body,
            d.header("x-hub-signature-256")
        ));
    }
    let log = loop {
        let (_, log) = h.admin("GET", "/deliveries", None).await;
        if !log.as_array().unwrap().is_empty() {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(log[0]["outcome"], "delivered");
    assert_eq!(log[0]["attempts"], 3);
}

#[tokio::test]
async fn the_drop_knob_loses_deliveries() {
    let receiver = Receiver::start(0).await;
    let h = Harness::start().await;
    h.admin(
        "PUT",
        "/webhook",
        Some(json!({"url": receiver.url, "secret": SECRET})),
    )
    .await;
    let (status, _) = h
        .admin("POST", "/faults", Some(json!({"dropWebhookShare": 1.0})))
        .await;
    assert_eq!(status, 204);
    h.create_job("octo/app", &["x"], &[]).await;
    let log = loop {
        let (_, log) = h.admin("GET", "/deliveries", None).await;
        if !log.as_array().unwrap().is_empty() {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(log[0]["outcome"], "dropped");
    assert!(receiver.all().is_empty());

    // Cleared knobs deliver again.
    h.admin("DELETE", "/faults", None).await;
    h.create_job("octo/app", &["x"], &[]).await;
    assert_eq!(receiver.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn the_admin_api_validates_and_lists() {
    let h = Harness::start().await;
    for bad in [
        json!({}),
        json!({"repository": "no-slash"}),
        json!({"repository": "o/r", "labels": "x"}),
        json!({"repository": "o/r", "steps": [1]}),
        json!({"repository": "o/r", "runId": -1}),
        json!([1]),
    ] {
        let (status, body) = h.admin("POST", "/jobs", Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad} -> {body}");
        assert!(body["message"].is_string());
    }
    let resp = h
        .http
        .post(format!("{}/_emulator/jobs", h.url()))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let (status, body) = h
        .admin(
            "POST",
            "/jobs",
            Some(json!({"repository": "o/r", "labels": ["x"], "steps": ["true"], "workflow": "Build", "name": "lint", "runId": 777, "unknown": 1})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["runId"], 777);
    let (_, body2) = h
        .admin(
            "POST",
            "/jobs",
            Some(json!({"repository": "o/r", "runId": 777})),
        )
        .await;
    assert_eq!(body2["runId"], 777, "jobs can share a run");
    let (status, _) = h
        .admin(
            "POST",
            "/jobs",
            Some(json!({"repository": "o/other", "runId": 777})),
        )
        .await;
    assert_eq!(status, 422, "a run belongs to one repository");
    let (_, fresh) = h
        .admin("POST", "/jobs", Some(json!({"repository": "o/r"})))
        .await;
    assert!(
        fresh["runId"].as_u64().unwrap() > 777,
        "fresh run ids do not collide"
    );

    let (_, jobs) = h.admin("GET", "/jobs", None).await;
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    let first = &jobs[0];
    assert_eq!(first["workflow"], "Build");
    assert_eq!(first["name"], "lint");
    assert_eq!(first["status"], "queued");
    assert_eq!(
        first["steps"],
        json!([{"command": "true", "output": null, "exitCode": null, "conclusion": null}])
    );
    let (status, _) = h.admin("GET", "/jobs/1", None).await;
    assert_eq!(status, 404);
    let (status, _) = h.admin("GET", "/jobs/abc", None).await;
    assert_eq!(status, 404);

    for bad in [
        json!({"url": "ftp://x", "secret": "s"}),
        json!({"url": "http://127.0.0.1:1/x"}),
    ] {
        assert_eq!(h.admin("PUT", "/webhook", Some(bad)).await.0, 422);
    }
    assert_eq!(h.admin("DELETE", "/webhook", None).await.0, 204);

    let (_, cfg) = h.jit("/orgs/o", "listed", &["x"]).await;
    drop(cfg);
    let (_, runners) = h.admin("GET", "/runners", None).await;
    assert_eq!(runners[0]["name"], "listed");
    assert_eq!(
        runners[0]["scope"],
        json!({"kind": "organization", "org": "o"})
    );
    assert_eq!(runners[0]["status"], "offline");
}

#[tokio::test]
async fn shutdown_ends_open_long_polls() {
    let h = Harness::start().await;
    let (_, config) = h.jit("/repos/octo/app", "waiting", &["self-hosted"]).await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let task = tokio::spawn(async move {
        let options = RunOptions {
            job_wait: Some(Duration::from_secs(120)),
            poll_wait: Duration::from_secs(50),
            transport_retries: 0,
        };
        runner.run(&RecordingExecutor::default(), &options).await
    });
    // Wait (bounded) until the runner is in its long poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, runners) = h.admin("GET", "/runners", None).await;
        if runners[0]["status"] == "online" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Harness { emulator, .. } = h;
    // A guard against hanging, not a speed check: the poll would hold 50 s.
    tokio::time::timeout(Duration::from_secs(20), emulator.shutdown())
        .await
        .expect("shutdown does not wait for a long poll to run out");
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the runner notices")
        .unwrap();
    let err = result.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.exit_code(), 2);
}

#[tokio::test]
async fn deleting_a_waiting_runner_ends_it() {
    let h = Harness::start().await;
    let (runner_id, config) = h.jit("/orgs/octo", "doomed", &["self-hosted"]).await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let task = tokio::spawn(async move {
        let options = RunOptions {
            job_wait: Some(Duration::from_secs(120)),
            poll_wait: Duration::from_secs(50),
            transport_retries: 0,
        };
        runner.run(&RecordingExecutor::default(), &options).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = h
            .pat(
                "GET",
                &format!("/orgs/octo/actions/runners/{runner_id}"),
                None,
            )
            .await;
        if got.body["status"] == "online" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted = h
        .pat(
            "DELETE",
            &format!("/orgs/octo/actions/runners/{runner_id}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    // A guard against hanging, not a speed check: the poll would hold 50 s.
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the runner learns it was removed")
        .unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, RunnerError::Deregistered), "{err}");
    assert_eq!(err.exit_code(), EXIT_TERMINATED_ERROR);
}
