//! A recording GitHub double for the autoscaler tests: mints JIT configs
//! with planted secret values and can be told to fail.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use proxy_runner_domain::ports::{
    GitHubError, JitConfig, JitRequest, RegistrationToken, RunnerInfo, RunnerRegistry, Scope,
    WorkflowJobInfo,
};
use secrecy::SecretString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryCall {
    Jit {
        scope: Scope,
        name: String,
        labels: Vec<String>,
    },
    RegistrationToken(Scope),
    Delete {
        scope: Scope,
        runner_id: u64,
    },
    List(Scope),
}

#[derive(Default)]
pub struct FakeRegistry {
    pub calls: Mutex<Vec<RegistryCall>>,
    /// Errors returned by the next JIT calls, in order.
    pub jit_failures: Mutex<VecDeque<GitHubError>>,
    next_id: Mutex<u64>,
    /// What `get_workflow_job` answers, by GitHub job id (tests set it).
    pub github_jobs: Mutex<std::collections::HashMap<u64, WorkflowJobInfo>>,
    /// While a test holds it for writing, JIT calls wait after being
    /// recorded: a provisioning held mid-way.
    pub jit_gate: tokio::sync::RwLock<()>,
    /// Runners registered by JIT configs and not deleted, as GitHub lists
    /// them (offline and idle until a test marks one busy).
    pub runners: Mutex<Vec<(Scope, RunnerInfo)>>,
}

pub const JIT_SECRET_PREFIX: &str = "jit-SECRET-";

impl FakeRegistry {
    pub fn calls(&self) -> Vec<RegistryCall> {
        self.calls.lock().unwrap().clone()
    }
    pub fn fail_next_jit(&self, e: GitHubError) {
        self.jit_failures.lock().unwrap().push_back(e);
    }
    pub fn deleted(&self) -> Vec<u64> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                RegistryCall::Delete { runner_id, .. } => Some(runner_id),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl RunnerRegistry for FakeRegistry {
    async fn generate_jit_config(
        &self,
        scope: &Scope,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        self.calls.lock().unwrap().push(RegistryCall::Jit {
            scope: scope.clone(),
            name: request.name.clone(),
            labels: request.labels.clone(),
        });
        drop(self.jit_gate.read().await);
        if let Some(e) = self.jit_failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let mut id = self.next_id.lock().unwrap();
        *id += 1;
        self.runners.lock().unwrap().push((
            scope.clone(),
            RunnerInfo {
                id: *id,
                name: request.name.clone(),
                os: "linux".into(),
                status: "offline".into(),
                busy: false,
                labels: request.labels.clone(),
                ephemeral: true,
            },
        ));
        Ok(JitConfig {
            runner_id: *id,
            runner_name: request.name.clone(),
            encoded_jit_config: SecretString::from(format!("{JIT_SECRET_PREFIX}{id}")),
        })
    }
    async fn create_registration_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        self.calls
            .lock()
            .unwrap()
            .push(RegistryCall::RegistrationToken(scope.clone()));
        Ok(RegistrationToken {
            token: SecretString::from("regtoken-SECRET"),
            expires_at: Utc::now(),
        })
    }
    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GitHubError> {
        self.calls.lock().unwrap().push(RegistryCall::Delete {
            scope: scope.clone(),
            runner_id,
        });
        self.runners
            .lock()
            .unwrap()
            .retain(|(s, r)| !(s == scope && r.id == runner_id));
        Ok(())
    }
    async fn list_runners(&self, scope: &Scope) -> Result<Vec<RunnerInfo>, GitHubError> {
        self.calls
            .lock()
            .unwrap()
            .push(RegistryCall::List(scope.clone()));
        Ok(self
            .runners
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == scope)
            .map(|(_, r)| r.clone())
            .collect())
    }
    async fn get_workflow_job(
        &self,
        _owner: &str,
        _repo: &str,
        job_id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError> {
        self.github_jobs
            .lock()
            .unwrap()
            .get(&job_id)
            .cloned()
            .ok_or_else(|| GitHubError::NotFound(format!("job {job_id}")))
    }
    async fn list_queued_jobs(
        &self,
        _owner: &str,
        _repo: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        Ok(Vec::new())
    }
}
