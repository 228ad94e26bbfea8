//! GitHub's `workflow_job` webhooks: the signature check over the raw body
//! and the payload parsing. Pure functions (no IO), so the orchestrator's
//! receiver uses them without depending on the GitHub REST adapter.
//!
//! GitHub adds fields over time, so parsing ignores unknown fields; an
//! unknown action is kept for the receiver to acknowledge and ignore. The
//! values of the fields we read meet the domain's value rules.

use hmac::{Hmac, KeyInit, Mac};
use proxy_runner_domain::ports::{Scope, WorkflowJobInfo};
use proxy_runner_domain::values::{
    FieldError, Fields, MAX_IDENTIFIER_LEN, MAX_TEXT_LEN, check_identifier, check_repository, kind,
    strict_json, workflow_job,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
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
    let mut check = SignatureCheck::begin(secret, header)?;
    check.update(body);
    check.finish()
}

/// A signature check fed the body as it arrives, so a receiver refuses a
/// delivery without a well-formed signature before reading any of it and
/// never needs the whole body in memory to verify it.
pub struct SignatureCheck {
    mac: HmacSha256,
    expected: Vec<u8>,
}

impl SignatureCheck {
    /// Parses the header; fails before a byte of the body is read.
    pub fn begin(secret: &SecretString, header: Option<&str>) -> Result<Self, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?.trim();
        let hex_digest = header
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed)?;
        if hex_digest.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
        let mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
            .map_err(|_| SignatureError::Mismatch)?;
        Ok(SignatureCheck { mac, expected })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.mac.update(chunk);
    }

    /// Compares in constant time.
    pub fn finish(self) -> Result<(), SignatureError> {
        self.mac
            .verify_slice(&self.expected)
            .map_err(|_| SignatureError::Mismatch)
    }
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
    /// Not JSON, a duplicate key, or not an object.
    #[error("webhook body is not a workflow_job payload: {0}")]
    Json(String),
    /// A field breaks the value rules every way into the store shares
    /// (`proxy_runner_domain::values`).
    #[error("webhook payload refused: {0}")]
    Invalid(#[from] FieldError),
}

impl WebhookError {
    /// The refused field's path, e.g. `workflow_job.id`.
    pub fn field(&self) -> Option<&str> {
        match self {
            WebhookError::Json(_) => None,
            WebhookError::Invalid(e) => Some(&e.field),
        }
    }
}

/// Parses the raw body of a `workflow_job` delivery (verify its signature
/// first) by the domain's value rules: the job meets exactly the rules a
/// hook's delegation and a job read from GitHub's REST API meet. Unknown
/// fields are ignored; an unknown `action` is kept (the receiver
/// acknowledges and ignores it); the values of the fields we read are
/// checked.
pub fn parse_workflow_job_event(body: &[u8]) -> Result<WorkflowJobEvent, WebhookError> {
    let value = strict_json(body).map_err(|e| {
        WebhookError::Json(if e.is_data() {
            // Only the duplicate-key message, which shows the key itself.
            e.to_string()
        } else {
            format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    })?;
    let Value::Object(obj) = value else {
        return Err(WebhookError::Json(format!(
            "the body is {}, not an object",
            kind(&value)
        )));
    };
    let top = Fields::new(&obj, "");
    let action = top
        .str("action")?
        .ok_or_else(|| FieldError::missing("action"))?;
    check_identifier("action", action, MAX_IDENTIFIER_LEN)?;
    let job = top
        .object("workflow_job")?
        .ok_or_else(|| FieldError::missing("workflow_job"))?;
    let job_fields = Fields::new(job, "workflow_job.");
    let repository = top
        .object("repository")?
        .ok_or_else(|| FieldError::missing("repository"))?;
    let repository = Fields::new(repository, "repository.");
    let full_name = repository
        .str("full_name")?
        .ok_or_else(|| FieldError::missing("repository.full_name"))?;
    check_repository("repository.full_name", full_name)?;
    let info = workflow_job(&job_fields, full_name)?;
    let organization = top.object("organization")?;
    let organization = organization.map(|o| Fields::new(o, "organization."));
    let installation = top.object("installation")?;
    let installation = installation.map(|i| Fields::new(i, "installation."));
    Ok(WorkflowJobEvent {
        action: WorkflowJobAction::parse(action),
        repository_id: repository.id("id")?,
        organization_id: organization.map(|o| o.id("id")).transpose()?.flatten(),
        organization_login: organization
            .map(|o| o.identifier("login", MAX_IDENTIFIER_LEN))
            .transpose()?
            .flatten(),
        installation_id: installation.map(|i| i.id("id")).transpose()?.flatten(),
        runner_group_id: job_fields.id_or_none("runner_group_id")?,
        runner_group_name: job_fields.text("runner_group_name", MAX_TEXT_LEN)?,
        head_branch: job_fields.text("head_branch", MAX_TEXT_LEN)?,
        job: info,
    })
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

    #[test]
    fn a_check_fed_in_chunks_equals_the_whole_body_check() {
        let secret = SecretString::from("s3cret");
        let body = b"{\"action\":\"queued\",\"workflow_job\":{}}";
        let header = signature_header(&secret, body);
        let mut check = SignatureCheck::begin(&secret, Some(&header)).unwrap();
        for chunk in body.chunks(5) {
            check.update(chunk);
        }
        assert_eq!(check.finish(), Ok(()));
        let mut wrong = SignatureCheck::begin(&secret, Some(&header)).unwrap();
        wrong.update(&body[..body.len() - 1]);
        assert_eq!(wrong.finish(), Err(SignatureError::Mismatch));
        // Refused before any of the body is seen.
        assert_eq!(
            SignatureCheck::begin(&secret, None).err(),
            Some(SignatureError::Missing)
        );
        assert_eq!(
            SignatureCheck::begin(&secret, Some("sha1=abc")).err(),
            Some(SignatureError::Malformed)
        );
    }
}
