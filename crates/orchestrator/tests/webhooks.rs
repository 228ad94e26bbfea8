//! `POST /webhooks/github` in-process: signatures, de-duplication, GitHub's
//! own example payloads driving job states.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proxy_runner_domain::JobStatus;
use proxy_runner_domain::ports::JobStore;
use proxy_runner_github::webhooks::signature_header;
use proxy_runner_test_support::fixture_json;
use proxy_runner_test_support::rig::{Rig, RigOptions, WEBHOOK_SECRET as SECRET};
use secrecy::SecretString;
use serde_json::Value;

/// The served router with webhooks on.
struct Hook {
    rig: Rig,
}

async fn hook() -> Hook {
    let rig = Rig::build(RigOptions {
        github: true,
        ..Default::default()
    })
    .await;
    Hook { rig }
}

fn fixture(name: &str) -> Value {
    fixture_json(&format!("github/{name}"))
}

impl Hook {
    async fn deliver_raw(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::post("/webhooks/github")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("content-type", "application/json");
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        let reply = self
            .rig
            .send(req.body(Body::from(body.to_vec())).unwrap())
            .await;
        (reply.status, reply.body)
    }

    async fn deliver(&self, event: &str, delivery: &str, payload: &Value) -> (StatusCode, Value) {
        let body = serde_json::to_vec(payload).unwrap();
        let sig = signature_header(&SecretString::from(SECRET), &body);
        self.deliver_raw(event, delivery, &body, Some(sig)).await
    }
}

#[tokio::test]
async fn signatures_are_checked_before_anything_else() {
    let h = hook().await;
    let body = serde_json::to_vec(&fixture("queued.payload.json")).unwrap();
    let good = signature_header(&SecretString::from(SECRET), &body);
    let wrong_secret = signature_header(&SecretString::from("other"), &body);
    let mut tampered = body.clone();
    tampered[20] ^= 1;
    for (name, b, sig) in [
        ("missing", &body, None),
        ("malformed", &body, Some("sha1=abc".to_string())),
        ("wrong secret", &body, Some(wrong_secret)),
        ("tampered body", &tampered, Some(good.clone())),
    ] {
        let (status, reply) = h
            .deliver_raw("workflow_job", &format!("d-{name}"), b, sig)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(reply["error"]["code"], "unauthorized", "{name}");
        assert!(!reply.to_string().contains(SECRET));
    }
    assert!(
        h.rig
            .store
            .list_jobs(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    let (status, _) = h
        .deliver_raw("workflow_job", "d-good", &body, Some(good))
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a valid delivery of a job we don't serve"
    );
}

#[tokio::test]
async fn githubs_example_payloads_drive_the_right_state_changes() {
    let h = hook().await;
    // As published: ubuntu-latest jobs are not ours; a waiting job waits.
    for name in [
        "queued.payload.json",
        "in_progress.payload.json",
        "completed.success.with-organization.payload.json",
        "waiting.payload.json",
    ] {
        let (status, reply) = h
            .deliver("workflow_job", &format!("as-is-{name}"), &fixture(name))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {reply}");
        assert_eq!(reply["outcome"], "ignored", "{name}");
    }
    assert!(
        h.rig
            .store
            .list_jobs(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    // The same payloads asking for a self-hosted runner.
    let ours = |name: &str| {
        let mut v = fixture(name);
        v["workflow_job"]["labels"] = serde_json::json!(["self-hosted", "linux"]);
        v
    };
    let (status, reply) = h
        .deliver("workflow_job", "q", &ours("queued.payload.json"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let id: uuid::Uuid = reply["jobId"].as_str().unwrap().parse().unwrap();
    let job = h.rig.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.github_job_id, Some(289782451));
    assert_eq!(job.run_id, 2202229078);
    assert_eq!(job.repository, "Codertocat/Hello-World");
    assert_eq!(job.source.as_str(), "webhook");

    let (status, _) = h
        .deliver("workflow_job", "p", &ours("in_progress.payload.json"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let job = h.rig.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.runner_name.as_deref(), Some("GitHub Actions 5"));

    let (status, _) = h
        .deliver(
            "workflow_job",
            "c",
            &ours("completed.failure.with-organization.payload.json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let job = h.rig.store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("failure"));

    // A late success for the same job changes nothing: completed is final.
    let (_, reply) = h
        .deliver(
            "workflow_job",
            "c2",
            &ours("completed.success.with-organization.payload.json"),
        )
        .await;
    assert_eq!(reply["outcome"], "unchanged");
}

#[tokio::test]
async fn deliveries_are_deduplicated_and_other_events_acknowledged() {
    let h = hook().await;
    let mut queued = fixture("queued.payload.json");
    queued["workflow_job"]["labels"] = serde_json::json!(["self-hosted"]);
    let (s1, r1) = h.deliver("workflow_job", "same-guid", &queued).await;
    assert_eq!(s1, StatusCode::CREATED);
    // Redelivery carries the same GUID.
    let (s2, r2) = h.deliver("workflow_job", "same-guid", &queued).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(r2["outcome"], "duplicate");
    assert_eq!(
        h.rig
            .store
            .list_jobs(&Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(r1["jobId"].is_string());

    let (s, r) = h
        .deliver(
            "ping",
            "p1",
            &serde_json::json!({"zen": "Keep it logically awesome."}),
        )
        .await;
    assert_eq!((s, r["outcome"].as_str()), (StatusCode::OK, Some("pong")));
    let (s, r) = h
        .deliver("push", "p2", &serde_json::json!({"ref": "refs/heads/main"}))
        .await;
    assert_eq!(
        (s, r["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
    // An action GitHub may add later is acknowledged and ignored...
    let mut odd = queued.clone();
    odd["action"] = "teleported".into();
    let (s, r) = h.deliver("workflow_job", "p3", &odd).await;
    assert_eq!(
        (s, r["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
    // ...but a job's values meet the rules whatever the action.
    odd["workflow_job"]["conclusion"] = "unheard_of".into();
    let (s, r) = h.deliver("workflow_job", "p4", &odd).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("workflow_job.conclusion: "),
        "{r}"
    );
}

#[tokio::test]
async fn malformed_payloads_and_headers_get_clear_4xx() {
    let h = hook().await;
    let (s, r) = h
        .deliver(
            "workflow_job",
            "m1",
            &serde_json::json!({"action": "queued"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r["error"]["code"], "missing_field");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workflow_job")
    );
    let body = b"{}".to_vec();
    let sig = signature_header(&SecretString::from(SECRET), &body);
    let req = Request::post("/webhooks/github")
        .header("x-hub-signature-256", sig)
        .header("x-github-delivery", "x")
        .body(Body::from(body))
        .unwrap();
    let resp = h.rig.send(req).await;
    assert_eq!(
        resp.status,
        StatusCode::BAD_REQUEST,
        "missing X-GitHub-Event"
    );
    let resp = h
        .rig
        .send(
            Request::get("/webhooks/github")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.body["error"]["code"], "method_not_allowed");
    // Over the limit (1 MiB by default) is refused without reading it as JSON.
    let big = vec![b' '; 1024 * 1024 + 1];
    let (s, r) = h
        .deliver_raw(
            "workflow_job",
            "big",
            &big,
            Some(format!("sha256={}", "0".repeat(64))),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{r}");
}
