//! The orchestrator: the HTTP API the hooks call, the delegation service,
//! configuration and metrics.

pub mod api;
mod audit;
pub mod auth;
pub mod autoscaler;
pub mod compose;
pub mod config;
pub mod dry_run;
pub mod error;
pub mod hook_api;
pub mod metrics;
pub mod proxy;
pub mod requests;
pub mod runner_health;
pub mod runners_api;
pub mod server;
pub mod service;
pub mod sources;
pub mod webhook;

pub use api::AppState;
pub use compose::{Ports, System, app};
pub use service::Orchestrator;
