//! The proxy path, orchestrator side: a proxy runner's container hooks ask
//! for the job's containers (`prepare`), run each step in them (`steps`) and
//! remove them (`cleanup`); what no hook cleaned up is reaped (`reaper`).
//! The orchestrator is the only holder of the engine, so the policy
//! (`domain::policy`) is applied here, before anything is created.

mod cleanup;
mod prepare;
mod reaper;
mod steps;

use std::sync::Arc;

use proxy_runner_domain::Job;
use proxy_runner_domain::container_hooks::{HookInputError, HookState};
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::policy::{HardeningProfile, PolicyError, ProxyPolicy};
use proxy_runner_domain::ports::{
    AuditEvent, BackendError, ContainerBackend, JobStore, StoreError,
};
use serde_json::Value;
use uuid::Uuid;

use crate::audit::Auditor;
use crate::auth::Principal;
use crate::config::ProxySection;
use crate::service::ServiceError;
use crate::sources::Sources;

pub use prepare::Prepared;
use prepare::plan_step;
pub use steps::StepRun;

/// The proxy path's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub instance: String,
    pub network_prefix: String,
    pub section: ProxySection,
    /// Proxy-path label sets with their hardening profile, first match wins.
    pub label_sets: Vec<(LabelSet, HardeningProfile)>,
}

/// One container-hook call as the hook client sends it.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub runner_name: String,
    /// The runner's `args`, verbatim (parsed by the use case).
    pub args: Value,
    /// The runner's `state`: what `prepare` returned, or null.
    pub state: Value,
}

/// Why a container-hook call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Input(#[from] HookInputError),
    #[error("refused by the proxy policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Engine(#[from] BackendError),
    #[error("{0}")]
    State(String),
}

impl From<StoreError> for ProxyError {
    fn from(e: StoreError) -> Self {
        ProxyError::Service(ServiceError::Store(e))
    }
}

pub struct ProxyJobs {
    store: Arc<dyn JobStore>,
    containers: Arc<dyn JobContainers>,
    networks: Arc<dyn ContainerBackend>,
    sources: Sources,
    audit: Auditor,
    config: ProxyConfig,
}

impl ProxyJobs {
    pub fn new(
        store: Arc<dyn JobStore>,
        containers: Arc<dyn JobContainers>,
        networks: Arc<dyn ContainerBackend>,
        sources: Sources,
        config: ProxyConfig,
    ) -> Self {
        ProxyJobs {
            audit: Auditor::new(store.clone(), sources.clock.clone()),
            store,
            containers,
            networks,
            sources,
            config,
        }
    }

    /// The policy for `job`: its label set's profile, or the default one.
    fn policy_for(&self, job: &Job) -> ProxyPolicy {
        let profile = self
            .config
            .label_sets
            .iter()
            .find(|(labels, _)| labels.serves(&job.labels))
            .map(|(_, p)| *p)
            .unwrap_or(self.config.section.profile);
        self.config.section.policy(profile)
    }

    /// The delegated job a hook call is for: the one its `state` names, or
    /// the runner's active one. A runner acts only for its own jobs.
    async fn find_job(&self, who: &Principal, request: &HookRequest) -> Result<Job, ProxyError> {
        let runner = request.runner_name.as_str();
        if !who.acts_for(runner) {
            return Err(ServiceError::Forbidden(format!(
                "runnerName {runner:?} is not the runner this token was issued for"
            ))
            .into());
        }
        let job = match state_job_id(&request.state)? {
            Some(id) => self
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("no job with id {id}")))?,
            None => self.store.find_active_hook_job(runner).await?.ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "runner {runner:?} has no delegated job: the job-started hook delegates it first"
                ))
            })?,
        };
        if job.runner_name.as_deref() != Some(runner) {
            return Err(ServiceError::Forbidden(format!(
                "job {} belongs to another runner",
                job.id
            ))
            .into());
        }
        if job.status.is_terminal() {
            return Err(ServiceError::NotFound(format!(
                "job {} is {}; its containers are gone",
                job.id, job.status
            ))
            .into());
        }
        Ok(job)
    }

    /// Writes `change` to the job, re-reading it when another writer won.
    /// `change` answers the audit events that record it, which commit with
    /// the write (or not at all).
    async fn update(
        &self,
        id: Uuid,
        change: impl Fn(&mut Job) -> Vec<AuditEvent>,
    ) -> Result<Job, ProxyError> {
        crate::audit::retry_cas(
            || async {
                let Some(mut job) = self.store.get_job(id).await? else {
                    return Err(ServiceError::NotFound(format!("job {id} vanished")).into());
                };
                let expected = job.status;
                let audit = change(&mut job);
                Ok(self
                    .store
                    .update_job(&mut job, expected, &audit)
                    .await?
                    .then_some(job))
            },
            || ProxyError::State(format!("job {id} kept changing")),
        )
        .await
    }
}

/// The job id in a hook's `state`, if the state is ours.
fn state_job_id(state: &Value) -> Result<Option<Uuid>, ProxyError> {
    Ok(hook_state(state)?.map(|s| s.job_id))
}

/// The hook's `state` read back as the one `prepare` returned; null or `{}`
/// is no state yet.
pub fn hook_state(state: &Value) -> Result<Option<HookState>, ProxyError> {
    match state {
        Value::Null => Ok(None),
        Value::Object(map) if map.is_empty() => Ok(None),
        other => serde_json::from_value(other.clone())
            .map(Some)
            .map_err(|e| ProxyError::State(format!("state is not one proxy-runner returned: {e}"))),
    }
}
