//! `proxy-runner`: one binary for the orchestrator and its tools.

mod bench;
mod client;
mod demo;
mod demo_proxy;
mod emulator;
mod hook;
mod runner;
mod serve;
mod sim_runner;
mod store_url;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use proxy_runner_orchestrator::config::{BackendKind, Config, Overrides, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "proxy-runner",
    version,
    about = "Runs every GitHub Actions job in a fresh, hardened, ephemeral container"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the orchestrator (HTTP API, job store, provisioning).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long, value_parser = parse_backend)]
        backend: Option<BackendKind>,
    },
    /// Manage per-runner orchestrator tokens (needs ORCHESTRATOR_URL and PROXY_RUNNER_ADMIN_TOKEN).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Read jobs (needs ORCHESTRATOR_URL and PROXY_RUNNER_ADMIN_TOKEN).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure queued-job-to-container latency next to plain `docker run`, and
    /// durable delegations per second (prints figures).
    #[command(hide = true)]
    Bench(bench::BenchArgs),
    /// The benchmark's load generator (a process of its own).
    #[command(hide = true)]
    BenchLoad(bench::load::LoadArgs),
    /// Run the whole flow on this machine against a local GitHub emulator
    /// (autoscaling, or with --mode proxy the proxy path).
    Demo(demo::DemoArgs),
    /// Run a local GitHub emulator (REST API, webhooks, job queue) for tests and demos.
    Emulator(emulator::EmulatorArgs),
    /// Stand in for the actions runner inside a job container: take one job and run its steps.
    SimRunner(sim_runner::SimRunnerArgs),
    /// Hooks the actions runner calls (ACTIONS_RUNNER_CONTAINER_HOOKS,
    /// ACTIONS_RUNNER_HOOK_JOB_STARTED, ACTIONS_RUNNER_HOOK_JOB_COMPLETED).
    #[command(subcommand)]
    Hook(hook::HookCommand),
    /// Supervise proxy runner listeners: every job they take runs in a
    /// container the orchestrator creates (needs ORCHESTRATOR_URL and
    /// PROXY_RUNNER_TOKEN).
    Runner(runner::RunnerArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token for a runner: the token on stdout (the only time it is
    /// shown), its id on stderr; with --json both on stdout.
    Create {
        #[arg(long)]
        runner: String,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (id, runner, created, revoked; never a value).
    List {
        #[arg(long)]
        runner: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id, or by its value (--stdin reads the value
    /// from standard input, which keeps it off the command line).
    Revoke {
        /// A token id, or a token value.
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        id_or_token: Option<String>,
        /// Read the token value from standard input (one line).
        #[arg(long)]
        stdin: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs, oldest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        repository: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (secrets masked) or the first error.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A hook runs before or during every job: one thread starts faster than
    // a pool, and a hook makes one call at a time.
    let mut builder = if matches!(cli.command, Command::Hook(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            db,
            backend,
        } => {
            serve::init_logging();
            let flags = Overrides {
                listen,
                database: db,
                backend,
            };
            let config = Config::load(config.as_deref(), &ProcessEnv, &flags)?;
            serve::serve(config).await
        }
        Command::Token { command } => {
            let c = client::Client::from_env()?;
            match command {
                TokenCommand::Create { runner, json } => {
                    let issued = c.create_token(&runner).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&issued)?);
                    } else {
                        // stdout stays the bare token, so `$(token create ...)` works.
                        let id = issued["id"].as_str().unwrap_or_default();
                        eprintln!("token {id} issued for runner {runner}");
                        println!("{}", issued["token"].as_str().unwrap_or_default());
                    }
                }
                TokenCommand::List { runner, json } => {
                    c.list_tokens(runner.as_deref(), json).await?
                }
                TokenCommand::Revoke { id_or_token, stdin } => {
                    let id = match (id_or_token, stdin) {
                        (Some(id), _) if uuid::Uuid::parse_str(&id).is_ok() => {
                            c.revoke_token(&id).await?;
                            id
                        }
                        (Some(value), _) => {
                            c.revoke_token_by_value(&secrecy::SecretString::from(value))
                                .await?
                        }
                        (None, _) => {
                            let value = client::read_token_from_stdin()?;
                            c.revoke_token_by_value(&value).await?
                        }
                    };
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
        Command::Jobs { command } => {
            let c = client::Client::from_env()?;
            match command {
                JobsCommand::List {
                    status,
                    repository,
                    limit,
                    json,
                } => {
                    c.list_jobs(status.as_deref(), repository.as_deref(), limit, json)
                        .await
                }
                JobsCommand::Show { id, json } => c.show_job(&id, json).await,
            }
        }
        Command::Demo(args) => {
            if std::env::var_os("PROXY_RUNNER_LOG").is_some() {
                serve::init_logging();
            }
            if demo::run(args).await? {
                Ok(())
            } else {
                anyhow::bail!("the demo did not pass")
            }
        }
        Command::Bench(args) => bench::run(args).await,
        Command::BenchLoad(args) => bench::load::run(args).await,
        Command::Emulator(args) => {
            serve::init_logging();
            emulator::run(args).await
        }
        Command::Hook(command) => {
            // A hook's exit code is the runner's verdict on the call.
            let code = hook::run(command).await;
            std::process::exit(code);
        }
        Command::Runner(args) => {
            serve::init_logging();
            runner::run(args).await
        }
        Command::SimRunner(args) => {
            serve::init_logging();
            let code = sim_runner::run(args).await;
            std::process::exit(code);
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref(), &ProcessEnv, &Overrides::default())?;
            for line in config.paths_summary() {
                println!("# {line}");
            }
            print!("{}", config.to_masked_toml());
            Ok(())
        }
    }
}
