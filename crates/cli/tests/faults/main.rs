//! The fault-injection suite: the real binary, the real engine and the
//! GitHub emulator under faults. `PROXY_RUNNER_FAULTS=full` runs the sizes
//! RELIABILITY.md reports; unset, a reduced size (what CI runs).
//!
//! `PROXY_RUNNER_FAULTS=full cargo nextest run -p proxy-runner --test faults`

#[path = "../common/mod.rs"]
mod common;

mod engine;
mod engine_support;
mod orchestrator_kill;

/// Whether the suite runs at the sizes RELIABILITY.md reports.
pub fn full_size() -> bool {
    std::env::var("PROXY_RUNNER_FAULTS").is_ok_and(|v| v == "full")
}
