//! Wire types of the emulator's runner protocol (`/_runner/*`), shared by
//! the server side and the simulated runner. GitHub's own broker protocol is
//! not public; this one is deliberately small (see the README).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest long poll the server holds open.
pub(crate) const ACQUIRE_MAX_WAIT_MS: u64 = 50_000;
/// Largest request body of the runner protocol (step output is capped at
/// 1 MiB; JSON escaping can make it several times longer).
pub(crate) const RUNNER_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What `encoded_jit_config` holds, base64-encoded JSON.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JitConfigDocument {
    /// Base URL of the emulator (its `public_url`).
    pub url: String,
    /// Where the runner is registered, like `config.sh --url`.
    pub scope_url: String,
    pub runner_id: u64,
    pub runner_name: String,
    /// The runner's secret; sent as `Authorization: Bearer`.
    pub credential: String,
    #[serde(default)]
    pub work_folder: String,
}

impl fmt::Debug for JitConfigDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitConfigDocument")
            .field("url", &self.url)
            .field("runner_id", &self.runner_id)
            .field("runner_name", &self.runner_name)
            .field("credential", &"[redacted]")
            .finish()
    }
}

/// `POST /_runner/register`: what `config.sh --url --token` sends.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegisterRequest {
    pub url: String,
    pub token: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub no_default_labels: bool,
}

/// Answer to a registration: the same credential a JIT config carries.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegisterResponse {
    pub url: String,
    pub runner_id: u64,
    pub runner_name: String,
    pub credential: String,
}

/// `POST /_runner/acquire`: wait up to `wait_ms` for a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct AcquireRequest {
    pub wait_ms: u64,
    pub os: Option<String>,
    pub version: Option<String>,
}

/// A job handed to a runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobAssignment {
    pub job_id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub repository: String,
    pub workflow: String,
    pub name: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    /// The job's `container:`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// The job's `services:` by context name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ContainerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_branch: Option<String>,
}

/// One `run:` step. A step without a `shell:` travels as a plain string,
/// as every step did before shells existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum StepSpec {
    Command(String),
    Script {
        run: String,
        #[serde(default)]
        shell: Option<String>,
    },
}

impl StepSpec {
    pub fn new(run: String, shell: Option<String>) -> StepSpec {
        match shell {
            None => StepSpec::Command(run),
            Some(shell) => StepSpec::Script {
                run,
                shell: Some(shell),
            },
        }
    }

    pub fn run(&self) -> &str {
        match self {
            StepSpec::Command(run) | StepSpec::Script { run, .. } => run,
        }
    }

    pub fn shell(&self) -> Option<&str> {
        match self {
            StepSpec::Command(_) => None,
            StepSpec::Script { shell, .. } => shell.as_deref(),
        }
    }
}

/// A job or service container as a workflow declares it (`image`, `env`,
/// `options`, `ports`, `volumes`, `credentials`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerSpec {
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `docker create` options (the runner's createOptions).
    #[serde(default)]
    pub options: Option<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub credentials: Option<RegistryCredentials>,
}

/// `credentials:` of a container: a registry login.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// `POST /_runner/jobs/{job_id}/log`: one section of the job log that is
/// not a `run:` step (a hook, container set-up or clean-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogReport {
    pub name: String,
    pub output: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// `POST /_runner/jobs/{job_id}/steps/{index}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepReport {
    pub output: String,
    pub exit_code: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepAck {
    pub cancel_requested: bool,
}

/// `POST /_runner/jobs/{job_id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompleteRequest {
    /// `succeeded`, `failed` or `cancelled`.
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompleteResponse {
    pub conclusion: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProtocolError {
    pub message: String,
}
