//! The engine part of `proxy-runner bench`: how long a queued job waits for
//! its container, measured next to plain `docker run -d` of the same image in
//! the same run. Prints figures; asserts nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use proxy_runner_domain::ports::{ContainerBackend, JobStore};
use serde_json::{Value, json};

use super::percentile;
use uuid::Uuid;

use crate::demo::{Rig, rig};

#[derive(Args)]
pub struct EngineArgs {
    /// Jobs queued one after another (each waits for the previous container).
    #[arg(long, default_value_t = 50)]
    pub sequential: usize,
    /// Jobs queued at once.
    #[arg(long, default_value_t = 100)]
    pub burst: usize,
    #[arg(long, env = "PROXY_RUNNER_DEMO_HOST_IP")]
    pub host_ip: Option<IpAddr>,
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

async fn queue(r: &Rig, repo: &str, name: &str) -> anyhow::Result<u64> {
    let resp: Value = r
        .http
        .post(format!("{}/_emulator/jobs", r.emulator_url))
        .json(&json!({"repository": repo, "labels": ["self-hosted"], "steps": ["true"], "workflow": "bench", "name": name}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    resp["id"].as_u64().context("no job id")
}

/// Seconds from the queued webhook being recorded to the container started
/// for the job (the orchestrator's own timestamps), once it has started.
async fn start_latency(
    store: &dyn JobStore,
    github_job_id: u64,
) -> anyhow::Result<Option<(Uuid, f64)>> {
    let Some(job) = store.find_by_github_job_id(github_job_id).await? else {
        return Ok(None);
    };
    if job.container_id.is_none() && job.ran_in_container_id.is_none() && job.started_at.is_none() {
        return Ok(None);
    }
    let audit = store.list_audit(10_000).await?;
    let started = audit
        .iter()
        .find(|a| a.job_id == Some(job.id) && a.action == "container.started")
        .map(|a| a.at);
    Ok(started.map(|at| {
        (
            job.id,
            (at - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6,
        )
    }))
}

async fn wait_started(
    store: &dyn JobStore,
    ids: &[u64],
    deadline: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut out = vec![None; ids.len()];
    while out.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("containers did not start in time");
        }
        for (i, id) in ids.iter().enumerate() {
            if out[i].is_none() {
                out[i] = start_latency(store, *id).await?.map(|(_, s)| s);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out.into_iter().flatten().collect())
}

fn docker_run_args(r: &Rig) -> Vec<String> {
    // The same image and hardening as the orchestrator's containers.
    [
        "run",
        "-d",
        "--rm",
        "--user",
        "1001:1001",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,exec,mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--pids-limit",
        "512",
        "--memory",
        "2g",
        "--cpus",
        "1",
        "--label",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!(
            "{}={}",
            proxy_runner_domain::ports::labels::INSTANCE,
            r.instance
        ),
        "--entrypoint".into(),
        "/bin/sh".into(),
        r.image.clone(),
        "-c".into(),
        "exit 0".into(),
    ])
    .collect()
}

async fn docker_run(args: &[String]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .context("cannot run docker")?;
    if !out.status.success() {
        bail!(
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the engine part; its figures (seconds) as JSON.
pub async fn run(args: EngineArgs) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let say = |m: String| eprintln!("[{:6.1}s] {m}", t0.elapsed().as_secs_f64());
    let r = rig(args.host_ip, args.burst.max(1), args.burst.max(1), &say).await?;
    let store = r.orchestrator.store.clone();
    let run_args = docker_run_args(&r);

    // Warm-up: one job and one docker run, not counted.
    let w = queue(&r, "bench/warmup", "warmup").await?;
    wait_started(
        store.as_ref(),
        &[w],
        Instant::now() + Duration::from_secs(60),
    )
    .await?;
    docker_run(&run_args).await?;

    say(format!(
        "sequential: {} jobs, then {} docker runs",
        args.sequential, args.sequential
    ));
    let mut ours = Vec::new();
    for i in 0..args.sequential {
        let id = queue(&r, "bench/seq", &format!("seq-{i}")).await?;
        ours.extend(
            wait_started(
                store.as_ref(),
                &[id],
                Instant::now() + Duration::from_secs(60),
            )
            .await?,
        );
    }
    let mut plain = Vec::new();
    for _ in 0..args.sequential {
        plain.push(docker_run(&run_args).await?);
    }

    say(format!(
        "burst: {} jobs at once, then {} parallel docker runs",
        args.burst, args.burst
    ));
    let burst_start = Instant::now();
    let mut ids = Vec::new();
    for i in 0..args.burst {
        ids.push(queue(&r, &format!("bench/burst-{}", i % 4), &format!("burst-{i}")).await?);
    }
    let burst_lat = wait_started(
        store.as_ref(),
        &ids,
        Instant::now() + Duration::from_secs(600),
    )
    .await?;
    let burst_wall = burst_start.elapsed().as_secs_f64();
    // Let the burst's containers finish before the parallel docker runs.
    let until = Instant::now() + Duration::from_secs(300);
    while !r.docker.list(&r.instance).await?.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let par_start = Instant::now();
    let runs: Vec<_> = (0..args.burst).map(|_| docker_run(&run_args)).collect();
    let par: Vec<f64> = futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let par_wall = par_start.elapsed().as_secs_f64();

    println!();
    let (o50, o95) = summary("queued webhook -> container running", ours);
    let (d50, d95) = summary("docker run -d (same image and hardening)", plain);
    let mut figures = json!({
        "sequential": {"jobs": args.sequential, "oursP50": o50, "oursP95": o95, "dockerRunP50": d50, "dockerRunP95": d95},
    });
    println!("ratio p50 {:.2}x   ratio p95 {:.2}x", o50 / d50, o95 / d95);
    println!();
    let (b50, b95) = summary(
        &format!("burst of {}: queued -> container running", args.burst),
        burst_lat,
    );
    summary(&format!("{} parallel docker run -d, each", args.burst), par);
    figures["burst"] = json!({
        "jobs": args.burst, "oursP50": b50, "oursP95": b95,
        "oursWall": burst_wall, "parallelDockerRunWall": par_wall,
    });
    println!(
        "burst wall: proxy-runner {:.2} s (queue all -> all running), parallel docker run {:.2} s, ratio {:.2}x",
        burst_wall,
        par_wall,
        burst_wall / par_wall
    );

    let Rig {
        orchestrator,
        emulator,
        ..
    } = r;
    orchestrator.shutdown().await?;
    emulator.shutdown().await;
    Ok(figures)
}
