//! Parsing of untrusted request bodies into domain values. Every rejection
//! names the field and the problem; nothing here panics.

use std::collections::BTreeMap;

use proxy_runner_domain::env_filter::{
    MAX_ENV_ENTRIES, MAX_ENV_NAME_LEN, filter_environment, redact_json,
};
use proxy_runner_domain::values::{
    FieldError, Fields, JOB_CONCLUSIONS, MAX_IDENTIFIER_LEN, MAX_TEXT_LEN, check_repository,
    exit_code, kind, strict_json,
};
use proxy_runner_domain::{JobSource, NewJob};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::error::ApiError;

const MAX_NEEDS: usize = 256;
const MAX_MATRIX_BYTES: usize = 64 * 1024;

/// Parses a request body as a JSON object without duplicate keys.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json(
            "request body is empty; a JSON object is required",
        ));
    }
    let value = strict_json(body)
        .map_err(|e| ApiError::bad_json(format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_json(format!(
            "request body must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        if e.missing {
            ApiError::missing(&e.field)
        } else {
            ApiError::invalid(&e.field, e.problem)
        }
    }
}

/// A required identifier (job key, runner name): the domain's rule.
fn identifier_field(fields: &Fields<'_>, key: &str) -> Result<String, ApiError> {
    Ok(fields
        .identifier(key, MAX_IDENTIFIER_LEN)?
        .ok_or_else(|| FieldError::missing(key))?)
}

fn environment_field(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let map = match obj.get("environment") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ApiError::invalid(
                "environment",
                format!("must be an object of strings, got {}", kind(other)),
            ));
        }
    };
    if map.len() > MAX_ENV_ENTRIES {
        return Err(ApiError::invalid(
            "environment",
            format!("more than {MAX_ENV_ENTRIES} entries"),
        ));
    }
    let mut env = BTreeMap::new();
    for (name, value) in map {
        if name.is_empty()
            || name.len() > MAX_ENV_NAME_LEN
            || name.contains('=')
            || name.contains('\0')
        {
            let shown: String = name.chars().take(40).collect();
            return Err(ApiError::invalid(
                "environment",
                format!("bad variable name {shown:?}"),
            ));
        }
        match value {
            // The design's jq turns lines without '=' into null values: skip them.
            Value::Null => {}
            // No process environment holds a NUL; the engine would refuse it.
            Value::String(s) if s.contains('\0') => {
                return Err(ApiError::invalid(
                    &format!("environment.{}", name.chars().take(40).collect::<String>()),
                    "contains a control character (U+0000)",
                ));
            }
            // Kept whole (the body limit bounds it): nothing is cut without
            // notice, and one long variable does not fail a job.
            Value::String(s) => {
                env.insert(name.clone(), s.clone());
            }
            Value::Number(_) | Value::Bool(_) => {
                env.insert(name.clone(), value.to_string());
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("environment.{name}"),
                    format!("must be a string, got {}", kind(other)),
                ));
            }
        }
    }
    Ok(env)
}

fn needs_field(fields: &Fields<'_>) -> Result<Vec<String>, ApiError> {
    // `needs` are job keys, in either of the labels' wire forms.
    let needs = fields.labels("needs")?;
    if needs.len() > MAX_NEEDS {
        return Err(ApiError::invalid(
            "needs",
            format!("more than {MAX_NEEDS} entries"),
        ));
    }
    Ok(needs)
}

/// What a delegate call carries, validated; `job.dropped_secrets` counts
/// what was dropped as credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub job: NewJob,
}

/// Parses the body of `POST /api/jobs/delegate` as the design's
/// `hooks/job-started.sh` builds it (plus the optional fields of `JobContext`),
/// by the domain's value rules (`values`), the same a webhook meets.
/// Unknown fields are ignored; `secrets` is read past and never kept.
pub fn parse_delegation(body: &[u8]) -> Result<Delegation, ApiError> {
    let obj = json_object(body)?;
    let fields = Fields::new(&obj, "");
    let job_key = identifier_field(&fields, "jobId")?;
    let run_id = fields
        .id("runId")?
        .ok_or_else(|| FieldError::missing("runId"))?;
    let run_attempt = fields.attempt("runAttempt")?.unwrap_or(1);
    let repository = fields
        .str("repository")?
        .ok_or_else(|| FieldError::missing("repository"))?;
    check_repository("repository", repository)?;
    let workflow = fields.text("workflow", MAX_TEXT_LEN)?.unwrap_or_default();
    let runner_name = identifier_field(&fields, "runnerName")?;
    let labels = fields.labels("labels")?;
    let (environment, dropped_secrets) = filter_environment(environment_field(&obj)?);
    let mut matrix = match fields.get("matrix") {
        None => None,
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > MAX_MATRIX_BYTES {
                return Err(ApiError::invalid(
                    "matrix",
                    format!("larger than {MAX_MATRIX_BYTES} bytes"),
                ));
            }
            Some(v.clone())
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "matrix",
                format!("must be an object, got {}", kind(other)),
            ));
        }
    };
    let needs = needs_field(&fields)?;
    // Credentials inside the matrix are replaced, counted with the dropped
    // environment entries so that nothing vanishes unexplained.
    let redacted = matrix.as_mut().map_or(0, redact_json);
    let dropped_secrets = u32::try_from(dropped_secrets + redacted).unwrap_or(u32::MAX);
    Ok(Delegation {
        job: NewJob {
            job_key,
            run_id,
            run_attempt,
            repository: repository.to_string(),
            workflow,
            runner_name: Some(runner_name),
            labels,
            environment,
            matrix,
            needs,
            github_job_id: None,
            source: JobSource::Hook,
            dropped_secrets,
        },
    })
}

/// The optional body of `POST /api/jobs/{id}/complete`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub exit_code: Option<i32>,
    pub conclusion: Option<String>,
}

impl Completion {
    /// The conclusion to record: the one sent, else one derived from the exit code.
    pub fn effective_conclusion(&self) -> Option<String> {
        self.conclusion.clone().or_else(|| {
            self.exit_code
                .map(|c| if c == 0 { "success" } else { "failure" }.to_string())
        })
    }
}

/// Parses the optional body of a completion: `exitCode` a JSON integer,
/// `conclusion` one of GitHub's job conclusions.
pub fn parse_completion(body: &[u8]) -> Result<Completion, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Completion::default());
    }
    let obj = json_object(body)?;
    let fields = Fields::new(&obj, "");
    let exit_code = fields
        .get("exitCode")
        .map(|v| exit_code("exitCode", v))
        .transpose()?;
    let conclusion = fields.one_of("conclusion", &JOB_CONCLUSIONS)?;
    Ok(Completion {
        exit_code,
        conclusion,
    })
}

/// Body of `POST /api/tokens`.
pub fn parse_token_request(body: &[u8]) -> Result<String, ApiError> {
    let obj = json_object(body)?;
    identifier_field(&Fields::new(&obj, ""), "runner")
}

/// Longest token value `POST /api/tokens/revoke` accepts (issued ones are
/// 47 characters).
const MAX_TOKEN_LEN: usize = 512;

/// Body of `POST /api/tokens/revoke`: `{"token": value}`. The value is a
/// secret from here on; errors never quote it.
pub fn parse_token_value(body: &[u8]) -> Result<SecretString, ApiError> {
    let obj = json_object(body)?;
    let token = Fields::new(&obj, "")
        .str("token")?
        .ok_or_else(|| FieldError::missing("token"))?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.contains(char::is_control) {
        return Err(ApiError::invalid(
            "token",
            format!(
                "must be a token value (1 to {MAX_TOKEN_LEN} characters, no control characters)"
            ),
        ));
    }
    Ok(SecretString::from(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_hook_body_parses() {
        // Exactly the shape hooks/job-started.sh builds: strings everywhere,
        // labels joined, env from jq (values after the first '=' are lost and
        // lines without '=' become null).
        let body = br#"{
  "jobId": "build",
  "runId": "123456",
  "repository": "octo-org/octo-repo",
  "workflow": "CI",
  "runnerName": "proxy-1",
  "labels": "self-hosted,linux,x64",
  "environment": {"GITHUB_JOB":"build","RUNNER_TOKEN":"AAAA","PATH":"/usr/bin","  continued":null}
}"#;
        let d = parse_delegation(body).unwrap();
        assert_eq!(d.job.job_key, "build");
        assert_eq!(d.job.run_id, 123456);
        assert_eq!(d.job.run_attempt, 1);
        assert_eq!(d.job.labels, ["self-hosted", "linux", "x64"]);
        assert_eq!(d.job.dropped_secrets, 1);
        assert!(!d.job.environment.contains_key("RUNNER_TOKEN"));
        assert_eq!(d.job.environment.len(), 2);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "jobId"),
            (r#"{"jobId":"b"}"#, "runId"),
            (r#"{"jobId":"b","runId":"x"}"#, "runId"),
            (r#"{"jobId":"b","runId":""}"#, "runId"),
            (r#"{"jobId":"b","runId":-4}"#, "runId"),
            (r#"{"jobId":"b","runId":1}"#, "repository"),
            (
                r#"{"jobId":"b","runId":1,"repository":"nope"}"#,
                "repository",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r"}"#,
                "runnerName",
            ),
            (
                r#"{"jobId":"","runId":1,"repository":"o/r","runnerName":"p"}"#,
                "jobId",
            ),
            (
                r#"{"jobId":5,"runId":1,"repository":"o/r","runnerName":"p"}"#,
                "jobId",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r","runnerName":"p","labels":5}"#,
                "labels",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r","runnerName":"p","environment":[]}"#,
                "environment",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r","runnerName":"p","environment":{"A":{}}}"#,
                "environment.A",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r","runnerName":"p","matrix":"x"}"#,
                "matrix",
            ),
            (
                r#"{"jobId":"b","runId":1,"repository":"o/r","runnerName":"p","needs":{}}"#,
                "needs",
            ),
            (
                r#"{"jobId":"b","runId":1,"runAttempt":"0","repository":"o/r","runnerName":"p"}"#,
                "runAttempt",
            ),
        ];
        for (body, field) in cases {
            let err = parse_delegation(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, 422, "{body}");
            assert!(err.message.starts_with(field), "{body}: {}", err.message);
        }
        for body in ["", "  ", "{", "[1]", "\"x\"", "null"] {
            let err = parse_delegation(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.code, "bad_json");
        }
    }

    #[test]
    fn optional_fields_and_array_labels() {
        let body = br#"{"jobId":"t","runId":7,"runAttempt":2,"repository":"o/r","runnerName":"p",
            "labels":["a","b"],"matrix":{"os":"linux"},"needs":["lint"],"secrets":{"X":"y"},"extra":1}"#;
        let d = parse_delegation(body).unwrap();
        assert_eq!(d.job.run_attempt, 2);
        assert_eq!(d.job.labels, ["a", "b"]);
        assert_eq!(d.job.needs, ["lint"]);
        assert_eq!(d.job.matrix, Some(serde_json::json!({"os":"linux"})));
    }

    #[test]
    fn completion_bodies() {
        assert_eq!(parse_completion(b"").unwrap(), Completion::default());
        let c = parse_completion(br#"{"exitCode": 2}"#).unwrap();
        assert_eq!(c.effective_conclusion().as_deref(), Some("failure"));
        let c = parse_completion(br#"{"exitCode": 0, "conclusion": null}"#).unwrap();
        assert_eq!(c.effective_conclusion().as_deref(), Some("success"));
        let c = parse_completion(br#"{"conclusion": "cancelled"}"#).unwrap();
        assert_eq!(c.effective_conclusion().as_deref(), Some("cancelled"));
        for (body, field) in [
            (r#"{"exitCode": 1.5}"#, "exitCode"),
            (r#"{"exitCode": 99999999999}"#, "exitCode"),
            (r#"{"exitCode": []}"#, "exitCode"),
            (r#"{"conclusion": "Success!"}"#, "conclusion"),
            (r#"{"conclusion": 3}"#, "conclusion"),
            (r#"{"exitCode": "0"}"#, "exitCode"),
            (r#"{"conclusion": "bogus"}"#, "conclusion"),
            (r#"{"conclusion": ""}"#, "conclusion"),
        ] {
            let err = parse_completion(body.as_bytes()).unwrap_err();
            assert!(err.message.starts_with(field), "{body}: {}", err.message);
        }
        assert_eq!(parse_completion(b"{").unwrap_err().code, "bad_json");
    }
}
