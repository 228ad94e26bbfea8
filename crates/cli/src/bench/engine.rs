//! The engine part of `proxy-runner bench`: how long a queued job waits for
//! its container, measured in the same run next to the engine's own speed:
//! the same container spec created and started with two Engine API calls
//! (the yardstick), and `docker run -d` of the same image and hardening (the
//! CLI adds its own start-up). One job at a time, then bursts: with the
//! emulator holding the jobs (the runners wait; only the starts are timed)
//! and with the runners running their jobs while the others start.
//! Prints figures; asserts nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use proxy_runner_domain::Job;
use proxy_runner_domain::names::network_name;
use proxy_runner_domain::ports::{
    ContainerBackend, ContainerSpec, EnvVar, Hardening, JobFilter, JobStore, labels,
};
use proxy_runner_domain::runner_plan::{job_labels, network_spec};
use serde_json::{Value, json};
use uuid::Uuid;

use super::percentile;
use crate::demo::{Rig, rig};

#[derive(Args)]
pub struct EngineArgs {
    /// Jobs queued one after another (each waits for the previous container).
    #[arg(long, default_value_t = 50)]
    pub sequential: usize,
    /// Burst sizes: each many jobs queued at once (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [50, 100])]
    pub burst: Vec<usize>,
    #[arg(long, env = "PROXY_RUNNER_DEMO_HOST_IP")]
    pub host_ip: Option<IpAddr>,
}

/// Prints one line of figures (seconds in, milliseconds out); p50 and p95.
fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&v, 50.0), percentile(&v, 95.0));
    println!(
        "{name:<52} n={:<4} p50={:>8.1} ms  p95={:>8.1} ms  max={:>8.1} ms",
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

/// Holds (or releases) the emulator's jobs: held, no runner gets one.
async fn hold_jobs(r: &Rig, hold: bool) -> anyhow::Result<()> {
    r.http
        .post(format!("{}/_emulator/faults", r.emulator_url))
        .json(&json!({"holdJobs": hold}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// When each job (by GitHub id) was recorded and when a runner container
/// that serves it started, by the orchestrator's clock, once all have one:
/// its own, or the container started for another job whose runner took it
/// (a hand-off), whichever started first.
async fn wait_started(
    store: &dyn JobStore,
    ids: &[u64],
    deadline: Instant,
) -> anyhow::Result<Vec<(DateTime<Utc>, DateTime<Utc>)>> {
    let mut jobs: Vec<Option<Job>> = vec![None; ids.len()];
    loop {
        for (i, github_id) in ids.iter().enumerate() {
            if jobs[i].is_none()
                && let Some(job) = store.find_by_github_job_id(*github_id).await?
                && (job.container_id.is_some() || job.ran_in_container_id.is_some())
            {
                jobs[i] = Some(job);
            }
        }
        if jobs.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() > deadline {
            bail!("containers did not start in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The start instants, from the audit trail.
    loop {
        let audit = store.list_audit(100_000).await?;
        let started_by_job: HashMap<Uuid, DateTime<Utc>> = audit
            .iter()
            .filter(|a| a.action == "container.started")
            .filter_map(|a| Some((a.job_id?, a.at)))
            .collect();
        let started_by_container: HashMap<&str, DateTime<Utc>> = audit
            .iter()
            .filter(|a| a.action == "container.started")
            .filter_map(|a| Some((a.detail["containerId"].as_str()?, a.at)))
            .collect();
        let found: Vec<Option<(DateTime<Utc>, DateTime<Utc>)>> = jobs
            .iter()
            .flatten()
            .map(|job| {
                let own = started_by_job.get(&job.id).copied();
                let via = job
                    .ran_in_container_id
                    .as_deref()
                    .and_then(|c| started_by_container.get(c).copied());
                own.into_iter()
                    .chain(via)
                    .min()
                    .map(|at| (job.created_at, at))
            })
            .collect();
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!("a job started in no container whose start was recorded");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds from each job recorded to its container started.
fn latencies(times: &[(DateTime<Utc>, DateTime<Utc>)]) -> Vec<f64> {
    times.iter().map(|(q, s)| seconds(*s - *q)).collect()
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Waits until no job of ours is unfinished and no container of ours runs.
async fn wait_idle(r: &Rig, deadline: Instant) -> anyhow::Result<()> {
    let store = r.orchestrator.store.clone();
    loop {
        let unfinished = store
            .list_jobs(&JobFilter {
                limit: 1000,
                ..Default::default()
            })
            .await?
            .iter()
            .any(|j| !j.status.is_terminal());
        if !unfinished && r.docker.list(&r.instance).await?.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the jobs did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The yardstick: a container spec as the orchestrator makes one for a
/// runner (image, hardening, environment, labels, a repository network),
/// without the credential; its containers run `sleep 1` instead of the runner
/// and remove themselves. A label set of its own, so the
/// orchestrator never counts or touches them.
struct Yardstick {
    /// A client whose clean-up acts on the yardstick's label set alone.
    docker: proxy_runner_docker::DockerBackend,
    image: String,
    hardening: Hardening,
    instance: String,
    network: String,
}

impl Yardstick {
    async fn new(r: &Rig) -> anyhow::Result<Yardstick> {
        let scaler = r
            .orchestrator
            .autoscaler()
            .context("the orchestrator runs no autoscaler")?;
        let config = scaler.config();
        let instance = format!("{}-raw", r.instance);
        let docker =
            proxy_runner_docker::DockerBackend::connect(proxy_runner_docker::DockerOptions {
                instance: Some(instance.clone()),
                ..Default::default()
            })
            .await?;
        let network = network_name(&format!("{}-raw", config.network_prefix), "bench/raw");
        docker
            .ensure_network(&network_spec(network.clone(), "bench/raw", &instance))
            .await?;
        Ok(Yardstick {
            docker,
            image: config.image.clone(),
            hardening: config.hardening.clone(),
            instance,
            network,
        })
    }

    fn spec(&self) -> ContainerSpec {
        let id = Uuid::now_v7();
        ContainerSpec {
            name: format!("bench-raw-{id}"),
            image: self.image.clone(),
            env: vec![
                EnvVar::plain("RUNNER_NAME", format!("ephemeral-{id}")),
                EnvVar::plain("RUNNER_LABELS", "self-hosted"),
                EnvVar::plain("GITHUB_URL", "http://github.invalid/bench/raw"),
                EnvVar::plain("JOB_ID", "bench"),
                EnvVar::plain("RUN_ID", "1"),
            ],
            stdin_secrets: Vec::new(),
            command: None,
            labels: job_labels(id, "bench/raw", &self.instance),
            network: self.network.clone(),
            hardening: self.hardening.clone(),
            auto_remove: true,
        }
    }

    /// Seconds for one create and start.
    async fn start(&self) -> anyhow::Result<f64> {
        let spec = self.spec();
        let t = Instant::now();
        // A second of life, as a runner waiting for work: a container that
        // exits while its start is still being answered can leave the
        // engine (20.10) holding an endpoint on the network for good.
        let entrypoint = ["/bin/sh", "-c", "sleep 1"].map(String::from).to_vec();
        self.docker
            .create_and_start_plain(&spec, Some(entrypoint))
            .await?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Waits (up to two minutes) until its containers are gone.
    async fn await_gone(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(120);
        while !self.docker.list(&self.instance).await?.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until its containers are gone (its network stays for the next
    /// starts; `leave_nothing` removes it at the end).
    async fn clean(&self) -> anyhow::Result<()> {
        self.await_gone().await?;
        for c in self.docker.list(&self.instance).await? {
            let _ = self.docker.remove(&c.id).await;
        }
        Ok(())
    }
}

fn docker_run_args(r: &Rig, y: &Yardstick) -> Vec<String> {
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
        format!("{}={}", labels::INSTANCE, y.instance),
        "--network".into(),
        y.network.clone(),
        "--entrypoint".into(),
        "/bin/sh".into(),
        r.image.clone(),
        "-c".into(),
        "sleep 1".into(),
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

/// One burst of `n` jobs over four repositories: the wall time from the
/// first job recorded to the last container started (the orchestrator's
/// clock), and each job's latency.
async fn burst(r: &Rig, n: usize, tag: &str) -> anyhow::Result<(f64, Vec<f64>)> {
    let store = r.orchestrator.store.clone();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(queue(r, &format!("bench/{tag}-{}", i % 4), &format!("{tag}-{i}")).await?);
    }
    let times = wait_started(
        store.as_ref(),
        &ids,
        Instant::now() + Duration::from_secs(600),
    )
    .await?;
    let first = times.iter().map(|t| t.0).min().context("an empty burst")?;
    let last = times.iter().map(|t| t.1).max().context("an empty burst")?;
    Ok((seconds(last - first), latencies(&times)))
}

/// Runs the engine part; its figures (seconds) as JSON.
pub async fn run(args: EngineArgs) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    let say = |m: String| eprintln!("[{:6.1}s] {m}", t0.elapsed().as_secs_f64());
    let most = args.burst.iter().copied().max().unwrap_or(1).max(1);
    let r = rig(args.host_ip, most, most, &say).await?;
    let store = r.orchestrator.store.clone();
    let yardstick = Yardstick::new(&r).await?;
    let run_args = docker_run_args(&r, &yardstick);

    // Warm-up: one of each, not counted.
    let w = queue(&r, "bench/warmup", "warmup").await?;
    wait_started(
        store.as_ref(),
        &[w],
        Instant::now() + Duration::from_secs(60),
    )
    .await?;
    yardstick.start().await?;
    docker_run(&run_args).await?;
    wait_idle(&r, Instant::now() + Duration::from_secs(120)).await?;

    say(format!(
        "sequential: {n} jobs, {n} plain create+starts, {n} docker runs",
        n = args.sequential
    ));
    let mut ours = Vec::new();
    for i in 0..args.sequential {
        let id = queue(&r, "bench/seq", &format!("seq-{i}")).await?;
        let times = wait_started(
            store.as_ref(),
            &[id],
            Instant::now() + Duration::from_secs(60),
        )
        .await?;
        ours.extend(latencies(&times));
        // One at a time: the next job waits until this one is done, so no
        // runner is left to take it.
        wait_idle(&r, Instant::now() + Duration::from_secs(120)).await?;
    }
    wait_idle(&r, Instant::now() + Duration::from_secs(300)).await?;
    // Each start on an engine as quiet as ours had: the previous container
    // gone first.
    let mut raw = Vec::new();
    for _ in 0..args.sequential {
        raw.push(yardstick.start().await?);
        yardstick.await_gone().await?;
    }
    let mut cli = Vec::new();
    for _ in 0..args.sequential {
        cli.push(docker_run(&run_args).await?);
        yardstick.await_gone().await?;
    }
    yardstick.clean().await?;

    println!();
    let (o50, o95) = summary("queued webhook -> container running", ours);
    let (a50, a95) = summary("Engine API create+start (same spec)", raw);
    let (d50, d95) = summary("docker run -d (same image and hardening)", cli);
    println!(
        "ratio to the Engine API: p50 {:.2}x  p95 {:.2}x   to docker run: p50 {:.2}x",
        o50 / a50,
        o95 / a95,
        o50 / d50
    );
    let mut figures = json!({
        "sequential": {
            "jobs": args.sequential,
            "oursP50": o50, "oursP95": o95,
            "engineApiP50": a50, "engineApiP95": a95,
            "dockerRunP50": d50, "dockerRunP95": d95,
            "ratioP50": o50 / a50,
        },
        "bursts": [],
    });

    for &n in &args.burst {
        say(format!(
            "burst of {n}: jobs held, then jobs run, then {n} parallel plain create+starts"
        ));
        wait_idle(&r, Instant::now() + Duration::from_secs(600)).await?;
        hold_jobs(&r, true).await?;
        let (held_wall, held) = burst(&r, n, &format!("held{n}")).await?;
        hold_jobs(&r, false).await?;
        wait_idle(&r, Instant::now() + Duration::from_secs(600)).await?;
        let (jobs_wall, with_jobs) = burst(&r, n, &format!("jobs{n}")).await?;
        wait_idle(&r, Instant::now() + Duration::from_secs(600)).await?;
        let par_start = Instant::now();
        let starts: Vec<_> = (0..n).map(|_| yardstick.start()).collect();
        let par: Vec<f64> = futures::future::join_all(starts)
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let par_wall = par_start.elapsed().as_secs_f64();
        yardstick.clean().await?;

        println!();
        let (h50, h95) = summary(&format!("burst {n}, jobs held: queued -> running"), held);
        let (j50, j95) = summary(
            &format!("burst {n}, jobs run: queued -> running"),
            with_jobs,
        );
        summary(&format!("{n} parallel Engine API create+starts, each"), par);
        println!(
            "burst {n} wall: jobs held {held_wall:.2} s ({:.2}x), jobs run {jobs_wall:.2} s ({:.2}x), \
             {n} parallel Engine API create+starts {par_wall:.2} s",
            held_wall / par_wall,
            jobs_wall / par_wall
        );
        figures["bursts"]
            .as_array_mut()
            .expect("an array")
            .push(json!({
                "jobs": n,
                "heldWall": held_wall, "heldP50": h50, "heldP95": h95,
                "withJobsWall": jobs_wall, "withJobsP50": j50, "withJobsP95": j95,
                "engineApiWall": par_wall,
                "heldRatio": held_wall / par_wall,
                "withJobsRatio": jobs_wall / par_wall,
            }));
    }
    wait_idle(&r, Instant::now() + Duration::from_secs(600)).await?;

    let mut left = super::stop_rig(r).await?;
    left.extend(super::leave_nothing(&yardstick.docker, &[&yardstick.instance]).await?);
    figures["leftBehind"] = json!(left);
    Ok(figures)
}
