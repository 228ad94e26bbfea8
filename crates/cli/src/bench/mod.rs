//! `proxy-runner bench`: figures, never assertions. Parts, run in turn
//! or one of them with `--only`:
//!
//! - `engine`: how long a queued job waits for its container, one at a
//!   time and in bursts, next to the Engine API's own create+start of the
//!   same spec and `docker run -d` (`engine.rs`);
//! - `delegations`: durable delegations per second and their latency at 1,
//!   64 and 512 clients against `proxy-runner serve` on a SQLite file, next
//!   to the same server on `:memory:` and `GET /healthz`, from a separate
//!   load-generating process (`delegations.rs`, `load.rs`);
//! - `hooks`: one run of our job-started hook next to the design's
//!   (`hooks.rs`);
//! - `warm`: queued → job running with a warm runner waiting, next to a
//!   cold start (`warm.rs`).
//!
//! Prints tables; `--json FILE` writes the figures.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

pub mod delegations;
pub mod engine;
pub mod hooks;
pub mod load;
pub mod warm;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Engine,
    Delegations,
    Hooks,
    Warm,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Run only this part (all by default).
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Also write the figures to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub engine: engine::EngineArgs,
    #[command(flatten)]
    pub delegations: delegations::DelegationArgs,
    #[command(flatten)]
    pub hooks: hooks::HookArgs,
    #[command(flatten)]
    pub warm: warm::WarmArgs,
}

/// Removes what a part left on the engine under `instances` once its
/// orchestrator has stopped: networks whose last container exited a moment
/// before the stop (the engine releases a quickly exiting container's
/// endpoint some time after its exit; here up to about a minute). Tries for
/// up to two minutes; returns whatever is still there, which the command
/// reports and fails on after writing the figures.
pub async fn leave_nothing(
    docker: &proxy_runner_docker::DockerBackend,
    instances: &[&str],
) -> anyhow::Result<Vec<String>> {
    use proxy_runner_domain::ports::ContainerBackend;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut left = Vec::new();
        for instance in instances {
            for c in docker.list(instance).await? {
                left.push(format!("container {}", c.name));
            }
            for n in docker.list_networks(instance).await? {
                if !docker.remove_network_if_unused(&n.name).await? {
                    left.push(format!("network {}", n.name));
                }
            }
        }
        if left.is_empty() || std::time::Instant::now() > until {
            return Ok(left);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Stops a part's orchestrator and emulator, then removes what is left of
/// its label set on the engine (`leave_nothing`); returns what could not be.
pub async fn stop_rig(r: crate::demo::Rig) -> anyhow::Result<Vec<String>> {
    let crate::demo::Rig {
        orchestrator,
        emulator,
        docker,
        instance,
        ..
    } = r;
    orchestrator.shutdown().await?;
    emulator.shutdown().await;
    leave_nothing(&docker, &[&instance]).await
}

/// The value at percentile `p` (0..=100) of `sorted`, NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut figures = json!({"machine": machine()});
    let host_ip = args.engine.host_ip;
    if args.only.is_none_or(|p| p == Part::Engine) {
        figures["engine"] = engine::run(args.engine).await?;
    }
    if args.only.is_none_or(|p| p == Part::Delegations) {
        figures["delegations"] = delegations::run(&args.delegations).await?;
    }
    if args.only.is_none_or(|p| p == Part::Hooks) {
        figures["hooks"] = hooks::run(&args.hooks).await?;
    }
    if args.only.is_none_or(|p| p == Part::Warm) {
        figures["warm"] = warm::run(args.warm, host_ip).await?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let left: Vec<&str> = ["engine", "warm"]
        .iter()
        .filter_map(|part| figures[part]["leftBehind"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !left.is_empty() {
        anyhow::bail!("left behind on the engine: {}", left.join(", "));
    }
    Ok(())
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpuModel": model, "os": std::env::consts::OS})
}
