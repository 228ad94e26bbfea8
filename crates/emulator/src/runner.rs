//! A simulated actions runner for the emulator: it registers (JIT config or
//! registration token), takes one job, runs each step through a
//! [`StepExecutor`], reports the results and stops, like an ephemeral
//! `Runner.Listener`. Used by `proxy-runner sim-runner` and by tests.
//!
//! The runner credential (and the JIT config that carries it) is a secret:
//! it is never logged, never put in an error, never given to steps.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt as _;

use crate::protocol::{
    AcquireRequest, CompleteRequest, CompleteResponse, JitConfigDocument, JobAssignment,
    ProtocolError, RegisterRequest, RegisterResponse, StepAck, StepReport,
};
use crate::state::{is_http_url, truncate_utf8};

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

/// Runs each step as `sh -c <command>` with a clean environment (PATH, HOME
/// and the step's variables), capturing stdout and stderr together.
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

/// Exit code of a step that timed out (as `timeout(1)` uses).
pub const EXIT_STEP_TIMEOUT: i32 = 124;
/// Exit code of a step that could not be started (as shells use).
pub const EXIT_STEP_NOT_STARTED: i32 = 127;
/// How long output is still read after the step's shell exited (background
/// processes may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

#[async_trait]
impl StepExecutor for ShellExecutor {
    async fn run_step(&self, step: &StepContext) -> StepResult {
        match self.run_shell(step).await {
            Ok(result) => result,
            Err(e) => StepResult {
                output: format!("cannot start the step: {e}"),
                exit_code: EXIT_STEP_NOT_STARTED,
            },
        }
    }
}

impl ShellExecutor {
    async fn run_shell(&self, step: &StepContext) -> std::io::Result<StepResult> {
        let (reader, writer) = std::io::pipe()?;
        let writer_err = writer.try_clone()?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&step.command)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .envs(step.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer_err))
            .kill_on_drop(true)
            .process_group(0);
        if let Some(home) = std::env::var_os("HOME") {
            cmd.env("HOME", home);
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        // Our copies of the pipe's write end must go, or reading never ends.
        drop(cmd);
        let pgid = child.id();
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

        let mut output: Vec<u8> = Vec::new();
        let mut truncated = false;
        let mut buf = vec![0u8; 16 * 1024];
        let mut status = None;
        let mut eof = false;
        let timeout_at = tokio::time::Instant::now() + self.timeout;
        let mut stop_reading_at = timeout_at;
        let mut timed_out = false;
        while !(eof && status.is_some()) {
            tokio::select! {
                read = pipe.read(&mut buf), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        let room = self.max_output.saturating_sub(output.len());
                        if n > room {
                            truncated = true;
                        }
                        output.extend_from_slice(&buf[..n.min(room)]);
                    }
                },
                exited = child.wait(), if status.is_none() => {
                    status = Some(exited?);
                    stop_reading_at = stop_reading_at.min(tokio::time::Instant::now() + OUTPUT_DRAIN);
                },
                _ = tokio::time::sleep_until(stop_reading_at) => {
                    if status.is_none() {
                        timed_out = true;
                    }
                    break;
                }
            }
        }
        if timed_out {
            kill_process_group(pgid).await;
            let _ = child.kill().await;
        } else if !eof {
            // The shell is done; stragglers holding the pipe are stopped too.
            kill_process_group(pgid).await;
        }
        let mut text = String::from_utf8_lossy(&output).into_owned();
        if truncated {
            truncate_utf8(&mut text, self.max_output);
        }
        let exit_code = if timed_out {
            text.push_str(&format!(
                "\n[step timed out after {}s and was killed]",
                self.timeout.as_secs()
            ));
            EXIT_STEP_TIMEOUT
        } else {
            status.map(exit_code_of).unwrap_or(EXIT_STEP_NOT_STARTED)
        };
        Ok(StepResult {
            output: text,
            exit_code,
        })
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Kills every process of the step's process group (best effort).
async fn kill_process_group(pgid: Option<u32>) {
    let Some(pgid) = pgid else {
        return;
    };
    let _ = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -KILL -- -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// A runner known to the emulator, with its credential.
pub struct SimRunner {
    base_url: String,
    runner_id: u64,
    runner_name: String,
    credential: SecretString,
    http: reqwest::Client,
}

impl fmt::Debug for SimRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRunner")
            .field("base_url", &self.base_url)
            .field("runner_id", &self.runner_id)
            .field("runner_name", &self.runner_name)
            .field("credential", &"[redacted]")
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
            http: http_client()?,
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
            http,
        })
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

    /// Waits for one job, runs its steps in order (stopping at the first
    /// failing step, or when the run was cancelled), reports and returns.
    pub async fn run(
        &self,
        executor: &dyn StepExecutor,
        opts: &RunOptions,
    ) -> Result<RunOutcome, RunnerError> {
        let Some(job) = self.wait_for_job(opts).await? else {
            return Ok(RunOutcome::NoJob);
        };
        tracing::info!(
            runner = %self.runner_name,
            job_id = job.job_id,
            repository = %job.repository,
            "sim runner took a job"
        );
        let env = self.step_env(&job);
        let mut steps = Vec::new();
        let mut result = JobResult::Succeeded;
        for (index, command) in job.steps.iter().enumerate() {
            let context = StepContext {
                index,
                command: command.clone(),
                env: env.clone(),
            };
            let mut step = executor.run_step(&context).await;
            truncate_utf8(&mut step.output, MAX_STEP_OUTPUT);
            let ack: StepAck = self
                .post(
                    &format!("/_runner/jobs/{}/steps/{index}", job.job_id),
                    &StepReport {
                        output: step.output.clone(),
                        exit_code: step.exit_code,
                    },
                    opts,
                )
                .await?;
            let failed = step.exit_code != 0;
            steps.push(step);
            if ack.cancel_requested {
                result = JobResult::Cancelled;
                break;
            }
            if failed {
                result = JobResult::Failed;
                break;
            }
        }
        let done: CompleteResponse = self
            .post(
                &format!("/_runner/jobs/{}/complete", job.job_id),
                &CompleteRequest {
                    result: result.wire().to_string(),
                },
                opts,
            )
            .await?;
        tracing::info!(
            runner = %self.runner_name,
            job_id = job.job_id,
            conclusion = %done.conclusion,
            "sim runner finished its job"
        );
        Ok(RunOutcome::Completed(JobRun {
            job_id: job.job_id,
            run_id: job.run_id,
            repository: job.repository,
            workflow: job.workflow,
            name: job.name,
            result,
            conclusion: done.conclusion,
            steps,
        }))
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
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_of("http://h:1/o/r"), Some("http://h:1"));
        assert_eq!(origin_of("https://h"), Some("https://h"));
        assert_eq!(origin_of("http:///x"), None);
        assert_eq!(origin_of("nope"), None);
    }

    #[test]
    fn bad_jit_configs_say_nothing_about_their_content() {
        for bad in ["", "!!!", "bm90IGpzb24=", "e30="] {
            let err = SimRunner::from_jit_config(bad).unwrap_err();
            assert!(matches!(err, RunnerError::InvalidJitConfig), "{bad}");
            assert_eq!(err.exit_code(), EXIT_TERMINATED_ERROR);
        }
        let secret_doc = base64::engine::general_purpose::STANDARD
            .encode(r#"{"url":"ftp://x","scopeUrl":"","runnerId":1,"runnerName":"n","credential":"hunter2"}"#);
        let err = SimRunner::from_jit_config(&secret_doc).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn debug_redacts_the_credential() {
        let doc = base64::engine::general_purpose::STANDARD.encode(
            r#"{"url":"http://127.0.0.1:1","scopeUrl":"http://127.0.0.1:1/o/r","runnerId":7,"runnerName":"r7","credential":"hunter2"}"#,
        );
        let runner = SimRunner::from_jit_config(&doc).unwrap();
        assert_eq!(runner.id(), 7);
        assert_eq!(runner.name(), "r7");
        assert_eq!(runner.server_url(), "http://127.0.0.1:1");
        assert!(!format!("{runner:?}").contains("hunter2"));
    }

    #[test]
    fn exit_codes_follow_the_listener() {
        assert_eq!(RunOutcome::NoJob.exit_code(), EXIT_RETRYABLE_ERROR);
        assert_eq!(RunnerError::Deregistered.exit_code(), EXIT_TERMINATED_ERROR);
        assert_eq!(
            RunnerError::Transport("x".into()).exit_code(),
            EXIT_RETRYABLE_ERROR
        );
        assert_eq!(
            RunnerError::Server { status: 503 }.exit_code(),
            EXIT_RETRYABLE_ERROR
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    fn ctx(command: &str) -> StepContext {
        StepContext {
            index: 0,
            command: command.into(),
            env: vec![("GITHUB_REPOSITORY".into(), "octo/repo".into())],
        }
    }

    #[tokio::test]
    async fn shell_steps_capture_output_and_exit_code() {
        let shell = ShellExecutor::default();
        let ok = shell
            .run_step(&ctx("echo out; echo err >&2; echo $GITHUB_REPOSITORY"))
            .await;
        assert_eq!(ok.exit_code, 0);
        assert!(ok.output.contains("out\n"), "{}", ok.output);
        assert!(ok.output.contains("err\n"), "{}", ok.output);
        assert!(ok.output.contains("octo/repo"), "{}", ok.output);
        let failed = shell.run_step(&ctx("exit 3")).await;
        assert_eq!(failed.exit_code, 3);
    }

    #[tokio::test]
    async fn shell_steps_do_not_inherit_the_environment() {
        // The test process has many variables (CARGO_*, ...); a step sees none of them.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let shell = ShellExecutor::default();
        let r = shell
            .run_step(&ctx("env | cut -d= -f1 | sort | tr '\\n' ' '"))
            .await;
        for name in r.output.split_whitespace() {
            assert!(
                [
                    "PATH",
                    "HOME",
                    "GITHUB_REPOSITORY",
                    "PWD",
                    "SHLVL",
                    "_",
                    "OLDPWD"
                ]
                .contains(&name),
                "unexpected variable {name}"
            );
        }
    }

    #[tokio::test]
    async fn shell_output_is_bounded() {
        let shell = ShellExecutor {
            max_output: 1000,
            ..ShellExecutor::default()
        };
        let r = shell
            .run_step(&ctx("head -c 100000 /dev/zero | tr '\\0' 'a'"))
            .await;
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.output.len(), 1000);
    }

    #[tokio::test]
    async fn shell_steps_time_out() {
        let shell = ShellExecutor {
            timeout: Duration::from_millis(300),
            ..ShellExecutor::default()
        };
        let r = shell.run_step(&ctx("echo started; sleep 30")).await;
        assert_eq!(r.exit_code, EXIT_STEP_TIMEOUT);
        assert!(r.output.starts_with("started"), "{}", r.output);
        assert!(r.output.contains("timed out"), "{}", r.output);
    }

    #[tokio::test]
    async fn background_processes_do_not_hold_a_step_open() {
        let shell = ShellExecutor {
            timeout: Duration::from_secs(20),
            ..ShellExecutor::default()
        };
        let r = shell.run_step(&ctx("sleep 30 & echo done")).await;
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.output.trim(), "done");
    }
}
