//! A simulated actions runner for the emulator: it registers (JIT config or
//! registration token), takes one job, runs each step through a
//! [`StepExecutor`], reports the results and stops, like an ephemeral
//! `Runner.Listener`. Used by `proxy-runner sim-runner` and by tests.
//! Around a job it runs the hooks of its environment ([`RunnerHost`]) the
//! way the real runner does: job hooks, and the container hook for jobs with
//! a `container` or `services` (see `hooks`).
//!
//! The runner credential (and the JIT config that carries it) is a secret:
//! it is never logged, never put in an error, never given to steps.

mod hooks;
mod process;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::protocol::{
    AcquireRequest, CompleteRequest, CompleteResponse, JitConfigDocument, JobAssignment, LogReport,
    ProtocolError, RegisterRequest, RegisterResponse, StepAck, StepReport, StepSpec,
};
use crate::state::{is_http_url, truncate_utf8};
use hooks::{FileCommands, HookSettings, Layout};
pub use process::{EXIT_STEP_NOT_STARTED, EXIT_STEP_TIMEOUT};

/// The version the simulated runner reports.
pub const SIM_RUNNER_VERSION: &str = "2.330.0-sim";
/// Exit codes of the real `Runner.Listener` (Constants.Runner.ReturnCode).
pub const EXIT_SUCCESS: i32 = 0;
pub const EXIT_TERMINATED_ERROR: i32 = 1;
pub const EXIT_RETRYABLE_ERROR: i32 = 2;
/// Largest step output sent to the server.
pub const MAX_STEP_OUTPUT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("the JIT config is not a valid runner configuration for the emulator")]
    InvalidJitConfig,
    #[error("invalid runner URL {0:?}: expected http(s)://HOST/OWNER/REPO or http(s)://HOST/ORG")]
    InvalidUrl(String),
    #[error("registration refused (HTTP {status}): {message}")]
    Registration { status: u16, message: String },
    #[error("the runner registration was deleted from the server")]
    Deregistered,
    #[error("the server refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("server error (HTTP {status})")]
    Server { status: u16 },
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl RunnerError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RunnerError::Server { .. } | RunnerError::Transport(_))
    }

    /// The real listener's exit code for this failure: 2 (retryable) for
    /// server and network trouble, 1 (terminated) for everything else.
    pub fn exit_code(&self) -> i32 {
        if self.is_retryable() {
            EXIT_RETRYABLE_ERROR
        } else {
            EXIT_TERMINATED_ERROR
        }
    }
}

/// How long to wait for a job, and how patiently to talk to the server.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Give up when no job came within this time (`None`: wait forever, like
    /// the real runner).
    pub job_wait: Option<Duration>,
    /// Length of one long poll (the server caps it at 50 s).
    pub poll_wait: Duration,
    /// Network or server errors tolerated in a row before giving up.
    pub transport_retries: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            job_wait: None,
            poll_wait: Duration::from_secs(30),
            transport_retries: 5,
        }
    }
}

/// The machine a runner runs on: its environment (hooks) and directories.
#[derive(Clone)]
pub struct RunnerHost {
    /// The runner process's environment: where the hooks are configured
    /// (`ACTIONS_RUNNER_HOOK_JOB_STARTED`, `ACTIONS_RUNNER_HOOK_JOB_COMPLETED`,
    /// `ACTIONS_RUNNER_CONTAINER_HOOKS`, `ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER`)
    /// and what hooks inherit. Empty by default, not the process's own: a
    /// test running under a real runner with hooks must not run them.
    pub env: Vec<(String, String)>,
    /// The runner's root directory; the work folder (`_work`) and
    /// `externals` are under it. Default: the current directory. Only jobs
    /// with hooks or containers write there.
    pub root: Option<PathBuf>,
    /// A hook running longer is killed (the real runner has no limit of its
    /// own; the job's timeout stops it).
    pub hook_timeout: Duration,
}

impl Default for RunnerHost {
    fn default() -> Self {
        RunnerHost {
            env: Vec::new(),
            root: None,
            hook_timeout: Duration::from_secs(600),
        }
    }
}

impl RunnerHost {
    /// This process's own environment and directory, like the real runner.
    pub fn from_process() -> RunnerHost {
        RunnerHost {
            env: std::env::vars().collect(),
            root: std::env::current_dir().ok(),
            ..RunnerHost::default()
        }
    }
}

impl fmt::Debug for RunnerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values of the environment may be secrets (tokens): names only.
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RunnerHost")
            .field("env", &names)
            .field("root", &self.root)
            .field("hook_timeout", &self.hook_timeout)
            .finish()
    }
}

/// The outcome of a job as the runner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    Succeeded,
    Failed,
    Cancelled,
}

impl JobResult {
    fn wire(self) -> &'static str {
        match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::Cancelled => "cancelled",
        }
    }
}

/// The job a runner ran.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub job_id: u64,
    pub run_id: u64,
    pub repository: String,
    pub workflow: String,
    pub name: String,
    pub result: JobResult,
    /// The conclusion GitHub (the emulator) recorded: success, failure, cancelled.
    pub conclusion: String,
    /// Results of the steps that ran, in order.
    pub steps: Vec<StepResult>,
    /// The job log as reported: hooks, container set-up and clean-up and
    /// steps, in order.
    pub log: Vec<LogEntry>,
}

/// One section of a job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// As GitHub shows it: `Set up runner`, `Initialize containers`,
    /// `Run <command>`, `Stop containers`, `Complete runner`...
    pub name: String,
    pub output: String,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// A job was taken and run to the end (whatever its result).
    Completed(JobRun),
    /// No job came within [`RunOptions::job_wait`].
    NoJob,
}

impl RunOutcome {
    /// 0 after a job, like an ephemeral listener (a failed job is still a
    /// successful runner); 2 (retryable) when no job came in time.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Completed(_) => EXIT_SUCCESS,
            RunOutcome::NoJob => EXIT_RETRYABLE_ERROR,
        }
    }

    pub fn job(&self) -> Option<&JobRun> {
        match self {
            RunOutcome::Completed(job) => Some(job),
            RunOutcome::NoJob => None,
        }
    }
}

/// One step to run.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// 0-based position in the job.
    pub index: usize,
    pub command: String,
    /// The step's `shell:` (`bash` or `sh`); `None`: the default.
    pub shell: Option<String>,
    /// Environment for the step (GITHUB_*, RUNNER_NAME, CI...). Never holds
    /// the runner credential.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// Combined stdout and stderr, possibly truncated.
    pub output: String,
    pub exit_code: i32,
}

/// Runs the steps of a job. Failures to run are reported as a failing step
/// (non-zero exit code), not as errors.
#[async_trait]
pub trait StepExecutor: Send + Sync {
    async fn run_step(&self, step: &StepContext) -> StepResult;
}

/// Runs each step as `sh -c <command>` (`bash --noprofile --norc -eo
/// pipefail -c` for `shell: bash`) with a clean environment (PATH, HOME and
/// the step's variables), capturing stdout and stderr together.
#[derive(Debug, Clone)]
pub struct ShellExecutor {
    /// A step running longer is killed (exit code 124).
    pub timeout: Duration,
    /// Output beyond this many bytes is dropped.
    pub max_output: usize,
    pub working_dir: Option<PathBuf>,
}

impl Default for ShellExecutor {
    fn default() -> Self {
        ShellExecutor {
            timeout: Duration::from_secs(600),
            max_output: MAX_STEP_OUTPUT,
            working_dir: None,
        }
    }
}

#[async_trait]
impl StepExecutor for ShellExecutor {
    async fn run_step(&self, step: &StepContext) -> StepResult {
        let (program, mut args): (&str, Vec<String>) = match step.shell.as_deref() {
            Some("bash") => (
                "bash",
                ["--noprofile", "--norc", "-eo", "pipefail"]
                    .map(str::to_string)
                    .to_vec(),
            ),
            _ => ("sh", Vec::new()),
        };
        args.push("-c".to_string());
        args.push(step.command.clone());
        let mut env = vec![(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )];
        if let Ok(home) = std::env::var("HOME") {
            env.push(("HOME".to_string(), home));
        }
        env.extend(step.env.iter().cloned());
        let spec = process::ProcessSpec {
            program: program.as_ref(),
            args: &args,
            env: &env,
            cwd: self.working_dir.as_deref(),
            stdin: None,
            timeout: self.timeout,
            max_output: self.max_output,
            what: "step",
        };
        match process::run(spec).await {
            Ok(result) => result,
            Err(e) => StepResult {
                output: format!("cannot start the step: {e}"),
                exit_code: EXIT_STEP_NOT_STARTED,
            },
        }
    }
}

/// A runner known to the emulator, with its credential.
pub struct SimRunner {
    base_url: String,
    runner_id: u64,
    runner_name: String,
    credential: SecretString,
    /// The work folder of the runner's configuration (`_work`).
    work_folder: String,
    host: RunnerHost,
    http: reqwest::Client,
    /// Print the real listener's console lines on stdout.
    console: bool,
}

impl fmt::Debug for SimRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRunner")
            .field("base_url", &self.base_url)
            .field("runner_id", &self.runner_id)
            .field("runner_name", &self.runner_name)
            .field("credential", &"[redacted]")
            .field("host", &self.host)
            .finish()
    }
}

fn http_client() -> Result<reqwest::Client, RunnerError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(format!("proxy-runner-sim-runner/{SIM_RUNNER_VERSION}"))
        .build()
        .map_err(|e| RunnerError::Client(e.to_string()))
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin_len = scheme.len() + 3 + host_end;
    (host_end > 0).then(|| &url[..origin_len])
}

fn transport(e: reqwest::Error) -> RunnerError {
    RunnerError::Transport(e.without_url().to_string())
}

impl SimRunner {
    /// A runner from the `encoded_jit_config` of `generate-jitconfig`.
    pub fn from_jit_config(encoded: &str) -> Result<SimRunner, RunnerError> {
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = engine
            .decode(encoded.trim())
            .map_err(|_| RunnerError::InvalidJitConfig)?;
        let doc: JitConfigDocument =
            serde_json::from_slice(&bytes).map_err(|_| RunnerError::InvalidJitConfig)?;
        if !is_http_url(&doc.url) || doc.credential.is_empty() {
            return Err(RunnerError::InvalidJitConfig);
        }
        Ok(SimRunner {
            base_url: doc.url.trim_end_matches('/').to_string(),
            runner_id: doc.runner_id,
            runner_name: doc.runner_name,
            credential: SecretString::from(doc.credential),
            work_folder: doc.work_folder,
            host: RunnerHost::default(),
            http: http_client()?,
            console: false,
        })
    }

    /// Registers a runner with a registration token, like
    /// `config.sh --url URL --token TOKEN --name NAME --labels ... [--ephemeral]`.
    /// `url` is the emulator's base URL followed by `/owner/repo` or `/org`;
    /// the default labels self-hosted, Linux and X64 are added.
    pub async fn register(
        url: &str,
        token: &SecretString,
        name: &str,
        labels: &[String],
        ephemeral: bool,
    ) -> Result<SimRunner, RunnerError> {
        if !is_http_url(url) {
            return Err(RunnerError::InvalidUrl(url.chars().take(200).collect()));
        }
        let origin = origin_of(url).ok_or_else(|| RunnerError::InvalidUrl(url.to_string()))?;
        let http = http_client()?;
        let request = RegisterRequest {
            url: url.to_string(),
            token: token.expose_secret().to_string(),
            name: name.to_string(),
            labels: labels.to_vec(),
            ephemeral,
            no_default_labels: false,
        };
        let response = http
            .post(format!("{origin}/_runner/register"))
            .timeout(Duration::from_secs(30))
            .json(&request)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(RunnerError::Server {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(RunnerError::Registration {
                status: status.as_u16(),
                message: error_message(response).await,
            });
        }
        let registered: RegisterResponse = response.json().await.map_err(transport)?;
        Ok(SimRunner {
            base_url: registered.url.trim_end_matches('/').to_string(),
            runner_id: registered.runner_id,
            runner_name: registered.runner_name,
            credential: SecretString::from(registered.credential),
            work_folder: String::new(),
            host: RunnerHost::default(),
            http,
            console: false,
        })
    }

    /// Sets the machine the runner runs on (environment with hooks,
    /// directories); by default it has no hooks.
    pub fn with_host(mut self, host: RunnerHost) -> SimRunner {
        self.host = host;
        self
    }

    /// Prints what the real `Runner.Listener` prints on its console
    /// (`{time}: Listening for Jobs`, `{time}: Running job: {name}`,
    /// `{time}: Job {name} completed with result: {result}`), which is how
    /// a supervisor tells a busy runner from an idle one.
    pub fn with_console(mut self, on: bool) -> SimRunner {
        self.console = on;
        self
    }

    /// Sets the work folder (`config.sh --work`): absolute, or under the
    /// runner's root.
    pub fn with_work_folder(mut self, folder: impl Into<String>) -> SimRunner {
        self.work_folder = folder.into();
        self
    }

    /// The runner's configuration, credential included, as a JIT config
    /// document: what `config.sh` keeps in the runner's root for later
    /// starts. A secret.
    pub fn encoded_config(&self) -> SecretString {
        let doc = JitConfigDocument {
            url: self.base_url.clone(),
            scope_url: self.base_url.clone(),
            runner_id: self.runner_id,
            runner_name: self.runner_name.clone(),
            credential: self.credential.expose_secret().to_string(),
            work_folder: self.work_folder.clone(),
        };
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(json))
    }

    fn say(&self, line: &str) {
        if self.console {
            println!(
                "{}: {line}",
                chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
            );
        }
    }

    pub fn id(&self) -> u64 {
        self.runner_id
    }

    pub fn name(&self) -> &str {
        &self.runner_name
    }

    /// The emulator this runner talks to.
    pub fn server_url(&self) -> &str {
        &self.base_url
    }

    /// Waits for one job and runs it like the real runner: the job-started
    /// hook, the containers (through the container hook), each step (in the
    /// job container through the container hook, else through `executor`),
    /// stopping at the first failing step or when the run was cancelled,
    /// then the container clean-up and the job-completed hook. Reports every
    /// section of the log and the result, and returns.
    pub async fn run(
        &self,
        executor: &dyn StepExecutor,
        opts: &RunOptions,
    ) -> Result<RunOutcome, RunnerError> {
        self.say("Listening for Jobs");
        let Some(job) = self.wait_for_job(opts).await? else {
            return Ok(RunOutcome::NoJob);
        };
        self.say(&format!("Running job: {}", job.name));
        tracing::info!(
            runner = %self.runner_name,
            job_id = job.job_id,
            repository = %job.repository,
            "sim runner took a job"
        );
        let mut run = JobDriver {
            runner: self,
            job: &job,
            opts,
            log: Vec::new(),
            steps: Vec::new(),
            failed: false,
            cancelled: false,
        };
        let settings = HookSettings::from_env(&self.host.env);
        if settings.require_job_container && job.container.is_none() {
            // The real runner refuses such a job while setting it up, before
            // any hook.
            run.section(
                "Set up job",
                format!("##[error]{}\n", hooks::JOB_CONTAINER_REQUIRED),
                Some(1),
            )
            .await?;
            run.failed = true;
        } else if settings.any_hook() || job.container.is_some() || !job.services.is_empty() {
            run.run_with_hooks(executor, &settings).await?;
        } else {
            let env = self.step_env(&job);
            for (index, step) in job.steps.iter().enumerate() {
                let context = StepContext {
                    index,
                    command: step.run().to_string(),
                    shell: step.shell().map(str::to_string),
                    env: env.clone(),
                };
                let result = executor.run_step(&context).await;
                if !run.report_step(index, result).await? {
                    break;
                }
            }
        }
        let outcome = run.finish().await?;
        if let RunOutcome::Completed(done) = &outcome {
            let result = match done.result {
                JobResult::Succeeded => "Succeeded",
                JobResult::Failed => "Failed",
                JobResult::Cancelled => "Canceled",
            };
            self.say(&format!(
                "Job {} completed with result: {result}",
                done.name
            ));
        }
        Ok(outcome)
    }

    fn step_env(&self, job: &JobAssignment) -> Vec<(String, String)> {
        let pairs = [
            ("CI", "true".to_string()),
            ("GITHUB_ACTIONS", "true".to_string()),
            ("GITHUB_REPOSITORY", job.repository.clone()),
            (
                "GITHUB_REPOSITORY_OWNER",
                job.repository
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            ("GITHUB_RUN_ID", job.run_id.to_string()),
            ("GITHUB_RUN_ATTEMPT", job.run_attempt.to_string()),
            ("GITHUB_JOB", job.name.clone()),
            ("GITHUB_WORKFLOW", job.workflow.clone()),
            ("GITHUB_SERVER_URL", self.base_url.clone()),
            ("GITHUB_API_URL", self.base_url.clone()),
            ("RUNNER_NAME", self.runner_name.clone()),
            ("RUNNER_OS", "Linux".to_string()),
            ("RUNNER_ARCH", "X64".to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    async fn wait_for_job(&self, opts: &RunOptions) -> Result<Option<JobAssignment>, RunnerError> {
        let deadline = opts.job_wait.map(|w| tokio::time::Instant::now() + w);
        let mut failures = 0u32;
        loop {
            let wait = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.min(opts.poll_wait)
                }
                None => opts.poll_wait,
            };
            match self.acquire(wait).await {
                Ok(Some(job)) => return Ok(Some(job)),
                Ok(None) => failures = 0,
                Err(e) if e.is_retryable() && failures < opts.transport_retries => {
                    failures += 1;
                    tracing::warn!(runner = %self.runner_name, error = %e, "polling for a job failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn acquire(&self, wait: Duration) -> Result<Option<JobAssignment>, RunnerError> {
        let request = AcquireRequest {
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            os: Some("linux".into()),
            version: Some(SIM_RUNNER_VERSION.into()),
        };
        let response = self
            .http
            .post(format!("{}/_runner/acquire", self.base_url))
            .bearer_auth(self.credential.expose_secret())
            .timeout(wait + Duration::from_secs(15))
            .json(&request)
            .send()
            .await
            .map_err(transport)?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let response = check(response).await?;
        response.json().await.map(Some).map_err(transport)
    }

    /// POSTs a report, retrying network and server errors.
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        opts: &RunOptions,
    ) -> Result<T, RunnerError> {
        let mut failures = 0u32;
        loop {
            let attempt = async {
                let response = self
                    .http
                    .post(format!("{}{path}", self.base_url))
                    .bearer_auth(self.credential.expose_secret())
                    .timeout(Duration::from_secs(60))
                    .json(body)
                    .send()
                    .await
                    .map_err(transport)?;
                let response = check(response).await?;
                response.json::<T>().await.map_err(transport)
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && failures < opts.transport_retries => {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A job being run: what was reported so far.
struct JobDriver<'a> {
    runner: &'a SimRunner,
    job: &'a JobAssignment,
    opts: &'a RunOptions,
    log: Vec<LogEntry>,
    steps: Vec<StepResult>,
    failed: bool,
    cancelled: bool,
}

/// What a job run with hooks carries from one section to the next.
struct HookJob {
    layout: Layout,
    /// GITHUB_PATH entries in the order they were added (the newest goes
    /// first in a PATH).
    prepend_path: Vec<String>,
    /// GITHUB_ENV variables for later steps.
    job_env: BTreeMap<String, String>,
    /// The container hook's state, handed back on every call.
    state: Value,
}

impl HookJob {
    fn prepend_path_newest_first(&self) -> Vec<String> {
        self.prepend_path.iter().rev().cloned().collect()
    }
}

/// A section that failed before (or instead of) running anything.
fn failure(message: impl fmt::Display) -> StepResult {
    StepResult {
        output: format!("##[error]{message}\n"),
        exit_code: 1,
    }
}

/// Adds an error line to a section's output, like the runner's annotations.
fn append_error(result: &mut StepResult, message: impl fmt::Display) {
    if !result.output.is_empty() && !result.output.ends_with('\n') {
        result.output.push('\n');
    }
    result.output.push_str(&format!("##[error]{message}\n"));
}

impl JobDriver<'_> {
    /// Reports a log section that is not a step (a hook, container set-up
    /// or clean-up); a non-zero exit code fails the job.
    async fn section(
        &mut self,
        name: &str,
        mut output: String,
        exit_code: Option<i32>,
    ) -> Result<(), RunnerError> {
        truncate_utf8(&mut output, MAX_STEP_OUTPUT);
        let ack: StepAck = self
            .runner
            .post(
                &format!("/_runner/jobs/{}/log", self.job.job_id),
                &LogReport {
                    name: name.to_string(),
                    output: output.clone(),
                    exit_code,
                },
                self.opts,
            )
            .await?;
        self.cancelled |= ack.cancel_requested;
        self.failed |= exit_code.is_some_and(|c| c != 0);
        self.log.push(LogEntry {
            name: name.to_string(),
            output,
            exit_code,
        });
        Ok(())
    }

    /// Reports a step; returns whether the job goes on.
    async fn report_step(
        &mut self,
        index: usize,
        mut step: StepResult,
    ) -> Result<bool, RunnerError> {
        truncate_utf8(&mut step.output, MAX_STEP_OUTPUT);
        let ack: StepAck = self
            .runner
            .post(
                &format!("/_runner/jobs/{}/steps/{index}", self.job.job_id),
                &StepReport {
                    output: step.output.clone(),
                    exit_code: step.exit_code,
                },
                self.opts,
            )
            .await?;
        let command = self.job.steps.get(index).map(StepSpec::run).unwrap_or("");
        self.log.push(LogEntry {
            name: crate::model::step_display_name(command),
            output: step.output.clone(),
            exit_code: Some(step.exit_code),
        });
        self.failed |= step.exit_code != 0;
        self.cancelled |= ack.cancel_requested;
        self.steps.push(step);
        Ok(!self.failed && !self.cancelled)
    }

    /// Reports the result and ends the job.
    async fn finish(self) -> Result<RunOutcome, RunnerError> {
        let result = if self.cancelled {
            JobResult::Cancelled
        } else if self.failed {
            JobResult::Failed
        } else {
            JobResult::Succeeded
        };
        let job = self.job;
        let done: CompleteResponse = self
            .runner
            .post(
                &format!("/_runner/jobs/{}/complete", job.job_id),
                &CompleteRequest {
                    result: result.wire().to_string(),
                },
                self.opts,
            )
            .await?;
        tracing::info!(
            runner = %self.runner.runner_name,
            job_id = job.job_id,
            conclusion = %done.conclusion,
            "sim runner finished its job"
        );
        Ok(RunOutcome::Completed(JobRun {
            job_id: job.job_id,
            run_id: job.run_id,
            repository: job.repository.clone(),
            workflow: job.workflow.clone(),
            name: job.name.clone(),
            result,
            conclusion: done.conclusion,
            steps: self.steps,
            log: self.log,
        }))
    }

    /// The sections of a job with hooks or containers, in the runner's
    /// order: Set up runner (job-started hook), Initialize containers
    /// (prepare_job), the steps, Stop containers (cleanup_job, whenever
    /// containers were being set up), Complete runner (job-completed hook,
    /// always).
    async fn run_with_hooks(
        &mut self,
        executor: &dyn StepExecutor,
        settings: &HookSettings,
    ) -> Result<(), RunnerError> {
        let job = self.job;
        let root = match &self.runner.host.root {
            Some(root) => root.clone(),
            None => std::env::current_dir().unwrap_or_else(|_| std::env::temp_dir()),
        };
        let layout = match Layout::create(&root, &self.runner.work_folder, &job.repository) {
            Ok(layout) => layout,
            Err(e) => {
                let r = failure(format!("cannot create the runner's work folder: {e}"));
                return self
                    .section("Set up job", r.output, Some(r.exit_code))
                    .await;
            }
        };
        let mut ctx = HookJob {
            layout,
            prepend_path: Vec::new(),
            job_env: BTreeMap::new(),
            state: Value::Null,
        };
        if let Some(hook) = &settings.job_started {
            let r = self.job_hook(hook, &mut ctx).await;
            self.section("Set up runner", r.output, Some(r.exit_code))
                .await?;
        }
        let has_containers = job.container.is_some() || !job.services.is_empty();
        let mut clean_up = false;
        if has_containers && !self.failed && !self.cancelled {
            let r = match &settings.container_hooks {
                Some(hook) => {
                    // The runner registers the clean-up before it prepares.
                    clean_up = true;
                    self.prepare_job(hook, &mut ctx).await
                }
                None => failure(format!(
                    "the simulated runner starts job and service containers only through a container hook: set {}",
                    hooks::CONTAINER_HOOKS
                )),
            };
            self.section("Initialize containers", r.output, Some(r.exit_code))
                .await?;
        }
        for (index, step) in job.steps.iter().enumerate() {
            if self.failed || self.cancelled {
                break;
            }
            let r = match (&job.container, &settings.container_hooks) {
                (Some(_), Some(hook)) => self.container_step(hook, step, &mut ctx).await,
                _ => self.host_step(executor, index, step, &mut ctx).await,
            };
            self.report_step(index, r).await?;
        }
        if clean_up && let Some(hook) = &settings.container_hooks {
            let r = self.cleanup_job(hook, &mut ctx).await;
            self.section("Stop containers", r.output, Some(r.exit_code))
                .await?;
        }
        if let Some(hook) = &settings.job_completed {
            let r = self.job_hook(hook, &mut ctx).await;
            self.section("Complete runner", r.output, Some(r.exit_code))
                .await?;
        }
        Ok(())
    }

    /// The environment of a hook: the runner's own (without the
    /// `ACTIONS_RUNNER_INPUT_*` configuration, which the real runner drops
    /// after reading) plus the job's context with host paths.
    fn hook_env(&self, ctx: &HookJob, files: &FileCommands) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = self
            .runner
            .host
            .env
            .iter()
            .filter(|(k, _)| !k.starts_with("ACTIONS_RUNNER_INPUT_"))
            .cloned()
            .collect();
        let host = |p: &Path| p.display().to_string();
        env.extend(hooks::context_env(
            self.job,
            &self.runner.runner_name,
            &self.runner.base_url,
            &ctx.layout,
            files,
            &host,
        ));
        if !ctx.prepend_path.is_empty() {
            let mut path = ctx.prepend_path_newest_first();
            path.extend(env.get("PATH").cloned());
            env.insert("PATH".to_string(), path.join(":"));
        }
        env.into_iter().collect()
    }

    /// Runs a hook file (`bash -e <path>`) in GITHUB_WORKSPACE.
    async fn run_hook(
        &self,
        hook: &str,
        env: &[(String, String)],
        stdin: Option<Vec<u8>>,
        layout: &Layout,
    ) -> StepResult {
        let search_path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let (program, args) = match hooks::hook_command(hook, search_path) {
            Ok(command) => command,
            Err(e) => return failure(e),
        };
        let workspace = layout.workspace();
        let spec = process::ProcessSpec {
            program: program.as_os_str(),
            args: &args,
            env,
            cwd: Some(&workspace),
            stdin,
            timeout: self.runner.host.hook_timeout,
            max_output: MAX_STEP_OUTPUT,
            what: "hook",
        };
        let mut result = match process::run(spec).await {
            Ok(result) => result,
            Err(e) => return failure(format!("cannot start the hook {hook}: {e}")),
        };
        if result.exit_code != 0 {
            let code = result.exit_code;
            append_error(
                &mut result,
                format!("Process completed with exit code {code}."),
            );
        }
        result
    }

    /// The job-started or job-completed hook: a section of its own, with
    /// its own file commands.
    async fn job_hook(&self, hook: &str, ctx: &mut HookJob) -> StepResult {
        let files = match FileCommands::create(&ctx.layout) {
            Ok(files) => files,
            Err(e) => return failure(format!("cannot create the file commands: {e}")),
        };
        let env = self.hook_env(ctx, &files);
        let result = self.run_hook(hook, &env, None, &ctx.layout).await;
        files.apply(&mut ctx.prepend_path, &mut ctx.job_env);
        result
    }

    /// One call of the container hook: a fresh empty response file, one
    /// line of input on stdin, then the response (its `state` replaces the
    /// one handed back on later calls). The hook runs in the section's
    /// context: `files` are the section's file commands (a step in the job
    /// container writes the same files through the mounted `_temp`).
    async fn container_hook(
        &self,
        hook: &str,
        command: &str,
        args: Value,
        files: &FileCommands,
        ctx: &mut HookJob,
        require_alpine: bool,
    ) -> StepResult {
        let response_file = ctx
            .layout
            .responses()
            .join(format!("{}.json", uuid::Uuid::now_v7()));
        if let Err(e) = std::fs::File::create(&response_file) {
            return failure(format!("cannot create the response file: {e}"));
        }
        let input = hooks::hook_input(command, &response_file, args, &ctx.state);
        let env = self.hook_env(ctx, files);
        let mut result = self.run_hook(hook, &env, Some(input), &ctx.layout).await;
        if result.exit_code != 0 {
            let _ = std::fs::remove_file(&response_file);
            append_error(
                &mut result,
                format!(
                    "The hook script at '{hook}' running command '{command}' did not execute successfully"
                ),
            );
            return result;
        }
        match hooks::read_response(&response_file, command, require_alpine) {
            Ok(Some(response)) => {
                if let Some(state) = response.get("state").filter(|s| !s.is_null()) {
                    ctx.state = state.clone();
                }
            }
            Ok(None) => {}
            Err(e) => {
                append_error(&mut result, e);
                result.exit_code = 1;
            }
        }
        result
    }

    /// A container hook call that is a section of its own (prepare_job,
    /// cleanup_job).
    async fn container_section(
        &self,
        hook: &str,
        command: &str,
        args: Value,
        ctx: &mut HookJob,
        require_alpine: bool,
    ) -> StepResult {
        let files = match FileCommands::create(&ctx.layout) {
            Ok(files) => files,
            Err(e) => return failure(format!("cannot create the file commands: {e}")),
        };
        let result = self
            .container_hook(hook, command, args, &files, ctx, require_alpine)
            .await;
        files.apply(&mut ctx.prepend_path, &mut ctx.job_env);
        result
    }

    async fn prepare_job(&self, hook: &str, ctx: &mut HookJob) -> StepResult {
        let args = hooks::prepare_job_args(self.job, &ctx.layout);
        let require_alpine = self.job.container.is_some();
        self.container_section(hook, "prepare_job", args, ctx, require_alpine)
            .await
    }

    async fn cleanup_job(&self, hook: &str, ctx: &mut HookJob) -> StepResult {
        self.container_section(hook, "cleanup_job", serde_json::json!({}), ctx, false)
            .await
    }

    /// A `run:` step in the job container: the script goes to
    /// `_temp/<uuid>.sh` and the hook runs it with the step's shell.
    async fn container_step(&self, hook: &str, step: &StepSpec, ctx: &mut HookJob) -> StepResult {
        let script_file = ctx
            .layout
            .temp()
            .join(format!("{}.sh", uuid::Uuid::now_v7()));
        if let Err(e) = std::fs::write(&script_file, step.run()) {
            return failure(format!("cannot write the step's script: {e}"));
        }
        let files = match FileCommands::create(&ctx.layout) {
            Ok(files) => files,
            Err(e) => return failure(format!("cannot create the file commands: {e}")),
        };
        let layout = &ctx.layout;
        let script = layout.container_path(&script_file);
        let (entry_point, entry_point_args) = hooks::container_shell(step.shell(), &script);
        let in_container = |p: &Path| layout.container_path(p);
        // GITHUB_ENV values first: the runner's own variables win.
        let mut env = ctx.job_env.clone();
        env.extend(hooks::context_env(
            self.job,
            &self.runner.runner_name,
            &self.runner.base_url,
            layout,
            &files,
            &in_container,
        ));
        let args = serde_json::json!({
            "entryPoint": entry_point,
            "entryPointArgs": entry_point_args,
            "environmentVariables": env,
            "prependPath": ctx.prepend_path_newest_first(),
            "workingDirectory": layout.container_path(&layout.workspace()),
        });
        let result = self
            .container_hook(hook, "run_script_step", args, &files, ctx, false)
            .await;
        files.apply(&mut ctx.prepend_path, &mut ctx.job_env);
        result
    }

    /// A step on the host (a job with services but no job container).
    async fn host_step(
        &self,
        executor: &dyn StepExecutor,
        index: usize,
        step: &StepSpec,
        ctx: &mut HookJob,
    ) -> StepResult {
        let files = match FileCommands::create(&ctx.layout) {
            Ok(files) => files,
            Err(e) => return failure(format!("cannot create the file commands: {e}")),
        };
        let host = |p: &Path| p.display().to_string();
        let mut env = ctx.job_env.clone();
        env.extend(hooks::context_env(
            self.job,
            &self.runner.runner_name,
            &self.runner.base_url,
            &ctx.layout,
            &files,
            &host,
        ));
        let context = StepContext {
            index,
            command: step.run().to_string(),
            shell: step.shell().map(str::to_string),
            env: env.into_iter().collect(),
        };
        let result = executor.run_step(&context).await;
        files.apply(&mut ctx.prepend_path, &mut ctx.job_env);
        result
    }
}

/// 0.5 s, 1 s, 2 s ... capped at 10 s.
fn backoff(failures: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << failures.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(10_000))
}

async fn error_message(response: reqwest::Response) -> String {
    match response.json::<ProtocolError>().await {
        Ok(e) => e.message.chars().take(300).collect(),
        Err(_) => "no details".to_string(),
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, RunnerError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status.is_server_error() {
        return Err(RunnerError::Server {
            status: status.as_u16(),
        });
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(RunnerError::Deregistered);
    }
    Err(RunnerError::Rejected {
        status: status.as_u16(),
        message: error_message(response).await,
    })
}

#[cfg(test)]
#[path = "runner/tests.rs"]
mod tests;
