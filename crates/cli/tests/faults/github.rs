//! GitHub faults through the emulator's knobs, on the real engine (the
//! Docker backend: the dry-run backend starts no runner, so nothing would
//! take the emulator's jobs): 500/502 answers, a 429 with `retry-after`,
//! 5 s stalls and an outage that opens the breaker; and lost webhooks.
//! Every job must be served exactly once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxy_runner_test_support::eventually;
use serde_json::{Value, json};

use crate::full_size;
use crate::github_support::{Rig, engine_or_skip, sum};

/// Requests already on the wire when the first refusal was answered may
/// arrive after it; none sent after the client read it may.
const IN_FLIGHT: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

fn at(v: &Value, key: &str) -> DateTime<Utc> {
    v[key].as_str().unwrap().parse().unwrap()
}

async fn queue_many(rig: &Rig, repos: &[String], phase: &str, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let repo = &repos[i % repos.len()];
        ids.push(rig.queue(repo, &format!("{phase}-{i}")).await);
    }
    ids
}

fn repos(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("faults-org/repo-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_errors_rate_limits_stalls_and_an_outage_serve_every_job_once() {
    if !engine_or_skip() {
        return;
    }
    let (per_phase, retry_after_secs) = if full_size() { (10, 20) } else { (2, 8) };
    let repos = repos(2);
    let rig = Rig::start("github", &repos, 2).await;
    let limit = Duration::from_secs(if full_size() { 900 } else { 240 });
    let mut all = Vec::new();

    // 1. 30 % of calls answered 500 or 502.
    rig.faults(json!({"errorStatus": [500, 502], "errorShare": 0.3}))
        .await;
    let ids = queue_many(&rig, &repos, "errors", per_phase).await;
    let (errors_took, _) = rig.await_served(&ids, limit).await;
    all.extend(ids);

    // 2. Every call stalls 5 s.
    rig.faults(json!({"latencyMs": 5000})).await;
    let ids = queue_many(&rig, &repos, "stalls", per_phase).await;
    let (stalls_took, _) = rig.await_served(&ids, limit).await;
    all.extend(ids);

    // 3. A secondary limit answered 429 with retry-after, while jobs wait.
    rig.faults(json!({"secondaryRateLimit": {"retryAfterSecs": retry_after_secs, "status": 429}}))
        .await;
    let limited_from = Utc::now();
    let ids = queue_many(&rig, &repos, "limited", per_phase).await;
    let (limited_took, _) = rig.await_served(&ids, limit).await;
    all.extend(ids);
    let log = rig.requests().await;
    let refusals: Vec<&Value> = log
        .iter()
        .filter(|r| r["fault"] == "secondaryRateLimit")
        .collect();
    let first = *refusals
        .first()
        .expect("the orchestrator called GitHub while the limit was on");
    assert_eq!(first["status"], 429);
    let resume = at(first, "receivedAt")
        + chrono::TimeDelta::seconds(first["retryAfterSecs"].as_i64().unwrap());
    let known_at = at(first, "answeredAt") + IN_FLIGHT;
    let early: Vec<&Value> = log
        .iter()
        .filter(|r| {
            let received = at(r, "receivedAt");
            received > known_at && received < resume
        })
        .collect();
    assert!(
        early.is_empty(),
        "requests before the retry-after time ({resume}): {early:?}"
    );
    assert!(
        log.iter().any(|r| at(r, "receivedAt") >= resume),
        "no request after the limit lifted"
    );

    // 4. An outage: every call fails until the breaker opens; then GitHub
    //    comes back and the breaker closes.
    assert_eq!(rig.circuit_state().await, Some(0.0), "closed before");
    rig.faults(json!({"errorStatus": 502, "errorShare": 1.0}))
        .await;
    let ids = queue_many(&rig, &repos, "outage", per_phase).await;
    eventually("the breaker opens", limit, || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rig.circuit_state().await == Some(2.0)
    })
    .await;
    let outage_requests = rig.requests().await.len();
    rig.faults(json!({})).await;
    let recovering = Instant::now();
    eventually("the breaker closes again", limit, || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rig.circuit_state().await == Some(0.0)
    })
    .await;
    let breaker_closed_after = recovering.elapsed();
    rig.await_served(&ids, limit).await;
    let recovered_after = recovering.elapsed();
    all.extend(ids);

    rig.assert_each_served_once(&all).await;
    rig.await_engine_clean().await;

    // Figures.
    let log = rig.requests().await;
    let faults = |name: &str| log.iter().filter(|r| r["fault"] == name).count();
    let metrics = rig.metrics().await;
    let failed_attempts = sum(&metrics, "github_requests_total", |l| {
        l.get("status").is_some_and(|s| !s.starts_with('2'))
    });
    let attempts = sum(&metrics, "github_requests_total", |_| true);
    println!(
        "FIGURES github: jobs {} served {} lost 0 duplicated 0; REST requests {} ({} during the outage before recovery); \
         faults injected: errors {} (500/502), 429 refusals {}; orchestrator attempts {attempts}, failed or refused {failed_attempts}; \
         served in: errors {:.1}s, stalls {:.1}s, limited {:.1}s (limit set at {limited_from}); \
         breaker closed {:.1}s and jobs served {:.1}s after GitHub came back",
        all.len(),
        all.len(),
        log.len(),
        outage_requests,
        faults("error"),
        faults("secondaryRateLimit"),
        errors_took.as_secs_f64(),
        stalls_took.as_secs_f64(),
        limited_took.as_secs_f64(),
        breaker_closed_after.as_secs_f64(),
        recovered_after.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fifth_of_webhooks_dropped_polling_and_reconciliation_serve_every_job() {
    if !engine_or_skip() {
        return;
    }
    let jobs = if full_size() { 40 } else { 6 };
    let repos = repos(3);
    let rig = Rig::start("webhooks", &repos, 2).await;
    let limit = Duration::from_secs(if full_size() { 900 } else { 420 });
    rig.faults(json!({"dropWebhookShare": 0.2})).await;
    let started = Instant::now();
    let ids = queue_many(&rig, &repos, "dropped", jobs).await;
    let (took, recorded) = rig.await_served(&ids, limit).await;
    rig.assert_each_served_once(&ids).await;
    rig.await_engine_clean().await;

    let deliveries = rig.deliveries().await;
    let dropped = |action: &str| -> Vec<u64> {
        deliveries
            .iter()
            .filter(|d| d["outcome"] == "dropped" && d["action"] == action)
            .filter_map(|d| d["jobId"].as_u64())
            .collect()
    };
    let dropped_events = deliveries
        .iter()
        .filter(|d| d["outcome"] == "dropped")
        .count();
    let ours = rig.our_jobs().await;
    let by_source = |source: &str| ours.iter().filter(|j| j["source"] == source).count();
    // A job whose `queued` event was lost came from the poller, or from a
    // later event of it that arrived: a runner started for another job of
    // the repository may take it before the poller sees it.
    let delivered = |id: u64, action: &str| {
        deliveries.iter().any(|d| {
            d["jobId"].as_u64() == Some(id) && d["action"] == action && d["outcome"] == "delivered"
        })
    };
    for id in dropped("queued") {
        let job = ours.iter().find(|j| j["githubJobId"] == id).unwrap();
        let later_event = delivered(id, "in_progress") || delivered(id, "completed");
        assert!(
            job["source"] == "poll" || (job["source"] == "webhook" && later_event),
            "a job whose queued event was dropped was recorded from no later event: {job}"
        );
    }
    // Queued to seen recorded completed, for jobs that lost an event and the rest.
    let served_in = |id: u64| recorded[&id].as_secs_f64();
    let lost: std::collections::BTreeSet<u64> = deliveries
        .iter()
        .filter(|d| d["outcome"] == "dropped")
        .filter_map(|d| d["jobId"].as_u64())
        .collect();
    let max_of = |it: Vec<f64>| it.into_iter().fold(0.0, f64::max);
    let lost_times: Vec<f64> = lost.iter().map(|id| served_in(*id)).collect();
    let kept_times: Vec<f64> = ids
        .iter()
        .filter(|id| !lost.contains(id))
        .map(|id| served_in(*id))
        .collect();
    println!(
        "FIGURES webhooks: jobs {} served {} lost 0 duplicated 0; deliveries {} dropped {} \
         (queued {}, in_progress {}, completed {}); recorded via poll {}, via webhook {}; \
         queued to recorded completed: jobs that lost an event max {:.1}s ({} jobs), others max {:.1}s; all served in {:.1}s (wall {:.1}s)",
        ids.len(),
        ids.len(),
        deliveries.len(),
        dropped_events,
        dropped("queued").len(),
        dropped("in_progress").len(),
        dropped("completed").len(),
        by_source("poll"),
        by_source("webhook"),
        max_of(lost_times.clone()),
        lost_times.len(),
        max_of(kept_times),
        took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}
