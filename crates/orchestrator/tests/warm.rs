//! Warm runners in-process: registered and started before their job, taken
//! by a queued job without a cold start, replaced, recycled, within the
//! caps, and found again after a restart; the dry-run engine records what a
//! real one would be asked to do, and time is moved by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::ports::{
    AuditEvent, Clock, ContainerBackend, ContainerInfo, Inserted, JobFilter, JobStore, RunnerInfo,
    RunnerRegistry, Scope, StoreError, TokenFilter, TokenRecord, WorkflowJobInfo,
};
use proxy_runner_domain::schedule::Caps;
use proxy_runner_domain::warm::warm_id;
use proxy_runner_domain::{Job, JobSource, JobStatus};
use proxy_runner_orchestrator::autoscaler::{
    AutoscaleConfig, Autoscaler, Ingested, JobAction, Pool,
};
use proxy_runner_orchestrator::config::JobPath;
use proxy_runner_orchestrator::dry_run::{DryRunBackend, DryRunCall};
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_store::SqliteStore;
use proxy_runner_test_support::registry::{FakeRegistry, JIT_SECRET_PREFIX, RegistryCall};
use proxy_runner_test_support::rig::{Rig as Served, RigOptions};
use proxy_runner_test_support::{FixedJitter, ManualClock};
use tokio::sync::oneshot;

const LINUX: [&str; 2] = ["self-hosted", "linux"];
const GPU: [&str; 2] = ["self-hosted", "gpu"];

struct Rig {
    store: Arc<SqliteStore>,
    backend: Arc<DryRunBackend>,
    registry: Arc<FakeRegistry>,
    clock: Arc<ManualClock>,
    scaler: Arc<Autoscaler>,
}

fn pool(labels: &[&str], warm: usize, repositories: &[&str]) -> Pool {
    Pool {
        warm,
        warm_repositories: repositories.iter().map(|r| r.to_string()).collect(),
        ..Pool::new(
            LabelSet::parse_list(labels.iter().copied()).unwrap(),
            JobPath::Autoscale,
        )
    }
}

/// One warm `self-hosted,linux` runner for Octo/Repo, and a set without.
fn config(warm: usize) -> AutoscaleConfig {
    AutoscaleConfig {
        pools: vec![pool(&LINUX, warm, &["Octo/Repo"]), pool(&GPU, 0, &[])],
        ..AutoscaleConfig::default()
    }
}

async fn rig(config: AutoscaleConfig) -> Rig {
    let served = Served::build(RigOptions {
        github: true,
        autoscale: Some(config),
        ..Default::default()
    })
    .await;
    Rig {
        scaler: served.scaler().clone(),
        store: served.store,
        backend: served.backend,
        registry: served.registry,
        clock: served.clock,
    }
}

/// A second orchestrator over the same store, engine and GitHub: a restart.
fn restarted(r: &Rig, config: AutoscaleConfig) -> Arc<Autoscaler> {
    Arc::new(Autoscaler::new(
        r.store.clone() as Arc<dyn JobStore>,
        r.backend.clone() as Arc<dyn ContainerBackend>,
        r.registry.clone() as Arc<dyn RunnerRegistry>,
        Sources {
            clock: r.clock.clone(),
            jitter: Arc::new(FixedJitter(0.5)),
            ..Sources::system()
        },
        config,
    ))
}

fn info(id: u64, repo: &str, labels: &[&str]) -> WorkflowJobInfo {
    WorkflowJobInfo {
        id,
        run_id: 1000 + id,
        run_attempt: 1,
        repository: repo.into(),
        name: format!("job-{id}"),
        workflow_name: "CI".into(),
        status: "queued".into(),
        conclusion: None,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        runner_id: None,
        runner_name: None,
    }
}

async fn queue(scaler: &Autoscaler, ev: &WorkflowJobInfo) -> uuid::Uuid {
    match scaler
        .ingest(JobAction::Queued, ev, JobSource::Webhook)
        .await
        .unwrap()
    {
        Ingested::Created(id) => id,
        other => panic!("job not created: {other:?}"),
    }
}

/// Half a second of scheduling in 10 ms steps (graces of seconds do not
/// run out).
async fn settle_with(scaler: &Arc<Autoscaler>, clock: &ManualClock) {
    for _ in 0..50 {
        scaler.run_until_quiet().await.unwrap();
        clock.advance(Duration::from_millis(10));
    }
}

async fn settle(r: &Rig) {
    settle_with(&r.scaler, &r.clock).await;
}

async fn job(r: &Rig, id: uuid::Uuid) -> Job {
    r.store.get_job(id).await.unwrap().unwrap()
}

fn warm_containers(r: &Rig) -> Vec<ContainerInfo> {
    r.backend
        .live()
        .into_iter()
        .filter(|c| warm_id(&c.name).is_some())
        .collect()
}

/// Containers started for a job (cold starts), by name.
fn cold_starts(r: &Rig) -> Vec<String> {
    r.backend
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            DryRunCall::Start { name, .. } if name.starts_with("runner-") => Some(name),
            _ => None,
        })
        .collect()
}

fn stops(r: &Rig) -> Vec<String> {
    r.backend
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            DryRunCall::Stop(id) => Some(id),
            _ => None,
        })
        .collect()
}

/// GitHub: `runner` took the job (and the webhook says so).
async fn taken_by(scaler: &Autoscaler, ev: &WorkflowJobInfo, runner: &str) {
    let mut running = ev.clone();
    running.status = "in_progress".into();
    running.runner_name = Some(runner.to_string());
    running.runner_id = Some(99);
    scaler
        .ingest(JobAction::InProgress, &running, JobSource::Webhook)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_warm_runner_takes_a_queued_job_without_a_cold_start_and_is_replaced() {
    let r = rig(config(1)).await;
    settle(&r).await;

    // One warm runner waits: registered at the repository with the set's
    // labels, its container started with no job and no secret in its labels.
    let warm = warm_containers(&r);
    assert_eq!(warm.len(), 1, "{:?}", r.backend.calls());
    let w = &warm[0];
    assert_eq!(w.labels["proxy-runner.warm"], "self-hosted,linux");
    assert_eq!(w.labels["proxy-runner.repository"], "octo/repo");
    assert!(!w.labels.contains_key("proxy-runner.job-id"));
    assert!(!format!("{:?}", w.labels).contains(JIT_SECRET_PREFIX));
    let first_jit = r
        .registry
        .calls()
        .into_iter()
        .find(|c| matches!(c, RegistryCall::Jit { .. }))
        .unwrap();
    assert!(matches!(
        &first_jit,
        RegistryCall::Jit { name, labels, scope }
            if *name == w.name
                && labels == &["ephemeral", "container", "self-hosted", "linux"]
                && scope.api_path() == "repos/Octo/Repo"
    ));
    let Some(DryRunCall::Start { env, stdin, .. }) = r
        .backend
        .calls()
        .into_iter()
        .find(|c| matches!(c, DryRunCall::Start { .. }))
    else {
        panic!("no start")
    };
    let env: BTreeMap<_, _> = env.into_iter().collect();
    assert_eq!(env["RUNNER_NAME"], w.name);
    assert_eq!(env["GITHUB_URL"], "https://github.com/Octo/Repo");
    assert_eq!(stdin, ["ACTIONS_RUNNER_INPUT_JITCONFIG"]);
    assert_eq!(r.scaler.warm_idle(&LINUX, "octo/repo"), 1);

    // A job of the set and repository is queued: no cold start while the
    // warm runner can take it.
    let ev = info(1, "octo/repo", &["self-hosted", "linux"]);
    let id = queue(&r.scaler, &ev).await;
    settle(&r).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);
    assert!(cold_starts(&r).is_empty(), "{:?}", cold_starts(&r));

    // The warm runner takes it: the job runs in the warm container, and a
    // new warm runner takes its place.
    taken_by(&r.scaler, &ev, &w.name).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.ran_in_container_id.as_deref(), Some(w.id.as_str()));
    assert_eq!(j.runner_name.as_deref(), Some(w.name.as_str()));
    assert_eq!(j.attempts, 0, "no provisioning for it");
    settle(&r).await;
    let now_warm = warm_containers(&r);
    assert_eq!(now_warm.len(), 2, "the taken one and its replacement");
    assert_eq!(r.scaler.warm_idle(&LINUX, "octo/repo"), 1);
    assert!(cold_starts(&r).is_empty());

    // The job ends; its exit code is the warm container's.
    let mut done = ev.clone();
    done.runner_name = Some(w.name.clone());
    done.conclusion = Some("success".into());
    r.scaler
        .ingest(JobAction::Completed, &done, JobSource::Webhook)
        .await
        .unwrap();
    r.backend.exit(&w.id, 0);
    r.scaler.on_container_exit(&w.id, None, Some(0)).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.exit_code, Some(0));
    settle(&r).await;
    assert_eq!(warm_containers(&r).len(), 1, "one waits, nothing more");
    assert!(stops(&r).is_empty(), "nothing was stopped");

    let audit: Vec<String> = r
        .store
        .list_audit(100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in ["warm.started", "warm.taken", "job.running", "job.completed"] {
        assert!(audit.contains(&a.to_string()), "{a} missing from {audit:?}");
    }
    // No JIT config in any record.
    let everything = format!(
        "{:?}{:?}",
        r.store
            .list_jobs(&JobFilter {
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap(),
        r.store.list_audit(100).await.unwrap()
    );
    assert!(!everything.contains(JIT_SECRET_PREFIX));
}

#[tokio::test]
async fn jobs_of_other_sets_or_repositories_and_a_second_job_get_cold_starts_at_once() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let other_set = queue(&r.scaler, &info(1, "octo/repo", &GPU)).await;
    let other_repo = queue(&r.scaler, &info(2, "octo/other", &LINUX)).await;
    let first = queue(&r.scaler, &info(3, "octo/repo", &LINUX)).await;
    let second = queue(&r.scaler, &info(4, "octo/repo", &LINUX)).await;
    settle(&r).await;
    let provisioning = |j: &Job| j.status == JobStatus::Provisioning;
    assert!(provisioning(&job(&r, other_set).await));
    assert!(provisioning(&job(&r, other_repo).await));
    assert_eq!(
        job(&r, first).await.status,
        JobStatus::Queued,
        "the oldest waits for the one warm runner"
    );
    assert!(
        provisioning(&job(&r, second).await),
        "one warm runner, one job held"
    );
}

#[tokio::test]
async fn a_job_no_warm_runner_takes_falls_back_to_a_cold_start_after_the_wait() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let ev = info(1, "octo/repo", &LINUX);
    let id = queue(&r.scaler, &ev).await;
    settle(&r).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);

    // GitHub did not give it to the warm runner within the wait.
    r.clock.advance(Duration::from_secs(10));
    settle(&r).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Provisioning);
    assert_eq!(cold_starts(&r), [format!("runner-{id}")]);
    // The warm runner still waits for the next job.
    assert_eq!(r.scaler.warm_idle(&LINUX, "octo/repo"), 1);

    // Should the warm runner take it after all, the job runs there and its
    // own runner is free for another job, as after any hand-off.
    let w = warm_containers(&r).remove(0);
    taken_by(&r.scaler, &ev, &w.name).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.ran_in_container_id.as_deref(), Some(w.id.as_str()));
    assert!(j.container_id.is_some());
}

#[tokio::test]
async fn an_idle_warm_runner_is_recycled_after_its_max_age_and_replaced() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let old = warm_containers(&r).remove(0);
    let minted = r.registry.calls().len();

    r.clock.advance(Duration::from_secs(3599));
    settle(&r).await;
    assert!(stops(&r).is_empty(), "younger than the max age");

    r.clock.advance(Duration::from_secs(1));
    settle(&r).await;
    assert_eq!(
        stops(&r),
        std::slice::from_ref(&old.id),
        "the old container is stopped"
    );
    assert_eq!(r.registry.deleted(), [1], "and its runner deleted first");
    assert!(
        !r.registry
            .runners
            .lock()
            .unwrap()
            .iter()
            .any(|(_, x)| x.name == old.name),
        "deleted where it was registered"
    );
    let delete_at = r
        .registry
        .calls()
        .iter()
        .position(|c| matches!(c, RegistryCall::Delete { .. }))
        .unwrap();
    assert!(delete_at >= minted);
    let now_warm = warm_containers(&r);
    assert_eq!(now_warm.len(), 1);
    assert_ne!(now_warm[0].id, old.id, "a fresh warm runner took its place");
    let recycled = r.store.list_audit(100).await.unwrap();
    assert!(
        recycled
            .iter()
            .any(|a| a.action == "warm.recycled" && a.detail["reason"] == "max_age"),
        "{recycled:?}"
    );
    assert_eq!(r.scaler.warm_idle(&LINUX, "octo/repo"), 1);
}

#[tokio::test]
async fn caps_hold_with_warm_runners_and_queued_jobs_come_first() {
    let config = AutoscaleConfig {
        caps: Caps {
            global: 3,
            per_repository: 2,
        },
        pools: vec![pool(&LINUX, 2, &["a/a"]), pool(&GPU, 0, &[])],
        ..AutoscaleConfig::default()
    };
    let r = rig(config).await;
    let check_caps = |r: &Rig| {
        let live = r.backend.live();
        assert!(live.len() <= 3, "global cap broken: {live:?}");
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for c in &live {
            *per.entry(c.labels["proxy-runner.repository"].clone())
                .or_default() += 1;
        }
        assert!(
            per.values().all(|n| *n <= 2),
            "repository cap broken: {per:?}"
        );
    };
    settle(&r).await;
    check_caps(&r);
    assert_eq!(warm_containers(&r).len(), 2);

    // Three jobs of another set and repository: one fits; the idle warm
    // runners make room for the others instead of holding the caps.
    let ids: Vec<_> = [
        queue(&r.scaler, &info(1, "b/b", &GPU)).await,
        queue(&r.scaler, &info(2, "b/b", &GPU)).await,
        queue(&r.scaler, &info(3, "b/b", &GPU)).await,
    ]
    .to_vec();
    for _ in 0..5 {
        settle(&r).await;
        check_caps(&r);
    }
    let mut provisioning = 0;
    for id in &ids {
        if job(&r, *id).await.status == JobStatus::Provisioning {
            provisioning += 1;
        }
    }
    assert_eq!(provisioning, 2, "the repository cap is 2");
    assert_eq!(
        warm_containers(&r).len(),
        1,
        "one warm runner stepped aside for the second job and none came back"
    );

    // The first two jobs end: the third starts, and the warm runners are
    // topped up again within the caps.
    for id in &ids[..2] {
        let c = job(&r, *id).await.container_id.expect("started");
        r.backend.exit(&c, 0);
        r.scaler.on_container_exit(&c, Some(*id), Some(0)).await;
        settle(&r).await;
        check_caps(&r);
    }
    assert_eq!(job(&r, ids[2]).await.status, JobStatus::Provisioning);
    assert_eq!(warm_containers(&r).len(), 2);
    assert_eq!(r.backend.live().len(), 3);
}

#[tokio::test]
async fn a_restart_finds_the_warm_runners_on_the_engine_and_neither_kills_nor_adopts_them() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    let starts_before = r.backend.calls().len();

    // A new orchestrator over the same store and engine.
    let scaler = restarted(&r, config(1));
    settle_with(&scaler, &r.clock).await;
    scaler.reconcile().await;
    assert_eq!(
        scaler.warm_idle(&LINUX, "octo/repo"),
        1,
        "found, not restarted"
    );
    assert_eq!(
        r.backend.calls().len(),
        starts_before,
        "nothing started or stopped"
    );

    // Idle past the idle timeout of job runners: still not reaped.
    r.clock.advance(Duration::from_secs(601));
    scaler.reconcile().await;
    settle_with(&scaler, &r.clock).await;
    assert!(stops(&r).is_empty());

    // A queued job waits for it and runs in it.
    let ev = info(1, "octo/repo", &LINUX);
    let id = queue(&scaler, &ev).await;
    settle_with(&scaler, &r.clock).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);
    assert!(cold_starts(&r).is_empty());
    taken_by(&scaler, &ev, &w.name).await;
    assert_eq!(
        job(&r, id).await.ran_in_container_id.as_deref(),
        Some(w.id.as_str())
    );
    settle_with(&scaler, &r.clock).await;
    assert_eq!(scaler.warm_idle(&LINUX, "octo/repo"), 1, "replaced");

    // Another restart: the taken one is not warm; the replacement is, and
    // its age came along in its label.
    let replacement = warm_containers(&r)
        .into_iter()
        .find(|c| c.id != w.id)
        .unwrap();
    let again = restarted(&r, config(1));
    settle_with(&again, &r.clock).await;
    again.reconcile().await;
    assert_eq!(again.warm_idle(&LINUX, "octo/repo"), 1);
    assert_eq!(warm_containers(&r).len(), 2);
    r.clock.advance(Duration::from_secs(3600));
    settle_with(&again, &r.clock).await;
    assert_eq!(stops(&r), [replacement.id], "recycled at its age");
    assert_eq!(again.warm_idle(&LINUX, "octo/repo"), 1);
}

#[tokio::test]
async fn a_warm_runner_that_dies_idle_is_deregistered_and_replaced() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    r.backend.exit(&w.id, 1);
    r.scaler.on_container_exit(&w.id, None, Some(1)).await;
    assert_eq!(r.registry.deleted(), [1]);
    settle(&r).await;
    let now_warm = warm_containers(&r);
    assert_eq!(now_warm.len(), 1);
    assert_ne!(now_warm[0].id, w.id);
}

/// GitHub: the warm runner `runner` ran the job and finished it; no
/// webhook has said so yet.
fn github_ran(r: &Rig, ev: &WorkflowJobInfo, runner: &str) -> WorkflowJobInfo {
    let mut done = ev.clone();
    done.status = "completed".into();
    done.conclusion = Some("success".into());
    done.runner_name = Some(runner.to_string());
    done.runner_id = Some(99);
    r.registry
        .github_jobs
        .lock()
        .unwrap()
        .insert(ev.id, done.clone());
    done
}

#[tokio::test]
async fn a_warm_runner_that_exits_after_a_job_before_the_webhook_says_it_took_it_causes_no_cold_start()
 {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    let ev = info(1, "octo/repo", &LINUX);
    let id = queue(&r.scaler, &ev).await;
    settle(&r).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);

    // A short job: the warm runner took it, ran it and left before GitHub's
    // in_progress webhook reached us. Its exit is no idle runner dying.
    let done = github_ran(&r, &ev, &w.name);
    r.backend.exit(&w.id, 0);
    r.scaler.on_container_exit(&w.id, None, Some(0)).await;
    settle(&r).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.attempts, 0, "no provisioning for it: {j:?}");
    assert_eq!(j.ran_in_container_id.as_deref(), Some(w.id.as_str()));
    assert_eq!(j.exit_code, Some(0));
    assert!(cold_starts(&r).is_empty(), "{:?}", cold_starts(&r));
    assert!(r.registry.deleted().is_empty(), "GitHub removes it itself");

    // The webhooks arrive late: nothing changes.
    taken_by(&r.scaler, &ev, &w.name).await;
    r.scaler
        .ingest(JobAction::Completed, &done, JobSource::Webhook)
        .await
        .unwrap();
    settle(&r).await;
    let j = job(&r, id).await;
    assert_eq!((j.status, j.attempts), (JobStatus::Completed, 0));
    assert!(cold_starts(&r).is_empty());
    assert_eq!(r.scaler.warm_idle(&LINUX, "octo/repo"), 1, "replaced");
}

#[tokio::test]
async fn a_warm_container_gone_unseen_after_a_job_before_the_webhook_causes_no_cold_start() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    let ev = info(1, "octo/repo", &LINUX);
    let id = queue(&r.scaler, &ev).await;
    settle(&r).await;

    // Its exit event was missed: the reconciler finds the container gone.
    github_ran(&r, &ev, &w.name);
    r.backend.exit(&w.id, 0);
    r.scaler.reconcile().await;
    settle(&r).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.attempts, 0, "no provisioning for it: {j:?}");
    assert_eq!(j.ran_in_container_id.as_deref(), Some(w.id.as_str()));
    assert!(cold_starts(&r).is_empty(), "{:?}", cold_starts(&r));
}

/// The store, with the next write of a running job held until the test
/// lets it through: an event caught between its steps.
struct GatedStore {
    inner: Arc<SqliteStore>,
    gate: tokio::sync::Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl GatedStore {
    /// Arms the gate: the first receiver fires when a write is held, the
    /// sender lets it through.
    async fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.gate.lock().await = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }
}

#[async_trait::async_trait]
impl JobStore for GatedStore {
    async fn insert_job(&self, job: &Job, audit: &[AuditEvent]) -> Result<Inserted, StoreError> {
        self.inner.insert_job(job, audit).await
    }
    async fn get_job(&self, id: uuid::Uuid) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn find_by_github_job_id(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.inner.find_by_github_job_id(id).await
    }
    async fn find_active_for_runner(
        &self,
        runner_name: &str,
        job_key: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.inner
            .find_active_for_runner(runner_name, job_key)
            .await
    }
    async fn find_active_hook_job(&self, runner_name: &str) -> Result<Option<Job>, StoreError> {
        self.inner.find_active_hook_job(runner_name).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        self.inner.list_jobs(filter).await
    }
    async fn update_job(
        &self,
        job: &mut Job,
        expected: JobStatus,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        if job.status == JobStatus::Running {
            let gate = self.gate.lock().await.take();
            if let Some((reached, release)) = gate {
                let _ = reached.send(());
                let _ = release.await;
            }
        }
        self.inner.update_job(job, expected, audit).await
    }
    async fn delete_job(
        &self,
        id: uuid::Uuid,
        revision: u64,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        self.inner.delete_job(id, revision, audit).await
    }
    async fn insert_token(
        &self,
        token: &TokenRecord,
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        self.inner.insert_token(token, audit).await
    }
    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.find_token_by_hash(hash).await
    }
    async fn revoke_token(
        &self,
        id: uuid::Uuid,
        at: DateTime<Utc>,
        audit: &[AuditEvent],
    ) -> Result<bool, StoreError> {
        self.inner.revoke_token(id, at, audit).await
    }
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.list_tokens(filter).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.list_audit(limit).await
    }
    async fn record_delivery(
        &self,
        delivery_id: &str,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.record_delivery(delivery_id, event, at).await
    }
    async fn forget_delivery(&self, delivery_id: &str) -> Result<(), StoreError> {
        self.inner.forget_delivery(delivery_id).await
    }
    async fn find_unlinked_hook_job(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Option<Job>, StoreError> {
        self.inner
            .find_unlinked_hook_job(runner_name, repository, run_id, run_attempt)
            .await
    }
    async fn find_tracking_records(
        &self,
        runner_name: &str,
        repository: &str,
        run_id: u64,
        run_attempt: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner
            .find_tracking_records(runner_name, repository, run_id, run_attempt)
            .await
    }
    async fn repositories_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.repositories_updated_since(since).await
    }
    async fn find_job_ran_in_container(
        &self,
        container_id: &str,
    ) -> Result<Option<Job>, StoreError> {
        self.inner.find_job_ran_in_container(container_id).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_round_between_a_warm_runner_taking_a_job_and_its_record_saying_so_starts_no_runner() {
    let r = rig(config(1)).await;
    let store = Arc::new(GatedStore {
        inner: r.store.clone(),
        gate: tokio::sync::Mutex::new(None),
    });
    let scaler = Arc::new(Autoscaler::new(
        store.clone() as Arc<dyn JobStore>,
        r.backend.clone() as Arc<dyn ContainerBackend>,
        r.registry.clone() as Arc<dyn RunnerRegistry>,
        Sources {
            clock: r.clock.clone(),
            jitter: Arc::new(FixedJitter(0.5)),
            ..Sources::system()
        },
        config(1),
    ));
    settle_with(&scaler, &r.clock).await;
    let w = warm_containers(&r).remove(0);
    let ev = info(1, "octo/repo", &LINUX);
    let id = queue(&scaler, &ev).await;
    settle_with(&scaler, &r.clock).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);

    // The in_progress event is held after the runner is marked taken and
    // before the job's record says so; a round runs in between.
    let (reached, release) = store.arm().await;
    let taking = tokio::spawn({
        let (scaler, ev, name) = (scaler.clone(), ev.clone(), w.name.clone());
        async move { taken_by(&scaler, &ev, &name).await }
    });
    reached.await.unwrap();
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);
    let started = scaler.tick().await.unwrap();
    assert!(started.is_empty(), "a runner started for {started:?}");
    release.send(()).unwrap();
    taking.await.unwrap();

    settle_with(&scaler, &r.clock).await;
    let j = job(&r, id).await;
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.attempts, 0, "no provisioning for it: {j:?}");
    assert_eq!(j.ran_in_container_id.as_deref(), Some(w.id.as_str()));
    assert!(cold_starts(&r).is_empty(), "{:?}", cold_starts(&r));
}

#[tokio::test]
async fn retiring_warm_runners_deregisters_and_stops_them_all() {
    let r = rig(AutoscaleConfig {
        pools: vec![pool(&LINUX, 2, &["octo/repo", "octo/other"])],
        ..AutoscaleConfig::default()
    })
    .await;
    settle(&r).await;
    assert_eq!(warm_containers(&r).len(), 4);
    r.scaler.retire_warm_runners().await;
    assert!(r.backend.live().is_empty());
    assert_eq!(r.registry.deleted().len(), 4);
    assert!(
        r.registry.runners.lock().unwrap().is_empty(),
        "none left registered"
    );
    settle(&r).await;
    assert!(r.backend.live().is_empty(), "none started again");
}

#[tokio::test]
async fn after_a_restart_warm_runners_registered_without_a_container_are_deleted() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    let runner = |id: u64, name: &str, status: &str, busy: bool| RunnerInfo {
        id,
        name: name.into(),
        os: "linux".into(),
        status: status.into(),
        busy,
        labels: vec![],
        ephemeral: true,
    };
    let orphan = format!("warm-{}", uuid::Uuid::from_u128(1));
    let polling = format!("warm-{}", uuid::Uuid::from_u128(2));
    let working = format!("warm-{}", uuid::Uuid::from_u128(3));
    // The warm runner registered before (listed by GitHub too), and others.
    let scope = Scope::repository("Octo/Repo").unwrap();
    r.registry.runners.lock().unwrap().extend(
        [
            runner(50, &orphan, "offline", false),
            runner(51, &polling, "online", false),
            runner(52, &working, "offline", true),
            runner(
                53,
                &format!("ephemeral-{}", uuid::Uuid::from_u128(4)),
                "offline",
                false,
            ),
        ]
        .map(|x| (scope.clone(), x)),
    );
    assert!(
        r.registry
            .runners
            .lock()
            .unwrap()
            .iter()
            .any(|(_, x)| x.name == w.name)
    );
    let before = r.registry.deleted();
    let scaler = restarted(&r, config(1));
    settle_with(&scaler, &r.clock).await;
    scaler.reconcile().await;
    let deleted: Vec<u64> = r.registry.deleted()[before.len()..].to_vec();
    assert_eq!(
        deleted,
        [50],
        "only the offline warm runner no container runs, once"
    );
    assert_eq!(scaler.warm_idle(&LINUX, "octo/repo"), 1);
}

#[tokio::test]
async fn a_job_queued_before_the_first_round_after_a_restart_waits_for_the_warm_runner_found() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let scaler = restarted(&r, config(1));
    let id = queue(&scaler, &info(1, "octo/repo", &LINUX)).await;
    settle_with(&scaler, &r.clock).await;
    assert_eq!(job(&r, id).await.status, JobStatus::Queued);
    assert!(cold_starts(&r).is_empty(), "{:?}", cold_starts(&r));
    assert_eq!(warm_containers(&r).len(), 1, "none started twice");
}

#[tokio::test]
async fn provisioning_cut_off_by_a_restart_never_adopts_a_warm_container() {
    let r = rig(config(1)).await;
    settle(&r).await;
    let w = warm_containers(&r).remove(0);
    // A job of the warm set and repository whose provisioning a kill cut
    // off before its container was created.
    let mut cut = proxy_runner_domain::NewJob {
        job_key: "build".into(),
        run_id: 7,
        run_attempt: 1,
        repository: "octo/repo".into(),
        workflow: "CI".into(),
        runner_name: None,
        labels: LINUX.iter().map(|s| s.to_string()).collect(),
        environment: BTreeMap::new(),
        matrix: None,
        needs: vec![],
        github_job_id: Some(77),
        source: JobSource::Webhook,
        dropped_secrets: 0,
    }
    .into_job(uuid::Uuid::now_v7(), r.clock.now());
    cut.start_provisioning(r.clock.now()).unwrap();
    r.store.insert_job(&cut, &[]).await.unwrap();

    let scaler = restarted(&r, config(1));
    scaler.reconcile().await;
    settle_with(&scaler, &r.clock).await;
    let j = job(&r, cut.id).await;
    assert_eq!(j.status, JobStatus::Queued, "retried, not adopted");
    assert_eq!(j.container_id, None);
    assert!(stops(&r).is_empty(), "the warm runner is left alone");
    assert_eq!(scaler.warm_idle(&LINUX, "octo/repo"), 1);
    // It waits for the warm runner like any queued job.
    assert!(cold_starts(&r).is_empty());
    taken_by(&scaler, &info(77, "octo/repo", &LINUX), &w.name).await;
    assert_eq!(
        job(&r, cut.id).await.ran_in_container_id.as_deref(),
        Some(w.id.as_str())
    );
}
