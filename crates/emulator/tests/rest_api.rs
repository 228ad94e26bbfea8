//! The REST API against GitHub's published contract: every response here is
//! checked by the OpenAPI validator (through `Harness::call`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use proxy_runner_emulator::runner::{RunOptions, SimRunner};
use serde_json::{Value, json};
use support::{APP_ID, Coverage, GateExecutor, Harness, OTHER_PAT, OpenApi, PAT, good_jwt, jwt};

// ---------------------------------------------------------------- the validator itself

#[test]
fn validator_accepts_the_fragments_own_examples() {
    let api = OpenApi::load();
    for (example, schema) in [
        ("runner", "runner"),
        ("authentication-token", "authentication-token"),
    ] {
        let value = api
            .get(&format!("#/components/examples/{example}/value"))
            .unwrap()
            .clone();
        api.check_schema(&format!("#/components/schemas/{schema}"), &value)
            .unwrap();
    }
    let paginated = api
        .get("#/components/examples/runner-paginated/value")
        .unwrap()
        .clone();
    api.check_response(
        "GET",
        "/orgs/octo/actions/runners",
        200,
        paginated.to_string().as_bytes(),
    )
    .unwrap();
}

#[test]
fn validator_rejects_what_github_would_not_send() {
    let api = OpenApi::load();
    let good = api
        .get("#/components/examples/runner/value")
        .unwrap()
        .clone();
    let runner = "#/components/schemas/runner";

    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("busy");
    assert!(
        api.check_schema(runner, &missing)
            .unwrap_err()
            .contains("busy")
    );

    let mut wrong_type = good.clone();
    wrong_type["id"] = json!("23");
    assert!(api.check_schema(runner, &wrong_type).is_err());

    let mut bad_enum = good.clone();
    bad_enum["labels"][0]["type"] = json!("builtin");
    assert!(api.check_schema(runner, &bad_enum).is_err());

    let mut not_nullable = good.clone();
    not_nullable["name"] = Value::Null;
    assert!(api.check_schema(runner, &not_nullable).is_err());

    let mut nullable = good;
    nullable["version"] = Value::Null;
    api.check_schema(runner, &nullable).unwrap();

    // Declared statuses only; a body where none is declared; bad dates.
    assert!(
        api.check_response("DELETE", "/repos/o/r/actions/runners/1", 200, b"{}")
            .is_err()
    );
    assert!(
        api.check_response("DELETE", "/repos/o/r/actions/runners/1", 204, b"{}")
            .is_err()
    );
    assert!(
        api.check_response("GET", "/repos/o/r/nothing", 200, b"{}")
            .is_err()
    );
    let token = json!({"token": "x", "expires_at": "yesterday"});
    assert!(
        api.check_response(
            "POST",
            "/repos/o/r/actions/runners/registration-token",
            201,
            token.to_string().as_bytes()
        )
        .is_err()
    );
    // Literal segments win over parameters.
    let (template, _) = api
        .operation("POST", "/repos/o/r/actions/runners/registration-token")
        .unwrap();
    assert_eq!(
        template,
        "/repos/{owner}/{repo}/actions/runners/registration-token"
    );
    // minItems / maxItems.
    let req = "#/components/schemas/x-jitconfig-request";
    assert!(
        api.check_schema(
            req,
            &json!({"name": "n", "runner_group_id": 1, "labels": []})
        )
        .is_err()
    );
    api.check_schema(
        req,
        &json!({"name": "n", "runner_group_id": 1, "labels": ["a"]}),
    )
    .unwrap();
}

// ---------------------------------------------------------------- runners

fn link_rels(link: &str) -> Vec<(String, u64)> {
    link.split(", ")
        .map(|part| {
            let (url, rel) = part.split_once("; rel=").unwrap();
            let page = url
                .trim_matches(['<', '>'])
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("page="))
                .unwrap()
                .parse()
                .unwrap();
            (rel.trim_matches('"').to_string(), page)
        })
        .collect()
}

#[tokio::test]
async fn runners_are_paged_like_github() {
    let h = Harness::start().await;
    for i in 0..75 {
        h.jit(
            "/repos/octo/app",
            &format!("runner-{i:03}"),
            &["self-hosted"],
        )
        .await;
    }
    // An organization runner and a runner of another repository are not listed.
    h.jit("/orgs/octo", "org-runner", &["self-hosted"]).await;
    h.jit("/repos/octo/other", "elsewhere", &["self-hosted"])
        .await;

    let first = h
        .pat("GET", "/repos/octo/app/actions/runners?per_page=30", None)
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.coverage, Some(Coverage::Declared));
    assert_eq!(first.body["total_count"], 75);
    assert_eq!(first.body["runners"].as_array().unwrap().len(), 30);
    let rels = link_rels(first.header("link").unwrap());
    assert_eq!(rels, vec![("next".into(), 2), ("last".into(), 3)]);
    assert!(first.header("link").unwrap().contains("per_page=30"));

    let second = h
        .pat(
            "GET",
            "/repos/octo/app/actions/runners?per_page=30&page=2",
            None,
        )
        .await;
    let rels = link_rels(second.header("link").unwrap());
    assert_eq!(
        rels,
        vec![
            ("prev".into(), 1),
            ("next".into(), 3),
            ("last".into(), 3),
            ("first".into(), 1)
        ]
    );
    let third = h
        .pat(
            "GET",
            "/repos/octo/app/actions/runners?per_page=30&page=3",
            None,
        )
        .await;
    assert_eq!(third.body["runners"].as_array().unwrap().len(), 15);
    let rels = link_rels(third.header("link").unwrap());
    assert_eq!(rels, vec![("prev".into(), 2), ("first".into(), 1)]);

    // The links work as they are: following `next` from page 1 walks all pages.
    let mut followed = 0;
    let mut next = first.header("link").map(str::to_string);
    while let Some(link) = next.take() {
        let Some(url) = link.split(", ").find_map(|part| {
            part.strip_suffix("; rel=\"next\"")
                .map(|u| u.trim_matches(['<', '>']).to_string())
        }) else {
            break;
        };
        let path = url
            .strip_prefix(&h.url())
            .expect("links point back to the emulator");
        let page = h.pat("GET", path, None).await;
        assert_eq!(page.status, 200, "{url}");
        followed += page.body["runners"].as_array().unwrap().len();
        next = page.header("link").map(str::to_string);
    }
    assert_eq!(followed, 45);

    // Pages do not overlap and cover every runner once.
    let mut names: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|r| r.body["runners"].as_array().unwrap().clone())
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 75);

    // Default 30 per page; per_page is capped at 100.
    let default = h.pat("GET", "/repos/octo/app/actions/runners", None).await;
    assert_eq!(default.body["runners"].as_array().unwrap().len(), 30);
    let capped = h
        .pat("GET", "/repos/octo/app/actions/runners?per_page=1000", None)
        .await;
    assert_eq!(capped.body["runners"].as_array().unwrap().len(), 75);
    assert!(capped.header("link").is_none());
    let beyond = h
        .pat(
            "GET",
            "/repos/octo/app/actions/runners?per_page=50&page=9",
            None,
        )
        .await;
    assert_eq!(beyond.body["runners"].as_array().unwrap().len(), 0);
    assert_eq!(beyond.body["total_count"], 75);

    // Filter by name (GitHub names are case-insensitive).
    let named = h
        .pat(
            "GET",
            "/repos/octo/app/actions/runners?name=RUNNER-007",
            None,
        )
        .await;
    assert_eq!(named.body["total_count"], 1);
    assert_eq!(named.body["runners"][0]["name"], "runner-007");

    let org = h.pat("GET", "/orgs/octo/actions/runners", None).await;
    assert_eq!(org.coverage, Some(Coverage::Declared));
    assert_eq!(org.body["total_count"], 1);
    assert_eq!(org.body["runners"][0]["name"], "org-runner");
}

#[tokio::test]
async fn jit_config_conflicts_and_validation() {
    let h = Harness::start().await;
    let ok = h
        .pat(
            "POST",
            "/repos/octo/app/actions/runners/generate-jitconfig",
            Some(json!({"name": "dup", "runner_group_id": 1, "labels": ["self-hosted", "X64", "gpu"]})),
        )
        .await;
    assert_eq!(ok.status, 201);
    assert_eq!(ok.coverage, Some(Coverage::Declared));
    let runner = &ok.body["runner"];
    assert_eq!(
        runner["status"], "offline",
        "a JIT runner is offline until it connects"
    );
    assert_eq!(runner["busy"], false);
    let types: Vec<(&str, &str)> = runner["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("self-hosted", "read-only"),
            ("X64", "read-only"),
            ("gpu", "custom")
        ]
    );
    let doc = ok.body["encoded_jit_config"].as_str().unwrap();
    assert!(SimRunner::from_jit_config(doc).is_ok());

    // Same name again, any case: 409.
    for scope in ["/repos/octo/app", "/repos/OCTO/APP"] {
        let dup = h
            .pat(
                "POST",
                &format!("{scope}/actions/runners/generate-jitconfig"),
                Some(json!({"name": "DUP", "runner_group_id": 1, "labels": ["x"]})),
            )
            .await;
        assert_eq!(dup.status, 409);
        assert_eq!(dup.coverage, Some(Coverage::Declared));
    }
    // The same name in another scope is fine.
    let other = h
        .pat(
            "POST",
            "/orgs/octo/actions/runners/generate-jitconfig",
            Some(json!({"name": "dup", "runner_group_id": 1, "labels": ["x"]})),
        )
        .await;
    assert_eq!(other.status, 201);

    let too_many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
    let bad_bodies = [
        json!({"name": "a", "runner_group_id": 1, "labels": []}),
        json!({"name": "a", "runner_group_id": 1, "labels": too_many}),
        json!({"name": "a", "runner_group_id": 1}),
        json!({"runner_group_id": 1, "labels": ["x"]}),
        json!({"name": "a", "labels": ["x"]}),
        json!({"name": "", "runner_group_id": 1, "labels": ["x"]}),
        json!({"name": "a", "runner_group_id": "1", "labels": ["x"]}),
        json!({"name": "a", "runner_group_id": 1, "labels": [""]}),
        json!({"name": "a", "runner_group_id": 1, "labels": [7]}),
        json!({"name": "a", "runner_group_id": 1, "labels": "x"}),
        json!({"name": "a", "runner_group_id": 1, "labels": ["x"], "work_folder": 3}),
        json!(["not", "an", "object"]),
        Value::Null,
    ];
    for (scope, body) in ["/repos/octo/app", "/orgs/octo"]
        .iter()
        .flat_map(|s| bad_bodies.iter().map(move |b| (s, b)))
    {
        let r = h
            .pat(
                "POST",
                &format!("{scope}/actions/runners/generate-jitconfig"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 422, "{body} -> {}", r.body);
        assert_eq!(r.coverage, Some(Coverage::Declared));
        assert!(!r.body["errors"].as_array().unwrap().is_empty());
    }
    // Names GitHub cannot have do not exist: 404 (declared).
    for scope in ["/repos/octo/bad%20name", "/orgs/bad%3Bname"] {
        let missing = h
            .pat(
                "POST",
                &format!("{scope}/actions/runners/generate-jitconfig"),
                Some(json!({"name": "n", "runner_group_id": 1, "labels": ["x"]})),
            )
            .await;
        assert_eq!(missing.status, 404, "{scope}");
        assert_eq!(missing.coverage, Some(Coverage::Declared));
    }
    // Unknown fields are ignored.
    let extra = h
        .pat(
            "POST",
            "/repos/octo/app/actions/runners/generate-jitconfig",
            Some(json!({"name": "extra", "runner_group_id": 1, "labels": ["x"], "shiny": true})),
        )
        .await;
    assert_eq!(extra.status, 201);

    // Broken JSON is GitHub's 400 "Problems parsing JSON".
    let resp = h
        .http
        .post(format!(
            "{}/repos/octo/app/actions/runners/generate-jitconfig",
            h.url()
        ))
        .bearer_auth(PAT)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.bytes().await.unwrap();
    let coverage = h
        .api
        .check_response(
            "POST",
            "/repos/octo/app/actions/runners/generate-jitconfig",
            400,
            &body,
        )
        .unwrap();
    assert_eq!(coverage, Coverage::GenericError);
}

#[tokio::test]
async fn get_and_delete_runners() {
    let h = Harness::start().await;
    for scope in ["/repos/octo/app", "/orgs/octo"] {
        let (id, _) = h.jit(scope, "r1", &["self-hosted"]).await;
        let got = h
            .pat("GET", &format!("{scope}/actions/runners/{id}"), None)
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.coverage, Some(Coverage::Declared));
        assert_eq!(got.body["id"], id);
        assert_eq!(got.body["ephemeral"], true);

        let deleted = h
            .pat("DELETE", &format!("{scope}/actions/runners/{id}"), None)
            .await;
        assert_eq!(deleted.status, 204);
        assert_eq!(deleted.coverage, Some(Coverage::Declared));
        assert_eq!(deleted.body, Value::Null);

        for method in ["GET", "DELETE"] {
            let gone = h
                .pat(method, &format!("{scope}/actions/runners/{id}"), None)
                .await;
            assert_eq!(gone.status, 404, "{method}");
        }
    }
    // A runner is only found in its own scope.
    let (id, _) = h.jit("/repos/octo/app", "mine", &["x"]).await;
    let wrong = h
        .pat(
            "GET",
            &format!("/repos/octo/other/actions/runners/{id}"),
            None,
        )
        .await;
    assert_eq!(wrong.status, 404);
    let not_a_number = h
        .pat("GET", "/repos/octo/app/actions/runners/abc", None)
        .await;
    assert_eq!(not_a_number.status, 404);
}

#[tokio::test]
async fn deleting_a_busy_runner_is_refused_like_github() {
    let h = Harness::start().await;
    let (job, _) = h.create_job("octo/app", &["self-hosted"], &["sleep"]).await;
    let (runner_id, config) = h.jit("/repos/octo/app", "busy-one", &["self-hosted"]).await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let gate = Arc::new(GateExecutor::default());
    let exec = gate.clone();
    let task = tokio::spawn(async move {
        runner
            .run(
                exec.as_ref(),
                &RunOptions {
                    job_wait: Some(Duration::from_secs(10)),
                    ..RunOptions::default()
                },
            )
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), gate.started.notified())
        .await
        .expect("the runner starts the job");

    let busy = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runners/{runner_id}"),
            None,
        )
        .await;
    assert_eq!(busy.body["busy"], true);
    assert_eq!(busy.body["status"], "online");
    assert_eq!(busy.body["os"], "linux");

    let refused = h
        .pat(
            "DELETE",
            &format!("/repos/octo/app/actions/runners/{runner_id}"),
            None,
        )
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.coverage, Some(Coverage::Declared));
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("is still running a job")
    );

    gate.release.notify_one();
    let outcome = task.await.unwrap().unwrap();
    assert_eq!(outcome.job().unwrap().job_id, job);
    // The ephemeral runner is gone after its job.
    let gone = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runners/{runner_id}"),
            None,
        )
        .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn registration_and_remove_tokens() {
    let h = Harness::start().await;
    for scope in ["/repos/octo/app", "/orgs/octo"] {
        for kind in ["registration-token", "remove-token"] {
            let r = h
                .pat("POST", &format!("{scope}/actions/runners/{kind}"), None)
                .await;
            assert_eq!(r.status, 201, "{scope} {kind}");
            assert_eq!(r.coverage, Some(Coverage::Declared));
            let expires =
                chrono::DateTime::parse_from_rfc3339(r.body["expires_at"].as_str().unwrap())
                    .unwrap();
            let left = expires.signed_duration_since(chrono::Utc::now());
            assert!(left > chrono::Duration::minutes(59) && left <= chrono::Duration::minutes(60));
        }
    }
    let a = h
        .pat(
            "POST",
            "/orgs/octo/actions/runners/registration-token",
            None,
        )
        .await;
    let b = h
        .pat(
            "POST",
            "/orgs/octo/actions/runners/registration-token",
            None,
        )
        .await;
    assert_ne!(a.body["token"], b.body["token"]);
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn bad_credentials_get_401() {
    let h = Harness::start().await;
    let path = "/repos/octo/app/actions/runners";
    let none = h.call("GET", path, None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.body["message"], "Requires authentication");
    for auth in [
        "Bearer wrong",
        "token wrong",
        "Basic abc",
        "Bearer",
        "Bearer a.b.c",
    ] {
        let r = h.call("GET", path, Some(auth), None).await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.body["message"], "Bad credentials");
        assert!(r.body["documentation_url"].is_string());
    }
    let token_scheme = h
        .call("GET", path, Some(&format!("token {PAT}")), None)
        .await;
    assert_eq!(token_scheme.status, 200);
    // Callers without valid credentials are limited per address (60/h).
    let anon = h.call("GET", path, Some("Bearer nope"), None).await;
    assert_eq!(anon.header("x-ratelimit-limit"), Some("60"));
    // An App JWT is not a token for runner endpoints.
    let jwt_on_runners = h
        .call("GET", path, Some(&format!("Bearer {}", good_jwt())), None)
        .await;
    assert_eq!(jwt_on_runners.status, 403);
}

#[tokio::test]
async fn rate_limit_headers_count_per_credential() {
    let h = Harness::start().await;
    let path = "/repos/octo/app/actions/runners";
    let mut last_remaining = None;
    for i in 1..=3u64 {
        let r = h.pat("GET", path, None).await;
        assert_eq!(r.header("x-ratelimit-limit"), Some("5000"));
        assert_eq!(r.header("x-ratelimit-used"), Some(i.to_string().as_str()));
        let remaining: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
        assert_eq!(remaining, 5000 - i);
        assert_eq!(r.header("x-ratelimit-resource"), Some("core"));
        let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > chrono::Utc::now().timestamp());
        if let Some(prev) = last_remaining {
            assert!(remaining < prev);
        }
        last_remaining = Some(remaining);
    }
    let other = h
        .call("GET", path, Some(&format!("Bearer {OTHER_PAT}")), None)
        .await;
    assert_eq!(other.header("x-ratelimit-used"), Some("1"));
    let ids: Vec<String> = [
        h.pat("GET", path, None).await,
        h.pat("GET", path, None).await,
    ]
    .iter()
    .map(|r| r.header("x-github-request-id").unwrap().to_string())
    .collect();
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn anonymous_callers_run_out_at_60() {
    let h = Harness::start().await;
    let path = "/repos/octo/app/actions/runners";
    for _ in 0..60 {
        let r = h.call("GET", path, None, None).await;
        assert_eq!(r.status, 401);
    }
    let limited = h.call("GET", path, None, None).await;
    assert_eq!(limited.status, 403);
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        limited.body["message"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    // A PAT has its own budget.
    assert_eq!(h.pat("GET", path, None).await.status, 200);
}

#[tokio::test]
async fn github_app_flow() {
    let mut config = support::config();
    let ttl = Duration::from_secs(3);
    config.installation_token_ttl = Some(ttl);
    let h = Harness::with_config(config).await;
    let auth = format!("Bearer {}", good_jwt());

    let inst = h
        .call("GET", "/repos/octo/app/installation", Some(&auth), None)
        .await;
    assert_eq!(inst.status, 200);
    assert_eq!(inst.coverage, Some(Coverage::Declared));
    assert_eq!(inst.body["app_id"], APP_ID);
    let id = inst.body["id"].as_u64().unwrap();

    // The organization form is not in the fragment; same installation schema.
    let org = h
        .call_unlisted("GET", "/orgs/OCTO/installation", Some(&auth), None)
        .await;
    assert_eq!(org.status, 200);
    h.api
        .check_schema("#/components/schemas/installation", &org.body)
        .unwrap();
    assert_eq!(org.body["id"], id, "one installation per account");

    let minted_at = tokio::time::Instant::now();
    let token = h
        .call(
            "POST",
            &format!("/app/installations/{id}/access_tokens"),
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(token.status, 201);
    assert_eq!(token.coverage, Some(Coverage::Declared));
    let installation_token = token.body["token"].as_str().unwrap().to_string();
    assert!(installation_token.starts_with("ghs_"));
    let narrowed = h
        .call(
            "POST",
            &format!("/app/installations/{id}/access_tokens"),
            Some(&auth),
            Some(json!({"permissions": {"administration": "write"}})),
        )
        .await;
    assert_eq!(narrowed.status, 201);
    assert_eq!(
        narrowed.body["permissions"],
        json!({"administration": "write"})
    );
    let bad_perm = h
        .call(
            "POST",
            &format!("/app/installations/{id}/access_tokens"),
            Some(&auth),
            Some(json!({"permissions": {"administration": "admin"}})),
        )
        .await;
    assert_eq!(bad_perm.status, 422);
    assert_eq!(bad_perm.coverage, Some(Coverage::Declared));

    // The installation token works for its account, and only there.
    let inst_auth = format!("token {installation_token}");
    let listed = h
        .call("GET", "/orgs/octo/actions/runners", Some(&inst_auth), None)
        .await;
    assert_eq!(listed.status, 200);
    let jit = h
        .call(
            "POST",
            "/repos/octo/app/actions/runners/generate-jitconfig",
            Some(&inst_auth),
            Some(json!({"name": "via-app", "runner_group_id": 1, "labels": ["x"]})),
        )
        .await;
    assert_eq!(jit.status, 201);
    let foreign = h
        .call(
            "GET",
            "/orgs/elsewhere/actions/runners",
            Some(&inst_auth),
            None,
        )
        .await;
    assert_eq!(foreign.status, 403);

    // Unknown installation: 404 (declared).
    let unknown = h
        .call(
            "POST",
            "/app/installations/1/access_tokens",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.coverage, Some(Coverage::Declared));

    // App endpoints refuse anything but a valid JWT: 401 (declared).
    let now = chrono::Utc::now().timestamp();
    // Flip a character well inside the signature (the last one may only
    // carry padding bits).
    let mut tampered: Vec<char> = good_jwt().chars().collect();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let refused = [
        format!("Bearer {PAT}"),
        format!("Bearer {}", jwt(now - 700, now - 100, json!(APP_ID))), // expired
        format!("Bearer {}", jwt(now - 60, now + 1200, json!(APP_ID))), // longer than 10 min
        format!("Bearer {}", jwt(now + 600, now + 900, json!(APP_ID))), // issued in the future
        format!("Bearer {}", jwt(now - 60, now + 500, json!(APP_ID + 1))), // another app
        format!("Bearer {tampered}"),
        "Bearer not.a.jwt".to_string(),
    ];
    for auth in &refused {
        let r = h
            .call(
                "POST",
                &format!("/app/installations/{id}/access_tokens"),
                Some(auth),
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.coverage, Some(Coverage::Declared));
        let inst = h
            .call("GET", "/repos/octo/app/installation", Some(auth), None)
            .await;
        assert_eq!(inst.status, 401);
    }
    // iss may be a string too.
    let string_iss = format!(
        "Bearer {}",
        jwt(now - 60, now + 500, json!(APP_ID.to_string()))
    );
    let ok = h
        .call(
            "GET",
            "/repos/octo/app/installation",
            Some(&string_iss),
            None,
        )
        .await;
    assert_eq!(ok.status, 200);

    // Installation tokens expire; then they are bad credentials.
    tokio::time::sleep_until(minted_at + ttl + Duration::from_millis(300)).await;
    let expired = h
        .call("GET", "/orgs/octo/actions/runners", Some(&inst_auth), None)
        .await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body["message"], "Bad credentials");
}

// ---------------------------------------------------------------- runs and jobs

#[tokio::test]
async fn workflow_runs_and_jobs() {
    let h = Harness::start().await;
    let (job, run) = h
        .create_job("octo/app", &["self-hosted", "linux"], &["echo hi"])
        .await;
    let (_, other_run) = h
        .create_job("octo/other", &["self-hosted"], &["true"])
        .await;

    let queued = h
        .pat("GET", "/repos/octo/app/actions/runs?status=queued", None)
        .await;
    assert_eq!(queued.status, 200);
    assert_eq!(queued.coverage, Some(Coverage::Declared));
    assert_eq!(queued.body["total_count"], 1);
    assert_eq!(queued.body["workflow_runs"][0]["id"], run);
    assert_eq!(queued.body["workflow_runs"][0]["status"], "queued");

    let jobs = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runs/{run}/jobs"),
            None,
        )
        .await;
    assert_eq!(jobs.status, 200);
    assert_eq!(jobs.coverage, Some(Coverage::Declared));
    assert_eq!(jobs.body["jobs"][0]["id"], job);
    assert_eq!(
        jobs.body["jobs"][0]["labels"],
        json!(["self-hosted", "linux"])
    );
    assert_eq!(jobs.body["jobs"][0]["runner_id"], Value::Null);

    let one = h
        .pat("GET", &format!("/repos/octo/app/actions/jobs/{job}"), None)
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.coverage, Some(Coverage::Declared));
    assert_eq!(one.body["status"], "queued");
    for path in [
        format!("/repos/octo/app/actions/jobs/{}", job + 1000),
        format!("/repos/octo/other/actions/jobs/{job}"),
        format!("/repos/octo/app/actions/runs/{other_run}/jobs"),
    ] {
        assert_eq!(h.pat("GET", &path, None).await.status, 404, "{path}");
    }

    // Re-running a job that has not finished is refused (403, declared).
    let early = h
        .pat(
            "POST",
            &format!("/repos/octo/app/actions/jobs/{job}/rerun"),
            None,
        )
        .await;
    assert_eq!(early.status, 403);
    assert_eq!(early.coverage, Some(Coverage::Declared));

    // Run it.
    let (_, config) = h
        .jit("/repos/octo/app", "r", &["self-hosted", "Linux"])
        .await;
    let exec = support::RecordingExecutor::default();
    let outcome = SimRunner::from_jit_config(&config)
        .unwrap()
        .run(
            &exec,
            &RunOptions {
                job_wait: Some(Duration::from_secs(10)),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.job().unwrap().job_id, job);
    let done = h
        .pat("GET", &format!("/repos/octo/app/actions/jobs/{job}"), None)
        .await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["conclusion"], "success");
    assert_eq!(done.body["runner_name"], "r");
    assert_eq!(done.body["runner_group_name"], "Default");
    assert_eq!(done.body["steps"][0]["conclusion"], "success");
    let completed = h
        .pat("GET", "/repos/octo/app/actions/runs?status=success", None)
        .await;
    assert_eq!(completed.body["total_count"], 1);
    assert_eq!(completed.body["workflow_runs"][0]["conclusion"], "success");
    assert_eq!(
        h.pat("GET", "/repos/octo/app/actions/runs?status=queued", None)
            .await
            .body["total_count"],
        0
    );

    // Cancelling a finished run: 409 (declared).
    let late = h
        .pat(
            "POST",
            &format!("/repos/octo/app/actions/runs/{run}/cancel"),
            None,
        )
        .await;
    assert_eq!(late.status, 409);
    assert_eq!(late.coverage, Some(Coverage::Declared));

    // Re-run: a new job of attempt 2, queued again.
    let rerun = h
        .pat(
            "POST",
            &format!("/repos/octo/app/actions/jobs/{job}/rerun"),
            None,
        )
        .await;
    assert_eq!(rerun.status, 201);
    assert_eq!(rerun.coverage, Some(Coverage::Declared));
    let latest = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runs/{run}/jobs"),
            None,
        )
        .await;
    assert_eq!(latest.body["total_count"], 1);
    assert_eq!(latest.body["jobs"][0]["run_attempt"], 2);
    assert_eq!(latest.body["jobs"][0]["status"], "queued");
    let all = h
        .pat(
            "GET",
            &format!("/repos/octo/app/actions/runs/{run}/jobs?filter=all"),
            None,
        )
        .await;
    assert_eq!(all.body["total_count"], 2);
    let new_job = latest.body["jobs"][0]["id"].as_u64().unwrap();

    // Cancel: the queued re-run ends cancelled at once (202, declared).
    let cancel = h
        .pat(
            "POST",
            &format!("/repos/octo/app/actions/runs/{run}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancel.status, 202);
    assert_eq!(cancel.coverage, Some(Coverage::Declared));
    let cancelled = h.job(new_job).await;
    assert_eq!(cancelled["status"], "completed");
    assert_eq!(cancelled["conclusion"], "cancelled");
    let runs = h
        .pat("GET", "/repos/octo/app/actions/runs?status=cancelled", None)
        .await;
    assert_eq!(runs.body["total_count"], 1);
    assert_eq!(runs.body["workflow_runs"][0]["run_attempt"], 2);

    // Runs endpoints do not exist at organization scope.
    assert_eq!(
        h.call_unlisted(
            "GET",
            "/orgs/octo/actions/runs",
            Some(&format!("Bearer {PAT}")),
            None
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn runs_are_paged() {
    let h = Harness::start().await;
    for _ in 0..5 {
        h.create_job("octo/app", &["x"], &[]).await;
    }
    let r = h
        .pat(
            "GET",
            "/repos/octo/app/actions/runs?status=queued&per_page=2&page=2",
            None,
        )
        .await;
    assert_eq!(r.body["total_count"], 5);
    assert_eq!(r.body["workflow_runs"].as_array().unwrap().len(), 2);
    let link = r.header("link").unwrap();
    assert!(link.contains("status=queued"), "{link}");
    assert!(
        link.contains(&format!("<{}/repos/octo/app/actions/runs?", h.url())),
        "{link}"
    );
    assert_eq!(
        link_rels(link),
        vec![
            ("prev".into(), 1),
            ("next".into(), 3),
            ("last".into(), 3),
            ("first".into(), 1)
        ]
    );
}

#[tokio::test]
async fn unknown_paths_are_github_404s() {
    let h = Harness::start().await;
    let r = h
        .call_unlisted(
            "GET",
            "/repos/octo/app/nothing/here",
            Some(&format!("Bearer {PAT}")),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["message"], "Not Found");
    assert!(r.body["documentation_url"].is_string());
}
