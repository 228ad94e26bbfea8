//! `prepare_job`: the job's services and its long-lived job container, on
//! the repository's network, after the policy accepted all of them. A
//! refused or failed prepare leaves nothing behind.

use std::path::Path;

use futures::StreamExt;
use proxy_runner_domain::container_hooks::{
    ContainerContext, HookContainer, HookState, PrepareJobArgs, PrepareJobContext,
    PrepareJobResponse,
};
use proxy_runner_domain::job_containers::{
    ContainerRole, ExecSpec, JobContainerSpec, KEEP_ALIVE_ENTRYPOINT, RegistryCredentials,
    StartedJobContainer, StepOutput, proxy_labels,
};
use proxy_runner_domain::names::network_name;
use proxy_runner_domain::policy::{ContainerPlan, ProxyPolicy};
use proxy_runner_domain::ports::BackendError;
use proxy_runner_domain::runner_plan::network_spec;
use proxy_runner_domain::{Job, JobContainerRecord, ServiceRecord};
use uuid::Uuid;

use super::{HookRequest, ProxyError, ProxyJobs};
use crate::auth::Principal;

/// What `prepare` answers: the response file's content and notices for the
/// job log.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub job_id: Uuid,
    pub response: PrepareJobResponse,
    pub notices: Vec<String>,
}

/// A container to create, planned and accepted.
pub(super) struct Planned {
    /// contextName for services.
    name: Option<String>,
    pub(super) plan: ContainerPlan,
    pub(super) credentials: Option<RegistryCredentials>,
}

fn resolve(path: &Path) -> Result<std::path::PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| e.to_string())
}

impl ProxyJobs {
    /// `prepare_job` for the caller's delegated job.
    pub async fn prepare(
        &self,
        who: &Principal,
        request: HookRequest,
    ) -> Result<Prepared, ProxyError> {
        let job = self.find_job(who, &request).await?;
        let args = PrepareJobArgs::from_value(&request.args)?;
        let policy = self.policy_for(&job);
        // Everything is planned (and refused) before anything is created.
        let container = args
            .container
            .as_ref()
            .map(|c| plan(&policy, c, None))
            .transpose()?;
        let services = args
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = s
                    .context_name
                    .clone()
                    .unwrap_or_else(|| format!("service-{i}"));
                plan(&policy, s, Some(name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A retried prepare starts over: what an earlier attempt made goes.
        if job.has_live_job_containers() {
            self.containers
                .remove_job(&self.config.instance, job.id)
                .await?;
        }
        for p in container.iter().chain(&services) {
            self.ensure_image(&p.plan.image, p.credentials.as_ref())
                .await?;
        }
        let network = network_name(&self.config.network_prefix, &job.repository);
        self.networks
            .ensure_network(&network_spec(
                network.clone(),
                &job.repository,
                &self.config.instance,
            ))
            .await?;
        match self.create(&job, &network, container, services).await {
            Ok(prepared) => Ok(prepared),
            Err(e) => {
                // Nothing of a failed prepare stays.
                let _ = self
                    .containers
                    .remove_job(&self.config.instance, job.id)
                    .await;
                let _ = self.networks.remove_network_if_unused(&network).await;
                Err(e)
            }
        }
    }

    /// Present on the engine, or pulled when the operator allows pulls.
    pub(super) async fn ensure_image(
        &self,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), ProxyError> {
        if self.containers.image_present(image).await? {
            return Ok(());
        }
        if !self.config.section.pull {
            return Err(BackendError::ImageMissing {
                image: image.to_string(),
            }
            .into());
        }
        self.containers.pull_image(image, credentials).await?;
        Ok(())
    }

    async fn create(
        &self,
        job: &Job,
        network: &str,
        container: Option<Planned>,
        services: Vec<Planned>,
    ) -> Result<Prepared, ProxyError> {
        let mut notices = Vec::new();
        let mut state = HookState {
            job_id: job.id,
            container: None,
            network: network.to_string(),
            services: Default::default(),
        };
        let (service_records, service_contexts) = self
            .start_services(job, network, services, &mut state, &mut notices)
            .await?;
        let mut job_context = None;
        let mut record = JobContainerRecord {
            id: None,
            image: None,
            network: network.to_string(),
            services: service_records,
            steps_run: 0,
            last_step_exit_code: None,
            removed_at: None,
        };
        let mut is_alpine = false;
        if let Some(planned) = container {
            notices.extend(planned.plan.notices.iter().cloned());
            record.image = Some(planned.plan.image.clone());
            let mut plan = planned.plan;
            // Upstream's Docker hook keeps the job container alive this way;
            // every step is an exec in it.
            plan.entrypoint = Some(
                KEEP_ALIVE_ENTRYPOINT
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
            plan.command = None;
            let mut spec = self.spec(job, network, ContainerRole::Job, "job", plan);
            spec.init = true;
            let started = self.containers.create_job_container(&spec).await?;
            is_alpine = self.is_alpine(&started.id).await;
            record.id = Some(started.id.clone());
            state.container = Some(started.id.clone());
            job_context = Some(context(&started, network));
        }
        notices.dedup();
        let now = self.sources.clock.now();
        let stored = record.clone();
        let runner = format!("runner:{}", job.runner_name.as_deref().unwrap_or_default());
        let prepared = self.audit.event(
            &runner,
            "proxy.prepared",
            Some(job.id),
            serde_json::json!({
                "container": record.id, "image": record.image, "network": network,
                "services": record.services.iter().map(|s| serde_json::json!({"name": s.name, "id": s.id, "image": s.image})).collect::<Vec<_>>(),
            }),
        );
        self.update(job.id, move |j| {
            j.containers_prepared(stored.clone(), now);
            vec![prepared.clone()]
        })
        .await?;
        tracing::info!(job = %job.id, container = ?record.id, services = record.services.len(), "job containers prepared");
        Ok(Prepared {
            job_id: job.id,
            response: PrepareJobResponse {
                state: serde_json::to_value(&state).unwrap_or_default(),
                context: PrepareJobContext {
                    container: job_context,
                    services: service_contexts,
                },
                is_alpine,
            },
            notices,
        })
    }

    /// Starts the job's services, each reachable by its name.
    async fn start_services(
        &self,
        job: &Job,
        network: &str,
        services: Vec<Planned>,
        state: &mut HookState,
        notices: &mut Vec<String>,
    ) -> Result<(Vec<ServiceRecord>, Vec<ContainerContext>), ProxyError> {
        let mut records = Vec::new();
        let mut contexts = Vec::new();
        for planned in services {
            let name = planned.name.clone().unwrap_or_default();
            let image = planned.plan.image.clone();
            notices.extend(planned.plan.notices.iter().cloned());
            let spec = self.spec(job, network, ContainerRole::Service, &name, planned.plan);
            let started = self.containers.start_service(&spec).await?;
            state.services.insert(name.clone(), started.id.clone());
            contexts.push(context(&started, network));
            records.push(ServiceRecord {
                name,
                id: started.id,
                image,
            });
        }
        Ok((records, contexts))
    }

    /// The engine's spec of one of the job's containers. Names are
    /// deterministic, so a restarted orchestrator finds them again.
    pub(super) fn spec(
        &self,
        job: &Job,
        network: &str,
        role: ContainerRole,
        name: &str,
        plan: ContainerPlan,
    ) -> JobContainerSpec {
        let aliases = if role == ContainerRole::Service {
            vec![name.to_string()]
        } else {
            Vec::new()
        };
        plan.into_spec(
            format!("job-{}-{name}", job.id),
            proxy_labels(
                &self.config.instance,
                &job.repository.to_ascii_lowercase(),
                job.id,
                role,
            ),
            network.to_string(),
            aliases,
        )
    }

    /// Whether the job container runs Alpine (the runner then uses its musl
    /// node for JavaScript actions).
    async fn is_alpine(&self, container_id: &str) -> bool {
        let probe = ExecSpec {
            container_id: container_id.to_string(),
            command: vec!["test".into(), "-e".into(), "/etc/alpine-release".into()],
            env: Vec::new(),
            prepend_path: Vec::new(),
            working_dir: None,
            user: None,
        };
        let Ok(mut stream) = self.containers.exec(&probe).await else {
            return false;
        };
        while let Some(item) = stream.next().await {
            if let Ok(StepOutput::Exit(code)) = item {
                return code == 0;
            }
        }
        false
    }
}

/// A container step: the same policy as the job's containers.
pub(super) fn plan_step(
    policy: &ProxyPolicy,
    container: &HookContainer,
) -> Result<Planned, ProxyError> {
    plan(policy, container, None)
}

fn plan(
    policy: &ProxyPolicy,
    container: &HookContainer,
    name: Option<String>,
) -> Result<Planned, ProxyError> {
    let plan = policy.plan_container(container, &resolve)?;
    let credentials = container.registry.as_ref().and_then(|r| {
        Some(RegistryCredentials {
            username: r.username.clone()?,
            password: r.password.clone()?,
            server: r.server_url.clone(),
        })
    });
    Ok(Planned {
        name,
        plan,
        credentials,
    })
}

fn context(started: &StartedJobContainer, network: &str) -> ContainerContext {
    ContainerContext {
        id: started.id.clone(),
        network: network.to_string(),
        ports: started.ports.clone(),
    }
}
