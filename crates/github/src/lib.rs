//! proxy-runner's integration with GitHub: the REST client the orchestrator
//! uses to register and remove runners and to read workflow jobs, webhook
//! signature checks and payload parsing, and the polling fallback.
//!
//! Secrets (tokens, App key, JIT configs, webhook secret) stay in
//! [`secrecy::SecretString`]; they are never logged and never put into
//! error messages.
//!
//! ```no_run
//! use proxy_runner_domain::ports::{JitRequest, RunnerRegistry, Scope};
//! use proxy_runner_github::{Auth, GitHubClient, GitHubConfig, load_private_key};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Auth::App { app_id: 12345, private_key_pem: load_private_key("app.pem")? };
//! let client = GitHubClient::new(GitHubConfig::new("https://api.github.com", auth))?;
//! let scope = Scope::repository("octo/hello").expect("owner/name");
//! let jit = client
//!     .generate_jit_config(&scope, &JitRequest {
//!         name: "ephemeral-1".into(),
//!         labels: vec!["self-hosted".into(), "linux".into()],
//!         runner_group_id: 1,
//!         work_folder: "_work".into(),
//!     })
//!     .await?;
//! // ... start a runner with `jit.encoded_jit_config`, later:
//! client.delete_runner(&scope, jit.runner_id).await.ok();
//! # Ok(()) }
//! ```

pub mod breaker;
mod call;
pub mod client;
pub mod config;
mod layers;
pub mod metrics;
mod model;
pub mod polling;
pub mod rate_limit;
pub mod webhooks;

pub use breaker::CircuitState;
pub use client::{API_VERSION, GitHubClient};
pub use config::{Auth, BreakerConfig, GitHubConfig, KeyError, RetryConfig, load_private_key};
pub use model::WorkflowRunInfo;
pub use polling::{PollError, PollOutcome, Poller, pacing, poll_queued};
pub use rate_limit::RateLimit;
pub use webhooks::{
    SignatureError, WebhookError, WorkflowJobAction, WorkflowJobEvent, parse_workflow_job_event,
    verify_signature,
};

pub use proxy_runner_domain::ports::GitHubError;
