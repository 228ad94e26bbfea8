//! Wire shapes of the REST responses we read (per GitHub's OpenAPI
//! description). Unknown fields are ignored; fields GitHub may omit default.

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{RunnerInfo, WorkflowJobInfo};
use proxy_runner_domain::values::{self, FieldError, Fields};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct ApiRunnerLabel {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ApiRunner {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<ApiRunnerLabel>,
    #[serde(default)]
    pub ephemeral: bool,
}

impl From<ApiRunner> for RunnerInfo {
    fn from(r: ApiRunner) -> Self {
        RunnerInfo {
            id: r.id,
            name: r.name,
            os: r.os,
            status: r.status,
            busy: r.busy,
            labels: r.labels.into_iter().map(|l| l.name).collect(),
            ephemeral: r.ephemeral,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnerPage {
    #[serde(default)]
    pub runners: Vec<ApiRunner>,
}

#[derive(Deserialize)]
pub(crate) struct JitConfigResponse {
    pub runner: ApiRunner,
    pub encoded_jit_config: String,
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstallationResponse {
    pub id: u64,
}

/// A job object of the REST API (`GET .../actions/jobs/{id}`, a run's
/// jobs), read by the domain's value rules: the same verdict a webhook's
/// `workflow_job` gets.
pub(crate) fn job_info(
    job: &serde_json::Value,
    repository: &str,
) -> Result<WorkflowJobInfo, FieldError> {
    let serde_json::Value::Object(obj) = job else {
        return Err(FieldError::invalid("job", "must be an object"));
    };
    values::workflow_job(&Fields::new(obj, "job."), repository)
}

#[derive(Debug, Deserialize)]
pub(crate) struct JobPage {
    #[serde(default)]
    pub jobs: Vec<serde_json::Value>,
}

/// A workflow run, as far as polling needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowRunInfo {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub run_attempt: Option<u32>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunPage {
    #[serde(default)]
    pub workflow_runs: Vec<WorkflowRunInfo>,
}

/// GitHub's error body: `{message, documentation_url, errors?}`; `errors`
/// holds strings (validation-error-simple) or objects (validation-error).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ApiErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub errors: Option<Vec<serde_json::Value>>,
}

impl ApiErrorBody {
    pub(crate) fn parse(body: &[u8]) -> ApiErrorBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// `message` plus the `errors[]` entries, in one line.
    pub(crate) fn describe(&self) -> String {
        let mut out = self.message.clone().unwrap_or_default();
        let details: Vec<String> = self
            .errors
            .iter()
            .flatten()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => {
                    let field = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("");
                    let parts: Vec<&str> = ["resource", "field", "code", "message"]
                        .into_iter()
                        .map(field)
                        .filter(|s| !s.is_empty())
                        .collect();
                    parts.join(" ")
                }
                other => other.to_string(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !details.is_empty() {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&details.join("; "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_both_shapes() {
        let simple = ApiErrorBody::parse(
            br#"{"message":"Validation Failed","documentation_url":"x","errors":["labels must have at least 1 item"]}"#,
        );
        assert_eq!(
            simple.describe(),
            "Validation Failed: labels must have at least 1 item"
        );
        let full = ApiErrorBody::parse(
            br#"{"message":"Validation Failed","errors":[{"resource":"Runner","field":"name","code":"invalid"}]}"#,
        );
        assert_eq!(full.describe(), "Validation Failed: Runner name invalid");
        assert_eq!(ApiErrorBody::parse(b"<html>").describe(), "");
    }

    #[test]
    fn runner_from_openapi_example() {
        let r: ApiRunner = serde_json::from_str(
            r#"{"id":23,"name":"MBP","os":"macos","status":"online","busy":true,"ephemeral":false,
                "version":"2.323.0","labels":[{"id":5,"name":"self-hosted","type":"read-only"},{"id":21,"name":"no-gpu","type":"custom"}]}"#,
        )
        .unwrap();
        let info = RunnerInfo::from(r);
        assert_eq!(info.id, 23);
        assert_eq!(info.labels, vec!["self-hosted", "no-gpu"]);
        assert!(info.busy);
    }
}
