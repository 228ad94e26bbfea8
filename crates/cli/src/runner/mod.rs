//! `proxy-runner runner`: the proxy runner supervisor, the design's
//! `ProxyRunner` made real. It holds no GitHub credential and no container
//! engine: only its orchestrator token.
//!
//! It runs `--slots N` actions runner listeners side by side. For each slot
//! and each job it asks the orchestrator for a single-use registration of a
//! runner `{name}-{slot}-{n}` with a proxy label set's labels, and starts
//! `bin/Runner.Listener run` directly (not `run.sh`, which hides the exit
//! codes) with the JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`, the hooks
//! in its environment and `ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER=true`: every
//! step of every job runs in a container the orchestrator creates. What it
//! does after each exit is the domain's `proxy_runner::react`. SIGTERM stops
//! new registrations and idle listeners; running jobs get `--grace` to
//! finish; then every slot runner still registered is deleted on GitHub
//! through the orchestrator. Heartbeats report uptime, slots, busy slots,
//! restarts and last exit codes.

mod client;
mod layout;
mod settings;
mod slot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use proxy_runner_domain::proxy_runner::{Heartbeat, SlotReport};
use proxy_runner_domain::sync::lock;
use tokio_util::sync::CancellationToken;

pub use layout::SlotDirs;
pub use settings::{Registration, RunnerArgs, Settings};

use client::{Client, Scope};
use slot::{Shared, Slot};

pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let settings = Settings::load(&args, &env)?;
    tracing::info!(
        name = %settings.name,
        slots = settings.slots,
        labels = %settings.labels.join(","),
        orchestrator = %settings.orchestrator_url,
        registration = ?settings.registration,
        "proxy runner supervisor starting"
    );
    let listener = settings.runner_dir.join("bin/Runner.Listener");
    if !listener.is_file() {
        bail!(
            "{} is not an actions runner directory: {} is missing",
            settings.runner_dir.display(),
            listener.display()
        );
    }
    if settings.registration == Registration::RegistrationToken
        && !settings.runner_dir.join("config.sh").is_file()
    {
        bail!(
            "registration-token mode needs {}/config.sh",
            settings.runner_dir.display()
        );
    }
    create_private_dir(&settings.state_dir)?;
    std::fs::create_dir_all(&settings.work_root).with_context(|| {
        format!(
            "cannot create the work root {}",
            settings.work_root.display()
        )
    })?;
    let (hooks_dir, own_hooks) = match &settings.hooks_dir {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = settings.state_dir.join("hooks");
            layout::write_hooks(&dir)
                .with_context(|| format!("cannot write the hooks into {}", dir.display()))?;
            (dir, true)
        }
    };
    let externals = match &settings.externals_dir {
        Some(dir) => {
            layout::sync_externals(&settings.runner_dir, dir).with_context(|| {
                format!("cannot copy the runner's externals to {}", dir.display())
            })?;
            dir.clone()
        }
        None => {
            let dir = settings.runner_dir.join("externals");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir
        }
    };
    let client = Client::new(
        &settings.orchestrator_url,
        settings.token.clone(),
        Scope {
            organization: settings.organization.clone(),
            repository: settings.repository.clone(),
        },
    )?;
    let binary = std::env::current_exe().context("cannot find this executable")?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        hooks_dir: hooks_dir.clone(),
        binary,
        draining: CancellationToken::new(),
        hurry: CancellationToken::new(),
        settings,
    });
    let s = &shared.settings;

    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..s.slots {
        let dirs = SlotDirs::new(&s.state_dir, &s.work_root, &s.name, index);
        layout::prepare_slot_root(&s.runner_dir, &dirs.root, &externals).with_context(|| {
            format!(
                "cannot prepare the slot's runner root {}",
                dirs.root.display()
            )
        })?;
        let status = Arc::new(Mutex::new(SlotReport::new(index)));
        let stopped_because = Arc::new(Mutex::new(None));
        statuses.push(status.clone());
        reasons.push(stopped_because.clone());
        tasks.spawn(
            Slot {
                index,
                dirs,
                status,
                shared: shared.clone(),
                stopped_because,
            }
            .run(),
        );
    }

    let started = Instant::now();
    let beat = {
        let statuses = statuses.clone();
        move || Heartbeat {
            uptime_seconds: started.elapsed().as_secs(),
            slots: statuses.iter().map(|s| lock(s).clone()).collect(),
        }
    };
    let beats_stop = CancellationToken::new();
    let beats = tokio::spawn({
        let (client, stop, every, beat) = (
            client.clone(),
            beats_stop.clone(),
            s.heartbeat,
            beat.clone(),
        );
        async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if let Err(e) = client.heartbeat(&beat()).await {
                    tracing::warn!(error = %e, "heartbeat not delivered");
                }
            }
        }
    });

    let mut signals = Signals::new()?;
    let mut signalled = false;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(Err(e)) => tracing::error!(error = %e, "a slot task failed"),
                Some(Ok(())) => {}
            },
            _ = signals.next() => {
                if signalled {
                    tracing::warn!("second signal: stopping running jobs now");
                    shared.hurry.cancel();
                    continue;
                }
                signalled = true;
                tracing::info!(grace_secs = shared.settings.grace.as_secs(), "shutting down: no new registrations; running jobs may finish");
                shared.draining.cancel();
                let (hurry, grace) = (shared.hurry.clone(), shared.settings.grace);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    hurry.cancel();
                });
            }
        }
    }
    beats_stop.cancel();
    let _ = beats.await;
    // The last word: every slot stopped.
    if let Err(e) = client.heartbeat(&beat()).await {
        tracing::warn!(error = %e, "last heartbeat not delivered");
    }
    if own_hooks {
        let _ = layout::remove_dir(&hooks_dir);
    }
    if signalled {
        tracing::info!("proxy runner supervisor stopped");
        return Ok(());
    }
    let why: Vec<String> = reasons
        .iter()
        .enumerate()
        .filter_map(|(i, r)| lock(r).clone().map(|r| format!("slot {i}: {r}")))
        .collect();
    bail!("every slot stopped: {}", why.join("; "))
}

fn create_private_dir(dir: &PathBuf) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

/// SIGTERM and SIGINT, as a stream of notifications.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
