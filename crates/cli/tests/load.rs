//! Load: many proxy runners delegating and completing at once against the
//! real binary over loopback. Bounded (a fixed number of requests), stops by
//! itself; prints throughput, asserts only correctness.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

const ADMIN: &str = "load-admin-token";
const RUNNERS: usize = 20;
const JOBS_PER_RUNNER: usize = 15;
const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_delegations_are_all_recorded_once_and_completed() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::serve(
        &dir.path().join("jobs.db"),
        None,
        &["--backend", "dry-run"],
        &[
            ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
            ("PROXY_RUNNER_LOG", "warn"),
        ],
    );
    let url = server.url.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();

    let mut tokens = Vec::new();
    for r in 0..RUNNERS {
        let v: Value = http
            .post(format!("{url}/api/tokens"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"runner": format!("proxy-{r}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(v["token"].as_str().unwrap().to_string());
    }

    // Every delegation is sent twice at once, as a hook retry racing its
    // first attempt would.
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (r, token) in tokens.iter().enumerate() {
        for j in 0..JOBS_PER_RUNNER {
            for _copy in 0..2 {
                let (http, url, token, gate) =
                    (http.clone(), url.clone(), token.clone(), gate.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    let body = serde_json::json!({
                        "jobId": format!("job-{j}"), "runId": (1000 + j).to_string(), "repository": format!("org/repo-{}", r % 5),
                        "workflow": "CI", "runnerName": format!("proxy-{r}"), "labels": "self-hosted,linux",
                        "environment": {"GITHUB_JOB": format!("job-{j}"), "RUNNER_TOKEN": "never-stored"}
                    });
                    let t = Instant::now();
                    let resp = http
                        .post(format!("{url}/api/jobs/delegate"))
                        .bearer_auth(&token)
                        .json(&body)
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    (r, j, status, v["id"].as_str().unwrap_or("").to_string(), t.elapsed())
                }));
            }
        }
    }
    let mut ids: HashMap<(usize, usize), HashSet<String>> = HashMap::new();
    let mut created = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (r, j, status, id, took) = t.await.unwrap();
        assert!(
            status == 201 || status == 200,
            "delegation answered {status}"
        );
        created += usize::from(status == 201);
        ids.entry((r, j)).or_default().insert(id);
        latencies.push(took.as_secs_f64());
    }
    let delegate_wall = started.elapsed();
    let total = RUNNERS * JOBS_PER_RUNNER;
    assert_eq!(created, total, "each delegation created exactly once");
    assert!(
        ids.values().all(|s| s.len() == 1),
        "a retry got a different job"
    );

    // Every runner completes its jobs by key, all at once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in &tokens {
        for j in 0..JOBS_PER_RUNNER {
            let (http, url, token, gate) = (http.clone(), url.clone(), token.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let resp = http
                    .post(format!("{url}/api/jobs/job-{j}/complete"))
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .unwrap();
                resp.status().as_u16()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let complete_wall = started.elapsed();

    let mut after = None;
    let mut completed = 0;
    loop {
        let q = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let page: Value = http
            .get(format!("{url}/api/jobs?status=completed&limit=500{q}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jobs = page["jobs"].as_array().unwrap();
        completed += jobs.len();
        assert!(
            jobs.iter()
                .all(|j| j["environment"].get("RUNNER_TOKEN").is_none())
        );
        match page["nextAfter"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    assert_eq!(completed, total);

    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] * 1e3;
    println!(
        "{} delegations ({} distinct) at concurrency {CONCURRENCY}: {:.0}/s, p50 {:.1} ms, p95 {:.1} ms; {} completions: {:.0}/s",
        latencies.len(),
        total,
        latencies.len() as f64 / delegate_wall.as_secs_f64(),
        p(0.5),
        p(0.95),
        total,
        total as f64 / complete_wall.as_secs_f64()
    );
}
