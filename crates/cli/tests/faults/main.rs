//! The fault-injection suite: the real binary, the real engine and the
//! GitHub emulator's fault knobs, with the faults the service must survive.
//!
//! `PROXY_RUNNER_FAULTS=full cargo nextest run -p proxy-runner --test faults`
//! runs the sizes RELIABILITY.md reports; without the variable each case runs
//! a reduced size (what CI runs).

#[path = "../common/mod.rs"]
mod common;
mod engine;
mod engine_support;
mod github;
mod github_support;
mod hostile;
mod orchestrator_kill;

/// The full sizes (`PROXY_RUNNER_FAULTS=full`), else the reduced CI size.
pub fn full_size() -> bool {
    std::env::var("PROXY_RUNNER_FAULTS").is_ok_and(|v| v == "full")
}
