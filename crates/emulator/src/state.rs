//! The emulator's state and the operations that change it. One mutex guards
//! everything; it is never held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxy_runner_domain::labels::{runner_matches, same_label};
use proxy_runner_domain::ports::Scope;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use crate::model::{
    Assignment, Conclusion, DEFAULT_GROUP_ID, DEFAULT_GROUP_NAME, Job, JobState, LogSection,
    READ_ONLY_LABELS, Run, Runner, RunnerLabel, Step, same_scope,
};
use crate::protocol::{ContainerSpec, StepSpec};
use crate::webhook::{self, DeliveryRecord, PendingDelivery};
use crate::{DEFAULT_INSTALLATION_TOKEN_TTL, EmulatorConfig, EmulatorError, WebhookTarget};

/// Registration and remove tokens live one hour, like GitHub's.
pub(crate) const RUNNER_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Requests per hour per credential, like GitHub's primary limit.
pub(crate) const RATE_LIMIT_AUTHENTICATED: u64 = 5000;
/// Requests per hour per address without (valid) credentials.
pub(crate) const RATE_LIMIT_ANONYMOUS: u64 = 60;
/// How many delivery records the admin API keeps.
const DELIVERY_LOG_LIMIT: usize = 1000;
/// How many REST request records the admin API keeps.
const REQUEST_LOG_LIMIT: usize = 20_000;
/// Largest step output kept per step (and per log section).
pub(crate) const MAX_STEP_OUTPUT: usize = 1024 * 1024;
/// Most sections of one job log: every step plus hooks and container set-up.
pub(crate) const MAX_LOG_SECTIONS: usize = 1100;

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A random token of `len` letters and digits.
pub(crate) fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) struct AppKey {
    pub app_id: u64,
    pub key: jsonwebtoken::DecodingKey,
}

/// Fixed settings derived from [`EmulatorConfig`].
pub(crate) struct Settings {
    /// Base URL for JIT configs and links, without a trailing slash.
    pub public_url: String,
    pat_hashes: Vec<[u8; 32]>,
    pub app: Option<AppKey>,
    pub installation_token_ttl: Duration,
}

impl Settings {
    pub fn is_pat(&self, token: &str) -> bool {
        let hash = sha256(token.as_bytes());
        // Compare against every PAT so timing says nothing about which matched.
        self.pat_hashes
            .iter()
            .fold(false, |found, h| found | bool::from(h.ct_eq(&hash)))
    }
}

pub(crate) struct Shared {
    pub settings: Settings,
    pub world: Mutex<World>,
    /// Woken whenever a job becomes queued (and at shutdown), for runners
    /// in a long poll.
    pub job_queued: Notify,
    /// Set at shutdown so that long polls end at once.
    pub closing: AtomicBool,
    pub http: reqwest::Client,
}

impl Shared {
    pub fn new(config: EmulatorConfig, default_base_url: &str) -> Result<Shared, EmulatorError> {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| default_base_url.to_string())
            .trim_end_matches('/')
            .to_string();
        if !is_http_url(&public_url) {
            return Err(EmulatorError::InvalidPublicUrl(public_url));
        }
        if let Some(target) = &config.webhook
            && !is_http_url(&target.url)
        {
            return Err(EmulatorError::InvalidWebhookUrl(target.url.clone()));
        }
        let app = match &config.app {
            None => None,
            Some(app) => Some(AppKey {
                app_id: app.app_id,
                key: jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes())
                    .map_err(|_| EmulatorError::InvalidAppKey)?,
            }),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(webhook::USER_AGENT)
            .build()
            .map_err(|e| EmulatorError::HttpClient(e.to_string()))?;
        Ok(Shared {
            settings: Settings {
                public_url,
                pat_hashes: config.pats.iter().map(|p| sha256(p.as_bytes())).collect(),
                app,
                installation_token_ttl: config
                    .installation_token_ttl
                    .unwrap_or(DEFAULT_INSTALLATION_TOKEN_TTL),
            },
            world: Mutex::new(World::new(config.webhook)),
            job_queued: Notify::new(),
            closing: AtomicBool::new(false),
            http,
        })
    }

    /// Ends open long polls (they answer "no job") and refuses new waits.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.job_queued.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// The state; a panic elsewhere while holding the lock does not make the
    /// emulator unusable.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunnerTokenKind {
    Registration,
    Remove,
}

pub(crate) struct RunnerToken {
    hash: [u8; 32],
    pub scope: Scope,
    pub kind: RunnerTokenKind,
    pub expires_at: DateTime<Utc>,
}

pub(crate) struct InstallationToken {
    pub installation_id: u64,
    pub account: String,
    pub expires_at: DateTime<Utc>,
}

/// One hour of requests of one credential (or one address).
#[derive(Debug, Clone)]
pub(crate) struct RateWindow {
    pub limit: u64,
    pub used: u64,
    pub reset: DateTime<Utc>,
}

/// Fault knobs of the REST API (see the README).
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    /// Statuses a failed call gets, one picked at random per call (empty: 500).
    pub error_statuses: Vec<u16>,
    pub error_share: f64,
    pub error_count: Option<u64>,
    pub latency: Duration,
    pub rate_limited_until: Option<DateTime<Utc>>,
    pub secondary_until: Option<DateTime<Utc>>,
    /// 429, or 403 when unset: GitHub answers secondary limits with either.
    pub secondary_status: Option<u16>,
    pub drop_webhook_share: f64,
    /// While set, no queued job is handed to a runner.
    pub hold_jobs: bool,
}

/// One REST request as the emulator saw it (admin API `GET /_emulator/requests`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestRecord {
    /// Arrival order, from 1.
    pub seq: u64,
    pub received_at: DateTime<Utc>,
    pub answered_at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The fault knob that answered it: `error`, `rateLimit`,
    /// `secondaryRateLimit`; none when the handler did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// What a runner needs to run a job it took.
#[derive(Debug, Clone)]
pub(crate) struct Handout {
    pub job_id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    pub repository: String,
    pub workflow: String,
    pub name: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub container: Option<ContainerSpec>,
    pub services: BTreeMap<String, ContainerSpec>,
    pub head_sha: String,
    pub head_branch: String,
}

/// A request to queue a job (admin API).
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub owner: String,
    pub repo: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub container: Option<ContainerSpec>,
    pub services: BTreeMap<String, ContainerSpec>,
    pub workflow: String,
    pub name: String,
    pub run_id: Option<u64>,
    pub head_branch: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunnerCreateError {
    NameTaken,
}

/// A newly created runner and its one-time credential.
pub(crate) struct CreatedRunner {
    pub runner: Runner,
    pub credential: SecretString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobOpError {
    NotFound,
    /// The job is not in a state that allows this.
    Conflict(String),
}

pub(crate) struct World {
    next_runner_id: u64,
    next_job_id: u64,
    next_run_id: u64,
    next_label_id: u64,
    next_installation_id: u64,
    next_account_id: u64,
    pub runners: BTreeMap<u64, Runner>,
    pub jobs: BTreeMap<u64, Job>,
    pub runs: BTreeMap<u64, Run>,
    label_ids: HashMap<String, u64>,
    repo_ids: HashMap<String, u64>,
    account_ids: HashMap<String, u64>,
    run_numbers: HashMap<String, u64>,
    /// installation id -> account (lower case).
    pub installations: BTreeMap<u64, String>,
    runner_tokens: Vec<RunnerToken>,
    installation_tokens: HashMap<[u8; 32], InstallationToken>,
    pub rate: HashMap<String, RateWindow>,
    pub faults: Faults,
    pub webhook_target: Option<WebhookTarget>,
    pub webhook_queues: HashMap<u64, UnboundedSender<PendingDelivery>>,
    pub deliveries: VecDeque<DeliveryRecord>,
    pub requests: VecDeque<RequestRecord>,
    pub next_request_seq: u64,
}

impl World {
    fn new(webhook_target: Option<WebhookTarget>) -> World {
        let mut label_ids = HashMap::new();
        for (i, l) in READ_ONLY_LABELS.iter().enumerate() {
            label_ids.insert(l.to_ascii_lowercase(), i as u64 + 1);
        }
        World {
            next_runner_id: 1,
            next_job_id: 20_000_001,
            next_run_id: 10_000_001,
            next_label_id: 100,
            next_installation_id: 40_000_001,
            next_account_id: 50_000_001,
            runners: BTreeMap::new(),
            jobs: BTreeMap::new(),
            runs: BTreeMap::new(),
            label_ids,
            repo_ids: HashMap::new(),
            account_ids: HashMap::new(),
            run_numbers: HashMap::new(),
            installations: BTreeMap::new(),
            runner_tokens: Vec::new(),
            installation_tokens: HashMap::new(),
            rate: HashMap::new(),
            faults: Faults::default(),
            webhook_target,
            webhook_queues: HashMap::new(),
            deliveries: VecDeque::new(),
            requests: VecDeque::new(),
            next_request_seq: 1,
        }
    }

    pub fn record_request(&mut self, record: RequestRecord) {
        if self.requests.len() >= REQUEST_LOG_LIMIT {
            self.requests.pop_front();
        }
        self.requests.push_back(record);
    }

    pub fn record_delivery(&mut self, record: DeliveryRecord) {
        if self.deliveries.len() >= DELIVERY_LOG_LIMIT {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(record);
    }

    // ------------------------------------------------------------ ids

    fn label(&mut self, name: &str, read_only: bool) -> RunnerLabel {
        let key = name.to_ascii_lowercase();
        let id = match self.label_ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.next_label_id;
                self.next_label_id += 1;
                self.label_ids.insert(key, id);
                id
            }
        };
        RunnerLabel {
            id,
            name: name.to_string(),
            read_only,
        }
    }

    pub fn repository_id(&mut self, owner: &str, repo: &str) -> u64 {
        let key = format!("{owner}/{repo}").to_ascii_lowercase();
        let next = 30_000_001 + self.repo_ids.len() as u64;
        *self.repo_ids.entry(key).or_insert(next)
    }

    pub fn account_id(&mut self, account: &str) -> u64 {
        let key = account.to_ascii_lowercase();
        if let Some(id) = self.account_ids.get(&key) {
            return *id;
        }
        let id = self.next_account_id;
        self.next_account_id += 1;
        self.account_ids.insert(key, id);
        id
    }

    /// Every account has the App installed; the installation is created the
    /// first time it is asked for.
    pub fn installation_for(&mut self, account: &str) -> u64 {
        let key = account.to_ascii_lowercase();
        if let Some((id, _)) = self.installations.iter().find(|(_, a)| **a == key) {
            return *id;
        }
        let id = self.next_installation_id;
        self.next_installation_id += 1;
        self.installations.insert(id, key);
        id
    }

    // ------------------------------------------------------------ tokens

    pub fn issue_runner_token(
        &mut self,
        scope: &Scope,
        kind: RunnerTokenKind,
        now: DateTime<Utc>,
    ) -> (SecretString, DateTime<Utc>) {
        self.runner_tokens.retain(|t| t.expires_at > now);
        let token = random_token(29).to_ascii_uppercase();
        let expires_at = now + chrono::Duration::from_std(RUNNER_TOKEN_TTL).unwrap_or_default();
        self.runner_tokens.push(RunnerToken {
            hash: sha256(token.as_bytes()),
            scope: scope.clone(),
            kind,
            expires_at,
        });
        (SecretString::from(token), expires_at)
    }

    /// The scope of a valid registration token.
    pub fn registration_scope(&self, token: &str, now: DateTime<Utc>) -> Option<Scope> {
        let hash = sha256(token.as_bytes());
        self.runner_tokens
            .iter()
            .find(|t| {
                bool::from(t.hash.ct_eq(&hash))
                    && t.kind == RunnerTokenKind::Registration
                    && t.expires_at > now
            })
            .map(|t| t.scope.clone())
    }

    pub fn issue_installation_token(
        &mut self,
        installation_id: u64,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Option<(SecretString, DateTime<Utc>)> {
        let account = self.installations.get(&installation_id)?.clone();
        self.installation_tokens.retain(|_, t| t.expires_at > now);
        let token = format!("ghs_{}", random_token(36));
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        self.installation_tokens.insert(
            sha256(token.as_bytes()),
            InstallationToken {
                installation_id,
                account,
                expires_at,
            },
        );
        Some((SecretString::from(token), expires_at))
    }

    pub fn installation_token(&self, token: &str) -> Option<&InstallationToken> {
        self.installation_tokens.get(&sha256(token.as_bytes()))
    }

    // ------------------------------------------------------------ runners

    fn name_taken(&self, scope: &Scope, name: &str) -> bool {
        self.runners
            .values()
            .any(|r| same_scope(&r.scope, scope) && r.name.eq_ignore_ascii_case(name))
    }

    /// Creates a runner (JIT or registered); labels named like GitHub's own
    /// (`self-hosted`, OS, architecture) are read-only, the rest custom.
    pub fn create_runner(
        &mut self,
        scope: &Scope,
        name: &str,
        labels: &[String],
        group_id: u64,
        ephemeral: bool,
    ) -> Result<CreatedRunner, RunnerCreateError> {
        if self.name_taken(scope, name) {
            return Err(RunnerCreateError::NameTaken);
        }
        let mut runner_labels: Vec<RunnerLabel> = Vec::new();
        for l in labels {
            if runner_labels.iter().any(|x| same_label(&x.name, l)) {
                continue;
            }
            let read_only = READ_ONLY_LABELS.iter().any(|r| same_label(r, l));
            let label = self.label(l, read_only);
            runner_labels.push(label);
        }
        let credential = format!("emurc_{}", random_token(40));
        let id = self.next_runner_id;
        self.next_runner_id += 1;
        let runner = Runner {
            id,
            name: name.to_string(),
            scope: scope.clone(),
            labels: runner_labels,
            group_id,
            ephemeral,
            os: "unknown".into(),
            version: None,
            credential_hash: sha256(credential.as_bytes()),
            last_seen: None,
            polling: 0,
            job: None,
        };
        self.runners.insert(id, runner.clone());
        Ok(CreatedRunner {
            runner,
            credential: SecretString::from(credential),
        })
    }

    pub fn runner_by_credential(&self, credential: &SecretString) -> Option<u64> {
        let hash = sha256(credential.expose_secret().as_bytes());
        self.runners.values().fold(None, |found, r| {
            if bool::from(r.credential_hash.ct_eq(&hash)) {
                Some(r.id)
            } else {
                found
            }
        })
    }

    // ------------------------------------------------------------ jobs

    pub fn create_job(
        &mut self,
        shared: &Arc<Shared>,
        new: NewJob,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64), String> {
        let run_id = match new.run_id {
            Some(id) => {
                if let Some(run) = self.runs.get(&id)
                    && !run.in_repo(&new.owner, &new.repo)
                {
                    return Err(format!("run {id} belongs to another repository"));
                }
                id
            }
            None => {
                let id = self.next_run_id;
                self.next_run_id += 1;
                id
            }
        };
        if !self.runs.contains_key(&run_id) {
            self.next_run_id = self.next_run_id.max(run_id.saturating_add(1));
            let number = self
                .run_numbers
                .entry(format!("{}/{}", new.owner, new.repo).to_ascii_lowercase())
                .or_insert(0);
            *number += 1;
            let head_sha: String = (0..40)
                .map(|_| char::from_digit(rand::rng().random_range(0..16), 16).unwrap_or('0'))
                .collect();
            self.runs.insert(
                run_id,
                Run {
                    id: run_id,
                    owner: new.owner.clone(),
                    repo: new.repo.clone(),
                    workflow: new.workflow.clone(),
                    attempt: 1,
                    run_number: *number,
                    head_sha,
                    head_branch: new.head_branch.clone(),
                    created_at: now,
                    updated_at: now,
                },
            );
        }
        let run = &self.runs[&run_id];
        let (attempt, head_sha, head_branch) =
            (run.attempt, run.head_sha.clone(), run.head_branch.clone());
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.jobs.insert(
            id,
            Job {
                id,
                origin: id,
                run_id,
                run_attempt: attempt,
                owner: new.owner,
                repo: new.repo,
                name: new.name,
                workflow: new.workflow,
                labels: new.labels,
                steps: new
                    .steps
                    .into_iter()
                    .map(|s| Step::new(s.run().to_string(), s.shell().map(str::to_string)))
                    .collect(),
                container: new.container,
                services: new.services,
                log: Vec::new(),
                state: JobState::Queued,
                conclusion: None,
                assignment: None,
                created_at: now,
                started_at: None,
                completed_at: None,
                cancel_requested: false,
                head_sha,
                head_branch,
            },
        );
        webhook::enqueue(shared, self, "queued", id);
        shared.job_queued.notify_waiters();
        Ok((id, run_id))
    }

    /// Hands the oldest queued job this runner may take to it: same
    /// repository (or organization), and GitHub's label rule
    /// ([`runner_matches`]).
    pub fn assign(
        &mut self,
        shared: &Arc<Shared>,
        runner_id: u64,
        now: DateTime<Utc>,
    ) -> Option<Handout> {
        let runner = self.runners.get(&runner_id)?;
        if let Some(current) = runner.job {
            // A runner asking again (e.g. after a lost answer) gets its job again.
            return self.jobs.get(&current).map(handout);
        }
        if self.faults.hold_jobs {
            return None;
        }
        let runner_labels = runner.label_names();
        let job_id = self
            .jobs
            .values()
            .find(|j| {
                j.state == JobState::Queued
                    && !j.cancel_requested
                    && runner.serves_repo(&j.owner, &j.repo)
                    && runner_matches(&runner_labels, &j.labels)
            })?
            .id;
        let assignment = Assignment {
            runner_id,
            runner_name: runner.name.clone(),
            group_id: runner.group_id,
            group_name: group_name(runner.group_id),
        };
        let job = self.jobs.get_mut(&job_id)?;
        job.state = JobState::InProgress;
        job.started_at = Some(now);
        job.assignment = Some(assignment);
        if let Some(first) = job.steps.first_mut() {
            first.started_at = Some(now);
        }
        let out = handout(job);
        let run_id = job.run_id;
        if let Some(r) = self.runners.get_mut(&runner_id) {
            r.job = Some(job_id);
        }
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.updated_at = now;
        }
        webhook::enqueue(shared, self, "in_progress", job_id);
        Some(out)
    }

    /// Records one step's output and exit code. Returns whether the job was
    /// asked to cancel.
    pub fn report_step(
        &mut self,
        runner_id: u64,
        job_id: u64,
        index: usize,
        mut output: String,
        exit_code: i32,
        now: DateTime<Utc>,
    ) -> Result<bool, JobOpError> {
        let job = self.jobs.get_mut(&job_id).ok_or(JobOpError::NotFound)?;
        if job.assignment.as_ref().map(|a| a.runner_id) != Some(runner_id) {
            return Err(JobOpError::NotFound);
        }
        if job.state != JobState::InProgress {
            return Err(JobOpError::Conflict("the job is not in progress".into()));
        }
        let steps = job.steps.len();
        let step = job
            .steps
            .get_mut(index)
            .ok_or_else(|| JobOpError::Conflict(format!("the job has {steps} steps")))?;
        truncate_utf8(&mut output, MAX_STEP_OUTPUT);
        if job.log.len() < MAX_LOG_SECTIONS {
            job.log.push(LogSection {
                name: step.display_name(),
                output: output.clone(),
                exit_code: Some(exit_code),
            });
        }
        step.output = Some(output);
        step.exit_code = Some(exit_code);
        step.started_at.get_or_insert(now);
        step.completed_at = Some(now);
        step.conclusion = Some(if exit_code == 0 {
            Conclusion::Success
        } else {
            Conclusion::Failure
        });
        if exit_code == 0
            && let Some(next) = job.steps.get_mut(index + 1)
        {
            next.started_at.get_or_insert(now);
        }
        Ok(job.cancel_requested)
    }

    /// Adds a section that is not a step (a hook, container set-up or
    /// clean-up) to the log of a job in progress. Returns whether the job
    /// was asked to cancel.
    pub fn append_log(
        &mut self,
        runner_id: u64,
        job_id: u64,
        name: String,
        mut output: String,
        exit_code: Option<i32>,
    ) -> Result<bool, JobOpError> {
        let job = self.jobs.get_mut(&job_id).ok_or(JobOpError::NotFound)?;
        if job.assignment.as_ref().map(|a| a.runner_id) != Some(runner_id) {
            return Err(JobOpError::NotFound);
        }
        if job.state != JobState::InProgress {
            return Err(JobOpError::Conflict("the job is not in progress".into()));
        }
        if job.log.len() >= MAX_LOG_SECTIONS {
            return Err(JobOpError::Conflict(format!(
                "a job log holds at most {MAX_LOG_SECTIONS} sections"
            )));
        }
        truncate_utf8(&mut output, MAX_STEP_OUTPUT);
        job.log.push(LogSection {
            name,
            output,
            exit_code,
        });
        Ok(job.cancel_requested)
    }

    /// Finishes a job its runner ran. The conclusion follows the steps: any
    /// failed step fails the job (later steps count as skipped); a runner that
    /// stopped because of a cancel request ends it cancelled.
    pub fn complete_job(
        &mut self,
        shared: &Arc<Shared>,
        runner_id: u64,
        job_id: u64,
        runner_cancelled: bool,
        runner_failed: bool,
        now: DateTime<Utc>,
    ) -> Result<Conclusion, JobOpError> {
        let job = self.jobs.get_mut(&job_id).ok_or(JobOpError::NotFound)?;
        if job.assignment.as_ref().map(|a| a.runner_id) != Some(runner_id) {
            return Err(JobOpError::NotFound);
        }
        if job.state == JobState::Completed {
            return job
                .conclusion
                .ok_or_else(|| JobOpError::Conflict("the job has no conclusion".into()));
        }
        let failed = runner_failed
            || job
                .steps
                .iter()
                .any(|s| s.exit_code.is_some_and(|c| c != 0));
        let all_ran = job.steps.iter().all(|s| s.exit_code.is_some());
        let conclusion = if runner_cancelled && job.cancel_requested {
            Conclusion::Cancelled
        } else if failed || !all_ran {
            Conclusion::Failure
        } else {
            Conclusion::Success
        };
        for s in &mut job.steps {
            if s.conclusion.is_none() {
                s.conclusion = Some(if conclusion == Conclusion::Cancelled {
                    Conclusion::Cancelled
                } else {
                    Conclusion::Skipped
                });
                s.started_at.get_or_insert(now);
                s.completed_at = Some(now);
            }
        }
        job.state = JobState::Completed;
        job.conclusion = Some(conclusion);
        job.completed_at = Some(now);
        let run_id = job.run_id;
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.updated_at = now;
        }
        let remove_runner = match self.runners.get_mut(&runner_id) {
            Some(r) => {
                r.job = None;
                r.ephemeral
            }
            None => false,
        };
        if remove_runner {
            // GitHub removes an ephemeral (and JIT) runner after its one job.
            self.runners.remove(&runner_id);
        }
        webhook::enqueue(shared, self, "completed", job_id);
        Ok(conclusion)
    }

    /// Cancels a run: queued jobs end at once, running jobs are asked to stop.
    pub fn cancel_run(
        &mut self,
        shared: &Arc<Shared>,
        run_id: u64,
        now: DateTime<Utc>,
    ) -> Result<(), JobOpError> {
        let ids: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.run_id == run_id && j.state != JobState::Completed)
            .map(|j| j.id)
            .collect();
        if ids.is_empty() {
            return Err(JobOpError::Conflict(
                "Cannot cancel a workflow run that is completed.".into(),
            ));
        }
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.cancel_requested = true;
            if job.state == JobState::Queued {
                job.state = JobState::Completed;
                job.conclusion = Some(Conclusion::Cancelled);
                job.completed_at = Some(now);
                for s in &mut job.steps {
                    s.conclusion = Some(Conclusion::Skipped);
                }
                webhook::enqueue(shared, self, "completed", id);
            }
        }
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.updated_at = now;
        }
        Ok(())
    }

    /// Re-runs a finished job as a new job of the next run attempt.
    pub fn rerun_job(
        &mut self,
        shared: &Arc<Shared>,
        job_id: u64,
        now: DateTime<Utc>,
    ) -> Result<u64, JobOpError> {
        let old = self.jobs.get(&job_id).ok_or(JobOpError::NotFound)?.clone();
        if old.state != JobState::Completed {
            return Err(JobOpError::Conflict(
                "This job cannot be re-run while it is not complete.".into(),
            ));
        }
        let attempt = match self.runs.get_mut(&old.run_id) {
            Some(run) => {
                run.attempt += 1;
                run.updated_at = now;
                run.attempt
            }
            None => old.run_attempt + 1,
        };
        let id = self.next_job_id;
        self.next_job_id += 1;
        let job = Job {
            id,
            run_attempt: attempt,
            steps: old
                .steps
                .iter()
                .map(|s| Step::new(s.command.clone(), s.shell.clone()))
                .collect(),
            log: Vec::new(),
            state: JobState::Queued,
            conclusion: None,
            assignment: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            cancel_requested: false,
            ..old
        };
        self.jobs.insert(id, job);
        webhook::enqueue(shared, self, "queued", id);
        shared.job_queued.notify_waiters();
        Ok(id)
    }

    /// Deletes a runner unless it is running a job.
    pub fn delete_runner(&mut self, scope: &Scope, runner_id: u64) -> Result<(), DeleteError> {
        let runner = self
            .runners
            .get(&runner_id)
            .filter(|r| same_scope(&r.scope, scope))
            .ok_or(DeleteError::NotFound)?;
        if runner.busy() {
            return Err(DeleteError::Busy(runner.name.clone()));
        }
        self.runners.remove(&runner_id);
        Ok(())
    }

    /// Marks a runner seen (it is online while it polls).
    pub fn touch_runner(&mut self, runner_id: u64, os: Option<&str>, version: Option<&str>) {
        if let Some(r) = self.runners.get_mut(&runner_id) {
            r.last_seen = Some(Instant::now());
            if let Some(os) = os {
                r.os = os.to_string();
            }
            if let Some(v) = version {
                r.version = Some(v.to_string());
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeleteError {
    NotFound,
    Busy(String),
}

pub(crate) fn group_name(group_id: u64) -> String {
    if group_id == DEFAULT_GROUP_ID {
        DEFAULT_GROUP_NAME.to_string()
    } else {
        format!("Group {group_id}")
    }
}

fn handout(job: &Job) -> Handout {
    Handout {
        job_id: job.id,
        run_id: job.run_id,
        run_attempt: job.run_attempt,
        repository: job.repository(),
        workflow: job.workflow.clone(),
        name: job.name.clone(),
        labels: job.labels.clone(),
        steps: job
            .steps
            .iter()
            .map(|s| StepSpec::new(s.command.clone(), s.shell.clone()))
            .collect(),
        container: job.container.clone(),
        services: job.services.clone(),
        head_sha: job.head_sha.clone(),
        head_branch: job.head_branch.clone(),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}
