//! One set of value rules, whichever way a value arrives: a hook's
//! delegation or completion, or a signed webhook. Every refusal is a 4xx
//! naming the field, and nothing is stored.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proxy_runner_domain::ports::{Clock, JobFilter, JobStore};
use proxy_runner_domain::{Job, JobStatus};
use proxy_runner_github::webhooks::signature_header;
use proxy_runner_test_support::fixture_json;
use proxy_runner_test_support::rig::{
    ADMIN, Reply, Rig, RigOptions, WEBHOOK_SECRET, design_hook_body,
};
use secrecy::SecretString;
use serde_json::{Value, json};

async fn rig() -> Rig {
    Rig::build(RigOptions {
        github: true,
        ..Default::default()
    })
    .await
}

async fn deliver(rig: &Rig, delivery: &str, payload: &Value) -> Reply {
    let body = serde_json::to_vec(payload).unwrap();
    let signature = signature_header(&SecretString::from(WEBHOOK_SECRET), &body);
    rig.send(
        Request::post("/webhooks/github")
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

/// A delegation as our `hooks/job-started.sh` builds it: every value a
/// string from the environment.
fn our_hook_body() -> Value {
    json!({
        "jobId": "build", "runId": "12", "runAttempt": "1", "repository": "o/r",
        "workflow": "CI", "runnerName": "p", "labels": "self-hosted,linux",
        "environment": {"GITHUB_JOB": "build", "RUNNER_NAME": "p"},
    })
}

/// GitHub's published `queued` example, asking for a runner we serve.
fn queued_payload() -> Value {
    let mut v = fixture_json("github/queued.payload.json");
    v["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
    v
}

/// The 4xx, the error's code and that its message starts with the field.
fn refused(reply: &Reply, field: &str) -> Result<(), String> {
    let message = reply.body["error"]["message"].as_str().unwrap_or("");
    let code = reply.body["error"]["code"].as_str().unwrap_or("");
    if reply.status == StatusCode::UNPROCESSABLE_ENTITY
        && ["invalid_field", "missing_field"].contains(&code)
        && message.starts_with(&format!("{field}: "))
    {
        Ok(())
    } else {
        Err(format!(
            "want 422 naming {field:?}, got {} {}",
            reply.status, reply.text
        ))
    }
}

async fn all_jobs(rig: &Rig) -> Vec<Job> {
    rig.store
        .list_jobs(&JobFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn no_job_stored(rig: &Rig) {
    let jobs = all_jobs(rig).await;
    assert!(jobs.is_empty(), "a refused request stored a job: {jobs:?}");
}

#[tokio::test]
async fn delegations_breaking_a_value_rule_are_refused_naming_the_field() {
    let rig = rig().await;
    let token = rig.runner_token("p").await;
    let many: Vec<String> = (0..10_000).map(|i| format!("l{i}")).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("runId", json!(" 12"), "runId"),
        ("runId", json!("12 "), "runId"),
        ("runId", json!("+12"), "runId"),
        ("runId", json!("012"), "runId"),
        ("runId", json!("0"), "runId"),
        ("runId", json!(0), "runId"),
        ("runId", json!(1.5), "runId"),
        ("runId", json!("9223372036854775808"), "runId"),
        ("runAttempt", json!("0"), "runAttempt"),
        ("runAttempt", json!(0), "runAttempt"),
        ("runAttempt", json!(" 1"), "runAttempt"),
        ("repository", json!(" o/r"), "repository"),
        ("repository", json!("o/r "), "repository"),
        ("runnerName", json!(" p"), "runnerName"),
        ("runnerName", json!("p\n"), "runnerName"),
        ("jobId", json!("build "), "jobId"),
        ("jobId", json!("bu\u{0}ild"), "jobId"),
        ("labels", json!(["self-hosted", "li\u{0}nux"]), "labels"),
        ("labels", json!("self-hosted,li\u{0}nux"), "labels"),
        ("labels", json!([" linux"]), "labels"),
        ("labels", json!(["self-hosted", ""]), "labels"),
        ("labels", json!(many), "labels"),
        ("labels", json!(vec!["linux"; 10_000]), "labels"),
        ("workflow", json!("CI\u{0}"), "workflow"),
        ("workflow", json!("CI\u{1b}[31m"), "workflow"),
        ("needs", json!(["lint\u{0}"]), "needs"),
        ("environment", json!({"A": "x\u{0}y"}), "environment.A"),
    ];
    let mut failures = Vec::new();
    for (key, value, field) in &cases {
        let mut body = our_hook_body();
        body[*key] = value.clone();
        let reply = rig
            .call(
                "POST",
                "/api/jobs/delegate",
                Some(&token),
                Some(body.to_string().as_bytes()),
            )
            .await;
        if let Err(e) = refused(&reply, field) {
            failures.push(format!("{key} = {value}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    no_job_stored(&rig).await;
}

#[tokio::test]
async fn completions_breaking_a_value_rule_change_nothing() {
    let rig = rig().await;
    let token = rig.runner_token("p").await;
    let r = rig
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(our_hook_body().to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id: uuid::Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    let before = rig.store.get_job(id).await.unwrap().unwrap();
    let mut failures = Vec::new();
    for (body, field) in [
        (json!({"exitCode": "0"}), "exitCode"),
        (json!({"exitCode": "x"}), "exitCode"),
        (json!({"exitCode": 1.5}), "exitCode"),
        (json!({"exitCode": 4_294_967_296u64}), "exitCode"),
        (json!({"conclusion": "bogus"}), "conclusion"),
        (json!({"conclusion": "Success"}), "conclusion"),
        (json!({"conclusion": " success"}), "conclusion"),
        (
            json!({"exitCode": 0, "conclusion": "exploded"}),
            "conclusion",
        ),
    ] {
        let reply = rig
            .call(
                "POST",
                &format!("/api/jobs/{id}/complete"),
                Some(&token),
                Some(body.to_string().as_bytes()),
            )
            .await;
        if let Err(e) = refused(&reply, field) {
            failures.push(format!("{body}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        rig.store.get_job(id).await.unwrap().unwrap(),
        before,
        "a refused completion changed the job"
    );

    // The same job completes with values that meet the rules.
    let reply = rig
        .call(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(&token),
            Some(br#"{"exitCode": 0, "conclusion": "timed_out"}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let job = rig.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.conclusion.as_deref(), Some("timed_out"));
    assert_eq!(job.exit_code, Some(0));
}

#[tokio::test]
async fn webhooks_breaking_a_value_rule_are_refused_and_leave_no_trace() {
    let rig = rig().await;
    let many: Vec<String> = (0..10_000).map(|i| format!("l{i}")).collect();
    let in_progress = || {
        let mut v = fixture_json("github/in_progress.payload.json");
        v["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
        v
    };
    let cases: Vec<(Value, &str, Value, &str)> = vec![
        (queued_payload(), "id", json!(0), "workflow_job.id"),
        (queued_payload(), "id", json!(" 12"), "workflow_job.id"),
        (queued_payload(), "id", json!(-3), "workflow_job.id"),
        (
            queued_payload(),
            "run_id",
            json!("+12"),
            "workflow_job.run_id",
        ),
        (
            queued_payload(),
            "run_id",
            json!("012"),
            "workflow_job.run_id",
        ),
        (
            queued_payload(),
            "run_attempt",
            json!(0),
            "workflow_job.run_attempt",
        ),
        (
            queued_payload(),
            "labels",
            json!(many),
            "workflow_job.labels",
        ),
        (
            queued_payload(),
            "labels",
            json!(vec!["linux"; 10_000]),
            "workflow_job.labels",
        ),
        (
            queued_payload(),
            "labels",
            json!(["self-hosted", "li\u{0}nux"]),
            "workflow_job.labels",
        ),
        (
            queued_payload(),
            "labels",
            json!([" self-hosted"]),
            "workflow_job.labels",
        ),
        (
            queued_payload(),
            "status",
            json!("exploded"),
            "workflow_job.status",
        ),
        (
            queued_payload(),
            "conclusion",
            json!("bogus"),
            "workflow_job.conclusion",
        ),
        (
            queued_payload(),
            "workflow_name",
            json!("CI\u{0}"),
            "workflow_job.workflow_name",
        ),
        (
            queued_payload(),
            "name",
            json!("build\u{7}"),
            "workflow_job.name",
        ),
        (
            in_progress(),
            "runner_name",
            json!(" GitHub Actions 5"),
            "workflow_job.runner_name",
        ),
        (
            in_progress(),
            "runner_id",
            json!(-5),
            "workflow_job.runner_id",
        ),
    ];
    let mut failures = Vec::new();
    for (n, (mut payload, key, value, field)) in cases.into_iter().enumerate() {
        payload["workflow_job"][key] = value.clone();
        let delivery = format!("bad-{n}");
        let reply = deliver(&rig, &delivery, &payload).await;
        if let Err(e) = refused(&reply, field) {
            failures.push(format!("{key} = {value}: {e}"));
        }
        // The delivery id is not recorded: a corrected redelivery counts.
        assert!(
            rig.store
                .record_delivery(&delivery, "workflow_job", rig.clock.now())
                .await
                .unwrap(),
            "{delivery} ({key}) was recorded"
        );
    }
    let mut padded = queued_payload();
    padded["repository"]["full_name"] = json!("Codertocat/Hello-World ");
    let reply = deliver(&rig, "bad-repository", &padded).await;
    if let Err(e) = refused(&reply, "repository.full_name") {
        failures.push(format!("padded repository: {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    no_job_stored(&rig).await;

    // A corrected delivery under a refused delivery's id is processed.
    let reply = deliver(&rig, "bad-repository", &queued_payload()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
}

#[tokio::test]
async fn tab_and_newline_in_a_workflow_name_get_the_same_verdict_both_ways() {
    let rig = rig().await;
    let token = rig.runner_token("p").await;
    let name = "CI\tnightly\nsecond line";

    let mut body = our_hook_body();
    body["workflow"] = json!(name);
    let r = rig
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let delegated: uuid::Uuid = r.body["id"].as_str().unwrap().parse().unwrap();

    let mut payload = queued_payload();
    payload["workflow_job"]["workflow_name"] = json!(name);
    let r = deliver(&rig, "tabbed", &payload).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let announced: uuid::Uuid = r.body["jobId"].as_str().unwrap().parse().unwrap();

    for id in [delegated, announced] {
        let job = rig.store.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.workflow, name, "kept as sent, not trimmed or cut");
    }

    // Any other control character is refused both ways, naming the field.
    let mut body = our_hook_body();
    body["jobId"] = json!("other");
    body["workflow"] = json!("CI\r");
    let r = rig
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.to_string().as_bytes()),
        )
        .await;
    refused(&r, "workflow").unwrap();
    let mut payload = queued_payload();
    payload["workflow_job"]["id"] = json!(1234);
    payload["workflow_job"]["workflow_name"] = json!("CI\r");
    let r = deliver(&rig, "carriage-return", &payload).await;
    refused(&r, "workflow_job.workflow_name").unwrap();
    assert_eq!(all_jobs(&rig).await.len(), 2);
}

#[tokio::test]
async fn the_hooks_bodies_and_githubs_payloads_still_pass() {
    let rig = rig().await;
    let token = rig.runner_token("p").await;
    // The design's hook: every value a string, labels joined with spaces.
    let design = design_hook_body("build", "123456", "o/r", "p", "self-hosted, linux");
    let r = rig
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(design.as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["runId"], 123456);
    assert_eq!(r.body["labels"], json!(["self-hosted", "linux"]));
    // Ours: runAttempt as a string too, ids as large as GitHub's.
    let mut ours = our_hook_body();
    ours["runId"] = json!("9223372036854775807");
    ours["runAttempt"] = json!("2");
    let r = rig
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(ours.to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["runId"], 9_223_372_036_854_775_807u64);
    assert_eq!(r.body["runAttempt"], 2);

    // GitHub's published payloads, as they are but for labels we serve.
    let mut failures = Vec::new();
    for name in [
        "queued.payload.json",
        "in_progress.payload.json",
        "completed.success.with-organization.payload.json",
        "completed.failure.with-organization.payload.json",
        "waiting.payload.json",
    ] {
        let mut v = fixture_json(&format!("github/{name}"));
        v["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
        let reply = deliver(&rig, name, &v).await;
        if !reply.status.is_success() {
            failures.push(format!("{name}: {} {}", reply.status, reply.text));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let jobs = all_jobs(&rig).await;
    let announced = jobs
        .iter()
        .find(|j| j.github_job_id == Some(289782451))
        .expect("the example job is recorded");
    assert_eq!(announced.status, JobStatus::Completed);
    assert_eq!(announced.conclusion.as_deref(), Some("success"));

    // The job's API representation carries the dropped-credential count.
    let shown = rig
        .call(
            "GET",
            &format!("/api/jobs/{}", r.body["id"].as_str().unwrap()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(shown.body["droppedSecrets"], 0, "{}", shown.text);
}
