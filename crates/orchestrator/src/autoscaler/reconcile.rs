//! What no event told us: containers that vanished unseen, provisioning cut
//! off by a restart, runners idle past the timeout, and running jobs whose
//! end GitHub reported to nobody. When GitHub cannot be asked, nothing is
//! retried or stopped on a guess.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::failure::Failure;
use proxy_runner_domain::ports::{ContainerInfo, JobFilter, Scope, labels as label_keys};
use proxy_runner_domain::runner_plan::{runner_of_container, runner_owner};
use proxy_runner_domain::sync::lock;
use proxy_runner_domain::{Job, JobStatus};
use uuid::Uuid;

use super::Autoscaler;
use super::ingest::GitHubSays;
use super::schedule::{PAGE, is_proxy_path};

impl Autoscaler {
    /// One reconciliation pass.
    pub async fn reconcile(&self) {
        let Ok(provisioning) = self
            .store
            .list_jobs(&JobFilter {
                status: Some(JobStatus::Provisioning),
                limit: PAGE,
                ..Default::default()
            })
            .await
        else {
            return;
        };
        // Taken after the listing: a job `tick` moves to provisioning is in
        // `in_flight` before its status is written.
        let in_flight: HashSet<Uuid> = lock(&self.in_flight).keys().copied().collect();
        let warm_known = self.warm_recorded();
        // Listed last: every container whose id a job above records was
        // started before that record was written, so it shows here.
        let Ok(live) = self.backend.list(&self.config.instance).await else {
            return;
        };
        self.settle_provisioning(provisioning, &in_flight, &live)
            .await;
        self.sync_warm(&live, &warm_known).await;
        self.stop_idle_runners(&live, &in_flight).await;
        self.remove_unstarted_containers(&live).await;
        self.remove_empty_networks(&live).await;
        self.ask_about_quiet_jobs().await;
        self.delete_runners_of_ended_jobs(&live).await;
    }

    /// Deletes idle runners named for jobs of ours that have ended, in the
    /// repositories where jobs ended lately (and, at the first pass after a
    /// start, those of every job written in the last `RECENT` hours: the
    /// previous process may have been killed before it looked). A runner
    /// whose container exists, or whose job is being provisioned, is left
    /// alone; so are runners of jobs this store does not know (another
    /// instance's).
    async fn delete_runners_of_ended_jobs(&self, live: &[ContainerInfo]) {
        const RECENT: i64 = 6;
        if !self.sweeps_seeded.load(std::sync::atomic::Ordering::SeqCst) {
            let since = self.now() - chrono::Duration::hours(RECENT);
            let Ok(repositories) = self.store.repositories_updated_since(since).await else {
                return;
            };
            for r in &repositories {
                self.sweep_runners_of(r);
            }
            self.sweeps_seeded
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let due: Vec<String> = {
            let mut sweeps = lock(&self.runner_sweeps);
            let due = sweeps.keys().cloned().collect();
            sweeps.retain(|_, left| {
                *left -= 1;
                *left > 0
            });
            due
        };
        let with_container: HashSet<String> = live
            .iter()
            .filter_map(|c| runner_of_container(&c.name))
            .collect();
        // Repositories of one organisation share its scope: one look each.
        let mut scopes: Vec<(Scope, Vec<String>)> = Vec::new();
        for repository in due {
            let Some(scope) = self.scope_for(&repository) else {
                continue;
            };
            match scopes.iter_mut().find(|(s, _)| *s == scope) {
                Some((_, repos)) => repos.push(repository),
                None => scopes.push((scope, vec![repository])),
            }
        }
        for (scope, repositories) in scopes {
            if !self
                .delete_runners_of_ended_jobs_in(&scope, &with_container)
                .await
            {
                // GitHub or the store could not be asked: look again next time.
                let mut sweeps = lock(&self.runner_sweeps);
                for r in repositories {
                    sweeps.entry(r).or_insert(1);
                }
            }
        }
    }

    /// One repository's part of `delete_runners_of_ended_jobs`; false when
    /// it could not look.
    async fn delete_runners_of_ended_jobs_in(
        &self,
        scope: &Scope,
        with_container: &HashSet<String>,
    ) -> bool {
        let Ok(runners) = self.registry.list_runners(scope).await else {
            return false;
        };
        for r in runners {
            let Some(owner) = runner_owner(&r.name) else {
                continue;
            };
            if r.busy || with_container.contains(&r.name) || self.is_in_flight(owner) {
                continue;
            }
            match self.store.get_job(owner).await {
                Ok(Some(job)) if job.status.is_terminal() => {}
                Ok(_) => continue,
                Err(_) => return false,
            }
            match self.registry.delete_runner(scope, r.id).await {
                Ok(()) => {
                    tracing::info!(job = %owner, runner = %r.name, "runner of an ended job deleted")
                }
                Err(e) => {
                    tracing::warn!(job = %owner, runner = %r.name, error = %e, "cannot delete runner")
                }
            }
        }
        true
    }

    /// Removes networks of ours that no container used in this pass nor in
    /// the one before (a network is created a moment before its first
    /// container: one empty sighting is not enough). Catches networks whose
    /// removal gave up at a container's exit, or that a crash left behind.
    async fn remove_empty_networks(&self, live: &[ContainerInfo]) {
        let Ok(networks) = self.backend.list_networks(&self.config.instance).await else {
            return;
        };
        let used: HashSet<String> = live
            .iter()
            .filter_map(|c| c.labels.get(label_keys::REPOSITORY))
            .map(|r| r.to_ascii_lowercase())
            .collect();
        let starting: HashSet<String> = lock(&self.in_flight).values().cloned().collect();
        let empty: HashSet<String> = networks
            .into_iter()
            .filter(|n| {
                let repo = n
                    .labels
                    .get(label_keys::REPOSITORY)
                    .map(|r| r.to_ascii_lowercase())
                    .unwrap_or_default();
                !used.contains(&repo) && !starting.contains(&repo)
            })
            .map(|n| n.name)
            .collect();
        let seen_before = std::mem::replace(&mut *lock(&self.empty_networks), empty.clone());
        for name in empty.intersection(&seen_before) {
            let _guard = self.network_lock.lock().await;
            match self.backend.remove_network_if_unused(name).await {
                Ok(true) => {
                    tracing::info!(network = %name, "empty network removed by the reconciler")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(network = %name, error = %e, "network kept"),
            }
        }
    }

    /// Removes runner containers that are not running and that no job
    /// records: a restart cut their provisioning off between create and
    /// start, so auto-remove never fires for them. Only those seen in this
    /// pass and the one before whose job is not in flight now: a container
    /// being started at this moment is never touched. A recorded one's exit
    /// is settled by the exit handling first.
    async fn remove_unstarted_containers(&self, live: &[ContainerInfo]) {
        let stopped: HashSet<String> = live
            .iter()
            .filter(|c| !c.running && !is_proxy_path(c))
            .map(|c| c.id.clone())
            .collect();
        let seen_before = std::mem::replace(&mut *lock(&self.stopped_containers), stopped.clone());
        for c in live
            .iter()
            .filter(|c| seen_before.contains(&c.id) && stopped.contains(&c.id))
        {
            let owner = c
                .labels
                .get(label_keys::JOB_ID)
                .and_then(|s| Uuid::parse_str(s).ok());
            if owner.is_some_and(|id| self.is_in_flight(id)) {
                continue;
            }
            let recorded = match owner {
                Some(id) => match self.store.get_job(id).await {
                    Ok(job) => job.is_some_and(|j| {
                        !j.status.is_terminal() && j.container_id.as_deref() == Some(c.id.as_str())
                    }),
                    Err(_) => continue,
                },
                None => false,
            };
            let served = match self.store.find_job_ran_in_container(&c.id).await {
                Ok(job) => job.is_some_and(|j| !j.status.is_terminal()),
                Err(_) => continue,
            };
            if recorded || served {
                continue;
            }
            match self.backend.remove(&c.id).await {
                Ok(()) => {
                    tracing::info!(container = %c.id, name = %c.name, "container that never ran removed");
                    // Its runner stays registered until a sweep deletes it.
                    if let Some(repository) = c.labels.get(label_keys::REPOSITORY) {
                        self.sweep_runners_of(repository);
                    }
                }
                Err(e) => tracing::warn!(container = %c.id, error = %e, "cannot remove container"),
            }
        }
    }

    /// Provisioning jobs without a provisioner: interrupted by a restart, or
    /// their container vanished without an event.
    async fn settle_provisioning(
        &self,
        provisioning: Vec<Job>,
        in_flight: &HashSet<Uuid>,
        live: &[ContainerInfo],
    ) {
        let running: HashMap<&str, bool> =
            live.iter().map(|c| (c.id.as_str(), c.running)).collect();
        for job in provisioning {
            if in_flight.contains(&job.id) {
                continue;
            }
            match job.container_id.clone() {
                None => {
                    if let Some(c) = self.unrecorded_container_of(&job, live).await {
                        self.adopt_unrecorded(job, c).await;
                        continue;
                    }
                    self.delete_runners_without_container(&job).await;
                    let failure = Failure::Wait("provisioning was interrupted".into());
                    self.provisioning_failed(job, failure).await;
                }
                Some(c) if !running.get(c.as_str()).copied().unwrap_or(false) => {
                    self.on_container_exit(&c, Some(job.id), None).await
                }
                Some(_) => {}
            }
        }
    }

    /// A running runner container of `job` that no job records: a restart
    /// cut its provisioning off after the engine created it and before it
    /// was recorded. (A container of the job whose runner took another job
    /// is recorded by that job.)
    async fn unrecorded_container_of<'a>(
        &self,
        job: &Job,
        live: &'a [ContainerInfo],
    ) -> Option<&'a ContainerInfo> {
        let id = job.id.to_string();
        for c in live.iter().filter(|c| {
            c.running
                && !is_proxy_path(c)
                && c.labels.get(label_keys::JOB_ID) == Some(&id)
                && runner_of_container(&c.name).is_some()
        }) {
            if let Ok(None) = self.store.find_job_ran_in_container(&c.id).await {
                return Some(c);
            }
        }
        None
    }

    /// Runners registered for `job` by provisioning a restart cut off before
    /// their container was created: no container will ever run them. Busy
    /// runners are running some job in a container and are left alone.
    async fn delete_runners_without_container(&self, job: &Job) {
        let Some(scope) = self.scope_for(&job.repository) else {
            return;
        };
        let Ok(runners) = self.registry.list_runners(&scope).await else {
            return;
        };
        for r in runners
            .into_iter()
            .filter(|r| !r.busy && runner_owner(&r.name) == Some(job.id))
        {
            match self.registry.delete_runner(&scope, r.id).await {
                Ok(()) => {
                    tracing::info!(job = %job.id, runner = %r.name, "runner of interrupted provisioning deleted")
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, runner = %r.name, error = %e, "cannot delete runner")
                }
            }
        }
    }

    /// Records the container as the job's runner instead of starting
    /// another: two runners for one job would both take jobs.
    async fn adopt_unrecorded(&self, mut job: Job, c: &ContainerInfo) {
        let Some(runner) = runner_of_container(&c.name) else {
            return;
        };
        job.container_started(c.id.clone(), runner, self.now());
        match self.save(&mut job, JobStatus::Provisioning, &[]).await {
            Ok(true) => {
                tracing::info!(job = %job.id, container = %c.id, "unrecorded runner container adopted after a restart")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record adopted container"),
        }
    }

    /// Stops live runner containers whose runner runs no job and has been
    /// idle past the timeout.
    async fn stop_idle_runners(&self, live: &[ContainerInfo], in_flight: &HashSet<Uuid>) {
        let now = self.now();
        for c in live.iter().filter(|c| c.running && !is_proxy_path(c)) {
            let Some(owner_id) = c
                .labels
                .get(label_keys::JOB_ID)
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue;
            };
            if in_flight.contains(&owner_id) {
                continue;
            }
            let Ok(Some(owner)) = self.store.get_job(owner_id).await else {
                continue;
            };
            if !self.runner_is_idle(c, &owner, now).await {
                continue;
            }
            // No event said the runner took its job, but events can be lost
            // (and polling only sees queued jobs): GitHub decides.
            if owner.status == JobStatus::Provisioning
                && owner.container_id.as_deref() == Some(c.id.as_str())
                && self.settle_from_github(&owner).await != GitHubSays::NotStarted
            {
                continue;
            }
            tracing::warn!(job = %owner.id, container = %c.id, "runner idle past the timeout; stopping it");
            let _ = self.backend.stop(&c.id, Duration::from_secs(10)).await;
        }
    }

    /// Whether the runner in `c`, started for `owner`, runs no job and has
    /// been idle past the timeout.
    async fn runner_is_idle(&self, c: &ContainerInfo, owner: &Job, now: DateTime<Utc>) -> bool {
        let serving_other = matches!(
            self.store.find_job_ran_in_container(&c.id).await,
            Ok(Some(other)) if !other.status.is_terminal()
        );
        let serving_own = owner.container_id.as_deref() == Some(c.id.as_str())
            && owner.status == JobStatus::Running
            && owner.ran_in_container_id.is_none();
        let idle_for = (now - owner.updated_at).to_std().unwrap_or_default();
        !(serving_other || serving_own || idle_for <= self.config.idle_timeout)
    }

    /// Running jobs GitHub may have finished without a webhook reaching us;
    /// each is asked at most once per `settle_after`.
    async fn ask_about_quiet_jobs(&self) {
        let now = self.now();
        let settle_after = chrono::Duration::from_std(self.config.settle_after).unwrap_or_default();
        let mut after = None;
        loop {
            let Ok(page) = self
                .store
                .list_jobs(&JobFilter {
                    status: Some(JobStatus::Running),
                    after,
                    limit: PAGE,
                    ..Default::default()
                })
                .await
            else {
                return;
            };
            after = page.last().map(|j| j.id);
            let last_page = page.len() < PAGE;
            for job in page {
                let quiet = now - job.updated_at > settle_after;
                let asked_lately = lock(&self.last_asked)
                    .get(&job.id)
                    .is_some_and(|t| now - *t < settle_after);
                if job.github_job_id.is_some() && quiet && !asked_lately {
                    lock(&self.last_asked).insert(job.id, now);
                    self.settle_from_github(&job).await;
                }
            }
            if last_page {
                break;
            }
        }
        // Forget jobs that are no longer running.
        lock(&self.last_asked).retain(|_, t| now - *t < settle_after * 2);
    }
}
