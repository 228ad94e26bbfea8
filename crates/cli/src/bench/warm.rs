//! The warm part of `proxy-runner bench`: how long a queued job waits until
//! it runs (GitHub's `in_progress`) when a warm runner waits for it, next to
//! a cold start of the same job in the same run. Prints figures; asserts
//! nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use proxy_runner_domain::ports::{ContainerBackend, JobStore};
use proxy_runner_orchestrator::config::LabelSetConfig;
use serde_json::{Value, json};

use super::percentile;
use crate::demo::{Rig, rig_with};

const LABELS: [&str; 2] = ["self-hosted", "linux"];
const WARM_REPO: &str = "bench/warm";
const COLD_REPO: &str = "bench/cold";

#[derive(Args)]
pub struct WarmArgs {
    /// Jobs run by a warm runner, and as many by a cold start.
    #[arg(long = "warm-runs", default_value_t = 10)]
    pub runs: usize,
}

async fn queue(r: &Rig, repo: &str, name: &str) -> anyhow::Result<u64> {
    let resp: Value = r
        .http
        .post(format!("{}/_emulator/jobs", r.emulator_url))
        .json(&json!({"repository": repo, "labels": LABELS, "steps": ["true"], "workflow": "bench", "name": name}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    resp["id"].as_u64().context("no job id")
}

/// Seconds from just before the job was queued at the emulator to the
/// orchestrator's record of GitHub's `in_progress` for it (one clock: the
/// orchestrator runs in this process).
async fn until_running(
    store: &dyn JobStore,
    github_job_id: u64,
    queued_at: DateTime<Utc>,
    deadline: Instant,
) -> anyhow::Result<f64> {
    loop {
        if let Some(job) = store.find_by_github_job_id(github_job_id).await?
            && let Some(started) = job.started_at
        {
            return Ok((started - queued_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
        if Instant::now() > deadline {
            bail!("job {github_job_id} did not start in time");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a warm runner of WARM_REPO is polling the emulator for a job.
async fn warm_runner_waits(r: &Rig, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let runners: Vec<Value> = r
            .http
            .get(format!("{}/_emulator/runners", r.emulator_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let waiting = runners.iter().any(|x| {
            x["name"].as_str().is_some_and(|n| n.starts_with("warm-"))
                && x["status"] == "online"
                && x["busy"] == false
        });
        if waiting {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no warm runner came up in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&v, 50.0), percentile(&v, 95.0));
    println!(
        "{name:<44} n={:<4} p50={:>8.1} ms  p95={:>8.1} ms  max={:>8.1} ms",
        v.len(),
        p50 * 1e3,
        p95 * 1e3,
        v.last().copied().unwrap_or(f64::NAN) * 1e3
    );
    (p50, p95)
}

/// Runs the warm part; its figures (seconds) as JSON.
pub async fn run(args: WarmArgs, host_ip: Option<IpAddr>) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let say = |m: String| eprintln!("[{:6.1}s] {m}", t0.elapsed().as_secs_f64());
    // One warm runner for WARM_REPO; COLD_REPO has none. A job of WARM_REPO
    // waits for the warm runner as long as the benchmark runs.
    let tweak = |c: &mut proxy_runner_orchestrator::config::Config| {
        c.runners.label_sets = vec![LabelSetConfig {
            labels: LABELS.iter().map(|s| s.to_string()).collect(),
            path: Default::default(),
            profile: None,
            image: None,
            hardening: None,
            warm: 1,
            warm_repositories: vec![WARM_REPO.into()],
        }];
        c.runners.warm_wait_secs = 3600;
    };
    let r = rig_with(host_ip, 4, 2, &say, &tweak).await?;
    let store = r.orchestrator.store.clone();
    let runs = args.runs.max(1);

    say(format!(
        "warm: {runs} jobs, each taken by a waiting warm runner"
    ));
    let mut warm = Vec::new();
    for i in 0..runs {
        warm_runner_waits(&r, Instant::now() + Duration::from_secs(120)).await?;
        let at = Utc::now();
        let id = queue(&r, WARM_REPO, &format!("warm-{i}")).await?;
        warm.push(
            until_running(
                store.as_ref(),
                id,
                at,
                Instant::now() + Duration::from_secs(120),
            )
            .await?,
        );
    }
    say(format!("cold: {runs} jobs, each a cold start"));
    let mut cold = Vec::new();
    for i in 0..runs {
        let at = Utc::now();
        let id = queue(&r, COLD_REPO, &format!("cold-{i}")).await?;
        cold.push(
            until_running(
                store.as_ref(),
                id,
                at,
                Instant::now() + Duration::from_secs(120),
            )
            .await?,
        );
    }

    println!();
    let (w50, w95) = summary("queued -> job running, warm runner", warm);
    let (c50, c95) = summary("queued -> job running, cold start", cold);
    println!(
        "ratio warm/cold p50 {:.2}x   p95 {:.2}x",
        w50 / c50,
        w95 / c95
    );

    // Nothing left: the warm runners go, the cold ones end with their jobs.
    say("retiring the warm runners; waiting for every container to go".into());
    if let Some(scaler) = r.orchestrator.autoscaler() {
        scaler.retire_warm_runners().await;
    }
    let until = Instant::now() + Duration::from_secs(120);
    while !r.docker.list(&r.instance).await?.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say("stopping".into());
    let left = super::stop_rig(r).await?;
    Ok(json!({
        "leftBehind": left,
        "runs": runs,
        "warmP50": w50, "warmP95": w95,
        "coldP50": c50, "coldP95": c95,
        "ratioP50": w50 / c50, "ratioP95": w95 / c95,
    }))
}
