//! Warm runners: runners registered and waiting in started containers per
//! label set and repository (`warm = N`), so that a queued job is picked up
//! without a cold start. The decisions are `domain::warm`'s; here is the IO:
//! the inventory (in memory, rebuilt from the engine's containers after a
//! restart), starting and recycling warm runners, a job taken by one, and a
//! warm container's exit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::failure::Failure;
use proxy_runner_domain::names::network_name;
use proxy_runner_domain::ports::{
    BackendError, ContainerInfo, GitHubError, JitRequest, Scope, StdinSecret, labels as label_keys,
};
use proxy_runner_domain::runner_plan::{JITCONFIG_ENV, Placement};
use proxy_runner_domain::schedule::retry_delay;
use proxy_runner_domain::sync::lock;
use proxy_runner_domain::warm::{
    self, Recycle, WarmDemand, WarmRound, WarmRunner, WarmRunnerSpec, WarmState, WarmTarget,
    pool_key, warm_id,
};
use proxy_runner_domain::{Job, JobStatus};
use uuid::Uuid;

use super::schedule::is_proxy_path;
use super::{Autoscaler, Pool};
use crate::config::JobPath;
use crate::metrics as m;

/// One warm runner the orchestrator knows of.
#[derive(Debug, Clone)]
pub(super) struct WarmEntry {
    pool: String,
    /// Lower-case `owner/name`.
    repository: String,
    since: DateTime<Utc>,
    state: WarmState,
    container: Option<String>,
    /// GitHub's id; unknown for one adopted after a restart (found by name).
    registered_id: Option<u64>,
    /// The job GitHub gave it (once taken), known before that job's record
    /// says so: the record is written after the inventory is.
    job: Option<Uuid>,
}

/// The warm runners and the queued jobs waiting for one.
#[derive(Debug, Default)]
pub(super) struct WarmInventory {
    runners: HashMap<Uuid, WarmEntry>,
    /// When each queued job was first seen waiting for a warm runner.
    waiting_since: HashMap<Uuid, DateTime<Utc>>,
    /// Failed starts in a row per (label set, repository), and the time
    /// before which no other is tried.
    backoff: HashMap<(String, String), (u32, DateTime<Utc>)>,
}

/// The jobs of one round that get no cold start: a warm runner took them,
/// or they wait for one.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub jobs: HashSet<Uuid>,
    /// (label set, repository) of each job waiting for a warm runner.
    pub keys: Vec<(String, String)>,
}

impl Autoscaler {
    /// Whether the inventory holds any warm runner.
    pub(super) fn has_warm_runners(&self) -> bool {
        !lock(&self.warm).runners.is_empty()
    }

    /// Whether any label set keeps warm runners.
    pub(super) fn warm_configured(&self) -> bool {
        !self.warm_targets().is_empty()
    }

    fn warm_targets(&self) -> Vec<WarmTarget> {
        if self.warm_retired.load(Ordering::SeqCst) {
            return Vec::new();
        }
        self.config
            .pools
            .iter()
            .filter(|p| p.path == JobPath::Autoscale && p.warm > 0)
            .flat_map(|p| {
                let pool = pool_key(&p.labels);
                p.warm_repositories.iter().map(move |repo| WarmTarget {
                    pool: pool.clone(),
                    repository: repo.to_ascii_lowercase(),
                    count: p.warm,
                })
            })
            .collect()
    }

    /// Where warm runners of `repository` (lower-case) are registered, with
    /// the repository spelled as configured, as they were registered.
    fn warm_scope(&self, repository: &str) -> Option<Scope> {
        let spelled = self
            .config
            .pools
            .iter()
            .flat_map(|p| p.warm_repositories.iter())
            .find(|r| r.eq_ignore_ascii_case(repository))
            .map_or(repository, String::as_str);
        self.scope_for(spelled)
    }

    fn warm_pool(&self, key: &str) -> Option<&Pool> {
        self.config
            .pools
            .iter()
            .find(|p| p.path == JobPath::Autoscale && pool_key(&p.labels) == key)
    }

    /// The label set key of a job whose label set keeps warm runners.
    fn warm_pool_of(&self, job: &Job) -> Option<String> {
        match self.pool_for(&job.labels) {
            Some(Some(p)) if p.path == JobPath::Autoscale && p.warm > 0 => {
                Some(pool_key(&p.labels))
            }
            _ => None,
        }
    }

    fn warm_runners(&self) -> Vec<WarmRunner> {
        snapshot(&lock(&self.warm))
    }

    /// Which of the queued jobs (`due` to start, or not yet) get no cold
    /// start this round: those GitHub gave to a warm runner already, and
    /// the due ones that wait for one. The inventory is read once, so that
    /// a runner taking a job meanwhile is seen either as available or as
    /// having taken it.
    pub(super) fn hold_for_warm(&self, queued: &[&Job], now: DateTime<Utc>) -> Held {
        let (demand, runners, mut jobs) = {
            let mut inv = lock(&self.warm);
            // A job's record reads queued until the event that a warm
            // runner took it is written, after the runner is marked taken.
            let taken: HashSet<Uuid> = inv.runners.values().filter_map(|e| e.job).collect();
            let due: Vec<&Job> = queued
                .iter()
                .copied()
                .filter(|j| is_due(j, now) && !taken.contains(&j.id))
                .collect();
            let ids: HashSet<Uuid> = due.iter().map(|j| j.id).collect();
            inv.waiting_since.retain(|id, _| ids.contains(id));
            let demand: Vec<WarmDemand> = due
                .iter()
                .filter_map(|j| {
                    let pool = self.warm_pool_of(j)?;
                    let since = *inv.waiting_since.entry(j.id).or_insert(now);
                    Some(WarmDemand {
                        job: j.id,
                        pool,
                        repository: j.repository.clone(),
                        since,
                    })
                })
                .collect();
            let mine: HashSet<Uuid> = queued
                .iter()
                .map(|j| j.id)
                .filter(|id| taken.contains(id))
                .collect();
            (demand, snapshot(&inv), mine)
        };
        if demand.is_empty() {
            return Held {
                jobs,
                keys: Vec::new(),
            };
        }
        let waiting = warm::hold_for_warm(&demand, &runners, now, self.config.warm_wait);
        let keys = demand
            .iter()
            .filter(|d| waiting.contains(&d.job))
            .map(|d| (d.pool.clone(), d.repository.to_ascii_lowercase()))
            .collect();
        jobs.extend(waiting);
        Held { jobs, keys }
    }

    /// Starts and recycles warm runners as `domain::warm::plan` says.
    /// `live` counts this round's cold starts; `starved` has a repository per
    /// due job that got no start. Returns how many warm runners it started.
    pub(super) async fn warm_round(
        self: &Arc<Self>,
        live: &BTreeMap<String, usize>,
        starved: &[String],
        held: &Held,
        now: DateTime<Utc>,
    ) -> usize {
        let targets = self.warm_targets();
        if targets.is_empty() && lock(&self.warm).runners.is_empty() {
            return 0;
        }
        let runners = self.warm_runners();
        self.warm_gauges(&runners);
        let plan = warm::plan(&WarmRound {
            targets: &targets,
            runners: &runners,
            held: &held.keys,
            live,
            caps: self.config.caps,
            starved,
            now,
            max_age: self.config.warm_max_age,
        });
        for (id, why) in plan.recycle {
            self.recycle_warm(id, why);
        }
        let mut started = 0;
        for (pool, repository) in plan.start {
            let backing_off = lock(&self.warm)
                .backoff
                .get(&(pool.clone(), repository.clone()))
                .is_some_and(|(_, until)| now < *until);
            if !backing_off && self.start_warm(&pool, &repository) {
                started += 1;
            }
        }
        started
    }

    fn warm_gauges(&self, runners: &[WarmRunner]) {
        // Every configured set is shown, also at zero (retired, or none up).
        let mut idle: BTreeMap<String, usize> = self
            .config
            .pools
            .iter()
            .filter(|p| p.warm > 0)
            .map(|p| (pool_key(&p.labels), 0))
            .collect();
        for r in runners.iter().filter(|r| r.state == WarmState::Idle) {
            *idle.entry(r.pool.clone()).or_default() += 1;
        }
        for (pool, n) in idle {
            metrics::gauge!(m::WARM_IDLE, "label_set" => pool).set(n as f64);
        }
    }

    /// Registers a warm runner and starts its container, on a task; counted
    /// in flight (caps, networks) from now until its container is up.
    fn start_warm(self: &Arc<Self>, pool: &str, repository: &str) -> bool {
        let Some(p) = self.warm_pool(pool).cloned() else {
            return false;
        };
        // The configured spelling goes to GitHub; labels and caps use lower case.
        let repository = p
            .warm_repositories
            .iter()
            .find(|r| r.eq_ignore_ascii_case(repository))
            .cloned()
            .unwrap_or_else(|| repository.to_string());
        let spec = WarmRunnerSpec::new(
            self.sources.ids.new_id(),
            &p.labels,
            &repository,
            self.now(),
        );
        lock(&self.in_flight).insert(spec.id, spec.repository.clone());
        lock(&self.warm).runners.insert(
            spec.id,
            WarmEntry {
                pool: spec.pool.clone(),
                repository: spec.repository.clone(),
                since: spec.since,
                state: WarmState::Starting,
                container: None,
                registered_id: None,
                job: None,
            },
        );
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let mut runner_id = None;
            let result = this
                .try_start_warm(&spec, &p, &repository, &mut runner_id)
                .await;
            let key = (spec.pool.clone(), spec.repository.clone());
            match result {
                Ok(container_id) => {
                    {
                        let mut inv = lock(&this.warm);
                        inv.backoff.remove(&key);
                        if let Some(e) = inv.runners.get_mut(&spec.id) {
                            // An event may have said it took a job already.
                            if e.state == WarmState::Starting {
                                e.state = WarmState::Idle;
                            }
                            e.container = Some(container_id.clone());
                            e.registered_id = runner_id;
                        }
                    }
                    lock(&this.in_flight).remove(&spec.id);
                    metrics::counter!(m::WARM_STARTED, "label_set" => spec.pool.clone())
                        .increment(1);
                    tracing::info!(runner = %spec.name(), container = %container_id, label_set = %spec.pool, repository = %spec.repository, "warm runner waiting");
                    this.audit
                        .record(
                            "orchestrator",
                            "warm.started",
                            None,
                            serde_json::json!({
                                "runnerName": spec.name(), "containerId": container_id,
                                "labelSet": spec.pool, "repository": spec.repository,
                            }),
                        )
                        .await;
                }
                Err(failure) => {
                    tracing::warn!(runner = %spec.name(), label_set = %spec.pool, repository = %spec.repository, error = %failure.message(), "warm runner not started");
                    if let (Some(id), Some(scope)) = (runner_id, this.scope_for(&repository)) {
                        let _ = this.registry.delete_runner(&scope, id).await;
                    }
                    {
                        let mut inv = lock(&this.warm);
                        inv.runners.remove(&spec.id);
                        let failures = inv.backoff.get(&key).map_or(0, |(n, _)| *n) + 1;
                        let delay = retry_delay(
                            failures,
                            this.config.retry_base,
                            this.config.retry_max,
                            this.sources.jitter.sample(),
                        );
                        let until = this.now() + chrono::Duration::from_std(delay).unwrap_or_default();
                        inv.backoff.insert(key, (failures, until));
                    }
                    lock(&this.in_flight).remove(&spec.id);
                    this.remove_network_when_unused(&repository).await;
                }
            }
        });
        true
    }

    async fn try_start_warm(
        &self,
        spec: &WarmRunnerSpec,
        pool: &Pool,
        repository: &str,
        runner_id: &mut Option<u64>,
    ) -> Result<String, Failure> {
        let scope = self.scope_for(repository).ok_or_else(|| {
            Failure::Fatal(format!("repository {repository:?} is not owner/name"))
        })?;
        let request = JitRequest {
            name: spec.name(),
            labels: spec.labels.as_slice().to_vec(),
            runner_group_id: self.config.runner_group_id,
            work_folder: "_work".into(),
        };
        let jit = self
            .registry
            .generate_jit_config(&scope, &request)
            .await
            .map_err(|e| Failure::from_github(&e))?;
        *runner_id = Some(jit.runner_id);
        let network = network_name(&self.config.network_prefix, repository);
        self.ensure_network(&network, repository)
            .await
            .map_err(|e| Failure::from_backend(&e))?;
        let container = spec.container(
            Placement {
                image: pool
                    .image
                    .clone()
                    .unwrap_or_else(|| self.config.image.clone()),
                hardening: pool
                    .hardening
                    .clone()
                    .unwrap_or_else(|| self.config.hardening.clone()),
                network,
                instance: self.config.instance.clone(),
                runner_url: scope.runner_url(&self.config.web_url),
            },
            StdinSecret::new(JITCONFIG_ENV, jit.encoded_jit_config),
        );
        let started = self
            .backend
            .start(&container)
            .await
            .map_err(|e| Failure::from_backend(&e))?;
        Ok(started.id)
    }

    /// Deregisters an idle warm runner at GitHub, then stops its container,
    /// on a task. A runner GitHub will not delete (it just took a job) is
    /// left to its job.
    fn recycle_warm(self: &Arc<Self>, id: Uuid, why: Recycle) {
        let entry = {
            let mut inv = lock(&self.warm);
            match inv.runners.get_mut(&id) {
                Some(e) if e.state == WarmState::Idle => {
                    e.state = WarmState::Recycling;
                    e.clone()
                }
                _ => return,
            }
        };
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let name = warm::warm_name(id);
            if !this.deregister_warm(&name, &entry).await {
                let mut inv = lock(&this.warm);
                if let Some(e) = inv.runners.get_mut(&id)
                    && e.state == WarmState::Recycling
                {
                    e.state = WarmState::Idle;
                }
                return;
            }
            if let Some(container) = &entry.container
                && let Err(e) = this.backend.stop(container, Duration::from_secs(10)).await
                && !matches!(e, BackendError::NotFound(_))
            {
                tracing::warn!(runner = %name, error = %e, "cannot stop recycled warm runner");
            }
            lock(&this.warm).runners.remove(&id);
            metrics::counter!(m::WARM_RECYCLED, "label_set" => entry.pool.clone(), "reason" => why.as_str())
                .increment(1);
            tracing::info!(runner = %name, reason = why.as_str(), "warm runner recycled");
            this.audit
                .record(
                    "orchestrator",
                    "warm.recycled",
                    None,
                    serde_json::json!({
                        "runnerName": name, "containerId": entry.container,
                        "labelSet": entry.pool, "reason": why.as_str(),
                    }),
                )
                .await;
            this.remove_network_when_unused(&entry.repository).await;
            this.wake.notify_one();
        });
    }

    /// Deletes the warm runner at GitHub; false when it must stay (busy,
    /// or GitHub could not be asked).
    async fn deregister_warm(&self, name: &str, entry: &WarmEntry) -> bool {
        let Some(scope) = self.warm_scope(&entry.repository) else {
            return true;
        };
        let runner_id = match entry.registered_id {
            Some(id) => id,
            None => match self.registry.list_runners(&scope).await {
                Ok(runners) => match runners.into_iter().find(|r| r.name == name) {
                    Some(r) if r.busy => return false,
                    Some(r) => r.id,
                    None => return true,
                },
                Err(_) => return false,
            },
        };
        match self.registry.delete_runner(&scope, runner_id).await {
            Ok(()) | Err(GitHubError::NotFound(_)) => true,
            Err(e) => {
                tracing::info!(runner = %name, error = %e, "warm runner kept: GitHub did not delete it");
                false
            }
        }
    }

    /// GitHub gave a job to warm runner `id`: it is no longer warm (a
    /// replacement starts), and its container is where the job runs.
    pub(super) async fn warm_runner_took_a_job(&self, id: Uuid, job: Uuid) -> Option<String> {
        let (container, newly) = {
            let mut inv = lock(&self.warm);
            match inv.runners.get_mut(&id) {
                Some(e) => {
                    let newly = e.state != WarmState::Taken;
                    e.state = WarmState::Taken;
                    e.job = Some(job);
                    if newly {
                        metrics::counter!(m::WARM_TAKEN, "label_set" => e.pool.clone())
                            .increment(1);
                    }
                    (e.container.clone(), newly)
                }
                None => (None, false),
            }
        };
        if newly {
            tracing::info!(runner = %warm::warm_name(id), job = %job, "warm runner took a job");
            self.audit
                .record(
                    "github",
                    "warm.taken",
                    Some(job),
                    serde_json::json!({"runnerName": warm::warm_name(id), "containerId": container}),
                )
                .await;
            self.wake.notify_one();
        }
        if container.is_some() {
            return container;
        }
        // Not recorded yet (its start is finishing, or a restart): the
        // engine knows the container by the runner's name.
        let name = warm::warm_name(id);
        self.backend
            .list(&self.config.instance)
            .await
            .ok()?
            .into_iter()
            .find(|c| c.name.trim_start_matches('/') == name)
            .map(|c| c.id)
    }

    /// A container that names no job stopped: a warm runner's. Its exit
    /// code goes to the job that ran in it; an idle one that died is
    /// deregistered and replaced.
    pub(super) async fn warm_container_exited(&self, container_id: &str, code: Option<i32>) {
        let found = lock(&self.warm)
            .runners
            .iter()
            .find(|(_, e)| e.container.as_deref() == Some(container_id))
            .map(|(id, e)| (*id, e.clone()));
        if let Some((id, e)) = &found
            && matches!(e.state, WarmState::Idle | WarmState::Starting)
        {
            self.settle_what_it_took(*id, e).await;
        }
        let entry = found.and_then(|(id, _)| lock(&self.warm).runners.remove(&id).map(|e| (id, e)));
        let ran = self
            .store
            .find_job_ran_in_container(container_id)
            .await
            .ok()
            .flatten();
        if let (Some(mut job), Some(code)) = (ran, code)
            && job.runner_container_exited(code)
        {
            let expected = job.status;
            let _ = self.save(&mut job, expected, &[]).await;
        }
        if let Some((id, entry)) = entry {
            if matches!(entry.state, WarmState::Idle | WarmState::Starting) {
                tracing::warn!(runner = %warm::warm_name(id), exit_code = ?code, "warm runner exited without a job");
                self.deregister_warm(&warm::warm_name(id), &entry).await;
            }
            self.remove_network_when_unused(&entry.repository).await;
        }
        self.wake.notify_one();
    }

    /// Rebuilds the inventory from the engine unless that was done since
    /// the start.
    pub(super) async fn sync_warm_once(&self) -> Result<(), BackendError> {
        if !self.warm_synced.load(Ordering::SeqCst) {
            let known = self.warm_recorded();
            let containers = self.backend.list(&self.config.instance).await?;
            self.sync_warm(&containers, &known).await;
        }
        Ok(())
    }

    /// Warm runners whose container was recorded: taken before a listing
    /// of the engine, so that one started after it is not missed in it.
    pub(super) fn warm_recorded(&self) -> HashSet<Uuid> {
        lock(&self.warm)
            .runners
            .iter()
            .filter(|(_, e)| e.container.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Brings the inventory in line with the engine (`live`, listed after
    /// `known` was taken): warm containers it does not know (a restart)
    /// are adopted with the age their label gives, as taken when a job
    /// records it ran there; known ones that vanished unseen are forgotten
    /// (and deregistered when idle).
    pub(super) async fn sync_warm(&self, live: &[ContainerInfo], known: &HashSet<Uuid>) {
        let mut seen = HashSet::new();
        for c in live.iter().filter(|c| c.running && !is_proxy_path(c)) {
            let (Some(id), Some(pool), Some(repository)) = (
                warm_id(&c.name),
                c.labels.get(label_keys::WARM),
                c.labels.get(label_keys::REPOSITORY),
            ) else {
                continue;
            };
            seen.insert(id);
            if lock(&self.warm).runners.contains_key(&id) {
                continue;
            }
            let taken = match self.store.find_job_ran_in_container(&c.id).await {
                Ok(Some(j)) => Some(j.id),
                _ => None,
            };
            let since = c
                .labels
                .get(label_keys::WARM_SINCE)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map_or_else(|| self.now(), |t| t.with_timezone(&Utc));
            let state = if taken.is_some() {
                WarmState::Taken
            } else {
                WarmState::Idle
            };
            tracing::info!(runner = %warm::warm_name(id), container = %c.id, ?state, "warm runner found on the engine");
            lock(&self.warm).runners.entry(id).or_insert(WarmEntry {
                pool: pool.clone(),
                repository: repository.to_ascii_lowercase(),
                since,
                state,
                container: Some(c.id.clone()),
                registered_id: None,
                job: taken,
            });
        }
        let gone: Vec<(Uuid, WarmEntry)> = lock(&self.warm)
            .runners
            .iter()
            .filter(|(id, _)| known.contains(*id) && !seen.contains(*id))
            .filter(|(_, e)| e.state != WarmState::Recycling)
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        for (id, entry) in gone {
            if entry.state == WarmState::Idle {
                self.settle_what_it_took(id, &entry).await;
            }
            let entry = {
                let mut inv = lock(&self.warm);
                match inv.runners.get(&id) {
                    Some(e) if e.state != WarmState::Recycling => inv.runners.remove(&id),
                    _ => None,
                }
            };
            let Some(entry) = entry else { continue };
            tracing::warn!(runner = %warm::warm_name(id), "warm runner container vanished");
            if entry.state == WarmState::Idle {
                self.deregister_warm(&warm::warm_name(id), &entry).await;
            }
        }
        if !self.warm_synced.swap(true, Ordering::SeqCst) {
            self.delete_warm_runners_without_container().await;
        }
    }

    /// Warm runner `id`'s container is gone and no event said it took a job.
    /// An ephemeral runner leaves after its one job, and that event may
    /// come after the exit: GitHub is asked about the queued jobs it could
    /// have taken (oldest first) while it is still in the inventory, so
    /// that they stay held meanwhile and none gets a cold start it does not
    /// need.
    async fn settle_what_it_took(&self, id: Uuid, entry: &WarmEntry) {
        /// GitHub calls per exit, at most (one job per runner).
        const ASK: usize = 4;
        let Ok(queued) = self.queued_github_jobs().await else {
            return;
        };
        let mut theirs: Vec<&Job> = queued
            .iter()
            .filter(|j| {
                j.repository.eq_ignore_ascii_case(&entry.repository)
                    && self.warm_pool_of(j).as_deref() == Some(entry.pool.as_str())
            })
            .collect();
        theirs.sort_by_key(|j| (j.created_at, j.id));
        for job in theirs.into_iter().take(ASK) {
            self.settle_from_github(job).await;
            let took = lock(&self.warm)
                .runners
                .get(&id)
                .is_none_or(|e| e.job.is_some());
            if took {
                return;
            }
        }
    }

    /// Once after a start: warm runners registered at GitHub that no
    /// container runs (a kill between minting one and starting its
    /// container) are deleted. Only offline ones: an online runner is
    /// polling from some container (another instance's, perhaps).
    async fn delete_warm_runners_without_container(&self) {
        let mut scopes = Vec::new();
        for t in self.warm_targets() {
            if let Some(scope) = self.warm_scope(&t.repository)
                && !scopes.contains(&scope)
            {
                scopes.push(scope);
            }
        }
        for scope in scopes {
            let Ok(runners) = self.registry.list_runners(&scope).await else {
                continue;
            };
            for r in runners {
                let Some(id) = warm_id(&r.name) else { continue };
                if r.busy || r.status != "offline" || lock(&self.warm).runners.contains_key(&id) {
                    continue;
                }
                match self.registry.delete_runner(&scope, r.id).await {
                    Ok(()) => {
                        tracing::info!(runner = %r.name, "warm runner without a container deleted")
                    }
                    Err(e) => {
                        tracing::debug!(runner = %r.name, error = %e, "cannot delete warm runner")
                    }
                }
            }
        }
    }

    /// Recycles every idle warm runner now (an operator's stop, a test's or
    /// a benchmark's end) and stops replenishing: `warm` targets are
    /// ignored from here on. Waits for the recycling to finish.
    pub async fn retire_warm_runners(self: &Arc<Self>) {
        self.warm_retired.store(true, Ordering::SeqCst);
        let idle: Vec<Uuid> = lock(&self.warm)
            .runners
            .iter()
            .filter(|(_, e)| e.state == WarmState::Idle)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.recycle_warm(id, Recycle::Surplus);
        }
        self.idle().await;
    }

    /// Idle warm runners of a label set and repository (tests, benchmarks).
    pub fn warm_idle(&self, labels: &[&str], repository: &str) -> usize {
        let Ok(set) = proxy_runner_domain::LabelSet::parse_list(labels.iter().copied()) else {
            return 0;
        };
        let key = pool_key(&set);
        lock(&self.warm)
            .runners
            .values()
            .filter(|e| {
                e.state == WarmState::Idle
                    && e.pool == key
                    && e.repository.eq_ignore_ascii_case(repository)
            })
            .count()
    }
}

fn snapshot(inv: &WarmInventory) -> Vec<WarmRunner> {
    inv.runners
        .iter()
        .map(|(id, e)| WarmRunner {
            id: *id,
            pool: e.pool.clone(),
            repository: e.repository.clone(),
            since: e.since,
            state: e.state,
        })
        .collect()
}

/// Whether a job is still waiting in the queue (the hold applies to it).
pub(super) fn is_due(job: &Job, now: DateTime<Utc>) -> bool {
    job.status == JobStatus::Queued && job.not_before.is_none_or(|t| t <= now)
}
