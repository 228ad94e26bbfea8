//! `workflow_job` webhooks: verification and parsing live in the pure
//! `proxy-runner-webhooks` crate, re-exported here for the client's users.
//! Which jobs are ours is the orchestrator's decision over the domain's one
//! label rule (`labels::runner_matches`).

pub use proxy_runner_webhooks::*;
