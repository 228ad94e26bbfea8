//! `proxy-runner hook container`: the actions runner's container hook
//! (`ACTIONS_RUNNER_CONTAINER_HOOKS`, through `hooks/container-hook.sh`);
//! `hook job-started` and `hook job-completed` (the job hooks, in `job`)
//! share its HTTP client, retries and failure report.
//!
//! The runner writes one line of JSON on stdin (`{command, responseFile,
//! args, state}`); the hook hands the call to the orchestrator, which owns
//! the job's containers, and answers the runner the way a container hook
//! does: the response file for `prepare_job`, the step's output and exit
//! code for `run_script_step` and `run_container_step`.
//!
//! Every failure is exactly one `::error::` line on stdout and exit code 1.
//! The orchestrator token and registry passwords never appear in the output.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Subcommand;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

mod job;

#[derive(Subcommand)]
pub enum HookCommand {
    /// The container hook (ACTIONS_RUNNER_CONTAINER_HOOKS): one call of the
    /// runner on stdin, handed to the orchestrator (ORCHESTRATOR_URL,
    /// PROXY_RUNNER_TOKEN, RUNNER_NAME).
    Container,
    /// The job-started hook (ACTIONS_RUNNER_HOOK_JOB_STARTED, through
    /// hooks/job-started.sh): delegates the job (ORCHESTRATOR_URL,
    /// PROXY_RUNNER_TOKEN or RUNNER_TOKEN, GITHUB_*, RUNNER_*).
    JobStarted,
    /// The job-completed hook (ACTIONS_RUNNER_HOOK_JOB_COMPLETED, through
    /// hooks/job-completed.sh): reports the end of the job; never fails it.
    JobCompleted,
}

/// Runs a hook; returns the process's exit code.
pub async fn run(command: HookCommand) -> i32 {
    match command {
        HookCommand::Container => container().await,
        HookCommand::JobStarted => job::started().await,
        HookCommand::JobCompleted => job::completed().await,
    }
}

/// Largest hook input (one line of JSON) read from stdin: the orchestrator's
/// own limit, so that a larger one is refused here with a clear reason (the
/// orchestrator answers 413 as soon as it sees the length and closes).
const MAX_INPUT: usize = proxy_runner_domain::container_hooks::limits::INPUT_BYTES;
/// Largest JSON answer (prepare, clean-up, errors) read from the orchestrator.
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Largest error answer read (its start is shown).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest line of a step's output stream (a base64 chunk).
const MAX_STREAM_LINE: usize = 16 * 1024 * 1024;
/// Tries of a call that failed with no answer or a 5xx answer.
const ATTEMPTS: u32 = 5;
/// First pause between tries; it doubles (with jitter) up to 4 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A step may print nothing for a long time; a stream silent for longer
/// than a job's default timeout (360 minutes) is dead.
const STEP_IDLE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// An exit code the hook reports when it cannot report the step's.
const EXIT_FAILURE: i32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    PrepareJob,
    RunScriptStep,
    RunContainerStep,
    CleanupJob,
}

impl Command {
    fn parse(name: &str) -> Option<Command> {
        match name {
            "prepare_job" => Some(Command::PrepareJob),
            "run_script_step" => Some(Command::RunScriptStep),
            "run_container_step" => Some(Command::RunContainerStep),
            "cleanup_job" => Some(Command::CleanupJob),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Command::PrepareJob => "prepare_job",
            Command::RunScriptStep => "run_script_step",
            Command::RunContainerStep => "run_container_step",
            Command::CleanupJob => "cleanup_job",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Command::PrepareJob => "/api/hooks/prepare-job",
            Command::RunScriptStep => "/api/hooks/run-script-step",
            Command::RunContainerStep => "/api/hooks/run-container-step",
            Command::CleanupJob => "/api/hooks/cleanup-job",
        }
    }

    /// How the call is made: how long one try may take, and all tries
    /// together. Preparing may pull images; a step's budget covers only the
    /// wait for its stream.
    fn call(self) -> Call {
        let (per_try, overall) = match self {
            Command::PrepareJob => (Duration::from_secs(300), Duration::from_secs(600)),
            Command::CleanupJob => (Duration::from_secs(120), Duration::from_secs(180)),
            Command::RunScriptStep | Command::RunContainerStep => {
                (Duration::from_secs(120), Duration::from_secs(300))
            }
        };
        Call {
            hook: self.name(),
            path: self.path().to_string(),
            per_try,
            overall,
            attempts: ATTEMPTS,
            first_backoff: FIRST_BACKOFF,
        }
    }
}

/// One call to the orchestrator and how it is tried again.
struct Call {
    /// The hook's name in reports and messages (`job_started`, `prepare_job`...).
    hook: &'static str,
    /// Path and query under the orchestrator's URL.
    path: String,
    /// How long one try may wait for the answer's head.
    per_try: Duration,
    /// How long all tries together may take.
    overall: Duration,
    attempts: u32,
    /// First pause between tries; it doubles (with jitter) up to 4 s.
    first_backoff: Duration,
}

/// Why the hook failed: the text of its one `::error::` line.
struct Failure(String);

impl<T: Into<String>> From<T> for Failure {
    fn from(message: T) -> Failure {
        Failure(message.into())
    }
}

/// The runner's input.
struct Input {
    command: Command,
    response_file: Option<String>,
    args: Value,
    state: Value,
}

/// Where the hooks call, from their environment.
struct Endpoint {
    /// Base URL without a trailing slash.
    url: String,
    /// The URL without any user:password part, for messages.
    shown_url: String,
    token: String,
    /// Where calls that never reached the orchestrator are noted until a
    /// later call reports them (`PROXY_RUNNER_HOOK_REPORT`, set by the
    /// supervisor; every hook notes its own there).
    report_file: Option<std::path::PathBuf>,
}

/// Values that must never be printed.
struct Secrets(Vec<String>);

impl Secrets {
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.0 {
            if secret.len() >= 3 {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// Where the hook writes: it remembers whether stdout ends a line, so that
/// an `::error::` line after partial step output still starts a line.
struct Output {
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
    at_line_start: bool,
    secrets: Secrets,
}

impl Output {
    /// The process's stdout and stderr; the orchestrator token and a
    /// password in its URL are secrets from the start, whatever fails first.
    fn new() -> Output {
        let mut secrets: Vec<String> = token_from_env().into_iter().collect();
        secrets.extend(url_from_env().as_deref().and_then(url_password));
        Output {
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
            at_line_start: true,
            secrets: Secrets(secrets),
        }
    }

    async fn stdout(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(last) = bytes.last() {
            self.at_line_start = *last == b'\n';
        }
        self.stdout.write_all(bytes).await?;
        self.stdout.flush().await
    }

    async fn stderr(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stderr.write_all(bytes).await?;
        self.stderr.flush().await
    }

    /// A line of the hook's own on stdout (redacted, one line).
    async fn line(&mut self, text: &str) {
        let mut line = one_line(&self.secrets.redact(text));
        line.push('\n');
        if !self.at_line_start {
            line.insert(0, '\n');
        }
        let _ = self.stdout(line.as_bytes()).await;
    }

    /// The one `::error::` line of a failure; returns the exit code.
    async fn fail(&mut self, failure: Failure) -> i32 {
        let message = escape_command_data(&self.secrets.redact(&failure.0));
        self.line(&format!("::error::proxy-runner: {message}"))
            .await;
        EXIT_FAILURE
    }

    /// A `::warning::` line.
    async fn warn(&mut self, text: &str) {
        let message = escape_command_data(&self.secrets.redact(text));
        self.line(&format!("::warning::proxy-runner: {message}"))
            .await;
    }

    async fn flush(&mut self) {
        let _ = self.stdout.flush().await;
        let _ = self.stderr.flush().await;
    }
}

/// Control characters (line breaks included) become spaces; long texts are cut.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(2000)
        .collect();
    if text.chars().count() > 2000 {
        line.push_str(" ...");
    }
    line
}

/// Workflow command data escaping (`%`, CR, LF), which the runner undoes.
fn escape_command_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

async fn container() -> i32 {
    let mut out = Output::new();
    let code = match container_call(&mut out).await {
        Ok(code) => code,
        Err(failure) => out.fail(failure).await,
    };
    out.flush().await;
    code
}

async fn container_call(out: &mut Output) -> Result<i32, Failure> {
    let line = read_input(&mut tokio::io::stdin()).await?;
    let input = parse_input(&line)?;
    collect_passwords(&input.args, &mut out.secrets.0);
    let endpoint = endpoint_from_env()?;
    let runner_name = std::env::var("RUNNER_NAME")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or("RUNNER_NAME is not set in the runner's environment")?;
    let client = ContainerClient {
        client: Client::new(endpoint)?,
        command: input.command,
        runner_name,
    };
    match input.command {
        Command::PrepareJob => prepare_job(&client, &input, out).await,
        Command::CleanupJob => cleanup_job(&client, &input, out).await,
        Command::RunScriptStep | Command::RunContainerStep => run_step(&client, &input, out).await,
    }
}

fn token_from_env() -> Option<String> {
    ["PROXY_RUNNER_TOKEN", "RUNNER_TOKEN"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
}

/// `ORCHESTRATOR_URL` without a trailing slash, if set.
fn url_from_env() -> Option<String> {
    std::env::var("ORCHESTRATOR_URL")
        .ok()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
}

fn endpoint_from_env() -> Result<Endpoint, Failure> {
    let url = url_from_env().ok_or("ORCHESTRATOR_URL is not set in the runner's environment")?;
    let token = token_from_env().ok_or(
        "no orchestrator token: PROXY_RUNNER_TOKEN (or RUNNER_TOKEN) is not set in the runner's environment",
    )?;
    endpoint(url, token)
}

/// The endpoint of a URL and token the hook found; the URL must be http(s).
fn endpoint(url: String, token: String) -> Result<Endpoint, Failure> {
    let shown_url = without_userinfo(&url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("ORCHESTRATOR_URL {shown_url:?} is not an http(s) URL").into());
    }
    let report_file = std::env::var_os("PROXY_RUNNER_HOOK_REPORT")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    Ok(Endpoint {
        url,
        shown_url,
        token,
        report_file,
    })
}

/// `scheme://user:password@host/...` without `user:password@`.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The password of `scheme://user:password@host/...`, if any.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// One line from stdin, at most [`MAX_INPUT`] bytes.
async fn read_input<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, Failure> {
    let mut limited = tokio::io::BufReader::new(reader.take(MAX_INPUT as u64 + 1));
    let mut line = Vec::new();
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read the hook input from stdin: {e}"))?;
    if line.len() > MAX_INPUT {
        return Err(format!(
            "the hook input is larger than {} MiB",
            MAX_INPUT / (1024 * 1024)
        )
        .into());
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err("no hook input on stdin (expected one line of JSON from the runner)".into());
    }
    Ok(line)
}

fn parse_input(line: &[u8]) -> Result<Input, Failure> {
    // serde_json's messages may quote the input (registry passwords): only
    // the position is shown.
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "the hook input is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(mut input) = value else {
        return Err("the hook input is not a JSON object".into());
    };
    let command = match input.get("command") {
        None | Some(Value::Null) => return Err("the hook input has no command".into()),
        Some(Value::String(name)) => Command::parse(name).ok_or_else(|| {
            format!(
                "unknown hook command {:?} (expected prepare_job, run_script_step, run_container_step or cleanup_job)",
                name.chars().take(64).collect::<String>()
            )
        })?,
        Some(_) => return Err("the hook input's command is not a string".into()),
    };
    let response_file = match input.get("responseFile") {
        Some(Value::String(path)) if !path.is_empty() => Some(path.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err("the hook input's responseFile is not a string".into()),
    };
    if command == Command::PrepareJob && response_file.is_none() {
        return Err("the hook input has no responseFile (prepare_job needs one)".into());
    }
    let args = input.remove("args").unwrap_or(Value::Null);
    if command != Command::CleanupJob && !args.is_object() {
        return Err(format!(
            "the hook input has no args (an object for {})",
            command.name()
        )
        .into());
    }
    Ok(Input {
        command,
        response_file,
        args,
        state: input.remove("state").unwrap_or(Value::Null),
    })
}

/// Every string under a key named `password` (registry logins).
fn collect_passwords(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if key.eq_ignore_ascii_case("password") && !s.is_empty() => {
                        into.push(s.clone())
                    }
                    _ => collect_passwords(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_passwords(v, into)),
        _ => {}
    }
}

/// The hooks' HTTP client: one endpoint, tries again with backoff, and
/// notes and reports the calls and tries that got no answer.
struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// Failures not yet reported, and this call's tries without an answer.
    report: std::sync::Mutex<HookReport>,
}

/// Calls and tries that got no answer from the orchestrator, by hook.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct HookReport {
    /// (hook, kind) → count; kind is `unreached` or `connection_failure`.
    counts: std::collections::BTreeMap<(String, String), u64>,
}

impl HookReport {
    /// Reads the noted failures: lines `HOOK KIND [COUNT]`; anything else
    /// is skipped (the orchestrator checks again).
    fn parse(text: &str) -> HookReport {
        let mut report = HookReport::default();
        for line in text.lines().take(1000) {
            let mut words = line.split_whitespace();
            let (Some(hook), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let count = words.next().and_then(|c| c.parse().ok()).unwrap_or(1u64);
            let valid = |w: &str| {
                !w.is_empty()
                    && w.len() <= 40
                    && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            };
            if valid(hook) && valid(kind) {
                report.add(hook, kind, count);
            }
        }
        report
    }

    fn add(&mut self, hook: &str, kind: &str, count: u64) {
        *self
            .counts
            .entry((hook.to_string(), kind.to_string()))
            .or_default() += count;
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The `X-Proxy-Runner-Hook-Report` header value.
    fn header(&self) -> String {
        self.counts
            .iter()
            .map(|((hook, kind), n)| format!("{hook}:{kind}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The file's content.
    fn lines(&self) -> String {
        self.counts
            .iter()
            .map(|((hook, kind), n)| format!("{hook} {kind} {n}\n"))
            .collect()
    }
}

/// The outcome of one try.
enum Attempt {
    /// A final answer: anything but a 5xx.
    Answer(reqwest::Response),
    /// A 5xx answer, worth another try: its status and (the start of) its body.
    ServerError {
        status: reqwest::StatusCode,
        body: Vec<u8>,
    },
    /// No answer, worth another try.
    NoAnswer(NoAnswer),
}

/// Why a try got no answer.
enum NoAnswer {
    /// The answer's head did not come in time.
    Timeout(Duration),
    /// Cannot connect, or the connection broke: the transport's reason.
    Transport(String),
}

impl NoAnswer {
    /// The reason after "cannot reach the orchestrator at URL: ".
    fn cause(&self) -> String {
        match self {
            NoAnswer::Timeout(limit) => format!("no answer within {}s", limit.as_secs()),
            NoAnswer::Transport(reason) => reason.clone(),
        }
    }
}

/// What a call came to after its tries.
enum Reply {
    /// A final answer: 2xx, 3xx or 4xx.
    Answer(reqwest::Response),
    /// The last try was answered with a 5xx.
    ServerError {
        status: reqwest::StatusCode,
        body: Vec<u8>,
        tries: u32,
    },
    /// No try was answered, for the last try's reason.
    Unreached { last: NoAnswer, tries: u32 },
}

impl Client {
    /// A client for `endpoint`; failures noted earlier (by any hook) go
    /// with its next call.
    fn new(endpoint: Endpoint) -> Result<Client, Failure> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("proxy-runner-hook/", env!("CARGO_PKG_VERSION")));
        if endpoint.url.starts_with("http://") {
            // No TLS on this endpoint: the system's root certificates are
            // not read and parsed, which would lengthen every hook's start.
            builder = builder.tls_certs_only([]);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
        let pending = endpoint
            .report_file
            .as_deref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|text| HookReport::parse(&text))
            .unwrap_or_default();
        Ok(Client {
            http,
            endpoint,
            report: std::sync::Mutex::new(pending),
        })
    }

    /// POSTs the call (`body` as JSON, or no body), trying again
    /// (exponential backoff with jitter) while the orchestrator cannot be
    /// reached or answers 5xx.
    async fn send(&self, call: &Call, body: Option<&Value>) -> Reply {
        let started = Instant::now();
        let mut backoff = call.first_backoff;
        let mut attempt = 1;
        // Whether any try got an answer (then the call was not unreached).
        let mut reached = false;
        loop {
            let left = call.overall.saturating_sub(started.elapsed());
            let last = match self.try_once(call, body, call.per_try.min(left)).await {
                Attempt::Answer(response) => return Reply::Answer(response),
                Attempt::ServerError { status, body } => {
                    reached = true;
                    Reply::ServerError {
                        status,
                        body,
                        tries: attempt,
                    }
                }
                Attempt::NoAnswer(last) => {
                    self.note(call.hook, "connection_failure");
                    Reply::Unreached {
                        last,
                        tries: attempt,
                    }
                }
            };
            let pause = jitter(backoff);
            if attempt >= call.attempts || started.elapsed() + pause >= call.overall {
                if !reached {
                    self.note(call.hook, "unreached");
                }
                self.keep_report();
                return last;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
            attempt += 1;
        }
    }

    fn note(&self, hook: &str, kind: &str) {
        proxy_runner_domain::sync::lock(&self.report).add(hook, kind, 1);
    }

    /// Notes the unreported failures for a later call (best effort: a
    /// report is advisory).
    fn keep_report(&self) {
        let Some(path) = &self.endpoint.report_file else {
            return;
        };
        let report = proxy_runner_domain::sync::lock(&self.report).clone();
        let _ = std::fs::write(path, report.lines());
    }

    /// The orchestrator heard the report: nothing is pending any more.
    fn report_delivered(&self) {
        let mut report = proxy_runner_domain::sync::lock(&self.report);
        if report.is_empty() {
            return;
        }
        *report = HookReport::default();
        if let Some(path) = &self.endpoint.report_file {
            let _ = std::fs::write(path, "");
        }
    }

    async fn try_once(&self, call: &Call, body: Option<&Value>, timeout: Duration) -> Attempt {
        let url = format!("{}{}", self.endpoint.url, call.path);
        let mut request = self.http.post(url).bearer_auth(&self.endpoint.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let report = proxy_runner_domain::sync::lock(&self.report).header();
        if !report.is_empty() {
            request = request.header("X-Proxy-Runner-Hook-Report", report);
        }
        // Only the wait for the answer's head is bounded here: a step's
        // stream may then run for hours.
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => return Attempt::NoAnswer(NoAnswer::Timeout(timeout)),
            Ok(Err(e)) => {
                return Attempt::NoAnswer(NoAnswer::Transport(error_chain(&e.without_url())));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status != reqwest::StatusCode::UNAUTHORIZED {
            self.report_delivered();
        }
        if status.is_server_error() {
            let body = read_capped(response, MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            return Attempt::ServerError { status, body };
        }
        Attempt::Answer(response)
    }
}

/// A container hook's call: the runner's command for one runner.
struct ContainerClient {
    client: Client,
    command: Command,
    runner_name: String,
}

impl ContainerClient {
    /// POSTs the call; returns a 2xx answer. 4xx answers are final.
    async fn post(&self, body: &Value) -> Result<reqwest::Response, Failure> {
        let name = self.command.name();
        let what = |status: reqwest::StatusCode, body: &[u8]| {
            let detail = error_detail(body);
            format!(
                "{name} (HTTP {}{})",
                status.as_u16(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            )
        };
        match self.client.send(&self.command.call(), Some(body)).await {
            Reply::Answer(response) if response.status().is_success() => Ok(response),
            Reply::Answer(response) => {
                let status = response.status();
                let body = read_capped(response, MAX_ERROR_BODY)
                    .await
                    .unwrap_or_default();
                let hint = match status.as_u16() {
                    401 => " - is the runner's orchestrator token valid?",
                    403 => " - the job belongs to another runner",
                    404 => " - no such job (unknown or finished)",
                    _ => "",
                };
                Err(format!("the orchestrator refused {}{hint}", what(status, &body)).into())
            }
            Reply::ServerError {
                status,
                body,
                tries,
            } => Err(format!(
                "the orchestrator failed {} (gave up after {tries} tries)",
                what(status, &body)
            )
            .into()),
            Reply::Unreached {
                last: NoAnswer::Timeout(limit),
                tries,
            } => Err(format!(
                "the orchestrator at {} did not answer {name} within {}s (gave up after {tries} tries)",
                self.client.endpoint.shown_url,
                limit.as_secs()
            )
            .into()),
            Reply::Unreached {
                last: NoAnswer::Transport(reason),
                tries,
            } => Err(format!(
                "cannot reach the orchestrator at {}: {reason} (gave up after {tries} tries)",
                self.client.endpoint.shown_url
            )
            .into()),
        }
    }

    fn call_body(&self, input: &Input) -> Value {
        let mut body = Map::new();
        body.insert("runnerName".into(), json!(self.runner_name));
        if self.command != Command::CleanupJob {
            body.insert("args".into(), input.args.clone());
        }
        body.insert("state".into(), input.state.clone());
        Value::Object(body)
    }
}

/// A transport error with its causes (hyper's own messages are terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Half to all of `base`, at random.
fn jitter(base: Duration) -> Duration {
    let half = base / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// `code: message` of the contract's error body, else the start of the body.
fn error_detail(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().map(|v| &v["error"]) {
        Some(Value::Object(error)) => {
            let code = error.get("code").and_then(Value::as_str).unwrap_or("");
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            match (code.is_empty(), message.is_empty()) {
                (false, false) => format!("{code}: {message}"),
                (false, true) => code.to_string(),
                _ => message.to_string(),
            }
        }
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// The whole body, refusing more than `max` bytes.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| error_chain(&e.without_url()))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn json_answer(
    client: &ContainerClient,
    response: reqwest::Response,
) -> Result<Value, Failure> {
    let name = client.command.name();
    let bytes = read_capped(response, MAX_ANSWER)
        .await
        .map_err(|e| format!("cannot read the orchestrator's answer to {name}: {e}"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| format!("the orchestrator's answer to {name} is not JSON").into())
}

async fn prepare_job(
    client: &ContainerClient,
    input: &Input,
    out: &mut Output,
) -> Result<i32, Failure> {
    let response = client.post(&client.call_body(input)).await?;
    let answer = json_answer(client, response).await?;
    let Some(Value::Object(prepared)) = answer.get("response") else {
        return Err("the orchestrator's answer to prepare_job has no response".into());
    };
    let is_alpine = prepared.get("isAlpine").cloned().unwrap_or(Value::Null);
    if input.args.get("container").is_some_and(|c| !c.is_null()) && !is_alpine.is_boolean() {
        return Err("the orchestrator's answer to prepare_job has no isAlpine".into());
    }
    // Exactly what the runner reads: state, context, isAlpine.
    let file_content = json!({
        "state": prepared.get("state").cloned().unwrap_or(Value::Null),
        "context": prepared.get("context").cloned().unwrap_or(Value::Null),
        "isAlpine": is_alpine,
    });
    let path = input.response_file.as_deref().unwrap_or_default();
    write_response(Path::new(path), &file_content)?;
    if let Some(Value::Array(notices)) = answer.get("notices") {
        for notice in notices.iter().filter_map(Value::as_str) {
            out.line(notice).await;
        }
    }
    Ok(0)
}

fn write_response(path: &Path, content: &Value) -> Result<(), Failure> {
    std::fs::write(path, content.to_string())
        .map_err(|e| format!("cannot write the response file {}: {e}", path.display()).into())
}

async fn cleanup_job(
    client: &ContainerClient,
    input: &Input,
    out: &mut Output,
) -> Result<i32, Failure> {
    let response = client.post(&client.call_body(input)).await?;
    let answer = json_answer(client, response).await?;
    let removed = answer.get("removed").and_then(Value::as_u64).unwrap_or(0);
    let job = answer.get("jobId").and_then(Value::as_str).unwrap_or("?");
    out.line(&format!(
        "proxy-runner: job {job} cleaned up ({removed} containers removed)"
    ))
    .await;
    Ok(0)
}

/// A step: its output is written as it arrives; the hook exits with the
/// step's exit code. The call is tried again only before any of the
/// stream arrived: a step never runs twice.
async fn run_step(
    client: &ContainerClient,
    input: &Input,
    out: &mut Output,
) -> Result<i32, Failure> {
    let mut response = client.post(&client.call_body(input)).await?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-ndjson") {
        return Err(format!(
            "the orchestrator answered {} with {content_type:?}, not a stream of application/x-ndjson",
            client.command.name()
        )
        .into());
    }
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(STEP_IDLE_TIMEOUT, response.chunk()).await {
            Err(_) => {
                return Err(format!(
                    "the step's output stream was silent for {} hours",
                    STEP_IDLE_TIMEOUT.as_secs() / 3600
                )
                .into());
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "the step's output stream broke before its exit code: {}",
                    error_chain(&e.without_url())
                )
                .into());
            }
            Ok(Ok(None)) => {
                return Err("the step's output stream ended before its exit code".into());
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(newline) = buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &buffer[start..start + newline];
            start += newline + 1;
            if let Some(code) = stream_line(line, out).await? {
                return Ok(code);
            }
        }
        buffer.drain(..start);
        if buffer.len() > MAX_STREAM_LINE {
            return Err(format!(
                "a line of the step's output stream is longer than {} MiB",
                MAX_STREAM_LINE / (1024 * 1024)
            )
            .into());
        }
    }
}

/// Handles one line of a step's stream; `Some(exit code)` ends the step.
async fn stream_line(line: &[u8], out: &mut Output) -> Result<Option<i32>, Failure> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        // Blank lines keep a quiet stream alive.
        return Ok(None);
    }
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(line) else {
        return Err(
            "the orchestrator sent a line that is not a JSON object in the step's stream".into(),
        );
    };
    for (key, stream) in [("stdout", true), ("stderr", false)] {
        let Some(data) = event.get(key) else {
            continue;
        };
        let bytes = data
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .ok_or_else(|| format!("the orchestrator sent {key} that is not base64"))?;
        let written = if stream {
            out.stdout(&bytes).await
        } else {
            out.stderr(&bytes).await
        };
        written.map_err(|e| format!("cannot write the step's {key}: {e}"))?;
    }
    if let Some(error) = event.get("error") {
        let code = error.get("code").and_then(Value::as_str).unwrap_or("error");
        let message = error.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("the orchestrator stopped the step: {code}: {message}").into());
    }
    if let Some(code) = event.get("exitCode") {
        return match code.as_i64() {
            Some(n) if n < 0 => Err(format!("the step ended with exit code {n}").into()),
            Some(n) => Ok(Some(i32::try_from(n.min(255)).unwrap_or(255))),
            None => Err("the step's stream ended without an exit code".into()),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_userinfo() {
        assert_eq!(without_userinfo("https://u:p@h:1/x"), "https://h:1/x");
        assert_eq!(without_userinfo("http://h/a@b"), "http://h/a@b");
        assert_eq!(without_userinfo("http://h"), "http://h");
        assert_eq!(
            url_password("https://u:p@ss@h:1/x").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("https://u@h/x"), None);
        assert_eq!(url_password("http://h/a:b@c"), None);
    }

    #[test]
    fn passwords_are_found_anywhere_in_the_args() {
        let mut found = Vec::new();
        collect_passwords(
            &json!({"container": {"registry": {"password": "p1"}}, "services": [{"registry": {"Password": "p2"}}, {"registry": null}]}),
            &mut found,
        );
        assert_eq!(found, ["p1", "p2"]);
    }

    #[test]
    fn error_text_is_one_escaped_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
        assert_eq!(escape_command_data("100%\n"), "100%25%0A");
        let secrets = Secrets(vec!["hunter2".into(), "x".into()]);
        assert_eq!(secrets.redact("a hunter2 x"), "a *** x");
    }

    #[test]
    fn reports_of_failed_calls_round_trip() {
        let mut report = HookReport::parse(
            "job_started unreached\nprepare_job connection_failure 3\njob_started unreached\nBAD LINE\n\nx\n",
        );
        assert_eq!(
            report.header(),
            "job_started:unreached=2,prepare_job:connection_failure=3"
        );
        report.add("prepare_job", "unreached", 1);
        assert_eq!(HookReport::parse(&report.lines()), report);
        assert!(HookReport::parse("").is_empty());
    }

    #[test]
    fn jitter_stays_within_half_to_all() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(800));
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
    }
}
