//! `run_script_step` (an exec in the job container) and `run_container_step`
//! (a container action run to completion on the job's network). The step
//! starts when its stream is first polled, after the answer's head went out:
//! a client that lost the connection before that may retry without the step
//! having run twice.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use proxy_runner_domain::container_hooks::{HookContainer, ScriptStepArgs};
use proxy_runner_domain::job_containers::{ContainerRole, ExecSpec, StepOutput, StepStream};
use proxy_runner_domain::ports::EnvVar;
use uuid::Uuid;

use super::{HookRequest, ProxyError, ProxyJobs, hook_state, plan_step};
use crate::auth::Principal;
use crate::service::ServiceError;

/// A step ready to run: its output, then its exit code, as it comes.
pub struct StepRun {
    pub job_id: Uuid,
    pub output: BoxStream<'static, Result<StepOutput, String>>,
}

impl ProxyJobs {
    /// `run_script_step`: the step's command in the job's container.
    pub async fn run_script_step(
        self: &Arc<Self>,
        who: &Principal,
        request: HookRequest,
    ) -> Result<StepRun, ProxyError> {
        let job = self.find_job(who, &request).await?;
        let args = ScriptStepArgs::from_value(&request.args)?;
        let container = job
            .job_container
            .as_ref()
            .filter(|r| r.removed_at.is_none())
            .and_then(|r| r.id.clone())
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "job {} has no job container: prepare_job first",
                    job.id
                ))
            })?;
        if let Some(state) = hook_state(&request.state)?
            && state.container.as_deref() != Some(container.as_str())
        {
            return Err(ProxyError::State(format!(
                "state names another container than job {}'s",
                job.id
            )));
        }
        let mut command = vec![args.entry_point.clone()];
        command.extend(args.entry_point_args.iter().cloned());
        let spec = ExecSpec {
            container_id: container,
            command,
            env: args
                .environment_variables
                .iter()
                .map(|(k, v)| EnvVar::plain(k, v))
                .collect(),
            prepend_path: args.prepend_path.clone(),
            working_dir: args.working_directory.clone(),
            user: None,
        };
        let this = Arc::clone(self);
        Ok(self.step_run(job.id, async move { this.containers.exec(&spec).await }))
    }

    /// `run_container_step`: a container action on the job's network.
    pub async fn run_container_step(
        self: &Arc<Self>,
        who: &Principal,
        request: HookRequest,
    ) -> Result<StepRun, ProxyError> {
        let job = self.find_job(who, &request).await?;
        let container = HookContainer::from_value(&request.args)?;
        let network = job
            .job_container
            .as_ref()
            .filter(|r| r.removed_at.is_none())
            .map(|r| r.network.clone())
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "job {} has no containers: prepare_job first",
                    job.id
                ))
            })?;
        let planned = plan_step(&self.policy_for(&job), &container)?;
        self.ensure_image(&planned.plan.image, planned.credentials.as_ref())
            .await?;
        let steps = job.job_container.as_ref().map_or(0, |r| r.steps_run);
        let name = format!("step-{}", steps + 1);
        let spec = self.spec(&job, &network, ContainerRole::Step, &name, planned.plan);
        let this = Arc::clone(self);
        Ok(self.step_run(job.id, async move {
            this.containers.run_to_completion(&spec).await
        }))
    }

    /// The lazily started step, its exit code recorded on the job.
    fn step_run(
        self: &Arc<Self>,
        job_id: Uuid,
        start: impl Future<Output = Result<StepStream, proxy_runner_domain::ports::BackendError>>
        + Send
        + 'static,
    ) -> StepRun {
        let this = Arc::clone(self);
        let output = stream::once(start)
            .map_err(|e| e.to_string())
            .and_then(|s| async move { Ok(s.map_err(|e| e.to_string())) })
            .try_flatten()
            .then(move |item| {
                let this = Arc::clone(&this);
                async move {
                    if let Ok(StepOutput::Exit(code)) = &item {
                        this.step_finished(job_id, *code).await;
                    }
                    item
                }
            })
            .boxed();
        StepRun { job_id, output }
    }

    async fn step_finished(&self, job_id: Uuid, code: i64) {
        let code = i32::try_from(code).ok();
        let now = self.sources.clock.now();
        let step = move |j: &mut proxy_runner_domain::Job| {
            j.step_ran(code, now);
            vec![self.audit.event(
                &format!("runner:{}", j.runner_name.as_deref().unwrap_or_default()),
                "proxy.step",
                Some(job_id),
                serde_json::json!({
                    "step": j.job_container.as_ref().map(|r| r.steps_run),
                    "exitCode": code,
                }),
            )]
        };
        match self.update(job_id, step).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "cannot record the step's exit code")
            }
        }
    }
}
