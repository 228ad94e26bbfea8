//! `proxy-runner sim-runner`: stands in for the actions runner (the real one
//! cannot be downloaded here). It takes one job from the GitHub emulator,
//! runs each step as a shell command (or, with hooks, through them), reports,
//! and exits with the listener's exit codes (0 after its job).
//!
//! Without a subcommand it is the entrypoint of the local job image (a JIT
//! config or a registration token handed over on stdin, or from the
//! environment). With `install DIR`
//! it writes a runner directory whose `config.sh` and `bin/Runner.Listener`
//! are this simulator, so that `proxy-runner runner` runs exactly the
//! commands it runs with the real runner: `config.sh ...` is
//! `sim-runner configure` (registers, keeps the configuration in the
//! runner's root like the real `.runner` and `.credentials`), and
//! `bin/Runner.Listener run` is `sim-runner run` (the configuration from
//! `ACTIONS_RUNNER_INPUT_JITCONFIG`, else the root's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use proxy_runner_domain::ports::{MAX_STDIN_PAYLOAD, StdinSecret, parse_stdin_payload};
use proxy_runner_domain::runner_plan::{JITCONFIG_ENV, REGISTRATION_TOKEN_ENV};
use proxy_runner_emulator::runner::{
    EXIT_TERMINATED_ERROR, RunOptions, RunnerHost, ShellExecutor, SimRunner,
};
use secrecy::{ExposeSecret as _, SecretString};

#[derive(Args)]
pub struct SimRunnerArgs {
    #[command(subcommand)]
    command: Option<SimCommand>,
    /// The encoded JIT config (default: $ACTIONS_RUNNER_INPUT_JITCONFIG).
    #[arg(long, env = "ACTIONS_RUNNER_INPUT_JITCONFIG", hide_env_values = true)]
    jitconfig: Option<String>,
    /// Registration-token mode: the repository or organization URL.
    #[arg(long, env = "GITHUB_URL")]
    url: Option<String>,
    #[arg(long, env = "RUNNER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "RUNNER_NAME")]
    name: Option<String>,
    #[arg(long, env = "RUNNER_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Read the credential from standard input first (`NAME=value` lines up
    /// to the end of input: ACTIONS_RUNNER_INPUT_JITCONFIG or RUNNER_TOKEN),
    /// as the orchestrator hands it over; the environment is the fallback.
    #[arg(long)]
    credentials_on_stdin: bool,
    /// Give up (exit 2) when no job came within this many seconds (0: wait forever).
    #[arg(long, env = "SIM_RUNNER_JOB_WAIT_SECS", default_value_t = 0)]
    job_wait_secs: u64,
    /// A step running longer is killed.
    #[arg(long, default_value_t = 600)]
    step_timeout_secs: u64,
}

#[derive(Subcommand)]
enum SimCommand {
    /// `config.sh` of a simulated runner directory: registers with a
    /// registration token and keeps the configuration in the root.
    Configure(ConfigureArgs),
    /// `bin/Runner.Listener run` of a simulated runner directory: runs the
    /// configured runner for one job, printing the listener's console lines.
    Run(ListenerArgs),
    /// Writes a runner directory (`config.sh`, `bin/Runner.Listener`,
    /// `externals/`) whose commands are this simulator.
    Install {
        /// The directory to write (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct ConfigureArgs {
    /// The runner's root directory (the real runner's is `bin/..`).
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    url: Option<String>,
    /// The registration token; better given as ACTIONS_RUNNER_INPUT_TOKEN
    /// than on a command line.
    #[arg(long, env = "ACTIONS_RUNNER_INPUT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The work folder: absolute, or under the root (default `_work`).
    #[arg(long)]
    work: Option<String>,
    #[arg(long)]
    ephemeral: bool,
    /// Accepted like the real runner's; the simulator never asks.
    #[arg(long)]
    unattended: bool,
    /// Accepted like the real runner's (names are not reused here).
    #[arg(long)]
    replace: bool,
    /// Accepted like the real runner's; the simulator never updates.
    #[arg(long)]
    disableupdate: bool,
    /// Accepted like the real runner's; the emulator groups nothing.
    #[arg(long)]
    runnergroup: Option<String>,
}

#[derive(Args)]
struct ListenerArgs {
    /// The runner's root directory (the real runner's is `bin/..`).
    #[arg(long)]
    root: PathBuf,
    /// A JIT config; better given as ACTIONS_RUNNER_INPUT_JITCONFIG than on
    /// a command line.
    #[arg(long, env = "ACTIONS_RUNNER_INPUT_JITCONFIG", hide_env_values = true)]
    jitconfig: Option<String>,
    /// Accepted like the real runner's (a runner takes one job anyway).
    #[arg(long)]
    once: bool,
    /// Accepted like the real runner's.
    #[arg(long)]
    startuptype: Option<String>,
    /// A step on the host running longer is killed.
    #[arg(long, default_value_t = 600)]
    step_timeout_secs: u64,
}

/// What `config.sh` keeps: the configuration (`.runner`, shown) and the
/// credential (`.credentials`, owner-only).
const RUNNER_FILE: &str = ".runner";
const CREDENTIALS_FILE: &str = ".credentials";

pub async fn run(args: SimRunnerArgs) -> i32 {
    match args.command {
        Some(SimCommand::Configure(c)) => configure(c).await,
        Some(SimCommand::Run(l)) => listener(l).await,
        Some(SimCommand::Install { dir }) => match install(&dir) {
            Ok(()) => {
                println!("{}", dir.display());
                0
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write the runner directory {}: {e}",
                    dir.display()
                );
                1
            }
        },
        None => take_job(args).await,
    }
}

/// The job image's entrypoint: a JIT config or a registration token from
/// the environment.
async fn take_job(mut args: SimRunnerArgs) -> i32 {
    if args.credentials_on_stdin {
        match read_stdin_credentials().await {
            Ok(secrets) => {
                for secret in secrets {
                    let value = Some(secret.value.expose_secret().to_string());
                    if secret.name == JITCONFIG_ENV {
                        args.jitconfig = value;
                    } else {
                        args.token = value;
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_TERMINATED_ERROR;
            }
        }
    }
    let runner = match (&args.jitconfig, &args.url, &args.token) {
        (Some(jit), _, _) if !jit.is_empty() => SimRunner::from_jit_config(jit),
        (_, Some(url), Some(token)) => {
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| format!("sim-runner-{}", std::process::id()));
            SimRunner::register(
                url,
                &SecretString::from(token.clone()),
                &name,
                &args.labels,
                true,
            )
            .await
        }
        _ => {
            eprintln!(
                "error: no runner configuration: set ACTIONS_RUNNER_INPUT_JITCONFIG (or --jitconfig), or GITHUB_URL and RUNNER_TOKEN"
            );
            return 1;
        }
    };
    // The credential is in the runner now; the steps get a clean environment.
    // Like the real runner, it runs the hooks its environment names.
    let runner = match runner {
        Ok(r) => r.with_host(RunnerHost::from_process()),
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    one_job(runner, args.step_timeout_secs, args.job_wait_secs).await
}

/// The credential the orchestrator wrote to this container's stdin; it
/// lives in this process's memory only, never in an environment or a file.
async fn read_stdin_credentials() -> Result<Vec<StdinSecret>, String> {
    let text = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_STDIN_PAYLOAD as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf)
    })
    .await
    .map_err(|e| format!("cannot read stdin: {e}"))?
    .map_err(|e| format!("cannot read stdin: {}", e.kind()))?;
    let text = String::from_utf8(text).map_err(|_| "stdin is not UTF-8".to_string())?;
    parse_stdin_payload(&text, &[JITCONFIG_ENV, REGISTRATION_TOKEN_ENV])
}

/// Runs one job and reports it on stderr; the listener's exit code.
async fn one_job(runner: SimRunner, step_timeout_secs: u64, job_wait_secs: u64) -> i32 {
    eprintln!(
        "sim-runner {} (id {}) waiting for a job at {}",
        runner.name(),
        runner.id(),
        runner.server_url()
    );
    let executor = ShellExecutor {
        timeout: Duration::from_secs(step_timeout_secs),
        ..ShellExecutor::default()
    };
    let options = RunOptions {
        job_wait: (job_wait_secs > 0).then(|| Duration::from_secs(job_wait_secs)),
        ..RunOptions::default()
    };
    match runner.run(&executor, &options).await {
        Ok(outcome) => {
            if let Some(job) = outcome.job() {
                for (i, step) in job.steps.iter().enumerate() {
                    eprintln!(
                        "step {i}: exit {}\n{}",
                        step.exit_code,
                        step.output.trim_end()
                    );
                }
                eprintln!(
                    "job {} of {} finished: {}",
                    job.job_id, job.repository, job.conclusion
                );
            } else {
                eprintln!("no job came in time");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `config.sh --url --token --name --labels [--work] [--ephemeral] ...`.
async fn configure(args: ConfigureArgs) -> i32 {
    let runner_file = args.root.join(RUNNER_FILE);
    if runner_file.exists() {
        eprintln!(
            "Cannot configure the runner because it is already configured. To reconfigure the runner, run './config.sh remove' first."
        );
        return 1;
    }
    let (Some(url), Some(token)) = (&args.url, &args.token) else {
        eprintln!("error: config.sh needs --url and --token (or ACTIONS_RUNNER_INPUT_TOKEN)");
        return 1;
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("sim-runner-{}", std::process::id()));
    let registered = SimRunner::register(
        url,
        &SecretString::from(token.clone()),
        &name,
        &args.labels,
        args.ephemeral,
    )
    .await;
    let runner = match registered {
        Ok(r) => r.with_work_folder(args.work.clone().unwrap_or_else(|| "_work".into())),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let shown = serde_json::json!({
        "agentId": runner.id(),
        "agentName": runner.name(),
        "serverUrl": runner.server_url(),
        "gitHubUrl": url,
        "workFolder": args.work.as_deref().unwrap_or("_work"),
        "ephemeral": args.ephemeral,
    });
    let written = write_private(&args.root.join(CREDENTIALS_FILE), &runner.encoded_config())
        .and_then(|()| std::fs::write(&runner_file, format!("{shown:#}\n")));
    if let Err(e) = written {
        eprintln!("error: cannot write the runner's configuration: {e}");
        return 1;
    }
    println!("√ Runner successfully added");
    println!("√ Settings Saved.");
    0
}

/// Writes a credential readable by its owner only.
fn write_private(path: &Path, secret: &SecretString) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.expose_secret().as_bytes())
}

/// `bin/Runner.Listener run`: the JIT config of the environment, else the
/// configuration `config.sh` kept in the root.
async fn listener(args: ListenerArgs) -> i32 {
    let runner = match args.jitconfig.as_deref().filter(|j| !j.is_empty()) {
        Some(jit) => SimRunner::from_jit_config(jit),
        None => match std::fs::read_to_string(args.root.join(CREDENTIALS_FILE)) {
            Ok(stored) => SimRunner::from_jit_config(stored.trim()),
            Err(_) => {
                eprintln!("Not configured. Run config.(sh/cmd) to configure the runner.");
                return EXIT_TERMINATED_ERROR;
            }
        },
    };
    let runner = match runner {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    let host = RunnerHost {
        root: Some(args.root.clone()),
        ..RunnerHost::from_process()
    };
    let runner = runner.with_host(host).with_console(true);
    one_job(runner, args.step_timeout_secs, 0).await
}

const CONFIG_SH: &str = r#"#!/bin/sh
# config.sh of a simulated actions runner: like the real one, it is
# `bin/Runner.Listener configure "$@"`.
root=$(cd "$(dirname "$0")" && pwd)
exec "$root/bin/Runner.Listener" configure "$@"
"#;

const LISTENER: &str = r#"#!/bin/sh
# bin/Runner.Listener of a simulated actions runner (`proxy-runner
# sim-runner`): `run` and `configure` like the real listener; the runner's
# root is the directory above bin/, as for the real one.
root=$(cd "$(dirname "$0")/.." && pwd)
command="${1:-run}"
[ "$#" -gt 0 ] && shift
exec "${PROXY_RUNNER_BIN:-proxy-runner}" sim-runner "$command" --root "$root" "$@"
"#;

/// Writes a simulated runner directory.
pub fn install(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("externals"))?;
    for (path, text) in [
        (dir.join("config.sh"), CONFIG_SH),
        (dir.join("bin/Runner.Listener"), LISTENER),
    ] {
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(
        dir.join("externals/README"),
        "The real runner keeps node and other tools here; job containers mount it read-only at /__e.\n",
    )?;
    Ok(())
}
