//! `proxy-runner sim-runner`: stands in for the actions runner inside a job
//! container (the real one cannot be downloaded here). It takes one job from
//! the GitHub emulator, runs each step as a shell command, reports, and exits
//! with the listener's exit codes (0 after its job).

use std::time::Duration;

use clap::Args;
use proxy_runner_emulator::runner::{RunOptions, RunnerHost, ShellExecutor, SimRunner};
use secrecy::SecretString;

#[derive(Args)]
pub struct SimRunnerArgs {
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
    /// Give up (exit 2) when no job came within this many seconds (0: wait forever).
    #[arg(long, env = "SIM_RUNNER_JOB_WAIT_SECS", default_value_t = 0)]
    job_wait_secs: u64,
    /// A step running longer is killed.
    #[arg(long, default_value_t = 600)]
    step_timeout_secs: u64,
}

pub async fn run(args: SimRunnerArgs) -> i32 {
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
    eprintln!(
        "sim-runner {} (id {}) waiting for a job at {}",
        runner.name(),
        runner.id(),
        runner.server_url()
    );
    let executor = ShellExecutor {
        timeout: Duration::from_secs(args.step_timeout_secs),
        ..ShellExecutor::default()
    };
    let options = RunOptions {
        job_wait: (args.job_wait_secs > 0).then(|| Duration::from_secs(args.job_wait_secs)),
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
