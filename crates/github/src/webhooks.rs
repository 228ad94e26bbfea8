//! `workflow_job` webhooks: signature check, payload parsing, and which jobs
//! are ours by their labels (GitHub's matching rule itself lives in the
//! domain crate: [`runner_matches`]).
//!
//! GitHub adds fields and enum values over time, so parsing ignores unknown
//! fields and keeps unknown values instead of rejecting them.

use hmac::{Hmac, KeyInit, Mac};
use proxy_runner_domain::labels::{LabelError, LabelSet, runner_matches};
use proxy_runner_domain::ports::{Scope, WorkflowJobInfo};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

/// Header naming the event (`workflow_job`, `ping`, ...).
pub const EVENT_HEADER: &str = "x-github-event";
/// Header with the delivery GUID (the same on redelivery: de-duplicate on it).
pub const DELIVERY_HEADER: &str = "x-github-delivery";
/// Header with `sha256=<hex HMAC-SHA256 of the raw body>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The event this module parses.
pub const WORKFLOW_JOB_EVENT: &str = "workflow_job";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook signature header is missing")]
    Missing,
    #[error("webhook signature header is not \"sha256=<64 hex digits>\"")]
    Malformed,
    #[error("webhook signature does not match the body")]
    Mismatch,
}

/// Checks `X-Hub-Signature-256` against the raw body, in constant time.
pub fn verify_signature(
    secret: &SecretString,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_digest.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The `X-Hub-Signature-256` value GitHub would send for `body`.
pub fn signature_header(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `workflow_job` actions; values GitHub adds later land in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WorkflowJobAction {
    Queued,
    Waiting,
    InProgress,
    Completed,
    Other(String),
}

impl WorkflowJobAction {
    pub fn parse(s: &str) -> Self {
        match s {
            "queued" => WorkflowJobAction::Queued,
            "waiting" => WorkflowJobAction::Waiting,
            "in_progress" => WorkflowJobAction::InProgress,
            "completed" => WorkflowJobAction::Completed,
            other => WorkflowJobAction::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            WorkflowJobAction::Queued => "queued",
            WorkflowJobAction::Waiting => "waiting",
            WorkflowJobAction::InProgress => "in_progress",
            WorkflowJobAction::Completed => "completed",
            WorkflowJobAction::Other(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for WorkflowJobAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(WorkflowJobAction::parse(&String::deserialize(d)?))
    }
}

/// A parsed `workflow_job` delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowJobEvent {
    pub action: WorkflowJobAction,
    /// The job; `repository` is `repository.full_name` of the payload.
    pub job: WorkflowJobInfo,
    pub repository_id: Option<u64>,
    /// Present when the repository belongs to an organization.
    pub organization_id: Option<u64>,
    pub organization_login: Option<String>,
    /// Present when the webhook comes from a GitHub App installation.
    pub installation_id: Option<u64>,
    pub runner_group_id: Option<u64>,
    pub runner_group_name: Option<String>,
    pub head_branch: Option<String>,
}

impl WorkflowJobEvent {
    /// The repository the job belongs to, as a runner scope.
    pub fn repository_scope(&self) -> Option<Scope> {
        Scope::repository(&self.job.repository)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook body is not a workflow_job payload: {0}")]
    Json(String),
    #[error("webhook payload has an invalid repository name {0:?}")]
    InvalidRepository(String),
}

#[derive(Deserialize)]
struct Payload {
    action: WorkflowJobAction,
    workflow_job: WireJob,
    repository: WireRepository,
    #[serde(default)]
    organization: Option<WireOrganization>,
    #[serde(default)]
    installation: Option<WireId>,
}

#[derive(Deserialize)]
struct WireJob {
    id: u64,
    run_id: u64,
    #[serde(default)]
    run_attempt: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    workflow_name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    labels: Option<Vec<String>>,
    #[serde(default)]
    runner_id: Option<u64>,
    #[serde(default)]
    runner_name: Option<String>,
    #[serde(default)]
    runner_group_id: Option<u64>,
    #[serde(default)]
    runner_group_name: Option<String>,
    #[serde(default)]
    head_branch: Option<String>,
}

#[derive(Deserialize)]
struct WireRepository {
    full_name: String,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct WireOrganization {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    login: Option<String>,
}

#[derive(Deserialize)]
struct WireId {
    #[serde(default)]
    id: Option<u64>,
}

/// Parses the raw body of a `workflow_job` delivery (verify its signature
/// first).
pub fn parse_workflow_job_event(body: &[u8]) -> Result<WorkflowJobEvent, WebhookError> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        WebhookError::Json(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let full_name = payload.repository.full_name;
    if Scope::repository(&full_name).is_none() {
        return Err(WebhookError::InvalidRepository(
            full_name.chars().take(120).collect(),
        ));
    }
    let job = payload.workflow_job;
    Ok(WorkflowJobEvent {
        action: payload.action,
        job: WorkflowJobInfo {
            id: job.id,
            run_id: job.run_id,
            run_attempt: job.run_attempt.unwrap_or(1),
            repository: full_name,
            name: job.name.unwrap_or_default(),
            workflow_name: job.workflow_name.unwrap_or_default(),
            status: job.status.unwrap_or_default(),
            conclusion: job.conclusion,
            labels: job.labels.unwrap_or_default(),
            runner_id: job.runner_id.filter(|id| *id != 0),
            runner_name: job.runner_name.filter(|n| !n.is_empty()),
        },
        repository_id: payload.repository.id,
        organization_id: payload.organization.as_ref().and_then(|o| o.id),
        organization_login: payload.organization.and_then(|o| o.login),
        installation_id: payload.installation.and_then(|i| i.id),
        runner_group_id: job.runner_group_id,
        runner_group_name: job.runner_group_name,
        head_branch: job.head_branch,
    })
}

/// Which jobs proxy-runner takes, judged by their `runs-on` labels. A policy
/// over the domain's rule, not a rule of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServedLabels {
    /// Every job asking for `self-hosted` (case-insensitive); its runner is
    /// registered with exactly the job's labels.
    #[default]
    AnySelfHosted,
    /// Configured runner label sets: a job is ours when a runner carrying one
    /// set may take it ([`runner_matches`]); the first such set wins.
    Sets(Vec<LabelSet>),
}

impl ServedLabels {
    /// Builds the `Sets` variant from configured lists (normalised; an empty
    /// list is dropped since it could serve only label-less jobs).
    pub fn from_sets<I, S>(sets: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = Vec<S>>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for set in sets {
            let parsed = LabelSet::parse_list(set.iter().map(|s| s.as_ref()))?;
            if !parsed.is_empty() {
                out.push(parsed);
            }
        }
        Ok(ServedLabels::Sets(out))
    }

    /// The labels to register a runner with for this job, or `None` when the
    /// job is not ours. Jobs without labels, or with labels GitHub would not
    /// accept, are never ours.
    pub fn runner_labels_for(&self, job_labels: &[String]) -> Option<LabelSet> {
        let job = LabelSet::parse_list(job_labels.iter().map(String::as_str)).ok()?;
        if job.is_empty() {
            return None;
        }
        match self {
            ServedLabels::AnySelfHosted => job.contains("self-hosted").then_some(job),
            ServedLabels::Sets(sets) => sets
                .iter()
                .find(|set| runner_matches(set.as_slice(), job.as_slice()))
                .cloned(),
        }
    }

    pub fn serves(&self, job_labels: &[String]) -> bool {
        self.runner_labels_for(job_labels).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_round_trip_and_unknown() {
        for s in ["queued", "waiting", "in_progress", "completed"] {
            let a = WorkflowJobAction::parse(s);
            assert!(!matches!(a, WorkflowJobAction::Other(_)), "{s}");
            assert_eq!(a.as_str(), s);
        }
        assert_eq!(
            WorkflowJobAction::parse("teleported"),
            WorkflowJobAction::Other("teleported".into())
        );
    }

    #[test]
    fn signature_header_matches_verify() {
        let secret = SecretString::from("s3cret");
        let header = signature_header(&secret, b"body");
        assert!(header.starts_with("sha256=") && header.len() == 71);
        assert_eq!(verify_signature(&secret, b"body", Some(&header)), Ok(()));
    }
}
