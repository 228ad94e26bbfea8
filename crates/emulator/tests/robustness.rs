//! Untrusted bodies never make the emulator fail: every endpoint answers
//! malformed, hostile or oversized input with a 4xx, and REST answers still
//! conform to the OpenAPI fragment.

mod support;

use base64::Engine as _;
use support::{Coverage, Harness, PAT, good_jwt};

fn garbage() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        "[".repeat(100_000).into_bytes(),
        br#"{"name": 1e999}"#.to_vec(),
        br#"{"name": "n", "runner_group_id": 18446744073709551616, "labels": ["x"]}"#.to_vec(),
        br#"{"labels": {"a": 1}, "name": ["x"]}"#.to_vec(),
        br#""just a string""#.to_vec(),
        b"123456789012345678901234567890".to_vec(),
        br#"{"permissions": []}"#.to_vec(),
        br#"{"output": 5, "exitCode": "x", "result": 1, "waitMs": -1}"#.to_vec(),
    ]
}

#[tokio::test]
async fn garbage_bodies_get_client_errors() {
    let h = Harness::start().await;
    let auth = format!("Bearer {}", good_jwt());
    let install = h
        .call("GET", "/repos/o/r/installation", Some(&auth), None)
        .await;
    let installation = install.body["id"].as_u64().unwrap();
    let (job, run) = h.create_job("o/r", &["x"], &["true"]).await;

    let rest: Vec<(String, String)> = vec![
        (
            "/repos/o/r/actions/runners/generate-jitconfig".into(),
            format!("Bearer {PAT}"),
        ),
        (
            "/orgs/o/actions/runners/generate-jitconfig".into(),
            format!("Bearer {PAT}"),
        ),
        (
            "/repos/o/r/actions/runners/registration-token".into(),
            format!("Bearer {PAT}"),
        ),
        (
            format!("/repos/o/r/actions/jobs/{job}/rerun"),
            format!("Bearer {PAT}"),
        ),
        (
            format!("/repos/o/r/actions/runs/{run}/cancel"),
            format!("token {PAT}"),
        ),
        (
            format!("/app/installations/{installation}/access_tokens"),
            auth.clone(),
        ),
    ];
    for (path, auth) in &rest {
        for body in garbage() {
            let resp = h
                .http
                .post(format!("{}{path}", h.url()))
                .header("Authorization", auth)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            assert!(
                status < 500,
                "{path} {status} for {:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
            h.api
                .check_response("POST", path, status, &bytes)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    let (_, config) = h.jit("/repos/o/r", "robust", &["x"]).await;
    let doc: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(config)
            .unwrap(),
    )
    .unwrap();
    let credential = doc["credential"].as_str().unwrap().to_string();
    let others: Vec<(&str, String, Option<String>)> = vec![
        ("POST", "/_emulator/jobs".into(), None),
        ("PUT", "/_emulator/webhook".into(), None),
        ("POST", "/_runner/register".into(), None),
        (
            "POST",
            "/_runner/acquire".into(),
            Some("Bearer nope".into()),
        ),
        (
            "POST",
            format!("/_runner/jobs/{job}/steps/0"),
            Some(format!("Bearer {credential}")),
        ),
        (
            "POST",
            format!("/_runner/jobs/{job}/complete"),
            Some(format!("Bearer {credential}")),
        ),
        (
            "POST",
            "/_runner/jobs/x/steps/y".into(),
            Some(format!("Bearer {credential}")),
        ),
    ];
    for (method, path, auth) in &others {
        for body in garbage() {
            let mut req = h
                .http
                .request(method.parse().unwrap(), format!("{}{path}", h.url()))
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            let status = req.send().await.unwrap().status().as_u16();
            assert!(
                (400..500).contains(&status),
                "{method} {path} {status} for {:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
        }
    }
    // Fault settings are replaced as a whole, so garbage there is checked last.
    for body in garbage() {
        let status = h
            .http
            .post(format!("{}/_emulator/faults", h.url()))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(status < 500);
    }
    h.admin("DELETE", "/faults", None).await;

    // Still healthy. The job saw only the one legitimate change: cancel takes
    // no body, so the first cancel call cancelled the run.
    assert_eq!(
        h.pat("GET", "/repos/o/r/actions/runners", None)
            .await
            .status,
        200
    );
    let view = h.job(job).await;
    assert_eq!(view["conclusion"], "cancelled");
    assert_eq!(view["steps"][0]["output"], serde_json::Value::Null);
    let (_, jobs) = h.admin("GET", "/jobs", None).await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "no re-run was accepted");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let h = Harness::start().await;
    let big = vec![b' '; 2 * 1024 * 1024];
    let path = "/repos/o/r/actions/runners/generate-jitconfig";
    let resp = h
        .http
        .post(format!("{}{path}", h.url()))
        .bearer_auth(PAT)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        h.api.check_response("POST", path, 413, &bytes).unwrap(),
        Coverage::GenericError
    );
    let admin = h
        .http
        .post(format!("{}/_emulator/jobs", h.url()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 413);
}
