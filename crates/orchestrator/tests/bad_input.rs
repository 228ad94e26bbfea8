//! Every endpoint against every class of bad input: a 4xx with a JSON error
//! naming the problem, never a 5xx, and nothing stored.

use axum::http::StatusCode;
use proxy_runner_domain::ports::JobStore;
use proxy_runner_test_support::rig::{ADMIN, Rig, design_hook_body};

struct Case {
    name: String,
    method: &'static str,
    uri: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    status: u16,
    code: &'static str,
    mentions: &'static str,
}

#[allow(clippy::too_many_arguments)] // one row of the table, read as one line
fn case(
    name: &'static str,
    method: &'static str,
    uri: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        name: name.to_string(),
        method,
        uri: uri.to_string(),
        token: token.map(str::to_string),
        body: body.map(<[u8]>::to_vec),
        content_type: Some("application/json"),
        status,
        code,
        mentions,
    }
}

#[tokio::test]
async fn every_endpoint_rejects_bad_input_cleanly() {
    let app = Rig::api().await;
    let runner = app.runner_token("p").await;
    let r = runner.as_str();
    let good = design_hook_body("build", "1", "o/r", "p", "self-hosted");
    let big = {
        let mut v = b"{\"jobId\":\"".to_vec();
        v.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 1));
        v.extend(b"\"}");
        v
    };
    let unknown = uuid::Uuid::now_v7();
    let mut cases = vec![
        // --- delegate
        case("delegate without token", "POST", "/api/jobs/delegate", None, Some(good.as_bytes()), 401, "unauthorized", "Authorization"),
        case("delegate with unknown token", "POST", "/api/jobs/delegate", Some("prt_nope"), Some(good.as_bytes()), 401, "unauthorized", "unknown token"),
        case("delegate malformed JSON", "POST", "/api/jobs/delegate", Some(r), Some(b"{\"jobId\": "), 400, "bad_json", "not valid JSON"),
        case("delegate empty body", "POST", "/api/jobs/delegate", Some(r), Some(b""), 400, "bad_json", "empty"),
        case("delegate JSON array", "POST", "/api/jobs/delegate", Some(r), Some(b"[]"), 400, "bad_json", "an array"),
        case("delegate missing jobId", "POST", "/api/jobs/delegate", Some(r), Some(br#"{"runId":"1","repository":"o/r","runnerName":"p"}"#), 422, "missing_field", "jobId"),
        case("delegate mistyped runId", "POST", "/api/jobs/delegate", Some(r), Some(br#"{"jobId":"b","runId":true,"repository":"o/r","runnerName":"p"}"#), 422, "invalid_field", "runId"),
        case("delegate bad repository", "POST", "/api/jobs/delegate", Some(r), Some(br#"{"jobId":"b","runId":"1","repository":"o r","runnerName":"p"}"#), 422, "invalid_field", "repository"),
        case("delegate mistyped labels", "POST", "/api/jobs/delegate", Some(r), Some(br#"{"jobId":"b","runId":"1","repository":"o/r","runnerName":"p","labels":{"a":1}}"#), 422, "invalid_field", "labels"),
        case("delegate mistyped environment", "POST", "/api/jobs/delegate", Some(r), Some(br#"{"jobId":"b","runId":"1","repository":"o/r","runnerName":"p","environment":"PATH=/bin"}"#), 422, "invalid_field", "environment"),
        case("delegate for another runner", "POST", "/api/jobs/delegate", Some(r), Some(design_hook_body("b", "1", "o/r", "other", "").as_bytes()), 403, "forbidden", "runnerName"),
        case("delegate body over 1 MiB", "POST", "/api/jobs/delegate", Some(r), Some(&big), 413, "body_too_large", "larger than"),
        case("delegate wrong method", "GET", "/api/jobs/delegate", Some(r), None, 405, "method_not_allowed", "not allowed"),
        // --- complete
        case("complete without token", "POST", "/api/jobs/build/complete", None, None, 401, "unauthorized", "Authorization"),
        case("complete unknown id", "POST", &format!("/api/jobs/{unknown}/complete"), Some(r), None, 404, "not_found", "no job"),
        case("complete unknown key", "POST", "/api/jobs/nothing/complete", Some(r), None, 404, "not_found", "no active job"),
        case("complete by key as admin without runner", "POST", "/api/jobs/build/complete", Some(ADMIN), None, 400, "bad_query", "runner"),
        case("complete malformed body", "POST", "/api/jobs/build/complete", Some(r), Some(b"{oops"), 400, "bad_json", "not valid JSON"),
        case("complete mistyped exitCode", "POST", "/api/jobs/build/complete", Some(r), Some(br#"{"exitCode":"x"}"#), 422, "invalid_field", "exitCode"),
        case("complete unknown query", "POST", "/api/jobs/build/complete?force=1", Some(r), None, 400, "bad_query", "force"),
        case("complete body over 1 MiB", "POST", "/api/jobs/build/complete", Some(r), Some(&big), 413, "body_too_large", "larger than"),
        // --- list / get
        case("list without token", "GET", "/api/jobs", None, None, 401, "unauthorized", "Authorization"),
        case("list as runner", "GET", "/api/jobs", Some(r), None, 403, "forbidden", "admin"),
        case("list bad status", "GET", "/api/jobs?status=done", Some(ADMIN), None, 400, "bad_query", "status"),
        case("list bad limit", "GET", "/api/jobs?limit=0", Some(ADMIN), None, 400, "bad_query", "limit"),
        case("list bad after", "GET", "/api/jobs?after=xyz", Some(ADMIN), None, 400, "bad_query", "after"),
        case("list unknown param", "GET", "/api/jobs?colour=red", Some(ADMIN), None, 400, "bad_query", "colour"),
        case("get without token", "GET", &format!("/api/jobs/{unknown}"), None, None, 401, "unauthorized", "Authorization"),
        case("get unknown id", "GET", &format!("/api/jobs/{unknown}"), Some(ADMIN), None, 404, "not_found", "no job"),
        case("get non-uuid id", "GET", "/api/jobs/not-a-uuid", Some(ADMIN), None, 404, "not_found", "no job"),
        // --- tokens
        case("token without auth", "POST", "/api/tokens", None, Some(br#"{"runner":"x"}"#), 401, "unauthorized", "Authorization"),
        case("token as runner", "POST", "/api/tokens", Some(r), Some(br#"{"runner":"x"}"#), 403, "forbidden", "admin"),
        case("token missing runner", "POST", "/api/tokens", Some(ADMIN), Some(b"{}"), 422, "missing_field", "runner"),
        case("token mistyped runner", "POST", "/api/tokens", Some(ADMIN), Some(br#"{"runner":7}"#), 422, "invalid_field", "runner"),
        case("token malformed JSON", "POST", "/api/tokens", Some(ADMIN), Some(b"runner=x"), 400, "bad_json", "not valid JSON"),
        case("token body over 1 MiB", "POST", "/api/tokens", Some(ADMIN), Some(&big), 413, "body_too_large", "larger than"),
        case("revoke unknown", "DELETE", &format!("/api/tokens/{unknown}"), Some(ADMIN), None, 404, "not_found", "no active token"),
        case("revoke as runner", "DELETE", &format!("/api/tokens/{unknown}"), Some(r), None, 403, "forbidden", "admin"),
        case("revoke without auth", "DELETE", &format!("/api/tokens/{unknown}"), None, None, 401, "unauthorized", "Authorization"),
        case("complete with a non-UTF-8 id", "POST", "/api/jobs/%FF/complete", Some(r), None, 400, "bad_path", "UTF-8"),
        case("get with a non-UTF-8 id", "GET", "/api/jobs/%FF", Some(ADMIN), None, 400, "bad_path", "UTF-8"),
        case("non-UTF-8 id without a token", "GET", "/api/jobs/%FF", None, None, 401, "unauthorized", "Authorization"),
        // --- misc
        case("unknown route", "GET", "/api/nothing", Some(ADMIN), None, 404, "not_found", "no such route"),
        case("wrong method", "PUT", "/api/tokens", Some(ADMIN), None, 405, "method_not_allowed", "not allowed"),
        case("scheme not bearer", "GET", "/api/jobs", None, None, 401, "unauthorized", "Authorization"),
    ];
    let mut xml = case(
        "delegate as XML",
        "POST",
        "/api/jobs/delegate",
        Some(r),
        Some(b"<job/>"),
        415,
        "unsupported_media_type",
        "not JSON",
    );
    xml.content_type = Some("application/xml");
    cases.push(xml);
    // The design's hook splices values into its body: a workflow name that
    // closes the string and adds a key must not move the job elsewhere.
    let spliced = design_hook_body("build", "9", "o/r", "p", "self-hosted").replace(
        r#""workflow": "CI""#,
        r#""workflow": "CI", "repository": "evil/injected", "zz": """#,
    );
    cases.push(case(
        "a duplicate key",
        "POST",
        "/api/jobs/delegate",
        Some(r),
        Some(spliced.as_bytes()),
        400,
        "bad_json",
        "duplicate key \"repository\"",
    ));
    let good = design_hook_body("build", "9", "o/r", "p", "self-hosted");
    let done = format!("/api/jobs/{unknown}/complete");
    // Every route that takes a JSON body, with the body it would accept.
    let json_routes: [(&str, &str, &str, &[u8]); 4] = [
        ("delegate", "/api/jobs/delegate", r, good.as_bytes()),
        ("token create", "/api/tokens", ADMIN, br#"{"runner":"p2"}"#),
        (
            "token revoke",
            "/api/tokens/revoke",
            ADMIN,
            br#"{"token":"prt_x"}"#,
        ),
        ("complete", &done, r, br#"{"conclusion":"success"}"#),
    ];
    for (route, uri, token, body) in json_routes {
        for (what, ct) in [
            ("form-encoded", Some("application/x-www-form-urlencoded")),
            ("a look-alike type", Some("application/jsonx")),
            (
                "a JSON-based type of its own meaning",
                Some("application/json-patch+json"),
            ),
            ("no Content-Type", None),
        ] {
            let mut c = case(
                what,
                "POST",
                uri,
                Some(token),
                Some(body),
                415,
                "unsupported_media_type",
                "Content-Type",
            );
            c.name = format!("{route}: {what}");
            c.content_type = ct;
            cases.push(c);
        }
    }

    let mut failures = Vec::new();
    for c in &cases {
        let reply = app
            .call_with(
                c.method,
                &c.uri,
                c.token.as_deref(),
                c.body.as_deref(),
                c.content_type,
            )
            .await;
        let code = reply.body["error"]["code"].as_str().unwrap_or("<none>");
        let message = reply.body["error"]["message"].as_str().unwrap_or("");
        if reply.status.as_u16() != c.status || code != c.code || !message.contains(c.mentions) {
            failures.push(format!(
                "{}: got {} {code} {message:?}; want {} {} mentioning {:?}",
                c.name, reply.status, c.status, c.code, c.mentions
            ));
        }
        assert!(
            !reply.status.is_server_error(),
            "{}: {}",
            c.name,
            reply.text
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        app.store
            .list_jobs(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "a rejected request stored a job"
    );

    // A Basic scheme is refused too.
    let basic = app.router.clone();
    use tower::ServiceExt;
    let req = axum::http::Request::get("/api/jobs")
        .header("authorization", "Basic YWRtaW46eA==")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        basic.oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
