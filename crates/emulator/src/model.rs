//! What the emulated GitHub knows: runners, workflow runs and jobs, and how
//! each is rendered as GitHub's JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::Scope;
use serde_json::{Value, json};

use crate::http_util::timestamp;
use crate::protocol::ContainerSpec;

/// A runner that has not polled for this long is shown `offline`.
pub(crate) const ONLINE_GRACE: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_GROUP_ID: u64 = 1;
pub(crate) const DEFAULT_GROUP_NAME: &str = "Default";

/// Labels GitHub puts on a runner itself (`type: read-only`).
pub(crate) const READ_ONLY_LABELS: &[&str] = &[
    "self-hosted",
    "X64",
    "ARM",
    "ARM64",
    "Linux",
    "Windows",
    "macOS",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Queued,
    InProgress,
    Completed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::InProgress => "in_progress",
            JobState::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conclusion {
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub command: String,
    /// `shell:` of the step (`bash` or `sh`); `None`: the runner's default.
    pub shell: Option<String>,
    pub output: Option<String>,
    pub exit_code: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub conclusion: Option<Conclusion>,
}

impl Step {
    pub fn new(command: String, shell: Option<String>) -> Step {
        Step {
            command,
            shell,
            output: None,
            exit_code: None,
            started_at: None,
            completed_at: None,
            conclusion: None,
        }
    }

    /// The step name GitHub shows for a `run:` step.
    pub fn display_name(&self) -> String {
        step_display_name(&self.command)
    }
}

/// The name GitHub shows for a `run:` step: `Run` and its first line.
pub(crate) fn step_display_name(command: &str) -> String {
    let first = command.lines().next().unwrap_or("").trim();
    let mut name: String = first.chars().take(80).collect();
    if first.chars().count() > 80 || command.lines().nth(1).is_some() {
        name.push_str(" ...");
    }
    format!("Run {name}")
}

/// One section of a job's log, in the order the runner reported them:
/// hooks, container set-up and clean-up, and every step that ran.
#[derive(Debug, Clone)]
pub(crate) struct LogSection {
    pub name: String,
    pub output: String,
    pub exit_code: Option<i32>,
}

/// The runner a job was handed to.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    pub runner_id: u64,
    pub runner_name: String,
    pub group_id: u64,
    pub group_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: u64,
    /// Id of the first attempt of this job; re-runs share it.
    pub origin: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub owner: String,
    pub repo: String,
    pub name: String,
    pub workflow: String,
    pub labels: Vec<String>,
    pub steps: Vec<Step>,
    pub container: Option<ContainerSpec>,
    pub services: BTreeMap<String, ContainerSpec>,
    pub log: Vec<LogSection>,
    pub state: JobState,
    pub conclusion: Option<Conclusion>,
    pub assignment: Option<Assignment>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub head_sha: String,
    pub head_branch: String,
}

impl Job {
    pub fn repository(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    pub fn in_repo(&self, owner: &str, repo: &str) -> bool {
        self.owner.eq_ignore_ascii_case(owner) && self.repo.eq_ignore_ascii_case(repo)
    }

    /// GitHub's `job` object (REST) and webhook `workflow_job` object.
    pub fn to_json(&self, base: &str) -> Value {
        let (owner, repo, id, run) = (&self.owner, &self.repo, self.id, self.run_id);
        let steps: Vec<Value> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.started_at.is_some() || s.conclusion.is_some())
            .map(|(i, s)| {
                let status = if s.conclusion.is_some() {
                    "completed"
                } else if s.started_at.is_some() {
                    "in_progress"
                } else {
                    "queued"
                };
                json!({
                    "name": s.display_name(),
                    "status": status,
                    "conclusion": s.conclusion.map(Conclusion::as_str),
                    "number": i + 1,
                    "started_at": s.started_at.map(timestamp),
                    "completed_at": s.completed_at.map(timestamp),
                })
            })
            .collect();
        let a = self.assignment.as_ref();
        json!({
            "id": id,
            "run_id": run,
            "run_url": format!("{base}/repos/{owner}/{repo}/actions/runs/{run}"),
            "run_attempt": self.run_attempt,
            "node_id": node_id("CheckRun", id),
            "head_sha": self.head_sha,
            "head_branch": self.head_branch,
            "url": format!("{base}/repos/{owner}/{repo}/actions/jobs/{id}"),
            "html_url": format!("{base}/{owner}/{repo}/actions/runs/{run}/job/{id}"),
            "status": self.state.as_str(),
            "conclusion": self.conclusion.map(Conclusion::as_str),
            // GitHub shows the creation time as started_at while queued.
            "started_at": timestamp(self.started_at.unwrap_or(self.created_at)),
            "created_at": timestamp(self.created_at),
            "completed_at": self.completed_at.map(timestamp),
            "name": self.name,
            "steps": steps,
            "check_run_url": format!("{base}/repos/{owner}/{repo}/check-runs/{id}"),
            "labels": self.labels,
            "runner_id": a.map(|a| a.runner_id),
            "runner_name": a.map(|a| a.runner_name.clone()),
            "runner_group_id": a.map(|a| a.group_id),
            "runner_group_name": a.map(|a| a.group_name.clone()),
            "workflow_name": self.workflow,
        })
    }

    /// The admin API's view, with step output.
    pub fn to_admin_json(&self) -> Value {
        let a = self.assignment.as_ref();
        json!({
            "id": self.id,
            "runId": self.run_id,
            "runAttempt": self.run_attempt,
            "repository": self.repository(),
            "workflow": self.workflow,
            "name": self.name,
            "status": self.state.as_str(),
            "conclusion": self.conclusion.map(Conclusion::as_str),
            "runnerId": a.map(|a| a.runner_id),
            "runnerName": a.map(|a| a.runner_name.clone()),
            "labels": self.labels,
            "cancelRequested": self.cancel_requested,
            "createdAt": timestamp(self.created_at),
            "startedAt": self.started_at.map(timestamp),
            "completedAt": self.completed_at.map(timestamp),
            "steps": self.steps.iter().map(|s| {
                let mut step = json!({
                    "command": s.command,
                    "output": s.output,
                    "exitCode": s.exit_code,
                    "conclusion": s.conclusion.map(Conclusion::as_str),
                });
                if let Some(shell) = &s.shell {
                    step["shell"] = json!(shell);
                }
                step
            }).collect::<Vec<_>>(),
            "container": self.container.as_ref().map(container_admin_json),
            "services": self
                .services
                .iter()
                .map(|(name, spec)| (name.clone(), container_admin_json(spec)))
                .collect::<serde_json::Map<String, Value>>(),
            "log": self.log.iter().map(|l| json!({
                "name": l.name,
                "output": l.output,
                "exitCode": l.exit_code,
            })).collect::<Vec<_>>(),
        })
    }
}

/// A container as the admin API shows it: everything but the registry password.
fn container_admin_json(spec: &ContainerSpec) -> Value {
    json!({
        "image": spec.image,
        "env": spec.env,
        "options": spec.options,
        "ports": spec.ports,
        "volumes": spec.volumes,
        "credentials": spec.credentials.as_ref().map(|c| json!({"username": c.username})),
    })
}

/// The newest attempt of each job of a run (what `filter=latest` shows).
pub(crate) fn latest_attempts<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Vec<&'a Job> {
    let mut latest: Vec<&Job> = Vec::new();
    for job in jobs {
        match latest.iter_mut().find(|j| j.origin == job.origin) {
            Some(slot) if slot.run_attempt < job.run_attempt => *slot = job,
            Some(_) => {}
            None => latest.push(job),
        }
    }
    latest
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub id: u64,
    pub owner: String,
    pub repo: String,
    pub workflow: String,
    pub attempt: u32,
    pub run_number: u64,
    pub head_sha: String,
    pub head_branch: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Run {
    pub fn in_repo(&self, owner: &str, repo: &str) -> bool {
        self.owner.eq_ignore_ascii_case(owner) && self.repo.eq_ignore_ascii_case(repo)
    }

    /// Status and conclusion of the run from the jobs of its latest attempt.
    pub fn status(&self, latest_jobs: &[&Job]) -> (&'static str, Option<&'static str>) {
        if latest_jobs.is_empty() {
            return ("queued", None);
        }
        if latest_jobs.iter().all(|j| j.state == JobState::Completed) {
            let any = |c: Conclusion| latest_jobs.iter().any(|j| j.conclusion == Some(c));
            let conclusion = if any(Conclusion::Cancelled) {
                "cancelled"
            } else if any(Conclusion::Failure) {
                "failure"
            } else {
                "success"
            };
            return ("completed", Some(conclusion));
        }
        if latest_jobs.iter().all(|j| j.state == JobState::Queued) {
            ("queued", None)
        } else {
            ("in_progress", None)
        }
    }

    /// GitHub's `workflow-run` object (the fields a runner manager reads and
    /// the common identifying ones).
    pub fn to_json(&self, base: &str, latest_jobs: &[&Job], repository_id: u64) -> Value {
        let (owner, repo, id) = (&self.owner, &self.repo, self.id);
        let (status, conclusion) = self.status(latest_jobs);
        json!({
            "id": id,
            "name": self.workflow,
            "node_id": node_id("WorkflowRun", id),
            "head_branch": self.head_branch,
            "head_sha": self.head_sha,
            "path": ".github/workflows/ci.yml",
            "display_title": self.workflow,
            "run_number": self.run_number,
            "run_attempt": self.attempt,
            "event": "push",
            "status": status,
            "conclusion": conclusion,
            "workflow_id": 1,
            "url": format!("{base}/repos/{owner}/{repo}/actions/runs/{id}"),
            "html_url": format!("{base}/{owner}/{repo}/actions/runs/{id}"),
            "jobs_url": format!("{base}/repos/{owner}/{repo}/actions/runs/{id}/jobs"),
            "cancel_url": format!("{base}/repos/{owner}/{repo}/actions/runs/{id}/cancel"),
            "rerun_url": format!("{base}/repos/{owner}/{repo}/actions/runs/{id}/rerun"),
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "run_started_at": timestamp(self.created_at),
            "pull_requests": [],
            "repository": {
                "id": repository_id,
                "name": repo,
                "full_name": format!("{owner}/{repo}"),
            },
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RunnerLabel {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub labels: Vec<RunnerLabel>,
    pub group_id: u64,
    pub ephemeral: bool,
    pub os: String,
    pub version: Option<String>,
    /// SHA-256 of the runner's credential; the credential itself is only
    /// ever handed out once.
    pub credential_hash: [u8; 32],
    pub last_seen: Option<Instant>,
    /// Open long polls of this runner.
    pub polling: u32,
    pub job: Option<u64>,
}

impl Runner {
    pub fn online(&self, now: Instant) -> bool {
        self.polling > 0
            || self.job.is_some()
            || self
                .last_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) < ONLINE_GRACE)
    }

    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }

    /// Whether this runner may take jobs of `owner/repo`: a repository runner
    /// serves its repository, an organization runner every repository of it.
    pub fn serves_repo(&self, owner: &str, repo: &str) -> bool {
        match &self.scope {
            Scope::Repository { owner: o, repo: r } => {
                o.eq_ignore_ascii_case(owner) && r.eq_ignore_ascii_case(repo)
            }
            Scope::Organization { org } => org.eq_ignore_ascii_case(owner),
        }
    }

    /// GitHub's `runner` object.
    pub fn to_json(&self, now: Instant) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "os": self.os,
            "status": if self.online(now) { "online" } else { "offline" },
            "busy": self.busy(),
            "ephemeral": self.ephemeral,
            "runner_group_id": self.group_id,
            "labels": self.labels.iter().map(|l| json!({
                "id": l.id,
                "name": l.name,
                "type": if l.read_only { "read-only" } else { "custom" },
            })).collect::<Vec<_>>(),
        });
        if let (Some(version), Some(map)) = (&self.version, v.as_object_mut()) {
            map.insert("version".into(), Value::from(version.clone()));
        }
        v
    }

    pub fn to_admin_json(&self, now: Instant) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "labels": self.label_names(),
            "ephemeral": self.ephemeral,
            "status": if self.online(now) { "online" } else { "offline" },
            "busy": self.busy(),
            "os": self.os,
            "version": self.version,
            "runnerGroupId": self.group_id,
            "jobId": self.job,
        })
    }
}

/// Same scope, ignoring case (GitHub names are case-insensitive).
pub(crate) fn same_scope(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (
            Scope::Repository {
                owner: o1,
                repo: r1,
            },
            Scope::Repository {
                owner: o2,
                repo: r2,
            },
        ) => o1.eq_ignore_ascii_case(o2) && r1.eq_ignore_ascii_case(r2),
        (Scope::Organization { org: a }, Scope::Organization { org: b }) => {
            a.eq_ignore_ascii_case(b)
        }
        _ => false,
    }
}

/// The account (user or organization) a scope belongs to.
pub(crate) fn scope_account(scope: &Scope) -> &str {
    match scope {
        Scope::Repository { owner, .. } => owner,
        Scope::Organization { org } => org,
    }
}

/// A GraphQL-style node id like GitHub's legacy ones.
pub(crate) fn node_id(kind: &str, id: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{:02}:{kind}{id}", kind.len()))
}
