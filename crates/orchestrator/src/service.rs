//! The orchestrator's use cases: delegate, complete, issue tokens, read
//! jobs. HTTP-free (errors are [`ServiceError`]; the API layer maps them to
//! statuses), so the API layer stays thin and the logic is testable.

use std::sync::Arc;

use proxy_runner_domain::ports::{
    ContainerBackend, JobFilter, JobStore, StoreError, TokenFilter, TokenRecord,
};
use proxy_runner_domain::{Job, JobSource, TransitionError};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::audit::{Auditor, retry_cas};
use crate::auth::{self, Principal};
use crate::metrics as m;
use crate::proxy::ProxyJobs;
use crate::requests::{Completion, Delegation};
use crate::sources::Sources;

/// Why a use case refused or failed. Messages name the problem and never
/// carry a secret.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TransitionError> for ServiceError {
    fn from(e: TransitionError) -> Self {
        ServiceError::Conflict(e.to_string())
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

pub struct Orchestrator {
    pub store: Arc<dyn JobStore>,
    pub backend: Arc<dyn ContainerBackend>,
    pub sources: Sources,
    audit: Auditor,
    admin_token: Option<SecretString>,
    /// The proxy path, when configured: a job's containers go with its end.
    proxy: Option<Arc<ProxyJobs>>,
}

/// A freshly issued runner token: the only time the token itself is seen.
pub struct IssuedToken {
    pub record: TokenRecord,
    pub token: SecretString,
}

impl Orchestrator {
    pub fn new(
        store: Arc<dyn JobStore>,
        backend: Arc<dyn ContainerBackend>,
        sources: Sources,
        admin_token: Option<SecretString>,
    ) -> Self {
        Orchestrator {
            audit: Auditor::new(store.clone(), sources.clock.clone()),
            store,
            backend,
            sources,
            admin_token,
            proxy: None,
        }
    }

    /// Turns on the proxy path's clean-up at completion and delegation.
    pub fn with_proxy(mut self, proxy: Option<Arc<ProxyJobs>>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Resolves a bearer token to a principal.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Principal> {
        if let Some(admin) = &self.admin_token
            && auth::secrets_equal(token, admin.expose_secret())
        {
            return Ok(Principal::Admin);
        }
        match self
            .store
            .find_token_by_hash(&auth::hash_token(token))
            .await?
        {
            Some(rec) if rec.revoked_at.is_none() => Ok(Principal::Runner {
                name: rec.runner,
                token_id: rec.id,
            }),
            Some(_) => Err(ServiceError::Unauthorized("token has been revoked".into())),
            None => Err(ServiceError::Unauthorized("unknown token".into())),
        }
    }

    /// `POST /api/jobs/delegate`: records the job a proxy runner's hook
    /// handed over. Returns the job and whether it is new.
    pub async fn delegate(
        &self,
        who: &Principal,
        delegation: Delegation,
    ) -> ServiceResult<(Job, bool)> {
        let runner_name = delegation.job.runner_name.clone().unwrap_or_default();
        if !who.acts_for(&runner_name) {
            return Err(ServiceError::Forbidden(format!(
                "runnerName {runner_name:?} is not the runner this token was issued for"
            )));
        }
        if let (Some(proxy), Some(key)) = (&self.proxy, delegation.job.delegation_key())
            && let Err(e) = proxy.before_delegation(&runner_name, &key).await
        {
            tracing::warn!(runner = %runner_name, error = %e, "cannot close the runner's previous job");
        }
        let now = self.sources.clock.now();
        // The hook runs on the runner that already holds the job: it is running.
        let job = delegation
            .job
            .into_delegated_job(self.sources.ids.new_id(), now)?;
        let delegated = self.audit.event(
            &who.actor(),
            "job.delegated",
            Some(job.id),
            serde_json::json!({
                "jobKey": job.job_key, "runId": job.run_id, "runAttempt": job.run_attempt,
                "repository": job.repository, "runnerName": runner_name,
                "labels": job.labels, "droppedSecretVariables": job.dropped_secrets,
            }),
        );
        // The job and its audit line commit together (or neither).
        let inserted = self.store.insert_job(&job, &[delegated]).await?;
        let created = inserted.is_new();
        let mut job = inserted.into_job();
        if created && let Some(merged) = self.absorb_tracking_record(&job).await? {
            job = merged;
        }
        if created {
            metrics::counter!(m::JOB_TRANSITIONS, "to" => "running").increment(1);
            tracing::info!(
                job = %job.id, job_key = %job.job_key, repository = %job.repository,
                runner = %runner_name, labels = ?job.labels, "job delegated"
            );
        }
        Ok((job, created))
    }

    /// GitHub may have told us that this runner took the job before its
    /// hook delegated it: the record kept for GitHub's events goes, and its
    /// GitHub job id moves to the delegated job, so the job has one record.
    async fn absorb_tracking_record(&self, job: &Job) -> ServiceResult<Option<Job>> {
        let Some(runner) = job.runner_name.as_deref() else {
            return Ok(None);
        };
        let candidates = self
            .store
            .find_tracking_records(runner, &job.repository, job.run_id, job.run_attempt)
            .await?;
        let Some(tracking) = candidates
            .into_iter()
            .find(|j| j.source != JobSource::Hook && j.attempts == 0 && j.container_id.is_none())
        else {
            return Ok(None);
        };
        let Some(github_job_id) = tracking.github_job_id else {
            return Ok(None);
        };
        if !self
            .store
            .delete_job(tracking.id, tracking.revision, &[])
            .await?
        {
            return Ok(None);
        }
        let mut merged = job.clone();
        merged.link_github_job(github_job_id, tracking.runner_id, self.sources.clock.now());
        let event = self.audit.event(
            "orchestrator",
            "job.merged",
            Some(job.id),
            serde_json::json!({"githubJobId": github_job_id, "trackingRecord": tracking.id}),
        );
        if !self
            .store
            .update_job(&mut merged, job.status, &[event])
            .await?
        {
            return Ok(None);
        }
        Ok(Some(merged))
    }

    /// Finds the job a completion names: an orchestrator id, or (as the
    /// design's completion hook sends it) the workflow job key of the calling
    /// runner's active job.
    pub async fn resolve_for_completion(
        &self,
        who: &Principal,
        id: &str,
        runner: Option<&str>,
    ) -> ServiceResult<Job> {
        if let Ok(uuid) = Uuid::parse_str(id) {
            let job = self
                .store
                .get_job(uuid)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("no job with id {uuid}")))?;
            if let Principal::Runner { name, .. } = who
                && !job.runner_name.as_deref().is_some_and(|r| who.acts_for(r))
            {
                return Err(ServiceError::Forbidden(format!(
                    "job {uuid} does not belong to runner {name:?}"
                )));
            }
            return Ok(job);
        }
        if id.is_empty() || id.len() > 100 || id.chars().any(char::is_control) {
            return Err(ServiceError::Invalid {
                field: "id",
                message: "must be a job id or a workflow job key".into(),
            });
        }
        let runner_name = match (who, runner) {
            // A supervisor's token names the slot runner whose job ended.
            (Principal::Runner { name, .. }, Some(r)) => {
                if !who.acts_for(r) {
                    return Err(ServiceError::Forbidden(format!(
                        "runner {r:?} is not {name:?} or one of its slot runners"
                    )));
                }
                r.to_string()
            }
            (Principal::Runner { name, .. }, None) => name.clone(),
            (Principal::Admin, Some(r)) => r.to_string(),
            (Principal::Admin, None) => {
                return Err(ServiceError::BadQuery(
                    "completing by job key needs a runner: use a runner token or ?runner=NAME"
                        .into(),
                ));
            }
        };
        self.store
            .find_active_for_runner(&runner_name, id)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "runner {runner_name:?} has no active job with key {id:?}"
                ))
            })
    }

    /// `POST /api/jobs/{id}/complete`. Completing a finished job again
    /// returns it unchanged (hooks retry).
    pub async fn complete(
        &self,
        who: &Principal,
        job: Job,
        completion: Completion,
    ) -> ServiceResult<Job> {
        let id = job.id;
        let mut current = Some(job);
        retry_cas(
            || {
                let read = current.take();
                self.try_complete(who, id, read, &completion)
            },
            || {
                ServiceError::Conflict(
                    "the job kept changing under this completion; try again".into(),
                )
            },
        )
        .await
    }

    /// One attempt of [`Self::complete`] on `job` (or a fresh read of it);
    /// `None` when another writer moved the job first.
    async fn try_complete(
        &self,
        who: &Principal,
        id: Uuid,
        job: Option<Job>,
        completion: &Completion,
    ) -> ServiceResult<Option<Job>> {
        let mut job = match job {
            Some(job) => job,
            None => self
                .store
                .get_job(id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("job {id} vanished")))?,
        };
        if job.status.is_terminal() {
            self.release_containers(&job).await;
            return Ok(Some(job));
        }
        let expected = job.status;
        let target = job.complete(
            completion.effective_conclusion(),
            completion.exit_code,
            self.sources.clock.now(),
        )?;
        let completed = self.audit.event(
            &who.actor(),
            "job.completed",
            Some(job.id),
            serde_json::json!({"conclusion": job.conclusion, "exitCode": job.exit_code, "status": job.status}),
        );
        if !self
            .store
            .update_job(&mut job, expected, &[completed])
            .await?
        {
            return Ok(None);
        }
        let shown = job.conclusion.clone().unwrap_or_else(|| "unknown".into());
        metrics::counter!(m::JOBS_COMPLETED, "conclusion" => shown.clone()).increment(1);
        metrics::counter!(m::JOB_TRANSITIONS, "to" => target.as_str()).increment(1);
        tracing::info!(job = %job.id, conclusion = %shown, exit_code = ?job.exit_code, "job completed");
        self.release_containers(&job).await;
        Ok(Some(job))
    }

    /// Proxy path: a finished job's containers go (when its runner was
    /// killed, no `cleanup_job` comes).
    async fn release_containers(&self, job: &Job) {
        if let Some(proxy) = &self.proxy
            && job.has_live_job_containers()
            && let Err(e) = proxy.release(job).await
        {
            tracing::warn!(job = %job.id, error = %e, "cannot remove the job's containers; the reaper will");
        }
    }

    pub async fn get_job(&self, who: &Principal, id: &str) -> ServiceResult<Job> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            ServiceError::NotFound(format!(
                "no job with id {:?}",
                id.chars().take(64).collect::<String>()
            ))
        })?;
        let job = self
            .store
            .get_job(uuid)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no job with id {uuid}")))?;
        match who {
            Principal::Admin => Ok(job),
            Principal::Runner { .. }
                if job.runner_name.as_deref().is_some_and(|r| who.acts_for(r)) =>
            {
                Ok(job)
            }
            Principal::Runner { .. } => Err(ServiceError::Forbidden(
                "this job belongs to another runner".into(),
            )),
        }
    }

    pub async fn list_jobs(&self, who: &Principal, filter: &JobFilter) -> ServiceResult<Vec<Job>> {
        who.require_admin()?;
        Ok(self.store.list_jobs(filter).await?)
    }

    pub async fn issue_token(&self, who: &Principal, runner: &str) -> ServiceResult<IssuedToken> {
        who.require_admin()?;
        let token = auth::generate_token();
        let record = TokenRecord {
            id: self.sources.ids.new_id(),
            runner: runner.to_string(),
            hash: auth::hash_token(&token),
            created_at: self.sources.clock.now(),
            revoked_at: None,
        };
        let created = self.audit.event(
            &who.actor(),
            "token.created",
            None,
            serde_json::json!({"tokenId": record.id, "runner": runner}),
        );
        self.store.insert_token(&record, &[created]).await?;
        Ok(IssuedToken {
            record,
            token: SecretString::from(token),
        })
    }

    pub async fn revoke_token(&self, who: &Principal, id: &str) -> ServiceResult<()> {
        who.require_admin()?;
        let uuid =
            Uuid::parse_str(id).map_err(|_| ServiceError::NotFound("no such token".into()))?;
        let revoked = self.audit.event(
            &who.actor(),
            "token.revoked",
            None,
            serde_json::json!({"tokenId": uuid}),
        );
        if !self
            .store
            .revoke_token(uuid, self.sources.clock.now(), &[revoked])
            .await?
        {
            return Err(ServiceError::NotFound(format!(
                "no active token with id {uuid}"
            )));
        }
        Ok(())
    }

    /// Revokes the token whose value the admin presents (the value is only
    /// hashed, never kept or echoed); the revoked record.
    pub async fn revoke_token_by_value(
        &self,
        who: &Principal,
        token: &SecretString,
    ) -> ServiceResult<TokenRecord> {
        who.require_admin()?;
        let not_found = || ServiceError::NotFound("no active token with this value".into());
        let record = self
            .store
            .find_token_by_hash(&auth::hash_token(token.expose_secret()))
            .await?
            .filter(|r| r.revoked_at.is_none())
            .ok_or_else(not_found)?;
        let at = self.sources.clock.now();
        let revoked = self.audit.event(
            &who.actor(),
            "token.revoked",
            None,
            serde_json::json!({"tokenId": record.id, "by": "value"}),
        );
        if !self.store.revoke_token(record.id, at, &[revoked]).await? {
            // Revoked by someone else between the read and the write.
            return Err(not_found());
        }
        Ok(TokenRecord {
            revoked_at: Some(at),
            ..record
        })
    }

    pub async fn list_tokens(
        &self,
        who: &Principal,
        filter: &TokenFilter,
    ) -> ServiceResult<Vec<TokenRecord>> {
        who.require_admin()?;
        Ok(self.store.list_tokens(filter).await?)
    }

    /// Whether store and container engine answer.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let store = self.store.ping().await.map_err(|e| e.to_string());
        let backend = self.backend.ping().await.map_err(|e| e.to_string());
        metrics::gauge!(m::BACKEND_UP).set(if backend.is_ok() { 1.0 } else { 0.0 });
        vec![("store", store), ("backend", backend)]
    }
}
