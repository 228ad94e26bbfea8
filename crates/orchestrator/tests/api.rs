//! The HTTP API in-process: the design hooks' exact requests, authorization,
//! idempotency, listing.

use axum::http::StatusCode;
use proxy_runner_domain::ports::JobStore;
use proxy_runner_test_support::rig::{ADMIN, Rig, design_hook_body};

#[tokio::test]
async fn the_design_hooks_work_unchanged_with_an_issued_runner_token() {
    let app = Rig::api().await;
    let token = app.runner_token("proxy-1").await;

    // job-started.sh: labels as one string, values quoted, no runAttempt.
    let body = design_hook_body(
        "build",
        "9001",
        "octo-org/octo-repo",
        "proxy-1",
        "self-hosted,linux,x64",
    );
    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["jobId"], "build");
    assert_eq!(r.body["runId"], 9001);
    assert_eq!(r.body["runAttempt"], 1);
    assert_eq!(r.body["status"], "running");
    assert_eq!(r.body["source"], "hook");
    assert_eq!(
        r.body["labels"],
        serde_json::json!(["self-hosted", "linux", "x64"])
    );

    // The hook retried (network blip): same job, 200.
    let again = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], id.as_str());

    // job-completed.sh: POST /api/jobs/${GITHUB_JOB}/complete, no body, no content type.
    let done = app
        .call_with("POST", "/api/jobs/build/complete", Some(&token), None, None)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["id"], id.as_str());
    assert_eq!(done.body["status"], "completed");
    assert!(done.body["completedAt"].is_string());

    // Completing again is harmless; the key now resolves to no active job.
    let by_id = app
        .call_with(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(by_id.status, StatusCode::OK);
    let by_key = app
        .call_with("POST", "/api/jobs/build/complete", Some(&token), None, None)
        .await;
    assert_eq!(by_key.status, StatusCode::NOT_FOUND);
    assert_eq!(by_key.body["error"]["code"], "not_found");

    let stored = app
        .store
        .get_job(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status.as_str(), "completed");
    let audit = app.store.list_audit(10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(
        actions.contains(&"job.delegated")
            && actions.contains(&"job.completed")
            && actions.contains(&"token.created")
    );
}

#[tokio::test]
async fn completion_body_sets_conclusion_and_exit_code() {
    let app = Rig::api().await;
    let token = app.runner_token("p").await;
    let body = design_hook_body("test", "5", "o/r", "p", "");
    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["labels"], serde_json::json!([]));
    let done = app
        .call(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(&token),
            Some(br#"{"exitCode": 3}"#),
        )
        .await;
    assert_eq!(done.body["conclusion"], "failure");
    assert_eq!(done.body["exitCode"], 3);
    assert_eq!(done.body["status"], "completed");

    let body = design_hook_body("deploy", "6", "o/r", "p", "");
    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let done = app
        .call(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(ADMIN),
            Some(br#"{"conclusion":"cancelled"}"#),
        )
        .await;
    assert_eq!(done.body["status"], "cancelled");
}

#[tokio::test]
async fn a_runner_token_acts_only_for_its_runner() {
    let app = Rig::api().await;
    let a = app.runner_token("runner-a").await;
    let b = app.runner_token("runner-b").await;
    let body = design_hook_body("build", "1", "o/r", "runner-a", "self-hosted");
    let denied = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&b),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.body["error"]["code"], "forbidden");
    assert!(
        app.store
            .list_jobs(&Default::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing stored"
    );

    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&a),
            Some(body.as_bytes()),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    // b can neither read nor complete a's job, nor list, nor issue tokens.
    assert_eq!(
        app.call("GET", &format!("/api/jobs/{id}"), Some(&b), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call_with(
            "POST",
            &format!("/api/jobs/{id}/complete"),
            Some(&b),
            None,
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call_with("POST", "/api/jobs/build/complete", Some(&b), None, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call("GET", "/api/jobs", Some(&b), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("POST", "/api/tokens", Some(&b), Some(br#"{"runner":"x"}"#))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // a can read its own job.
    assert_eq!(
        app.call("GET", &format!("/api/jobs/{id}"), Some(&a), None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn revoked_tokens_stop_working() {
    let app = Rig::api().await;
    let r = app
        .call(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(br#"{"runner":"p"}"#),
        )
        .await;
    let token = r.body["token"].as_str().unwrap().to_string();
    let id = r.body["id"].as_str().unwrap().to_string();
    let body = design_hook_body("build", "1", "o/r", "p", "");
    assert_eq!(
        app.call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes())
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.call("DELETE", &format!("/api/tokens/{id}"), Some(ADMIN), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let after = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(
        after.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    assert_eq!(
        app.call("DELETE", &format!("/api/tokens/{id}"), Some(ADMIN), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let app = Rig::api().await;
    let token = app.runner_token("p").await;
    for i in 1..=5 {
        let repo = if i % 2 == 0 { "o/even" } else { "o/odd" };
        let body = design_hook_body(&format!("job{i}"), &i.to_string(), repo, "p", "");
        app.call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    }
    app.call_with("POST", "/api/jobs/job1/complete", Some(&token), None, None)
        .await;

    let all = app.call("GET", "/api/jobs", Some(ADMIN), None).await;
    assert_eq!(all.body["jobs"].as_array().unwrap().len(), 5);
    let page = app
        .call("GET", "/api/jobs?limit=2", Some(ADMIN), None)
        .await;
    assert_eq!(page.body["jobs"].as_array().unwrap().len(), 2);
    let next = page.body["nextAfter"].as_str().unwrap();
    let page2 = app
        .call(
            "GET",
            &format!("/api/jobs?limit=2&after={next}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(page2.body["jobs"][0]["jobId"], "job3");
    let even = app
        .call("GET", "/api/jobs?repository=o/even", Some(ADMIN), None)
        .await;
    assert_eq!(even.body["jobs"].as_array().unwrap().len(), 2);
    let done = app
        .call("GET", "/api/jobs?status=completed", Some(ADMIN), None)
        .await;
    assert_eq!(done.body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(done.body["jobs"][0]["jobId"], "job1");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = Rig::api().await;
    let h = app.call("GET", "/healthz", None, None).await;
    assert_eq!(h.status, StatusCode::OK);
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["checks"]["store"]["ok"], true);
    let token = app.runner_token("p").await;
    let body = design_hook_body("build", "1", "o/r", "p", "");
    app.call(
        "POST",
        "/api/jobs/delegate",
        Some(&token),
        Some(body.as_bytes()),
    )
    .await;
    app.call("POST", "/api/jobs/delegate", Some(&token), Some(b"{"))
        .await;
    let m = app.call("GET", "/metrics", None, None).await;
    assert_eq!(m.status, StatusCode::OK);
    for name in [
        "proxy_runner_delegations_received_total",
        "proxy_runner_delegations_succeeded_total",
        "proxy_runner_delegations_failed_total{reason=\"bad_json\"}",
        "proxy_runner_time_to_delegate_seconds_bucket",
    ] {
        assert!(m.text.contains(name), "{name} missing from:\n{}", m.text);
    }
}

#[tokio::test]
async fn matrix_legs_on_one_runner_are_separate_jobs() {
    // Every leg of a matrix has the same GITHUB_JOB, run and attempt; a
    // proxy runner runs them one after the other.
    let app = Rig::api().await;
    let token = app.runner_token("p").await;
    let body = design_hook_body("test", "77", "o/r", "p", "self-hosted");
    let leg1 = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(leg1.status, StatusCode::CREATED);
    // While leg 1 runs, the same call is a retry: same job.
    let retry = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body["id"], leg1.body["id"]);
    app.call_with("POST", "/api/jobs/test/complete", Some(&token), None, None)
        .await;
    let leg2 = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(leg2.status, StatusCode::CREATED, "{}", leg2.text);
    assert_ne!(leg2.body["id"], leg1.body["id"]);
    let done = app
        .call_with("POST", "/api/jobs/test/complete", Some(&token), None, None)
        .await;
    assert_eq!(done.body["id"], leg2.body["id"]);
    assert_eq!(done.body["status"], "completed");
}

#[tokio::test]
async fn credentials_under_innocent_names_and_in_the_matrix_are_never_stored() {
    let app = Rig::api().await;
    let token = app.runner_token("p").await;
    let pat = format!("ghp_{}", "Q".repeat(36));
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let body = serde_json::json!({
        "jobId": "build", "runId": 3, "repository": "o/r", "workflow": "CI", "runnerName": "p",
        "labels": "self-hosted",
        "environment": {"BUILD_LABEL": pat, "GH_PAT": pat, "OIDC_ASSERTION": jwt, "NOTIFY": "https://hooks.slack.com/services/T0/B0/XX", "PLAIN": "kept"},
        "matrix": {"os": "linux", "api_token": "abc", "target": pat},
    });
    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["environment"]["PLAIN"], "kept");
    let stored = app.store.list_jobs(&Default::default()).await.unwrap();
    let audit = app.store.list_audit(10).await.unwrap();
    let everything = format!("{}{stored:?}{audit:?}", r.text);
    for secret in [pat.as_str(), jwt, "hooks.slack.com", "abc\""] {
        assert!(!everything.contains(secret), "{secret} was kept");
    }
    let delegated = audit.iter().find(|e| e.action == "job.delegated").unwrap();
    assert_eq!(
        delegated.detail["droppedSecretVariables"], 6,
        "4 variables and 2 matrix values"
    );
    // The count is kept on the job and shown with it.
    assert_eq!(r.body["droppedSecrets"], 6, "{}", r.text);
    assert_eq!(stored[0].dropped_secrets, 6);
    let id = r.body["id"].as_str().unwrap();
    let shown = app
        .call("GET", &format!("/api/jobs/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(shown.body["droppedSecrets"], 6, "{}", shown.text);
}

#[tokio::test]
async fn long_environment_values_are_kept_whole() {
    let app = Rig::api().await;
    let token = app.runner_token("p").await;
    let long = "v".repeat(100 * 1024);
    let body = serde_json::json!({
        "jobId": "build", "runId": 4, "repository": "o/r", "runnerName": "p",
        "environment": {"LONG_VALUE": long},
    });
    let r = app
        .call(
            "POST",
            "/api/jobs/delegate",
            Some(&token),
            Some(body.to_string().as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body["environment"]["LONG_VALUE"].as_str().unwrap().len(),
        long.len()
    );
}

#[tokio::test]
async fn tokens_are_listed_without_values_and_revoked_by_value() {
    let app = Rig::api().await;
    let mut issued = Vec::new();
    for runner in ["proxy-a", "proxy-b", "proxy-a"] {
        let r = app
            .call(
                "POST",
                "/api/tokens",
                Some(ADMIN),
                Some(format!(r#"{{"runner":"{runner}"}}"#).as_bytes()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        issued.push((
            r.body["id"].as_str().unwrap().to_string(),
            r.body["token"].as_str().unwrap().to_string(),
        ));
    }

    // Listed in creation order, with no value and no hash.
    let list = app.call("GET", "/api/tokens", Some(ADMIN), None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let ids: Vec<&str> = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        issued.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(list.body["tokens"][1]["runner"], "proxy-b");
    assert!(list.body["tokens"][0]["createdAt"].is_string());
    assert!(list.body["tokens"][0]["revokedAt"].is_null());
    assert!(list.body["nextAfter"].is_null());
    for (_, value) in &issued {
        assert!(!list.text.contains(value.as_str()), "{}", list.text);
    }
    assert!(!list.text.contains("hash"), "{}", list.text);

    // Paged like jobs; filtered by runner.
    let page = app
        .call("GET", "/api/tokens?limit=2", Some(ADMIN), None)
        .await;
    assert_eq!(page.body["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(page.body["nextAfter"], issued[1].0.as_str());
    let rest = app
        .call(
            "GET",
            &format!("/api/tokens?limit=2&after={}", issued[1].0),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(rest.body["tokens"][0]["id"], issued[2].0.as_str());
    assert!(rest.body["nextAfter"].is_null());
    let of_a = app
        .call("GET", "/api/tokens?runner=proxy-a", Some(ADMIN), None)
        .await;
    assert_eq!(of_a.body["tokens"].as_array().unwrap().len(), 2);

    // Revoked by value: the answer names the token, never the value.
    let (id_b, value_b) = &issued[1];
    let body = serde_json::json!({"token": value_b}).to_string();
    let revoked = app
        .call(
            "POST",
            "/api/tokens/revoke",
            Some(ADMIN),
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert_eq!(revoked.body["id"], id_b.as_str());
    assert_eq!(revoked.body["runner"], "proxy-b");
    assert!(revoked.body["revokedAt"].is_string());
    assert!(!revoked.text.contains(value_b.as_str()));
    let delegate = design_hook_body("build", "1", "o/r", "proxy-b", "");
    assert_eq!(
        app.call(
            "POST",
            "/api/jobs/delegate",
            Some(value_b),
            Some(delegate.as_bytes())
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    // Listed as revoked; the other tokens still work.
    let list = app.call("GET", "/api/tokens", Some(ADMIN), None).await;
    assert!(list.body["tokens"][1]["revokedAt"].is_string());
    assert!(list.body["tokens"][0]["revokedAt"].is_null());
    let a_job = design_hook_body("build", "1", "o/r", "proxy-a", "");
    assert_eq!(
        app.call(
            "POST",
            "/api/jobs/delegate",
            Some(&issued[0].1),
            Some(a_job.as_bytes())
        )
        .await
        .status,
        StatusCode::CREATED
    );

    // Again, or an unknown value: 404 that does not echo the value.
    for value in [value_b.as_str(), "prt_never-issued-SECRET-41"] {
        let body = serde_json::json!({"token": value}).to_string();
        let again = app
            .call(
                "POST",
                "/api/tokens/revoke",
                Some(ADMIN),
                Some(body.as_bytes()),
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
        assert_eq!(again.body["error"]["code"], "not_found");
        assert!(!again.text.contains(value), "{}", again.text);
    }

    // Bad bodies and queries name the problem and never echo a value.
    let long = format!(r#"{{"token":"prt_{}"}}"#, "x".repeat(600));
    let cases: &[(&[u8], StatusCode, &str)] = &[
        (b"{}", StatusCode::UNPROCESSABLE_ENTITY, "token"),
        (
            br#"{"token":""}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "token",
        ),
        (
            br#"{"token":42}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "token",
        ),
        (long.as_bytes(), StatusCode::UNPROCESSABLE_ENTITY, "token"),
        (b"[1]", StatusCode::BAD_REQUEST, "object"),
        (b"{", StatusCode::BAD_REQUEST, "JSON"),
    ];
    for (body, status, named) in cases {
        let r = app
            .call("POST", "/api/tokens/revoke", Some(ADMIN), Some(body))
            .await;
        assert_eq!(r.status, *status, "{}", r.text);
        assert!(r.text.contains(named), "{named}: {}", r.text);
        assert!(!r.text.contains("xxxxxxxx"), "{}", r.text);
    }
    for query in ["limit=0", "limit=501", "after=nope", "colour=red"] {
        let r = app
            .call("GET", &format!("/api/tokens?{query}"), Some(ADMIN), None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "bad_query");
    }

    // Admin only: a runner token can neither list nor revoke, even its own.
    let (_, value_a) = &issued[0];
    assert_eq!(
        app.call("GET", "/api/tokens", Some(value_a), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let own = serde_json::json!({"token": value_a}).to_string();
    assert_eq!(
        app.call(
            "POST",
            "/api/tokens/revoke",
            Some(value_a),
            Some(own.as_bytes())
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("GET", "/api/tokens", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The audit trail names the token by id only.
    let audit = app.store.list_audit(100).await.unwrap();
    let revocation = audit
        .iter()
        .find(|e| e.action == "token.revoked")
        .expect("revocation audited");
    assert_eq!(revocation.detail["tokenId"], id_b.as_str());
    let all = serde_json::to_string(&audit).unwrap();
    for (_, value) in &issued {
        assert!(!all.contains(value.as_str()));
    }
}
