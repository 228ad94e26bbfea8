//! Request bodies the server never reads or holds: an anonymous caller's,
//! an unsigned webhook's, one over the limit; and the bound on large bodies
//! read at once. Bodies here are streams that record whether anything was
//! pulled from them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use proxy_runner_orchestrator::config::HttpSection;
use proxy_runner_test_support::rig::{ADMIN, Rig, RigOptions, WEBHOOK_SECRET};
use proxy_runner_webhooks::signature_header;
use secrecy::SecretString;
use tokio::sync::mpsc;

/// One chunk of `size` bytes; `pulled` turns true once the server reads it.
fn watched(size: usize) -> (Body, Arc<AtomicBool>) {
    let pulled = Arc::new(AtomicBool::new(false));
    let flag = pulled.clone();
    let stream = futures::stream::once(async move {
        flag.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
    });
    (Body::from_stream(stream), pulled)
}

/// A body whose chunks the test sends; `pulled` turns true at the first read.
fn fed() -> (Body, mpsc::Sender<Bytes>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let pulled = Arc::new(AtomicBool::new(false));
    let flag = pulled.clone();
    let stream = futures::stream::unfold(rx, move |mut rx| {
        flag.store(true, Ordering::SeqCst);
        async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) }
    });
    (Body::from_stream(stream), tx, pulled)
}

fn post(uri: &str, token: Option<&str>, length: Option<usize>, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(n) = length {
        req = req.header("content-length", n.to_string());
    }
    req.body(body).unwrap()
}

#[tokio::test]
async fn the_body_of_a_caller_without_valid_credentials_is_never_read() {
    let rig = Rig::api().await;
    for uri in [
        "/api/jobs/delegate",
        "/api/jobs/some-job/complete",
        "/api/tokens",
        "/api/hooks/prepare-job",
        "/api/hooks/run-script-step",
        "/api/runners/jitconfig",
        "/api/runners/heartbeat",
    ] {
        for token in [None, Some("not-a-token")] {
            let (body, pulled) = watched(512 * 1024);
            let reply = rig.send(post(uri, token, Some(512 * 1024), body)).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{uri}: {}",
                reply.text
            );
            assert_eq!(reply.body["error"]["code"], "unauthorized", "{uri}");
            assert!(
                !pulled.load(Ordering::SeqCst),
                "{uri} with {token:?}: the body was read before the 401"
            );
        }
    }
}

fn webhook(signature: Option<&str>, length: Option<usize>, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method("POST")
        .uri("/webhooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "d-1");
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    if let Some(n) = length {
        req = req.header("content-length", n.to_string());
    }
    req.body(body).unwrap()
}

#[tokio::test]
async fn a_webhook_without_a_well_formed_signature_is_refused_before_its_body_is_read() {
    let rig = Rig::build(RigOptions {
        github: true,
        ..Default::default()
    })
    .await;
    for signature in [None, Some("sha1=abcd"), Some("sha256=not-hex")] {
        let (body, pulled) = watched(900 * 1024);
        let reply = rig.send(webhook(signature, None, body)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
        assert!(
            !pulled.load(Ordering::SeqCst),
            "{signature:?}: body read before the 401"
        );
    }
}

#[tokio::test]
async fn a_webhook_body_over_the_limit_is_refused_whether_declared_or_streamed() {
    let rig = Rig::build(RigOptions {
        github: true,
        ..Default::default()
    })
    .await;
    let limit = HttpSection::default().webhook_body_limit_bytes;
    let wrong = format!("sha256={}", "0".repeat(64));
    // Declared: answered at once, nothing read.
    let (body, pulled) = watched(limit + 1);
    let reply = rig.send(webhook(Some(&wrong), Some(limit + 1), body)).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert!(!pulled.load(Ordering::SeqCst));
    // Streamed without a length: cut off at the limit.
    let (body, _) = watched(limit + 1);
    let reply = rig.send(webhook(Some(&wrong), None, body)).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn a_signed_webhook_arriving_in_small_chunks_is_verified_as_it_streams() {
    let rig = Rig::build(RigOptions {
        github: true,
        ..Default::default()
    })
    .await;
    let mut value = proxy_runner_test_support::fixture_json("github/queued.payload.json");
    value["workflow_job"]["labels"] = serde_json::json!(["self-hosted"]);
    let payload = value.to_string();
    let signature = signature_header(&SecretString::from(WEBHOOK_SECRET), payload.as_bytes());
    let chunks: Vec<Result<Bytes, std::io::Error>> = payload
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    let reply = rig.send(webhook(Some(&signature), None, body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    // The same bytes with one changed are refused.
    let mut tampered = payload.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let reply = rig
        .send(webhook(Some(&signature), None, Body::from(tampered)))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
}

#[tokio::test]
async fn large_bodies_take_turns_and_one_that_waits_too_long_is_told_to_retry() {
    let rig = Rig::build(RigOptions {
        http: Some(HttpSection {
            max_large_bodies: 1,
            large_body_wait_secs: 1,
            ..HttpSection::default()
        }),
        ..Default::default()
    })
    .await;
    let size = 200 * 1024;
    // A holds the only turn: its body is being read and not finished.
    let (body, feed, pulled) = fed();
    let router = rig.router.clone();
    let first = tokio::spawn(async move {
        use tower::ServiceExt;
        router
            .oneshot(post("/api/tokens", Some(ADMIN), Some(size), body))
            .await
            .unwrap()
            .status()
    });
    proxy_runner_test_support::eventually(
        "the first large body is being read",
        Duration::from_secs(10),
        || {
            let pulled = pulled.clone();
            async move { pulled.load(Ordering::SeqCst) }
        },
    )
    .await;
    // B waits for the turn, then is told to come back.
    let (body, pulled_b) = watched(size);
    let reply = rig
        .send(post("/api/tokens", Some(ADMIN), Some(size), body))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["error"]["code"], "busy");
    assert!(!pulled_b.load(Ordering::SeqCst), "B's body was not read");
    // A small body is never held up.
    let reply = rig
        .call(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(br#"{"runner":"small"}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    // A finishes; the turn is free again.
    feed.send(Bytes::from(vec![b' '; size])).await.unwrap();
    drop(feed);
    assert_eq!(first.await.unwrap(), StatusCode::BAD_REQUEST);
    let (body, _) = watched(size);
    let reply = rig
        .send(post("/api/tokens", Some(ADMIN), Some(size), body))
        .await;
    assert_ne!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
}
