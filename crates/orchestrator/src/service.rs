//! The orchestrator's use cases: delegate, complete, issue tokens, read
//! jobs. HTTP-free, so the API layer stays thin and the logic is testable.

use std::sync::Arc;

use proxy_runner_domain::ports::{Clock, ContainerBackend, JobFilter, JobStore, TokenRecord};
use proxy_runner_domain::{Job, JobStatus, conclusion_to_status};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::audit::{self, CAS_RETRIES};
use crate::auth::{self, Principal};
use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::requests::{Completion, Delegation};

pub struct Orchestrator {
    pub store: Arc<dyn JobStore>,
    pub backend: Arc<dyn ContainerBackend>,
    pub clock: Arc<dyn Clock>,
    admin_token: Option<SecretString>,
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
        clock: Arc<dyn Clock>,
        admin_token: Option<SecretString>,
    ) -> Self {
        Orchestrator {
            store,
            backend,
            clock,
            admin_token,
        }
    }

    /// Resolves a bearer token to a principal.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Principal> {
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
            Some(_) => Err(ApiError::unauthorized("token has been revoked")),
            None => Err(ApiError::unauthorized("unknown token")),
        }
    }

    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        job_id: Option<Uuid>,
        detail: serde_json::Value,
    ) {
        audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            actor,
            action,
            job_id,
            detail,
        )
        .await;
    }

    /// `POST /api/jobs/delegate`: records the job a proxy runner's hook
    /// handed over. Returns the job and whether it is new.
    pub async fn delegate(
        &self,
        who: &Principal,
        delegation: Delegation,
    ) -> ApiResult<(Job, bool)> {
        let runner_name = delegation.job.runner_name.clone().unwrap_or_default();
        if let Principal::Runner { name, .. } = who
            && *name != runner_name
        {
            return Err(ApiError::forbidden(format!(
                "runnerName {runner_name:?} is not the runner this token was issued for"
            )));
        }
        let now = self.clock.now();
        let mut job = delegation.job.into_job(Uuid::now_v7(), now);
        // The hook runs on the runner that already holds the job: it is running.
        job.transition(JobStatus::Running, now)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        let inserted = self.store.insert_job(&job).await?;
        let created = inserted.is_new();
        let job = inserted.into_job();
        if created {
            metrics::counter!(m::JOB_TRANSITIONS, "to" => "running").increment(1);
            tracing::info!(
                job = %job.id, job_key = %job.job_key, repository = %job.repository,
                runner = %runner_name, labels = ?job.labels, "job delegated"
            );
            self.audit(
                &who.actor(),
                "job.delegated",
                Some(job.id),
                serde_json::json!({
                    "jobKey": job.job_key, "runId": job.run_id, "runAttempt": job.run_attempt,
                    "repository": job.repository, "runnerName": runner_name,
                    "labels": job.labels, "droppedSecretVariables": delegation.dropped_secrets,
                }),
            )
            .await;
        }
        Ok((job, created))
    }

    /// Finds the job a completion names: an orchestrator id, or (as the
    /// seed's completion hook sends it) the workflow job key of the calling
    /// runner's active job.
    pub async fn resolve_for_completion(
        &self,
        who: &Principal,
        id: &str,
        runner: Option<&str>,
    ) -> ApiResult<Job> {
        if let Ok(uuid) = Uuid::parse_str(id) {
            let job = self
                .store
                .get_job(uuid)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no job with id {uuid}")))?;
            if let Principal::Runner { name, .. } = who
                && job.runner_name.as_deref() != Some(name.as_str())
            {
                return Err(ApiError::forbidden(format!(
                    "job {uuid} does not belong to runner {name:?}"
                )));
            }
            return Ok(job);
        }
        if id.is_empty() || id.len() > 100 || id.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "id",
                "must be a job id or a workflow job key",
            ));
        }
        let runner_name = match (who, runner) {
            (Principal::Runner { name, .. }, _) => name.clone(),
            (Principal::Admin, Some(r)) => r.to_string(),
            (Principal::Admin, None) => {
                return Err(ApiError::bad_query(
                    "completing by job key needs a runner: use a runner token or ?runner=NAME",
                ));
            }
        };
        self.store
            .find_active_for_runner(&runner_name, id)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "runner {runner_name:?} has no active job with key {id:?}"
                ))
            })
    }

    /// `POST /api/jobs/{id}/complete`. Completing a finished job again
    /// returns it unchanged (hooks retry).
    pub async fn complete(
        &self,
        who: &Principal,
        mut job: Job,
        completion: Completion,
    ) -> ApiResult<Job> {
        for _ in 0..CAS_RETRIES {
            if job.status.is_terminal() {
                return Ok(job);
            }
            let expected = job.status;
            let conclusion = completion.effective_conclusion();
            let target = conclusion_to_status(conclusion.as_deref());
            job.transition(target, self.clock.now())
                .map_err(|e| ApiError::conflict(e.to_string()))?;
            job.exit_code = completion.exit_code.or(job.exit_code);
            job.conclusion = conclusion.or(job.conclusion);
            if self.store.update_job(&mut job, expected).await? {
                let shown = job.conclusion.clone().unwrap_or_else(|| "unknown".into());
                metrics::counter!(m::JOBS_COMPLETED, "conclusion" => shown.clone()).increment(1);
                metrics::counter!(m::JOB_TRANSITIONS, "to" => target.as_str()).increment(1);
                tracing::info!(job = %job.id, conclusion = %shown, exit_code = ?job.exit_code, "job completed");
                self.audit(
                    &who.actor(),
                    "job.completed",
                    Some(job.id),
                    serde_json::json!({"conclusion": job.conclusion, "exitCode": job.exit_code, "status": job.status}),
                )
                .await;
                return Ok(job);
            }
            // Another writer moved the job: read it again and retry.
            job = self
                .store
                .get_job(job.id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("job {} vanished", job.id)))?;
        }
        Err(ApiError::conflict(
            "the job kept changing under this completion; try again",
        ))
    }

    pub async fn get_job(&self, who: &Principal, id: &str) -> ApiResult<Job> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            ApiError::not_found(format!(
                "no job with id {:?}",
                id.chars().take(64).collect::<String>()
            ))
        })?;
        let job = self
            .store
            .get_job(uuid)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no job with id {uuid}")))?;
        match who {
            Principal::Admin => Ok(job),
            Principal::Runner { name, .. } if job.runner_name.as_deref() == Some(name.as_str()) => {
                Ok(job)
            }
            Principal::Runner { .. } => {
                Err(ApiError::forbidden("this job belongs to another runner"))
            }
        }
    }

    pub async fn list_jobs(&self, who: &Principal, filter: &JobFilter) -> ApiResult<Vec<Job>> {
        who.require_admin()?;
        Ok(self.store.list_jobs(filter).await?)
    }

    pub async fn issue_token(&self, who: &Principal, runner: &str) -> ApiResult<IssuedToken> {
        who.require_admin()?;
        let token = auth::generate_token();
        let record = TokenRecord {
            id: Uuid::now_v7(),
            runner: runner.to_string(),
            hash: auth::hash_token(&token),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.insert_token(&record).await?;
        self.audit(
            &who.actor(),
            "token.created",
            None,
            serde_json::json!({"tokenId": record.id, "runner": runner}),
        )
        .await;
        Ok(IssuedToken {
            record,
            token: SecretString::from(token),
        })
    }

    pub async fn revoke_token(&self, who: &Principal, id: &str) -> ApiResult<()> {
        who.require_admin()?;
        let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found("no such token"))?;
        if !self.store.revoke_token(uuid, self.clock.now()).await? {
            return Err(ApiError::not_found(format!(
                "no active token with id {uuid}"
            )));
        }
        self.audit(
            &who.actor(),
            "token.revoked",
            None,
            serde_json::json!({"tokenId": uuid}),
        )
        .await;
        Ok(())
    }

    /// Whether store and container engine answer.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let store = self.store.ping().await.map_err(|e| e.to_string());
        let backend = self.backend.ping().await.map_err(|e| e.to_string());
        metrics::gauge!(m::BACKEND_UP).set(if backend.is_ok() { 1.0 } else { 0.0 });
        vec![("store", store), ("backend", backend)]
    }
}
