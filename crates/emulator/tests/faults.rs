//! Fault knobs: injected errors, GitHub's primary and secondary rate limits,
//! latency. They act on the REST API only; responses stay conformant.

mod support;

use std::time::Duration;

use proxy_runner_emulator::runner::{RunOptions, SimRunner};
use serde_json::json;
use support::{Coverage, Harness, RecordingExecutor, good_jwt};

const RUNNERS: &str = "/repos/octo/app/actions/runners";

#[tokio::test]
async fn error_count_fails_that_many_calls_then_stops() {
    let h = Harness::start().await;
    let (status, _) = h
        .admin(
            "POST",
            "/faults",
            Some(json!({"errorStatus": 503, "errorCount": 2})),
        )
        .await;
    assert_eq!(status, 204);
    for _ in 0..2 {
        let r = h.pat("GET", RUNNERS, None).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.coverage, Some(Coverage::GenericError));
        assert!(r.body["message"].is_string());
    }
    for _ in 0..3 {
        assert_eq!(h.pat("GET", RUNNERS, None).await.status, 200);
    }
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert_eq!(faults["errorCount"], 0);
}

#[tokio::test]
async fn error_share_fails_a_share_of_calls() {
    let h = Harness::start().await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"errorStatus": 502, "errorShare": 1.0})),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(h.pat("GET", RUNNERS, None).await.status, 502);
    }
    // POSTs fail the same way (checked as GitHub's basic error).
    let r = h
        .pat(
            "POST",
            "/repos/octo/app/actions/runners/generate-jitconfig",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 502);

    h.admin(
        "POST",
        "/faults",
        Some(json!({"errorStatus": 500, "errorShare": 0.5})),
    )
    .await;
    let mut failed = 0;
    let mut ok = 0;
    for _ in 0..200 {
        match h.pat("GET", RUNNERS, None).await.status {
            500 => failed += 1,
            200 => ok += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // With p = 0.5 over 200 calls, both happen (all-or-nothing has odds 2^-199).
    assert!(failed > 0 && ok > 0, "failed {failed}, ok {ok}");

    assert_eq!(h.admin("DELETE", "/faults", None).await.0, 204);
    for _ in 0..20 {
        assert_eq!(h.pat("GET", RUNNERS, None).await.status, 200);
    }
}

#[tokio::test]
async fn primary_rate_limit_is_403_with_remaining_zero() {
    let h = Harness::start().await;
    let auth = format!("Bearer {}", good_jwt());
    let inst = h
        .call("GET", "/repos/octo/app/installation", Some(&auth), None)
        .await;
    let id = inst.body["id"].as_u64().unwrap();
    h.admin(
        "POST",
        "/faults",
        Some(json!({"rateLimit": {"resetInSecs": 120}})),
    )
    .await;
    let before = chrono::Utc::now().timestamp();
    let r = h.pat("GET", RUNNERS, None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-used"), r.header("x-ratelimit-limit"));
    let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(
        reset >= before + 118 && reset <= before + 122,
        "reset {reset}"
    );
    assert!(r.body["message"].as_str().unwrap().contains("rate limit"));
    assert!(r.header("retry-after").is_none());

    // Where the fragment declares 403 the body is checked against it.
    let declared = h
        .call(
            "POST",
            &format!("/app/installations/{id}/access_tokens"),
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(declared.status, 403);
    assert_eq!(declared.coverage, Some(Coverage::Declared));
    assert_eq!(declared.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn primary_rate_limit_lifts_at_reset() {
    let h = Harness::start().await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"rateLimit": {"resetInSecs": 1}})),
    )
    .await;
    let limited = h.pat("GET", RUNNERS, None).await;
    assert_eq!(limited.status, 403);
    let reset: i64 = limited
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    // Wait as a client would: until the reset time has passed.
    let wait_ms = ((reset + 1) * 1000 - chrono::Utc::now().timestamp_millis()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    let after = h.pat("GET", RUNNERS, None).await;
    assert_eq!(after.status, 200);
    assert_ne!(after.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn secondary_rate_limit_has_retry_after() {
    let h = Harness::start().await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"secondaryRateLimit": {"retryAfterSecs": 30}})),
    )
    .await;
    let r = h.pat("GET", RUNNERS, None).await;
    assert_eq!(r.status, 403);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "retry-after {retry}");
    assert_ne!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert!(
        faults["secondaryRateLimit"]["retryAfterSecs"]
            .as_i64()
            .unwrap()
            <= 30
    );
}

#[tokio::test]
async fn faults_never_touch_the_admin_api_or_runners() {
    let h = Harness::start().await;
    let (_, config) = h.jit("/repos/octo/app", "steady", &["self-hosted"]).await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"errorStatus": 500, "errorShare": 1.0, "secondaryRateLimit": {"retryAfterSecs": 60}})),
    )
    .await;
    assert_ne!(h.pat("GET", RUNNERS, None).await.status, 200);
    let (job, _) = h.create_job("octo/app", &["self-hosted"], &["ok"]).await;
    let outcome = SimRunner::from_jit_config(&config)
        .unwrap()
        .run(
            &RecordingExecutor::default(),
            &RunOptions {
                job_wait: Some(Duration::from_secs(5)),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome.job().unwrap().job_id, job);
    assert_eq!(h.job(job).await["conclusion"], "success");
}

#[tokio::test]
async fn held_jobs_go_to_no_runner_until_released() {
    let h = Harness::start().await;
    let (_, config) = h.jit("/repos/octo/app", "waiting", &["self-hosted"]).await;
    h.admin("POST", "/faults", Some(json!({"holdJobs": true})))
        .await;
    let (job, _) = h.create_job("octo/app", &["self-hosted"], &["ok"]).await;
    let runner = SimRunner::from_jit_config(&config).unwrap();
    let waiting = tokio::spawn(async move {
        runner
            .run(
                &RecordingExecutor::default(),
                &RunOptions {
                    job_wait: Some(Duration::from_secs(60)),
                    ..RunOptions::default()
                },
            )
            .await
    });
    // Once the runner asks for work (online) it has looked at the job.
    loop {
        let (_, runners) = h.admin("GET", "/runners", None).await;
        if runners[0]["status"] == "online" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.job(job).await["status"],
        "queued",
        "a held job was handed out"
    );
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert_eq!(faults["holdJobs"], true);
    h.admin("POST", "/faults", Some(json!({}))).await;
    let outcome = waiting.await.unwrap().unwrap();
    assert_eq!(outcome.job().unwrap().job_id, job);
    assert_eq!(h.job(job).await["conclusion"], "success");
}

#[tokio::test]
async fn latency_delays_rest_calls() {
    let h = Harness::start().await;
    h.admin("POST", "/faults", Some(json!({"latencyMs": 300})))
        .await;
    let started = std::time::Instant::now();
    assert_eq!(h.pat("GET", RUNNERS, None).await.status, 200);
    // A lower bound only: the call cannot have been faster than the latency.
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert_eq!(faults["latencyMs"], 300);
}

#[tokio::test]
async fn bad_fault_settings_are_refused() {
    let h = Harness::start().await;
    for bad in [
        json!({"errorStatus": 200}),
        json!({"errorStatus": 700}),
        json!({"errorShare": 1.5}),
        json!({"errorShare": "half"}),
        json!({"errorCount": -1}),
        json!({"latencyMs": 3_600_000}),
        json!({"holdJobs": "yes"}),
        json!({"rateLimit": 5}),
        json!({"rateLimit": {}}),
        json!({"secondaryRateLimit": {"retryAfterSecs": "soon"}}),
        json!({"secondaryRateLimit": {"retryAfterSecs": 5, "status": 500}}),
        json!({"errorStatus": []}),
        json!({"errorStatus": [500, 302]}),
        json!({"dropWebhookShare": 2}),
        json!([]),
    ] {
        let (status, body) = h.admin("POST", "/faults", Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad} -> {body}");
    }
    assert_eq!(h.pat("GET", RUNNERS, None).await.status, 200);
}

#[tokio::test]
async fn a_list_of_error_statuses_fails_calls_with_each_of_them() {
    let h = Harness::start().await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"errorStatus": [500, 502], "errorShare": 1.0})),
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        seen.insert(h.pat("GET", RUNNERS, None).await.status);
    }
    // Each of 60 calls picks one of two at random: both appear (odds of
    // missing one are 2^-59).
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![500, 502]);
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert_eq!(faults["errorStatus"], json!([500, 502]));
}

#[tokio::test]
async fn a_secondary_limit_may_answer_429() {
    let h = Harness::start().await;
    h.admin(
        "POST",
        "/faults",
        Some(json!({"secondaryRateLimit": {"retryAfterSecs": 30, "status": 429}})),
    )
    .await;
    let r = h.pat("GET", RUNNERS, None).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "retry-after {retry}");
    let (_, faults) = h.admin("GET", "/faults", None).await;
    assert_eq!(faults["secondaryRateLimit"]["status"], 429);
}

#[tokio::test]
async fn the_request_log_shows_every_rest_call_and_the_knob_that_answered_it() {
    let h = Harness::start().await;
    assert_eq!(h.pat("GET", RUNNERS, None).await.status, 200);
    h.admin(
        "POST",
        "/faults",
        Some(json!({"secondaryRateLimit": {"retryAfterSecs": 20}})),
    )
    .await;
    assert_eq!(h.pat("GET", RUNNERS, None).await.status, 403);
    h.admin(
        "POST",
        "/faults",
        Some(json!({"errorStatus": 502, "errorCount": 1})),
    )
    .await;
    assert_eq!(h.pat("GET", RUNNERS, None).await.status, 502);
    let (status, log) = h.admin("GET", "/requests", None).await;
    assert_eq!(status, 200);
    let log = log.as_array().unwrap();
    // Admin calls are not REST calls: three entries, in arrival order.
    assert_eq!(log.len(), 3, "{log:?}");
    let seqs: Vec<u64> = log.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for r in log {
        assert_eq!(r["method"], "GET");
        assert_eq!(r["path"], RUNNERS);
        let received: chrono::DateTime<chrono::Utc> =
            r["receivedAt"].as_str().unwrap().parse().unwrap();
        let answered: chrono::DateTime<chrono::Utc> =
            r["answeredAt"].as_str().unwrap().parse().unwrap();
        assert!(answered >= received);
    }
    assert_eq!(log[0]["status"], 200);
    assert!(log[0].get("fault").is_none());
    assert_eq!(log[1]["status"], 403);
    assert_eq!(log[1]["fault"], "secondaryRateLimit");
    assert!(log[1]["retryAfterSecs"].as_u64().unwrap() >= 19);
    assert_eq!(log[2]["status"], 502);
    assert_eq!(log[2]["fault"], "error");
}
