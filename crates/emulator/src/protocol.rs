//! Wire types of the emulator's runner protocol (`/_runner/*`), shared by
//! the server side and the simulated runner. GitHub's own broker protocol is
//! not public; this one is deliberately small (see the README).

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
    pub steps: Vec<String>,
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
