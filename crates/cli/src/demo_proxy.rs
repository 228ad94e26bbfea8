//! `proxy-runner demo --mode proxy`: the proxy path on this machine. The
//! GitHub emulator, the orchestrator (with a proxy label set and the local
//! job image allowed) and one supervisor, `proxy-runner runner`, whose
//! `--slots` listeners are the simulated runner. N container jobs go over R
//! repositories: a slot's runner takes each, its hooks delegate to the
//! orchestrator, and every step runs in the job's own container. At the end
//! the supervisor gets SIGTERM, and nothing may be left: no container,
//! network, work folder or registered runner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use proxy_runner_docker::DockerBackend;
use proxy_runner_domain::Job;
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::ports::{ContainerBackend, JobFilter, JobStore};
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_orchestrator::config::{
    BackendKind, Config, GitHubSection, JobPath, LabelSetConfig, ProxySection, RunnersSection,
    Secret,
};
use serde_json::{Value, json};

use crate::demo::{DemoArgs, emulator_job, our_networks, random_secret};

const ORG: &str = "demo-org";
const LABELS: [&str; 2] = ["self-hosted", "proxy"];
const SUPERVISOR: &str = "demo-proxy";

struct Row {
    job: String,
    repository: String,
    runner: String,
    container: String,
    queue_to_first_step: Option<f64>,
    duration: Option<f64>,
    result: String,
}

fn default_steps() -> Vec<String> {
    vec![
        "echo \"step 1 of $GITHUB_JOB ($GITHUB_REPOSITORY) on $(hostname) as uid $(id -u)\"".into(),
        "echo \"step 2 on $(hostname) as uid $(id -u)\"; sleep 1".into(),
        "echo \"step 3 on $(hostname) as uid $(id -u)\"; test ! -e /var/run/docker.sock && echo 'no Docker socket in the job container'".into(),
    ]
}

fn secs_between(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<f64> {
    Some((to? - from?).num_milliseconds() as f64 / 1000.0)
}

/// This host's name: the proxy's, which no step may print.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    if args.jobs == 0 || args.repos == 0 || args.slots == 0 {
        bail!("--jobs, --repos and --slots must be at least 1");
    }
    if args.jobs > 500 || args.slots > 32 {
        bail!("--jobs is at most 500 and --slots at most 32");
    }
    let started = Instant::now();
    let say = |msg: String| println!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());
    let deadline = started + Duration::from_secs(args.timeout_secs);

    // 1. Docker and the job image (built locally: nothing is pulled).
    let instance = format!("demo-proxy-{}", &random_secret("")[..8]);
    let (docker, binary, image) = crate::demo::docker_and_image(&instance, "job", &say).await?;

    // 2. The GitHub emulator (only the proxy runners talk to it: loopback).
    let pat = random_secret("ghp_demo");
    let emulator = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![pat.clone()],
            ..Default::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await
    .context("cannot start the GitHub emulator")?;
    let emulator_url = emulator.url();
    say(format!("GitHub emulator at {emulator_url}"));

    // 3. The directories: the simulated runner, the work root job
    //    containers mount, the supervisor's state.
    let dir = tempfile::Builder::new()
        .prefix("proxy-runner-demo-")
        .disable_cleanup(args.keep)
        .tempdir()
        .context("cannot create a temporary directory")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let runner_dir = dir.path().join("runner");
    let work_root = dir.path().join("work");
    let state_dir = dir.path().join("state");
    crate::sim_runner::install(&runner_dir).context("cannot write the simulated runner")?;
    std::fs::create_dir_all(&work_root)?;

    // 4. The orchestrator: a proxy label set, the job image allowed.
    let admin = random_secret("admin-");
    let defaults = Config::default();
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        database: dir.path().join("proxy-runner.db"),
        backend: BackendKind::Docker,
        admin_token: Secret::new(admin.clone()),
        instance: instance.clone(),
        http: defaults.http.clone(),
        shutdown_grace_secs: defaults.shutdown_grace_secs,
        github: GitHubSection {
            api_url: emulator_url.clone(),
            web_url: emulator_url.clone(),
            token: Secret::new(pat.clone()),
            organization: Some(ORG.into()),
            ..defaults.github.clone()
        },
        runners: RunnersSection {
            network_prefix: format!("proxy-runner-{instance}"),
            label_sets: vec![LabelSetConfig {
                labels: LABELS.iter().map(|l| l.to_string()).collect(),
                path: JobPath::Proxy,
                profile: None,
                image: None,
                hardening: None,
                warm: 0,
                warm_repositories: Vec::new(),
            }],
            ..defaults.runners.clone()
        },
        proxy: Some(ProxySection {
            images: vec![image.clone()],
            work_root: work_root.clone(),
            externals_root: runner_dir.join("externals"),
            ..ProxySection::default()
        }),
    };
    config.validate()?;
    let orchestrator = crate::serve::start(config).await?;
    say(format!("orchestrator at {}", orchestrator.url));
    let http = reqwest::Client::new();
    let issued: Value = http
        .post(format!("{}/api/tokens", orchestrator.url))
        .bearer_auth(&admin)
        .json(&json!({"runner": SUPERVISOR}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = issued["token"]
        .as_str()
        .context("the orchestrator issued no token")?
        .to_string();

    // 5. One supervisor with S simulated slots.
    let log_path = dir.path().join("supervisor.log");
    let mut supervisor = tokio::process::Command::new(&binary)
        .arg("runner")
        .args([
            "--name",
            SUPERVISOR,
            "--labels",
            &LABELS.join(","),
            "--organization",
            ORG,
        ])
        .args([
            "--slots",
            &args.slots.to_string(),
            "--heartbeat-secs",
            "2",
            "--grace",
            "60",
        ])
        .arg("--runner-dir")
        .arg(&runner_dir)
        .arg("--work-root")
        .arg(&work_root)
        .arg("--state-dir")
        .arg(&state_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/".into()))
        .env("ORCHESTRATOR_URL", &orchestrator.url)
        .env("PROXY_RUNNER_TOKEN", &token)
        .env("PROXY_RUNNER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path)?))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the supervisor")?;
    say(format!(
        "proxy runner supervisor {SUPERVISOR} started with {} slots",
        args.slots
    ));

    let mut seen_runners: BTreeSet<String> = BTreeSet::new();
    let report_runners = |names: Vec<String>, seen: &mut BTreeSet<String>| {
        for name in names {
            if seen.insert(name.clone()) {
                say(format!(
                    "proxy runner {name} registered (JIT, labels {})",
                    LABELS.join(",")
                ));
            }
        }
    };
    loop {
        let names = runner_names(&http, &emulator_url).await?;
        let ready = names.len() >= args.slots as usize;
        report_runners(names, &mut seen_runners);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the supervisor's runners did not register; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 6. Queue the jobs.
    let steps = if args.steps.is_empty() {
        default_steps()
    } else {
        args.steps.clone()
    };
    let mut queued: Vec<(u64, String, String)> = Vec::new();
    // When each job was queued (the emulator keeps whole seconds only).
    let mut queued_at: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
    for i in 0..args.jobs {
        let at = Utc::now();
        let repo = format!("{ORG}/repo-{}", i % args.repos + 1);
        let name = format!("job-{}", i + 1);
        let created: Value = http
            .post(format!("{emulator_url}/_emulator/jobs"))
            .json(&json!({"repository": repo, "labels": LABELS, "container": {"image": image}, "steps": steps, "workflow": "demo", "name": name}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"].as_u64().context("emulator gave no job id")?;
        queued_at.insert(id, at);
        queued.push((id, repo, name));
    }
    say(format!(
        "queued {} container jobs across {} repositories",
        args.jobs,
        args.repos.min(args.jobs)
    ));

    // 7. Follow them to the end.
    let mut last: BTreeMap<u64, String> = BTreeMap::new();
    let mut timed_out = false;
    loop {
        let ours = orchestrator
            .store
            .list_jobs(&JobFilter {
                limit: 500,
                ..Default::default()
            })
            .await?;
        let mut all_done = true;
        for (id, repo, name) in &queued {
            let ej = emulator_job(&http, &emulator_url, *id).await?;
            let record = record_of(&ours, &ej);
            let container = record
                .and_then(|j| j.job_container.as_ref())
                .and_then(|c| c.id.as_deref())
                .map(|c| format!(", container {}", &c[..c.len().min(12)]))
                .unwrap_or_default();
            let state = format!(
                "GitHub {} / orchestrator {}{container}",
                ej["status"].as_str().unwrap_or("?"),
                record.map(|j| j.status.as_str()).unwrap_or("-"),
            );
            if last.get(id) != Some(&state) {
                let runner = ej["runnerName"].as_str().unwrap_or("-");
                say(format!("{repo} {name}: {state} (proxy runner {runner})"));
                last.insert(*id, state);
            }
            all_done &=
                ej["status"] == "completed" && record.is_none_or(|j| j.status.is_terminal());
        }
        report_runners(runner_names(&http, &emulator_url).await?, &mut seen_runners);
        if all_done {
            break;
        }
        if Instant::now() > deadline {
            say("timed out waiting for the jobs".into());
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 8. SIGTERM to the supervisor: it deletes its idle runners and stops.
    say("stopping the supervisor (SIGTERM)".into());
    if let Some(pid) = supervisor
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let supervisor_ok =
        match tokio::time::timeout(Duration::from_secs(120), supervisor.wait()).await {
            Ok(Ok(status)) => {
                say(format!("supervisor exited ({status})"));
                status.success()
            }
            _ => {
                say("the supervisor did not stop in time".into());
                let _ = supervisor.kill().await;
                false
            }
        };

    // 9. Nothing of ours may be left.
    let mut leftovers = Vec::new();
    if !args.keep {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            leftovers = left_behind(
                &docker,
                &instance,
                &http,
                &emulator_url,
                &work_root,
                &state_dir,
            )
            .await?;
            if leftovers.is_empty() || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // 10. The table and the checks.
    let ours = orchestrator
        .store
        .list_jobs(&JobFilter {
            limit: 500,
            ..Default::default()
        })
        .await?;
    let first_steps = first_step_times(orchestrator.store.as_ref()).await?;
    let host = host_name();
    let mut rows = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut containers: BTreeSet<String> = BTreeSet::new();
    for (id, repo, name) in &queued {
        let ej = emulator_job(&http, &emulator_url, *id).await?;
        let record = record_of(&ours, &ej);
        let conclusion = ej["conclusion"].as_str().unwrap_or("-").to_string();
        let container = record
            .and_then(|j| j.job_container.as_ref())
            .and_then(|c| c.id.clone())
            .unwrap_or_default();
        let short: String = container.chars().take(12).collect();
        // GitHub knows the result; the orchestrator, that the job ended.
        if conclusion != "success" {
            problems.push(format!("{name} did not succeed ({conclusion})"));
        }
        if record.map(|j| j.status.as_str()) != Some("completed") {
            problems.push(format!("{name} is not completed in the orchestrator"));
        }
        if container.is_empty() {
            problems.push(format!("{name} had no job container"));
        } else if !containers.insert(container.clone()) {
            problems.push(format!(
                "{name} shared its container {short} with another job"
            ));
        }
        if args.steps.is_empty() {
            let outputs: Vec<&str> = ej["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["output"].as_str())
                .collect();
            let in_container = outputs.len() == 3
                && outputs
                    .iter()
                    .all(|o| o.contains(&format!(" on {short} as uid ")));
            if short.is_empty() || !in_container || short == host {
                problems.push(format!(
                    "{name}: not every step ran in its own container (not on the proxy host {host})"
                ));
            }
        }
        rows.push(Row {
            job: name.clone(),
            repository: repo.clone(),
            runner: ej["runnerName"].as_str().unwrap_or("-").to_string(),
            container: if short.is_empty() { "-".into() } else { short },
            queue_to_first_step: secs_between(
                queued_at.get(id).copied(),
                record.and_then(|j| first_steps.get(&j.id).copied()),
            ),
            // From the delegation (the started hook) to the completion.
            duration: secs_between(
                record.and_then(|j| j.started_at),
                record.and_then(|j| j.completed_at),
            ),
            result: conclusion,
        });
    }
    print_table(&rows);
    if let Some((id, _, name)) = queued.first() {
        let ej = emulator_job(&http, &emulator_url, *id).await?;
        println!(
            "\nlog of {name} as the simulated runner recorded it (proxy runner {}):",
            ej["runnerName"].as_str().unwrap_or("-")
        );
        for section in ej["log"].as_array().into_iter().flatten() {
            println!(
                "  == {} (exit {})",
                section["name"].as_str().unwrap_or(""),
                section["exitCode"]
            );
            for line in section["output"].as_str().unwrap_or("").lines() {
                println!("     {line}");
            }
        }
    }
    if !supervisor_ok {
        problems.push("the supervisor did not stop cleanly".into());
    }
    if timed_out {
        problems.push("timed out".into());
    }
    if !leftovers.is_empty() {
        println!("\nleft behind: {}", leftovers.join(", "));
        problems.push("something was left behind".into());
    } else if !args.keep {
        println!(
            "\nnothing left behind: no container, network, work folder or registered runner of this demo remains"
        );
    }
    if args.keep {
        println!(
            "kept: {} (supervisor.log, the database; instance {instance})",
            dir.path().display()
        );
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if !problems.is_empty() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("\nsupervisor log (last lines):");
        for line in tail.into_iter().rev() {
            println!("  {line}");
        }
    }
    orchestrator.shutdown().await?;
    emulator.shutdown().await;
    let ok = problems.is_empty();
    println!(
        "{}: {} of {} jobs succeeded in {:.1}s, each in its own container, none on the proxy host",
        if ok { "PASS" } else { "FAIL" },
        rows.iter().filter(|r| r.result == "success").count(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Our record of an emulator job: the delegated job of its run.
fn record_of<'a>(ours: &'a [Job], ej: &Value) -> Option<&'a Job> {
    let run_id = ej["runId"].as_u64()?;
    let repo = ej["repository"].as_str()?;
    ours.iter()
        .find(|j| j.run_id == run_id && j.repository.eq_ignore_ascii_case(repo))
}

/// When each job's first step ended in its container (the audit trail's
/// `proxy.step` events).
async fn first_step_times(
    store: &dyn JobStore,
) -> anyhow::Result<BTreeMap<uuid::Uuid, DateTime<Utc>>> {
    let mut first = BTreeMap::new();
    for event in store.list_audit(100_000).await? {
        if event.action == "proxy.step"
            && event.detail["step"] == 1
            && let Some(id) = event.job_id
        {
            first
                .entry(id)
                .and_modify(|t: &mut DateTime<Utc>| *t = (*t).min(event.at))
                .or_insert(event.at);
        }
    }
    Ok(first)
}

async fn runner_names(http: &reqwest::Client, emulator_url: &str) -> anyhow::Result<Vec<String>> {
    let runners: Vec<Value> = http
        .get(format!("{emulator_url}/_emulator/runners"))
        .send()
        .await?
        .json()
        .await?;
    Ok(runners
        .iter()
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect())
}

async fn left_behind(
    docker: &DockerBackend,
    instance: &str,
    http: &reqwest::Client,
    emulator_url: &str,
    work_root: &Path,
    state_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    let mut containers: BTreeSet<String> = docker
        .list(instance)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    containers.extend(
        docker
            .list_proxy_containers(instance)
            .await?
            .into_iter()
            .map(|c| c.name),
    );
    left.extend(containers.into_iter().map(|c| format!("container {c}")));
    left.extend(
        our_networks(docker, instance)
            .await?
            .into_iter()
            .map(|n| format!("network {n}")),
    );
    left.extend(
        runner_names(http, emulator_url)
            .await?
            .into_iter()
            .map(|r| format!("runner {r}")),
    );
    for dir in [work_root, state_dir] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // The hook reports are the supervisor's own notes.
                if !name.ends_with(".hook-report") {
                    left.push(format!("directory {}", entry.path().display()));
                }
            }
        }
    }
    Ok(left)
}

fn print_table(rows: &[Row]) {
    let secs = |v: Option<f64>| v.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into());
    println!(
        "\n{:<8}  {:<16}  {:<18}  {:<13}  {:>14}  {:>9}  RESULT",
        "JOB", "REPOSITORY", "PROXY RUNNER", "JOB CONTAINER", "QUEUE→STEP 1", "DURATION"
    );
    for r in rows {
        println!(
            "{:<8}  {:<16}  {:<18}  {:<13}  {:>14}  {:>9}  {}",
            r.job,
            r.repository,
            r.runner,
            r.container,
            secs(r.queue_to_first_step),
            secs(r.duration),
            r.result
        );
    }
}
