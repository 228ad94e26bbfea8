//! Provisioning one job: a runner credential from GitHub, the repository's
//! network, the runner container; and what a failed attempt leaves behind.

use std::time::Duration;

use proxy_runner_domain::failure::Failure;
use proxy_runner_domain::names::network_name;
use proxy_runner_domain::ports::{
    BackendError, ContainerSpec, GitHubError, JitRequest, Scope, StartedContainer, StdinSecret,
};
use proxy_runner_domain::runner_plan::{
    self, EphemeralRunner, JITCONFIG_ENV, Placement, REGISTRATION_TOKEN_ENV,
};
use proxy_runner_domain::{Job, JobSource, JobStatus};

use super::Autoscaler;
use crate::config::Registration;
use crate::metrics as m;

impl Autoscaler {
    /// Mints credentials, ensures the network, starts the container.
    /// Returns whether a container was started.
    pub(super) async fn provision(&self, mut job: Job) -> bool {
        let started = self.now();
        let suffix = runner_plan::needs_fresh_names(&job)
            .then(|| self.sources.ids.new_id().simple().to_string()[24..].to_string());
        let runner = EphemeralRunner::for_job(&job, suffix.as_deref());
        match self.try_provision(&mut job, &runner).await {
            Ok(container_id) => {
                let now = self.now();
                let seconds = |d: chrono::TimeDelta| d.num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!(m::PROVISION_DURATION).record(seconds(now - started));
                metrics::histogram!(m::QUEUE_TO_START).record(seconds(now - job.created_at));
                tracing::info!(job = %job.id, container = %container_id, attempt = job.attempts, "runner container started");
                true
            }
            Err(failure) => {
                // A runner minted for this attempt must not outlive it.
                self.deregister(&job).await;
                self.provisioning_failed(job, failure).await;
                false
            }
        }
    }

    async fn try_provision(
        &self,
        job: &mut Job,
        runner: &EphemeralRunner,
    ) -> Result<String, Failure> {
        let scope = self.scope_for(&job.repository).ok_or_else(|| {
            Failure::Fatal(format!("repository {:?} is not owner/name", job.repository))
        })?;
        let credential = self.mint_credential(job, runner, &scope).await?;
        let network = network_name(&self.config.network_prefix, &job.repository);
        self.ensure_network(&network, &job.repository)
            .await
            .map_err(|e| Failure::from_backend(&e))?;
        let pool = self.pool_for(&job.labels).flatten().cloned();
        let (image, hardening) = match pool {
            Some(p) => (p.image, p.hardening),
            None => (None, None),
        };
        let spec = runner_plan::runner_container(
            job,
            runner,
            Placement {
                image: image.unwrap_or_else(|| self.config.image.clone()),
                hardening: hardening.unwrap_or_else(|| self.config.hardening.clone()),
                network,
                instance: self.config.instance.clone(),
                runner_url: scope.runner_url(&self.config.web_url),
            },
            credential,
        );
        let started = self
            .start_container(&spec)
            .await
            .map_err(|e| Failure::from_backend(&e))?;
        self.record_started(job, runner, &started).await;
        Ok(started.id)
    }

    /// A JIT config (default) or a registration token for the runner.
    async fn mint_credential(
        &self,
        job: &mut Job,
        runner: &EphemeralRunner,
        scope: &Scope,
    ) -> Result<StdinSecret, Failure> {
        match self.config.registration {
            Registration::Jit => {
                let request = JitRequest {
                    name: runner.runner_name.clone(),
                    labels: runner.labels.as_slice().to_vec(),
                    runner_group_id: self.config.runner_group_id,
                    work_folder: "_work".into(),
                };
                let jit = match self.registry.generate_jit_config(scope, &request).await {
                    Err(GitHubError::Conflict(_)) => {
                        // A runner of an earlier attempt still holds the name.
                        self.delete_runner_named(scope, &runner.runner_name).await;
                        self.registry.generate_jit_config(scope, &request).await
                    }
                    other => other,
                }
                .map_err(|e| Failure::from_github(&e))?;
                job.runner_registered(jit.runner_id);
                Ok(StdinSecret::new(JITCONFIG_ENV, jit.encoded_jit_config))
            }
            Registration::RegistrationToken => {
                let token = self
                    .registry
                    .create_registration_token(scope)
                    .await
                    .map_err(|e| Failure::from_github(&e))?;
                Ok(StdinSecret::new(REGISTRATION_TOKEN_ENV, token.token))
            }
        }
    }

    /// Creates and starts the container. A container of an earlier attempt
    /// may still hold the name: the engine removes exited auto-remove
    /// containers shortly after their exit event, so stop it (by name) and
    /// wait for the name to come free.
    async fn start_container(
        &self,
        spec: &ContainerSpec,
    ) -> Result<StartedContainer, BackendError> {
        let mut started = self.backend.start(spec).await;
        for _ in 0..20 {
            if !matches!(started, Err(BackendError::NameConflict(_))) {
                break;
            }
            let _ = self.backend.stop(&spec.name, Duration::from_secs(2)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            started = self.backend.start(spec).await;
        }
        started
    }

    async fn record_started(
        &self,
        job: &mut Job,
        runner: &EphemeralRunner,
        started: &StartedContainer,
    ) {
        job.container_started(started.id.clone(), runner.runner_name.clone(), self.now());
        // The start and its record commit together.
        let event = self.audit.event(
            "orchestrator",
            "container.started",
            Some(job.id),
            serde_json::json!({
                "container": runner.container_name, "containerId": started.id,
                "runnerName": runner.runner_name, "attempt": job.attempts,
            }),
        );
        match self
            .save(job, JobStatus::Provisioning, std::slice::from_ref(&event))
            .await
        {
            Ok(true) => {}
            // GitHub settled the job meanwhile (e.g. cancelled): keep the
            // container record on the job so the exit event cleans up.
            Ok(false) => {
                if let Ok(Some(mut current)) = self.store.get_job(job.id).await {
                    let expected = current.status;
                    current.adopt_container(
                        started.id.clone(),
                        job.provisioned_runner_id,
                        self.now(),
                    );
                    let _ = self.save(&mut current, expected, &[event]).await;
                    if current.status.is_terminal() {
                        let _ = self.backend.stop(&started.id, Duration::from_secs(5)).await;
                    }
                }
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record started container"),
        }
    }

    pub(super) async fn delete_runner_named(&self, scope: &Scope, name: &str) {
        if let Ok(runners) = self.registry.list_runners(scope).await {
            for r in runners.into_iter().filter(|r| r.name == name) {
                let _ = self.registry.delete_runner(scope, r.id).await;
            }
        }
    }

    /// Deletes the runner registered for the job's own container, if GitHub
    /// still has it (an ephemeral runner that ran its job is already gone).
    pub(super) async fn deregister(&self, job: &Job) {
        let Some(scope) = self.scope_for(&job.repository) else {
            return;
        };
        let Some(runner_id) = job.provisioned_runner_id else {
            // Registration-token runners register themselves: we know only
            // the name we gave them.
            if self.config.registration == Registration::RegistrationToken
                && job.source != JobSource::Hook
            {
                let name = EphemeralRunner::for_job(job, None).runner_name;
                self.delete_runner_named(&scope, &name).await;
            }
            return;
        };
        match self.registry.delete_runner(&scope, runner_id).await {
            Ok(()) => tracing::info!(job = %job.id, runner_id, "runner deregistered"),
            Err(GitHubError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(job = %job.id, runner_id, error = %e, "cannot deregister runner")
            }
        }
    }

    /// Records a failed or handed-over start; true when this writer's
    /// requeue (or failure) was the one stored.
    pub(super) async fn provisioning_failed(&self, mut job: Job, failure: Failure) -> bool {
        let policy = self.config.retry_policy();
        let jitter = self.sources.jitter.sample();
        let Ok(target) = job.provisioning_failed(&failure, &policy, self.now(), jitter) else {
            return false;
        };
        let gave_up = target == JobStatus::Failed;
        tracing::warn!(job = %job.id, attempt = job.attempts, error = %failure.message(), gave_up, "provisioning failed");
        let action = if gave_up {
            "job.failed"
        } else {
            "job.requeued"
        };
        let event = self.audit.event(
            "orchestrator",
            action,
            Some(job.id),
            serde_json::json!({"error": failure.message(), "attempt": job.attempts}),
        );
        match self.save(&mut job, JobStatus::Provisioning, &[event]).await {
            // GitHub settled the job meanwhile (finished, cancelled): nothing to retry.
            Ok(false) => false,
            Ok(true) => {
                metrics::counter!(m::JOB_TRANSITIONS, "to" => target.as_str()).increment(1);
                true
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot record provisioning failure");
                false
            }
        }
    }
}
