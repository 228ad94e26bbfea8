//! The domain of proxy-runner: what a job is, which state changes are legal,
//! which runner labels serve which job, which queued job starts next, and the
//! ports (traits) through which the orchestrator reaches the outside world.
//!
//! Nothing in this crate does IO. Every function here is deterministic given
//! its inputs (time comes in through [`ports::Clock`]).

pub mod container_hooks;
pub mod env_filter;
pub mod failure;
pub mod job;
pub mod job_containers;
pub mod labels;
pub mod names;
pub mod policy;
pub mod ports;
pub mod proxy_runner;
pub mod runner_plan;
pub mod schedule;
pub mod sync;
pub mod values;
pub mod warm;

pub use job::{
    DelegationKey, Job, JobContainerRecord, JobSource, JobStatus, NewJob, ServiceRecord,
    TransitionError, conclusion_to_status,
};
pub use labels::{LabelSet, Labels};
