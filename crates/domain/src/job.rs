//! Job records, their states and the one transition table.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::failure::{self, Failure, Requeue, RetryPolicy};

/// Where the orchestrator first learned of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobSource {
    /// A proxy runner's job-started hook called `POST /api/jobs/delegate`.
    Hook,
    /// A `workflow_job` webhook from GitHub.
    Webhook,
    /// The poller found the job queued through the REST API.
    Poll,
}

impl JobSource {
    pub const ALL: [JobSource; 3] = [JobSource::Hook, JobSource::Webhook, JobSource::Poll];

    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Hook => "hook",
            JobSource::Webhook => "webhook",
            JobSource::Poll => "poll",
        }
    }
}

impl FromStr for JobSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobSource::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown job source {s:?}"))
    }
}

/// The life of a job as the orchestrator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Known, waiting for capacity (or for a retry after a failed start).
    Queued,
    /// Runner credentials minted, container being created or started.
    Provisioning,
    /// A runner (ephemeral or proxy) is executing the job.
    Running,
    /// Finished; the job's own result is in `conclusion` / `exit_code`.
    Completed,
    /// proxy-runner could not run the job (gave up provisioning, container died).
    Failed,
    /// Cancelled on GitHub or by an operator.
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Provisioning,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Provisioning => "provisioning",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The transition table. Every legal move is listed here and nowhere else.
    ///
    /// - `queued → running|completed|cancelled` without provisioning: GitHub may
    ///   hand the job to a runner we started for another job with the same labels
    ///   (see `in_progress`), or finish/cancel it before we got to it.
    /// - `provisioning → queued`: a failed start is retried after a backoff.
    /// - terminal states have no way out: a re-run is a new attempt, a new job.
    pub fn can_transition_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (
                Queued,
                Provisioning | Running | Completed | Failed | Cancelled
            ) | (
                Provisioning,
                Queued | Running | Completed | Failed | Cancelled
            ) | (Running, Completed | Failed | Cancelled)
        )
    }

    pub fn transition(self, to: JobStatus) -> Result<JobStatus, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; expected one of queued, provisioning, running, completed, failed, cancelled"
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal job transition from {from} to {to}")]
pub struct TransitionError {
    pub from: JobStatus,
    pub to: JobStatus,
}

/// Maps a GitHub/hook conclusion to the final job status.
///
/// GitHub adds conclusions over time; anything unknown that is not clearly a
/// success still ends the job as `completed` (the job ran; its result is kept
/// verbatim in `conclusion`).
pub fn conclusion_to_status(conclusion: Option<&str>) -> JobStatus {
    match conclusion {
        Some("cancelled") => JobStatus::Cancelled,
        _ => JobStatus::Completed,
    }
}

/// What makes two delegations "the same": a re-sent hook call must not create
/// a second job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DelegationKey {
    pub repository: String,
    pub run_id: u64,
    pub run_attempt: u32,
    pub job_key: String,
    pub runner_name: String,
}

impl DelegationKey {
    /// One string, stable across versions, used as a unique index.
    pub fn as_string(&self) -> String {
        // Unit separators cannot appear in validated fields.
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.repository.to_ascii_lowercase(),
            self.run_id,
            self.run_attempt,
            self.job_key,
            self.runner_name
        )
    }
}

/// A job before the store gives it an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewJob {
    /// The workflow job key (`GITHUB_JOB`), e.g. `build`. For webhook jobs the
    /// job's display name.
    pub job_key: String,
    pub run_id: u64,
    pub run_attempt: u32,
    pub repository: String,
    pub workflow: String,
    pub runner_name: Option<String>,
    pub labels: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub matrix: Option<serde_json::Value>,
    pub needs: Vec<String>,
    pub github_job_id: Option<u64>,
    pub source: JobSource,
    /// Environment entries and matrix values dropped as credentials before
    /// the job was recorded.
    #[serde(default)]
    pub dropped_secrets: u32,
}

impl NewJob {
    /// The idempotency key of a hook delegation; `None` for jobs that do not
    /// come from a runner (those are keyed by `github_job_id`).
    pub fn delegation_key(&self) -> Option<DelegationKey> {
        let runner_name = self.runner_name.clone()?;
        (self.source == JobSource::Hook).then(|| DelegationKey {
            repository: self.repository.clone(),
            run_id: self.run_id,
            run_attempt: self.run_attempt,
            job_key: self.job_key.clone(),
            runner_name,
        })
    }

    /// Builds the stored record: status `queued`, no attempts yet.
    pub fn into_job(self, id: Uuid, now: DateTime<Utc>) -> Job {
        Job {
            id,
            job_key: self.job_key,
            run_id: self.run_id,
            run_attempt: self.run_attempt,
            repository: self.repository,
            workflow: self.workflow,
            runner_name: self.runner_name,
            labels: self.labels,
            environment: self.environment,
            matrix: self.matrix,
            needs: self.needs,
            status: JobStatus::Queued,
            container_id: None,
            ran_in_container_id: None,
            runner_id: None,
            provisioned_runner_id: None,
            github_job_id: self.github_job_id,
            source: self.source,
            dropped_secrets: self.dropped_secrets,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            not_before: None,
            exit_code: None,
            conclusion: None,
            revision: 0,
            job_container: None,
        }
    }
}

/// The design's `DelegatedJob`: a job and everything the orchestrator knows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: Uuid,
    /// The workflow job key (`GITHUB_JOB`); called `jobId` in the design's API.
    #[serde(rename = "jobId")]
    pub job_key: String,
    pub run_id: u64,
    pub run_attempt: u32,
    pub repository: String,
    pub workflow: String,
    pub runner_name: Option<String>,
    pub labels: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub matrix: Option<serde_json::Value>,
    pub needs: Vec<String>,
    pub status: JobStatus,
    /// The container started for this job.
    pub container_id: Option<String>,
    /// The container whose runner actually took this job, when that is
    /// another job's container (GitHub gives a job to any idle runner with
    /// matching labels).
    #[serde(default)]
    pub ran_in_container_id: Option<String>,
    /// GitHub's id of the runner that took the job.
    pub runner_id: Option<u64>,
    /// GitHub's id of the ephemeral runner registered for this job's own
    /// container (which may end up running another job with the same labels).
    #[serde(default)]
    pub provisioned_runner_id: Option<u64>,
    pub github_job_id: Option<u64>,
    pub source: JobSource,
    /// Environment entries and matrix values dropped as credentials when
    /// the job was delegated: what vanished from the record, counted.
    #[serde(default)]
    pub dropped_secrets: u32,
    /// How many times provisioning was started.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A queued job waiting for a retry is not started before this instant.
    pub not_before: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub conclusion: Option<String>,
    /// The store's revision of this record; every write bumps it.
    #[serde(default)]
    pub revision: u64,
    /// Proxy path: the container the job's steps run in, its services, and
    /// the steps run so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_container: Option<JobContainerRecord>,
}

/// What the orchestrator created for a proxy-path job at `prepare_job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobContainerRecord {
    /// The job container; `None` for a job with services only.
    pub id: Option<String>,
    pub image: Option<String>,
    pub network: String,
    pub services: Vec<ServiceRecord>,
    /// Script and container steps run in it so far.
    pub steps_run: u32,
    pub last_step_exit_code: Option<i32>,
    /// When everything of the job was removed from the engine.
    pub removed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    /// The service's name in the workflow (`contextName`), its network alias.
    pub name: String,
    pub id: String,
    pub image: String,
}

impl Job {
    /// Moves the job to `to`, stamping the times that go with it.
    pub fn transition(&mut self, to: JobStatus, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.status = self.status.transition(to)?;
        self.updated_at = now;
        match to {
            JobStatus::Running if self.started_at.is_none() => self.started_at = Some(now),
            s if s.is_terminal() => self.completed_at = Some(now),
            _ => {}
        }
        Ok(())
    }

    pub fn delegation_key(&self) -> Option<DelegationKey> {
        let runner_name = self.runner_name.clone()?;
        (self.source == JobSource::Hook).then(|| DelegationKey {
            repository: self.repository.clone(),
            run_id: self.run_id,
            run_attempt: self.run_attempt,
            job_key: self.job_key.clone(),
            runner_name,
        })
    }

    // Every kind of change to a job, one method each: no field of a stored
    // job is written anywhere else.

    /// The scheduler picked the job: one more attempt starts now.
    pub fn start_provisioning(&mut self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.transition(JobStatus::Provisioning, now)?;
        self.attempts += 1;
        self.not_before = None;
        Ok(())
    }

    /// GitHub registered the runner minted for this job's own container.
    pub fn runner_registered(&mut self, runner_id: u64) {
        self.provisioned_runner_id = Some(runner_id);
    }

    /// The job's runner container is up.
    pub fn container_started(
        &mut self,
        container_id: String,
        runner_name: String,
        now: DateTime<Utc>,
    ) {
        self.container_id = Some(container_id);
        self.runner_name.get_or_insert(runner_name);
        self.last_error = None;
        self.updated_at = now;
    }

    /// A container started for this job after another writer settled the
    /// job: recorded so that its exit cleans up.
    pub fn adopt_container(
        &mut self,
        container_id: String,
        provisioned_runner_id: Option<u64>,
        now: DateTime<Utc>,
    ) {
        self.container_id = Some(container_id);
        self.provisioned_runner_id = provisioned_runner_id;
        self.updated_at = now;
    }

    /// The job's container is no longer the job's: it is gone, or its runner
    /// took another job.
    pub fn release_container(&mut self) {
        self.container_id = None;
    }

    /// The job's runner container exited before its runner took the job.
    pub fn container_exited_unused(&mut self, exit_code: Option<i32>) {
        self.container_id = None;
        self.exit_code = exit_code;
    }

    /// The job's own container exited after its runner took the job. Its
    /// code is the job's unless another job's container ran this job.
    pub fn own_container_exited(&mut self, exit_code: Option<i32>, now: DateTime<Utc>) {
        if self.ran_in_container_id.is_none() {
            self.exit_code = exit_code.or(self.exit_code);
        }
        self.updated_at = now;
    }

    /// The runner that ran this job lived in another job's container, which
    /// exited with `code`. True when the code was recorded.
    pub fn runner_container_exited(&mut self, code: i32) -> bool {
        if self.exit_code.is_some() {
            return false;
        }
        self.exit_code = Some(code);
        true
    }

    /// Provisioning did not lead to a running job: the requeue rule decides
    /// between failing and queueing again. Returns the new status.
    pub fn provisioning_failed(
        &mut self,
        failure: &Failure,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Result<JobStatus, TransitionError> {
        let (target, attempts, not_before) =
            match failure::decide(failure, self.attempts, policy, now, jitter) {
                Requeue::Fail => (JobStatus::Failed, self.attempts, None),
                Requeue::Queue {
                    attempts,
                    not_before,
                } => (JobStatus::Queued, attempts, not_before),
            };
        self.transition(target, now)?;
        self.attempts = attempts;
        self.not_before = not_before;
        self.last_error = Some(failure.message().to_string());
        Ok(target)
    }

    /// A GitHub job event names a hook-delegated job: link the two.
    pub fn link_github_job(
        &mut self,
        github_job_id: u64,
        runner_id: Option<u64>,
        now: DateTime<Utc>,
    ) {
        self.github_job_id = Some(github_job_id);
        self.runner_id = runner_id.or(self.runner_id);
        self.updated_at = now;
    }

    /// GitHub says which runner took the job. `ran_in` is the container of
    /// another job whose runner took this one; it is linked once, so later
    /// events cannot move the job to that job's next container.
    pub fn taken_by_runner(
        &mut self,
        runner_name: String,
        runner_id: Option<u64>,
        ran_in: Option<String>,
    ) {
        self.runner_name = Some(runner_name);
        self.runner_id = runner_id.or(self.runner_id);
        if self.ran_in_container_id.is_none() {
            self.ran_in_container_id = ran_in;
        }
    }

    /// GitHub says the job runs; ignored when our record is past that.
    pub fn started_on_github(&mut self, now: DateTime<Utc>) {
        if self.status.can_transition_to(JobStatus::Running) {
            let _ = self.transition(JobStatus::Running, now);
        }
    }

    /// GitHub says the job finished; ignored when our record already has.
    pub fn finished_on_github(&mut self, conclusion: Option<String>, now: DateTime<Utc>) {
        let target = conclusion_to_status(conclusion.as_deref());
        if self.status.can_transition_to(target) {
            let _ = self.transition(target, now);
            self.conclusion = conclusion;
        }
    }

    /// A hook reported the job's end. Returns the final status.
    pub fn complete(
        &mut self,
        conclusion: Option<String>,
        exit_code: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<JobStatus, TransitionError> {
        let target = conclusion_to_status(conclusion.as_deref());
        self.transition(target, now)?;
        self.exit_code = exit_code.or(self.exit_code);
        self.conclusion = conclusion.or(self.conclusion.take());
        Ok(target)
    }
}

impl Job {
    /// Proxy path: the job's containers were created at `prepare_job`.
    /// (`container_id` stays the autoscaling path's: the engine's exit
    /// events of these containers are not a runner's end.)
    pub fn containers_prepared(&mut self, record: JobContainerRecord, now: DateTime<Utc>) {
        self.job_container = Some(record);
        self.updated_at = now;
    }

    /// Proxy path: one more step ran in the job's container.
    pub fn step_ran(&mut self, exit_code: Option<i32>, now: DateTime<Utc>) {
        if let Some(record) = &mut self.job_container {
            record.steps_run += 1;
            record.last_step_exit_code = exit_code;
        }
        self.updated_at = now;
    }

    /// Proxy path: the job's containers are gone from the engine.
    pub fn containers_removed(&mut self, now: DateTime<Utc>) {
        if let Some(record) = &mut self.job_container
            && record.removed_at.is_none()
        {
            record.removed_at = Some(now);
        }
        self.updated_at = now;
    }

    /// Whether the job has proxy-path containers that were not removed yet.
    pub fn has_live_job_containers(&self) -> bool {
        self.job_container
            .as_ref()
            .is_some_and(|r| r.removed_at.is_none())
    }

    /// A delegated job whose completion never came within the job timeout.
    pub fn timed_out(&mut self, reason: String, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.transition(JobStatus::Failed, now)?;
        self.last_error = Some(reason);
        Ok(())
    }
}

impl NewJob {
    /// A job a proxy runner's hook delegated: the runner already holds it,
    /// so it is recorded as running.
    pub fn into_delegated_job(self, id: Uuid, now: DateTime<Utc>) -> Result<Job, TransitionError> {
        let mut job = self.into_job(id, now);
        job.transition(JobStatus::Running, now)?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full table, written out once more by hand: every (from, to) pair.
    fn expected(from: JobStatus, to: JobStatus) -> bool {
        use JobStatus::*;
        let allowed: &[(JobStatus, JobStatus)] = &[
            (Queued, Provisioning),
            (Queued, Running),
            (Queued, Completed),
            (Queued, Failed),
            (Queued, Cancelled),
            (Provisioning, Queued),
            (Provisioning, Running),
            (Provisioning, Completed),
            (Provisioning, Failed),
            (Provisioning, Cancelled),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
        ];
        allowed.contains(&(from, to))
    }

    #[test]
    fn every_pair_of_states_follows_the_table() {
        let mut legal = 0;
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let got = from.transition(to);
                if expected(from, to) {
                    assert_eq!(got, Ok(to), "{from} -> {to} must be legal");
                    legal += 1;
                } else {
                    assert_eq!(
                        got,
                        Err(TransitionError { from, to }),
                        "{from} -> {to} must be illegal"
                    );
                }
            }
        }
        assert_eq!(legal, 13);
    }

    #[test]
    fn terminal_states_have_no_exit_and_no_self_loops() {
        for s in JobStatus::ALL {
            assert!(!s.can_transition_to(s), "{s} -> {s}");
            if s.is_terminal() {
                assert!(JobStatus::ALL.iter().all(|t| !s.can_transition_to(*t)));
            }
        }
    }

    #[test]
    fn status_strings_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("done".parse::<JobStatus>().unwrap_err().contains("done"));
        for s in JobSource::ALL {
            assert_eq!(s.as_str().parse::<JobSource>(), Ok(s));
        }
    }

    fn new_job() -> NewJob {
        NewJob {
            job_key: "build".into(),
            run_id: 42,
            run_attempt: 1,
            repository: "Octo/Repo".into(),
            workflow: "CI".into(),
            runner_name: Some("proxy-1".into()),
            labels: vec!["self-hosted".into()],
            environment: BTreeMap::new(),
            matrix: None,
            needs: vec![],
            github_job_id: None,
            source: JobSource::Hook,
            dropped_secrets: 0,
        }
    }

    #[test]
    fn transitions_stamp_times() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t1 = DateTime::from_timestamp(1_700_000_010, 0).unwrap();
        let t2 = DateTime::from_timestamp(1_700_000_020, 0).unwrap();
        let mut job = new_job().into_job(Uuid::now_v7(), t0);
        assert_eq!(job.status, JobStatus::Queued);
        job.transition(JobStatus::Running, t1).unwrap();
        assert_eq!(job.started_at, Some(t1));
        job.transition(JobStatus::Completed, t2).unwrap();
        assert_eq!(job.completed_at, Some(t2));
        assert_eq!(job.updated_at, t2);
        let err = job.transition(JobStatus::Running, t2).unwrap_err();
        assert_eq!(err.from, JobStatus::Completed);
        assert_eq!(
            job.status,
            JobStatus::Completed,
            "a refused transition changes nothing"
        );
    }

    #[test]
    fn delegation_key_is_case_insensitive_on_repository_only() {
        let a = new_job();
        let mut b = new_job();
        b.repository = "octo/repo".into();
        assert_eq!(
            a.delegation_key().unwrap().as_string(),
            b.delegation_key().unwrap().as_string()
        );
        b.job_key = "Build".into();
        assert_ne!(
            a.delegation_key().unwrap().as_string(),
            b.delegation_key().unwrap().as_string()
        );
        let mut w = new_job();
        w.source = JobSource::Webhook;
        assert!(w.delegation_key().is_none());
    }

    #[test]
    fn the_count_of_dropped_credentials_is_shown_and_older_records_read_as_none() {
        let mut n = new_job();
        n.dropped_secrets = 4;
        let job = n.into_job(Uuid::now_v7(), DateTime::from_timestamp(0, 0).unwrap());
        let mut shown = serde_json::to_value(&job).unwrap();
        assert_eq!(shown["droppedSecrets"], 4);
        // A record written before the count existed.
        shown.as_object_mut().unwrap().remove("droppedSecrets");
        let old: Job = serde_json::from_value(shown).unwrap();
        assert_eq!(old.dropped_secrets, 0);
    }

    #[test]
    fn conclusions_map_to_final_states() {
        assert_eq!(conclusion_to_status(Some("success")), JobStatus::Completed);
        assert_eq!(conclusion_to_status(Some("failure")), JobStatus::Completed);
        assert_eq!(
            conclusion_to_status(Some("cancelled")),
            JobStatus::Cancelled
        );
        assert_eq!(
            conclusion_to_status(Some("startup_failure")),
            JobStatus::Completed
        );
        assert_eq!(conclusion_to_status(None), JobStatus::Completed);
    }
}
