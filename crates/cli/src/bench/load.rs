//! `proxy-runner bench-load` (hidden): the load-generating process of the
//! delegation benchmark. `--clients` tasks, each on its own HTTP/1.1
//! keep-alive connection, share `--requests` requests; each delegation has
//! a body of its own (a new job). Prints one JSON line: count, errors,
//! seconds, rate and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::percentile;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadKind {
    /// `POST /api/jobs/delegate`, every body a new job.
    Delegate,
    /// `GET /healthz`.
    Healthz,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The server, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub kind: LoadKind,
    /// Concurrent clients, each with its own connection.
    #[arg(long)]
    pub clients: usize,
    /// Requests in all (shared by the clients).
    #[arg(long)]
    pub requests: usize,
    /// Runner the delegations name; its token comes from
    /// `PROXY_RUNNER_TOKEN` (never a flag: flags are visible to others).
    #[arg(long, default_value = "bench")]
    pub runner: String,
    /// Makes this run's job keys distinct from other runs on the same server.
    #[arg(long, default_value = "run")]
    pub tag: String,
}

fn delegation(args: &LoadArgs, n: usize) -> String {
    json!({
        "jobId": format!("{}-{n}", args.tag),
        "runId": (n + 1).to_string(),
        "repository": "bench/delegations",
        "workflow": "bench",
        "runnerName": args.runner,
        "labels": "self-hosted,linux",
        "environment": {"GITHUB_JOB": format!("{}-{n}", args.tag)},
    })
    .to_string()
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let token = match args.kind {
        LoadKind::Delegate => Some(
            std::env::var("PROXY_RUNNER_TOKEN")
                .context("PROXY_RUNNER_TOKEN must hold the runner token")?,
        ),
        LoadKind::Healthz => None,
    };
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    // Every client opens its connection before the clock starts.
    let warm: Vec<_> = (0..args.clients)
        .map(|_| http.get(format!("{}/healthz", args.url)).send())
        .collect();
    for answer in futures::future::join_all(warm).await {
        answer?.error_for_status()?;
    }

    let args = Arc::new(args);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (http, args, next, token) = (http.clone(), args.clone(), next.clone(), token.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.requests {
                    break;
                }
                let request = match args.kind {
                    LoadKind::Delegate => http
                        .post(format!("{}/api/jobs/delegate", args.url))
                        .bearer_auth(token.as_deref().unwrap_or_default())
                        .header("content-type", "application/json")
                        .body(delegation(&args, n)),
                    LoadKind::Healthz => http.get(format!("{}/healthz", args.url)),
                };
                let t = Instant::now();
                let ok = match request.send().await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        // The answer is read whole: the request is done.
                        resp.bytes().await.is_ok() && good
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(t.elapsed().as_secs_f64());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for client in clients {
        let (l, e) = client.await?;
        latencies.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let figures = json!({
        "requests": latencies.len(),
        "errors": errors,
        "seconds": seconds,
        "rate": latencies.len() as f64 / seconds,
        "p50Ms": percentile(&latencies, 50.0) * 1e3,
        "p99Ms": percentile(&latencies, 99.0) * 1e3,
        "maxMs": latencies.last().copied().unwrap_or(f64::NAN) * 1e3,
    });
    println!("{figures}");
    Ok(())
}
