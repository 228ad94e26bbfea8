//! `proxy-runner demo`: the whole autoscaling path on this machine, with the
//! GitHub emulator standing in for github.com. Every job runs in its own
//! hardened container: webhook → JIT config → container → the runner takes
//! the job → steps run inside the container → completed webhook → container
//! gone → runner deregistered.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_domain::Job;
use proxy_runner_domain::ports::{ContainerBackend, JobFilter};
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_orchestrator::config::{
    BackendKind, Config, GitHubSection, RunnersSection, Secret,
};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// `autoscale`: an ephemeral runner container per job; `proxy`: one
    /// proxy runner supervisor whose jobs' steps run in per-job containers.
    #[arg(long, default_value = "autoscale", value_parser = ["autoscale", "proxy"])]
    pub mode: String,
    /// Proxy mode: the supervisor's listener slots.
    #[arg(long, default_value_t = 3)]
    pub slots: u32,
    /// How many workflow jobs to queue.
    #[arg(long, default_value_t = 6)]
    pub jobs: usize,
    /// Spread the jobs over this many repositories.
    #[arg(long, default_value_t = 2)]
    pub repos: usize,
    /// A shell command for every job's steps (repeatable; replaces the defaults).
    #[arg(long = "step")]
    pub steps: Vec<String>,
    /// Leave the containers, networks and runners in place at the end.
    #[arg(long)]
    pub keep: bool,
    /// Live job containers at most.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Live job containers of one repository at most (default: --max-concurrent).
    #[arg(long)]
    pub max_per_repository: Option<usize>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Address on the Docker host the job containers reach the emulator at
    /// (default: the gateway of Docker's default bridge, which
    /// `host.docker.internal` resolves to).
    #[arg(long, env = "PROXY_RUNNER_DEMO_HOST_IP")]
    pub host_ip: Option<IpAddr>,
}

const DEFAULT_STEPS: &[&str] = &[
    "echo \"job $GITHUB_JOB of $GITHUB_REPOSITORY on $(hostname) as uid $(id -u)\"",
    "sleep 1",
    "touch /should-fail 2>/dev/null && echo 'root filesystem is WRITABLE' && exit 1 || echo 'root filesystem is read-only'",
];

/// The engine for `instance` and the local image built from this binary
/// (nothing is pulled): the backend, the binary's path and the image tag.
pub(crate) async fn docker_and_image(
    instance: &str,
    what: &str,
    say: &dyn Fn(String),
) -> anyhow::Result<(DockerBackend, PathBuf, String)> {
    let docker = DockerBackend::connect(DockerOptions {
        instance: Some(instance.to_string()),
        ..DockerOptions::default()
    })
    .await
    .context("cannot set up Docker")?;
    docker
        .ping()
        .await
        .context("Docker is not reachable; the demo needs a Docker Engine")?;
    let binary: PathBuf = std::env::current_exe().context("cannot find this executable")?;
    let image = runner_image_tag(&binary)?;
    if ensure_runner_image(
        &docker,
        &RunnerImageOptions::new(image.clone(), binary.clone()),
    )
    .await?
    {
        say(format!("built {what} image {image} from this binary"));
    } else {
        say(format!("{what} image {image} present"));
    }
    Ok((docker, binary, image))
}

pub(crate) fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// The image tag is derived from the binary and the userland it gets (static
/// busybox, or this host's shell and tools), so a rebuilt binary gets a fresh
/// image.
pub(crate) fn runner_image_tag(binary: &std::path::Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    let busybox = std::path::Path::new(proxy_runner_docker::image::DEFAULT_BUSYBOX).exists();
    hasher.update(if busybox { b"busybox" } else { b"host-sh" });
    let digest = hex::encode(hasher.finalize());
    Ok(format!("proxy-runner-local-runner:{}", &digest[..16]))
}

async fn default_bridge_gateway(docker: &DockerBackend) -> anyhow::Result<IpAddr> {
    let client = docker.client().await.context("Docker is not reachable")?;
    let net = client
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .context("cannot inspect Docker's default bridge network")?;
    let configs = net.ipam.and_then(|i| i.config).unwrap_or_default();
    for c in configs {
        if let Some(gw) = c.gateway.as_deref().and_then(|g| g.parse().ok()) {
            return Ok(gw);
        }
        // Docker gives the bridge the first address of its subnet.
        if let Some((base, _)) = c.subnet.as_deref().and_then(|s| s.split_once('/'))
            && let Ok(v4) = base.parse::<Ipv4Addr>()
        {
            return Ok(IpAddr::V4(Ipv4Addr::from(u32::from(v4) + 1)));
        }
    }
    bail!("cannot find the default bridge's gateway; pass --host-ip")
}

struct Row {
    job: String,
    repository: String,
    runner: String,
    container: String,
    queue_to_start: Option<f64>,
    duration: Option<f64>,
    result: String,
}

/// Docker, the runner image, the emulator and the orchestrator, wired
/// together: what the demo and the benchmark run on.
pub struct Rig {
    pub docker: DockerBackend,
    pub instance: String,
    pub image: String,
    pub emulator: proxy_runner_emulator::RunningEmulator,
    pub emulator_url: String,
    pub orchestrator: crate::serve::Running,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub async fn rig(
    host_ip_arg: Option<IpAddr>,
    max_concurrent: usize,
    max_per_repository: usize,
    say: &dyn Fn(String),
) -> anyhow::Result<Rig> {
    rig_with(
        host_ip_arg,
        max_concurrent,
        max_per_repository,
        say,
        &|_| {},
    )
    .await
}

/// [`rig`] with the orchestrator's configuration changed by `tweak` first.
pub async fn rig_with(
    host_ip_arg: Option<IpAddr>,
    max_concurrent: usize,
    max_per_repository: usize,
    say: &dyn Fn(String),
    tweak: &dyn Fn(&mut Config),
) -> anyhow::Result<Rig> {
    // 1. Docker and the runner image (built locally: nothing is pulled).
    let instance = format!("demo-{}", &random_secret("")[..8]);
    let (docker, _, image) = docker_and_image(&instance, "runner", say).await?;

    // 2. The GitHub emulator, reachable from job containers.
    let host_ip = match host_ip_arg {
        Some(ip) => ip,
        None => default_bridge_gateway(&docker).await?,
    };
    let pat = random_secret("ghp_demo");
    let webhook_secret = random_secret("whsec_");
    // The port goes into the JIT configs, so it is chosen before the start.
    let port = std::net::TcpListener::bind(SocketAddr::new(host_ip, 0))
        .and_then(|l| l.local_addr())
        .with_context(|| format!("cannot listen on {host_ip}; pass --host-ip"))?
        .port();
    let public_url = format!("http://host.docker.internal:{port}");
    let emulator = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![pat.clone()],
            public_url: Some(public_url.clone()),
            ..Default::default()
        },
        SocketAddr::new(host_ip, port),
    )
    .await
    .context("cannot start the GitHub emulator")?;
    let emulator_url = emulator.url();
    say(format!(
        "GitHub emulator at {emulator_url} (containers: {public_url})"
    ));

    // 3. The orchestrator, with the Docker backend and a throw-away database.
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let defaults = Config::default();
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        database: dir.path().join("proxy-runner.db"),
        backend: BackendKind::Docker,
        instance: instance.clone(),
        github: GitHubSection {
            api_url: emulator_url.clone(),
            web_url: public_url.clone(),
            token: Secret::new(pat),
            webhook_secret: Secret::new(webhook_secret.clone()),
            ..defaults.github.clone()
        },
        runners: RunnersSection {
            image: image.clone(),
            network_prefix: format!("proxy-runner-{instance}"),
            max_concurrent: max_concurrent.max(1),
            max_per_repository: max_per_repository.max(1),
            ..defaults.runners.clone()
        },
        ..defaults
    };
    tweak(&mut config);
    config.validate()?;
    let orchestrator = crate::serve::start(config).await?;
    say(format!("orchestrator at {}", orchestrator.url));

    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{emulator_url}/_emulator/webhook"))
        .json(&json!({"url": format!("{}/webhooks/github", orchestrator.url), "secret": webhook_secret}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("emulator refused the webhook target: {}", resp.status());
    }
    Ok(Rig {
        docker,
        instance,
        image,
        emulator,
        emulator_url,
        orchestrator,
        http,
        _dir: dir,
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    if args.mode == "proxy" {
        return crate::demo_proxy::run(args).await;
    }
    if args.jobs == 0 || args.repos == 0 {
        bail!("--jobs and --repos must be at least 1");
    }
    if args.jobs > 500 {
        bail!("--jobs is at most 500");
    }
    let started = Instant::now();
    let say = |msg: String| println!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());

    let Rig {
        docker,
        instance,
        image: _,
        emulator,
        emulator_url,
        orchestrator,
        http,
        _dir,
    } = rig(
        args.host_ip,
        args.max_concurrent,
        args.max_per_repository.unwrap_or(args.max_concurrent),
        &say,
    )
    .await?;

    // 4. Queue the jobs.
    let steps: Vec<String> = if args.steps.is_empty() {
        DEFAULT_STEPS.iter().map(|s| s.to_string()).collect()
    } else {
        args.steps.clone()
    };
    let mut emulator_jobs: Vec<(u64, String, String)> = Vec::new();
    for i in 0..args.jobs {
        let repo = format!("demo-org/repo-{}", i % args.repos + 1);
        let name = format!("job-{}", i + 1);
        let resp: Value = http
            .post(format!("{emulator_url}/_emulator/jobs"))
            .json(&json!({"repository": repo, "labels": ["self-hosted", "linux"], "steps": steps, "workflow": "demo", "name": name}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = resp["id"].as_u64().context("emulator gave no job id")?;
        emulator_jobs.push((id, repo, name));
    }
    say(format!(
        "queued {} jobs across {} repositories",
        args.jobs,
        args.repos.min(args.jobs)
    ));

    // 5. Follow them to the end.
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut last: BTreeMap<u64, String> = BTreeMap::new();
    let final_jobs = loop {
        let jobs = orchestrator
            .store
            .list_jobs(&JobFilter {
                limit: 500,
                ..Default::default()
            })
            .await?;
        let mut all_done = jobs.len() >= args.jobs;
        for (id, repo, name) in &emulator_jobs {
            let ej: Value = emulator_job(&http, &emulator_url, *id).await?;
            let ours = jobs.iter().find(|j| j.github_job_id == Some(*id));
            let state = format!(
                "{} / {}",
                ej["status"].as_str().unwrap_or("?"),
                ours.map(|j| j.status.as_str()).unwrap_or("unknown"),
            );
            if last.get(id) != Some(&state) {
                let runner = ej["runnerName"].as_str().unwrap_or("-");
                say(format!("{repo} {name}: GitHub {state} (runner {runner})"));
                last.insert(*id, state);
            }
            all_done &= ours.is_some_and(|j| j.status.is_terminal()) && ej["status"] == "completed";
        }
        if all_done {
            break jobs;
        }
        if Instant::now() > deadline {
            say("timed out waiting for the jobs".into());
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // 6. Wait for containers to go, then check nothing of ours is left.
    let mut leftovers = Vec::new();
    if !args.keep {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let live = docker.list(&instance).await?;
            let runners: Vec<Value> = http
                .get(format!("{emulator_url}/_emulator/runners"))
                .send()
                .await?
                .json()
                .await?;
            let networks = our_networks(&docker, &instance).await?;
            if (live.is_empty() && runners.is_empty() && networks.is_empty())
                || Instant::now() > until
            {
                leftovers.extend(live.iter().map(|c| format!("container {}", c.name)));
                leftovers.extend(
                    runners
                        .iter()
                        .map(|r| format!("runner {}", r["name"].as_str().unwrap_or("?"))),
                );
                leftovers.extend(networks.iter().map(|n| format!("network {n}")));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    let mut rows = Vec::new();
    let mut all_ok = true;
    for (id, repo, name) in &emulator_jobs {
        let ej: Value = emulator_job(&http, &emulator_url, *id).await?;
        let ours: Option<&Job> = final_jobs.iter().find(|j| j.github_job_id == Some(*id));
        let conclusion = ej["conclusion"].as_str().unwrap_or("-").to_string();
        all_ok &= conclusion == "success"
            && ours.is_some_and(|j| j.conclusion.as_deref() == Some("success"));
        rows.push(Row {
            job: name.clone(),
            repository: repo.clone(),
            runner: ej["runnerName"].as_str().unwrap_or("-").to_string(),
            container: ours
                .and_then(|j| {
                    j.ran_in_container_id
                        .as_deref()
                        .or(j.container_id.as_deref())
                })
                .map(|c| c.chars().take(12).collect())
                .unwrap_or_else(|| "-".into()),
            queue_to_start: ours.and_then(|j| {
                j.started_at
                    .map(|s| (s - j.created_at).num_milliseconds() as f64 / 1000.0)
            }),
            duration: ours.and_then(|j| match (j.started_at, j.completed_at) {
                (Some(s), Some(c)) => Some((c - s).num_milliseconds() as f64 / 1000.0),
                _ => None,
            }),
            result: conclusion,
        });
    }
    print_table(&rows);
    for job in final_jobs
        .iter()
        .filter(|j| j.last_error.is_some() && j.conclusion.as_deref() != Some("success"))
    {
        println!(
            "job {} ({} {}): {}",
            job.id,
            job.repository,
            job.job_key,
            job.last_error.as_deref().unwrap_or("")
        );
    }
    if args.steps.is_empty()
        && let Some((id, _, _)) = emulator_jobs.first()
    {
        let ej: Value = emulator_job(&http, &emulator_url, *id).await?;
        println!("\nsteps of {} (run inside its container):", rows[0].job);
        for s in ej["steps"].as_array().into_iter().flatten() {
            println!(
                "  $ {}\n    {}",
                s["command"].as_str().unwrap_or(""),
                s["output"]
                    .as_str()
                    .unwrap_or("")
                    .trim_end()
                    .replace('\n', "\n    ")
            );
        }
    }
    if !leftovers.is_empty() {
        println!("\nleft behind: {}", leftovers.join(", "));
    } else if !args.keep {
        println!(
            "\nnothing left behind: no container, network or registered runner of this demo remains"
        );
    }
    orchestrator.shutdown().await?;
    emulator.shutdown().await;
    let ok = all_ok && leftovers.is_empty();
    println!(
        "{}: {} of {} jobs succeeded in {:.1}s",
        if ok { "PASS" } else { "FAIL" },
        rows.iter().filter(|r| r.result == "success").count(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// A job as the emulator's admin API shows it (status, runner, steps).
pub(crate) async fn emulator_job(
    http: &reqwest::Client,
    emulator_url: &str,
    id: u64,
) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{emulator_url}/_emulator/jobs/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

pub(crate) async fn our_networks(
    docker: &DockerBackend,
    instance: &str,
) -> anyhow::Result<Vec<String>> {
    let client = docker.client().await?;
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!(
            "{}={instance}",
            proxy_runner_domain::ports::labels::INSTANCE
        )],
    )]);
    let nets = client
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await?;
    Ok(nets.into_iter().filter_map(|n| n.name).collect())
}

fn print_table(rows: &[Row]) {
    let secs = |v: Option<f64>| v.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into());
    println!(
        "\n{:<8}  {:<20}  {:<55}  {:<12}  {:>14}  {:>9}  RESULT",
        "JOB", "REPOSITORY", "RUNNER", "CONTAINER", "QUEUE→START", "DURATION"
    );
    for r in rows {
        println!(
            "{:<8}  {:<20}  {:<55}  {:<12}  {:>14}  {:>9}  {}",
            r.job,
            r.repository,
            r.runner,
            r.container,
            secs(r.queue_to_start),
            secs(r.duration),
            r.result
        );
    }
}
