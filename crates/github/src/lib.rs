//! proxy-runner's integration with GitHub: the REST client the orchestrator
//! uses to register and remove runners and to read workflow jobs, webhook
//! signature checks and payload parsing, and the polling fallback.
//!
//! Secrets (tokens, App key, JIT configs, webhook secret) stay in
//! [`secrecy::SecretString`]; they are never logged and never put into
//! error messages.

mod auth;
pub mod breaker;
pub mod client;
pub mod config;
pub mod metrics;
mod model;
pub mod polling;
pub mod rate_limit;
mod request;
pub mod webhooks;

pub use breaker::CircuitState;
pub use client::{API_VERSION, GitHubClient};
pub use config::{Auth, BreakerConfig, GitHubConfig, KeyError, RetryConfig, load_private_key};
pub use model::WorkflowRunInfo;
pub use polling::{PollError, PollOutcome, Poller, pacing, poll_queued};
pub use rate_limit::RateLimit;
pub use webhooks::{
    ServedLabels, SignatureError, WebhookError, WorkflowJobAction, WorkflowJobEvent,
    parse_workflow_job_event, verify_signature,
};

pub use proxy_runner_domain::ports::GitHubError;
