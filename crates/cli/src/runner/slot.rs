//! One slot: register a runner through the orchestrator, run its listener
//! until it exits, act on the exit code (domain `proxy_runner::react`), and
//! again, until the supervisor drains.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_runner_domain::proxy_runner::{
    ListenerExit, Reaction, SlotReport, SlotState, backoff, react, slot_runner_name,
};
use proxy_runner_domain::sync::lock;
use rand::Rng as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::client::{CallError, Client};
use super::layout::{self, SlotDirs};
use super::settings::{Registration, Settings};

/// Variables a listener gets from the supervisor's own environment (the
/// rest of it, which may hold other credentials, stays here).
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NO_COLOR",
];

/// How long a listener has to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What all slots share.
pub struct Shared {
    pub settings: Settings,
    pub client: Client,
    pub hooks_dir: PathBuf,
    /// This binary, for the hooks (`PROXY_RUNNER_BIN`).
    pub binary: PathBuf,
    /// Set by SIGTERM: no new registration, idle listeners stop.
    pub draining: CancellationToken,
    /// Set when the grace after SIGTERM is over: busy listeners stop too.
    pub hurry: CancellationToken,
}

/// A slot's registration.
struct Current {
    name: String,
    /// The JIT config (JIT mode); `None`: `config.sh` kept it in the root.
    jit: Option<SecretString>,
}

enum Registered {
    Yes(Current),
    /// The name is taken by a busy runner: take the next.
    NameTaken,
    /// Try again after a backoff; `counted` failures stop the slot at
    /// --max-terminations (the orchestrator being away does not).
    Later {
        reason: String,
        counted: bool,
    },
    /// The slot cannot work: stop it.
    Never(String),
}

enum Ended {
    Exited(ListenerExit),
    /// Stopped by the supervisor while draining.
    Stopped,
    /// The listener could not be started at all.
    CannotStart(String),
}

pub struct Slot {
    pub index: u32,
    pub dirs: SlotDirs,
    pub status: Arc<Mutex<SlotReport>>,
    pub shared: Arc<Shared>,
    /// Why the slot stopped for good, if it did.
    pub stopped_because: Arc<Mutex<Option<String>>>,
}

fn exit_of(status: ExitStatus) -> ListenerExit {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ListenerExit::Code(code),
        (None, Some(signal)) => ListenerExit::Signal(signal),
        (None, None) => ListenerExit::Code(-1),
    }
}

fn shown_code(exit: ListenerExit) -> i32 {
    match exit {
        ListenerExit::Code(c) => c,
        ListenerExit::Signal(s) => 128 + s,
    }
}

/// Console text without terminal colour codes.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Slot {
    fn set(&self, change: impl FnOnce(&mut SlotReport)) {
        change(&mut lock(&self.status));
    }

    fn state(&self) -> SlotState {
        lock(&self.status).state
    }

    fn log_prefix(&self) -> String {
        format!("slot {}", self.index)
    }

    /// Runs the slot until the supervisor drains it or it stops for good.
    pub async fn run(self) {
        let max = self.shared.settings.max_terminations;
        let mut n: u64 = 0;
        // Exits or registrations in a row that were not a finished job
        // (the backoff grows with them).
        let mut failures: u32 = 0;
        // Exits 1 and 5 since the last finished job (the slot stops at
        // --max-terminations).
        let mut terminations: u32 = 0;
        'register: loop {
            if self.shared.draining.is_cancelled() {
                break;
            }
            n += 1;
            self.set(|s| {
                s.state = SlotState::Registering;
                s.set_runner(None);
            });
            if let Err(e) = layout::fresh_dir(&self.dirs.work)
                .and_then(|()| layout::forget_registration(&self.dirs.root))
            {
                self.stop(format!(
                    "cannot prepare the slot's directories ({}): {e}",
                    self.dirs.work.display()
                ));
                return;
            }
            let name = slot_runner_name(&self.shared.settings.name, self.index, n);
            let registered = tokio::select! {
                r = self.register(&name) => r,
                _ = self.shared.draining.cancelled() => break,
            };
            let current = match registered {
                Registered::Yes(current) => current,
                Registered::NameTaken => {
                    tracing::warn!(slot = self.index, runner = %name, "a busy runner has this name; taking the next");
                    continue;
                }
                Registered::Later { reason, counted } => {
                    tracing::warn!(slot = self.index, runner = %name, "cannot register: {reason}");
                    failures += 1;
                    if counted {
                        terminations += 1;
                        if terminations >= max {
                            self.stop(format!(
                                "registration failed {terminations} times in a row, last: {reason}"
                            ));
                            return;
                        }
                    }
                    if !self.pause(failures).await {
                        break;
                    }
                    continue;
                }
                Registered::Never(reason) => {
                    self.stop(reason);
                    return;
                }
            };
            tracing::info!(slot = self.index, runner = %current.name, "runner registered");
            self.set(|s| s.set_runner(Some(current.name.clone())));
            loop {
                self.set(|s| s.state = SlotState::Idle);
                let jobs_before = lock(&self.status).jobs;
                let ended = self.run_listener(&current).await;
                let ran_a_job = lock(&self.status).jobs > jobs_before;
                match ended {
                    Ended::CannotStart(reason) => {
                        self.delete(&current.name).await;
                        self.stop(reason);
                        return;
                    }
                    Ended::Stopped => {
                        self.delete(&current.name).await;
                        break 'register;
                    }
                    Ended::Exited(exit) => {
                        self.set(|s| s.last_exit_code = Some(shown_code(exit)));
                        tracing::info!(slot = self.index, runner = %current.name, exit = ?exit, "listener exited");
                        if self.shared.draining.is_cancelled() {
                            if exit != ListenerExit::Code(0) || !ran_a_job {
                                self.delete(&current.name).await;
                            }
                            break 'register;
                        }
                        match react(exit, terminations, max) {
                            Reaction::Renew => {
                                failures = 0;
                                terminations = 0;
                                // GitHub removes a runner after its one
                                // job; one that ran none is ours to remove.
                                if !ran_a_job {
                                    self.delete(&current.name).await;
                                }
                                continue 'register;
                            }
                            Reaction::RestartAfterBackoff => {
                                failures += 1;
                                self.set(|s| s.restarts += 1);
                                if !self.pause(failures).await {
                                    self.delete(&current.name).await;
                                    break 'register;
                                }
                            }
                            Reaction::ReregisterAfterBackoff => {
                                failures += 1;
                                terminations += 1;
                                self.set(|s| s.restarts += 1);
                                self.delete(&current.name).await;
                                if !self.pause(failures).await {
                                    break 'register;
                                }
                                continue 'register;
                            }
                            Reaction::Stop(reason) => {
                                self.delete(&current.name).await;
                                self.stop(format!(
                                    "listener exit {}: {}",
                                    shown_code(exit),
                                    reason.message()
                                ));
                                return;
                            }
                        }
                    }
                }
            }
        }
        // Drained: nothing of the slot stays.
        self.clean_up();
        self.set(|s| {
            s.state = SlotState::Stopped;
            s.set_runner(None);
        });
    }

    fn clean_up(&self) {
        for dir in [&self.dirs.work, &self.dirs.root] {
            if let Err(e) = layout::remove_dir(dir) {
                tracing::warn!(slot = self.index, dir = %dir.display(), error = %e, "cannot remove the slot's directory");
            }
        }
    }

    /// The slot stops for good, saying why.
    fn stop(&self, reason: String) {
        tracing::error!(
            slot = self.index,
            "{}: stopped: {reason}",
            self.log_prefix()
        );
        self.clean_up();
        self.set(|s| {
            s.state = SlotState::Stopped;
            s.set_runner(None);
        });
        *lock(&self.stopped_because) = Some(reason);
    }

    /// Waits the backoff after `failures` failures; false when the
    /// supervisor started draining meanwhile.
    async fn pause(&self, failures: u32) -> bool {
        let s = &self.shared.settings;
        let wait = backoff(
            failures,
            s.backoff_base,
            s.backoff_max,
            rand::rng().random_range(0.0..=1.0),
        );
        self.set(|s| s.state = SlotState::Backoff);
        tracing::info!(
            slot = self.index,
            wait_ms = wait.as_millis() as u64,
            failures,
            "backing off"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shared.draining.cancelled() => false,
        }
    }

    /// Deletes a runner on GitHub through the orchestrator (best effort).
    async fn delete(&self, name: &str) {
        match self.shared.client.delete(name).await {
            Ok(n) => {
                tracing::info!(slot = self.index, runner = %name, deleted = n, "runner deleted")
            }
            Err(e) => {
                tracing::warn!(slot = self.index, runner = %name, error = %e, "cannot delete the runner")
            }
        }
    }

    fn work_folder(&self) -> String {
        self.dirs.work.display().to_string()
    }

    async fn register(&self, name: &str) -> Registered {
        let s = &self.shared.settings;
        let classify = |e: CallError| match e {
            CallError::Conflict(_) => Registered::NameTaken,
            CallError::Retry(reason) => Registered::Later {
                reason,
                counted: false,
            },
            refused @ CallError::Refused { .. } => Registered::Never(refused.to_string()),
        };
        match s.registration {
            Registration::Jit => {
                match self
                    .shared
                    .client
                    .jitconfig(name, &s.labels, &self.work_folder())
                    .await
                {
                    Ok(jit) => {
                        tracing::debug!(slot = self.index, runner = %name, runner_id = jit.runner_id, "JIT config received");
                        Registered::Yes(Current {
                            name: name.to_string(),
                            jit: Some(jit.config),
                        })
                    }
                    Err(e) => classify(e),
                }
            }
            Registration::RegistrationToken => {
                let token = match self
                    .shared
                    .client
                    .registration_token(name, &s.labels, &self.work_folder())
                    .await
                {
                    Ok(t) => t,
                    Err(e) => return classify(e),
                };
                match self.configure(name, &token.url, &token.token).await {
                    Ok(()) => Registered::Yes(Current {
                        name: name.to_string(),
                        jit: None,
                    }),
                    Err(reason) => Registered::Later {
                        reason,
                        counted: true,
                    },
                }
            }
        }
    }

    /// `config.sh --url --name --labels --work --unattended --replace
    /// --ephemeral --disableupdate`, the token in ACTIONS_RUNNER_INPUT_TOKEN
    /// (never on a command line).
    async fn configure(&self, name: &str, url: &str, token: &SecretString) -> Result<(), String> {
        let script = self.dirs.root.join("config.sh");
        let labels = self.shared.settings.labels.join(",");
        let work = self.work_folder();
        let mut cmd = Command::new(&script);
        cmd.args([
            "--url",
            url,
            "--name",
            name,
            "--labels",
            &labels,
            "--work",
            &work,
            "--unattended",
            "--replace",
            "--ephemeral",
            "--disableupdate",
        ])
        .current_dir(&self.dirs.root)
        .env_clear()
        .envs(self.base_env())
        .env("ACTIONS_RUNNER_INPUT_TOKEN", token.expose_secret())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let output = cmd
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            tracing::info!(slot = self.index, "config.sh: {}", plain(line));
        }
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("config.sh exited with {}", output.status))
        }
    }

    /// What every listener (and config.sh) gets from the supervisor.
    fn base_env(&self) -> Vec<(String, String)> {
        let s = &self.shared.settings;
        let mut env: Vec<(String, String)> = PASSED_ENV
            .iter()
            .map(|n| n.to_string())
            .chain(s.pass_env.iter().cloned())
            .filter_map(|name| std::env::var(&name).ok().map(|v| (name, v)))
            .collect();
        let hook = |name: &str| self.shared.hooks_dir.join(name).display().to_string();
        env.extend([
            (
                "ACTIONS_RUNNER_HOOK_JOB_STARTED".to_string(),
                hook(layout::HOOK_JOB_STARTED),
            ),
            (
                "ACTIONS_RUNNER_HOOK_JOB_COMPLETED".to_string(),
                hook(layout::HOOK_JOB_COMPLETED),
            ),
            (
                "ACTIONS_RUNNER_CONTAINER_HOOKS".to_string(),
                hook(layout::HOOK_CONTAINER),
            ),
            // No step ever runs on this host.
            (
                "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER".to_string(),
                "true".to_string(),
            ),
            ("ORCHESTRATOR_URL".to_string(), s.orchestrator_url.clone()),
            (
                "PROXY_RUNNER_TOKEN".to_string(),
                s.token.expose_secret().to_string(),
            ),
            // The runner does not set it; the hooks read it.
            ("RUNNER_LABELS".to_string(), s.labels.join(",")),
            (
                "PROXY_RUNNER_BIN".to_string(),
                self.shared.binary.display().to_string(),
            ),
            (
                "PROXY_RUNNER_HOOK_REPORT".to_string(),
                self.dirs.hook_report.display().to_string(),
            ),
        ]);
        env
    }

    /// Starts `bin/Runner.Listener run` and follows it to its end: its
    /// console says when it runs a job. Draining stops an idle listener at
    /// once and a busy one when the grace is over.
    async fn run_listener(&self, current: &Current) -> Ended {
        let program = self.dirs.root.join("bin/Runner.Listener");
        let mut cmd = Command::new(&program);
        cmd.arg("run")
            .current_dir(&self.dirs.root)
            .env_clear()
            .envs(self.base_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(jit) = &current.jit {
            cmd.env("ACTIONS_RUNNER_INPUT_JITCONFIG", jit.expose_secret());
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Ended::CannotStart(format!("cannot start {}: {e}", program.display()));
            }
        };
        drop(cmd);
        let readers = self.follow_output(&mut child, &current.name);
        let mut drain_seen = false;
        let ended = loop {
            tokio::select! {
                status = child.wait() => {
                    break match status {
                        Ok(status) => Ended::Exited(exit_of(status)),
                        Err(e) => Ended::CannotStart(format!("cannot wait for the listener: {e}")),
                    };
                }
                _ = self.shared.draining.cancelled(), if !drain_seen => {
                    drain_seen = true;
                    self.set(|s| if s.state != SlotState::Busy { s.state = SlotState::Draining });
                    if self.state() != SlotState::Busy {
                        tracing::info!(slot = self.index, runner = %current.name, "stopping the idle listener");
                        terminate(&mut child).await;
                        break Ended::Stopped;
                    }
                    tracing::info!(slot = self.index, runner = %current.name, "the listener runs a job: waiting for it to finish");
                }
                _ = self.shared.hurry.cancelled(), if drain_seen => {
                    tracing::warn!(slot = self.index, runner = %current.name, "the grace is over: stopping the listener in the middle of its job");
                    terminate(&mut child).await;
                    break Ended::Stopped;
                }
            }
        };
        for reader in readers {
            // The pipes close with the listener (its children may hold them
            // a little longer).
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        ended
    }

    /// Forwards the listener's output to the log and follows its console:
    /// `Running job:` makes the slot busy, `completed with result:` idle.
    fn follow_output(&self, child: &mut Child, runner: &str) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let status = self.status.clone();
            let (slot, runner) = (self.index, runner.to_string());
            tasks.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = plain(&line);
                    if line.contains(": Running job: ") {
                        let mut s = lock(&status);
                        s.state = SlotState::Busy;
                        s.jobs += 1;
                    } else if line.contains(" completed with result: ") {
                        let mut s = lock(&status);
                        if s.state == SlotState::Busy {
                            s.state = SlotState::Idle;
                        }
                    }
                    tracing::info!(slot, runner = %runner, "listener: {line}");
                }
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let (slot, runner) = (self.index, runner.to_string());
            tasks.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(slot, runner = %runner, "listener: {}", plain(&line));
                }
            }));
        }
        tasks
    }
}

/// SIGTERM to the listener, SIGKILL to its process group when it did not
/// stop in time.
async fn terminate(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = pid {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_dropped() {
        assert_eq!(
            plain("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
        assert_eq!(plain("no codes"), "no codes");
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(shown_code(ListenerExit::Code(2)), 2);
        assert_eq!(shown_code(ListenerExit::Signal(9)), 137);
    }
}
