//! Parsing of untrusted request bodies into domain values. Every rejection
//! names the field and the problem; nothing here panics.

use std::collections::BTreeMap;

use proxy_runner_domain::env_filter::{
    MAX_ENV_ENTRIES, MAX_ENV_NAME_LEN, filter_environment, redact_json,
};
use proxy_runner_domain::labels::Labels;
use proxy_runner_domain::names::parse_repository;
use proxy_runner_domain::{JobSource, NewJob};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::error::ApiError;

const MAX_KEY_LEN: usize = 100;
const MAX_NAME_LEN: usize = 1024;
const MAX_NEEDS: usize = 256;
const MAX_MATRIX_BYTES: usize = 64 * 1024;

/// Parses a request body as a JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json(
            "request body is empty; a JSON object is required",
        ));
    }
    let value = serde_json::from_slice::<Strict>(body)
        .map(|v| v.0)
        .map_err(|e| ApiError::bad_json(format!("request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_json(format!(
            "request body must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

/// A JSON value whose objects have no duplicate keys: with "last one
/// wins", a value spliced into a string (as the design's hook builds its
/// body) could override a field set before it.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {:?}",
                    key.chars().take(64).collect::<String>()
                )));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Strict(Value::Object(out)))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(
    obj: &Map<String, Value>,
    field: &str,
    required: bool,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) if required => Err(ApiError::missing(field)),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if required && s.is_empty() {
                return Err(ApiError::invalid(field, "must not be empty"));
            }
            if s.chars().count() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("longer than {max} characters"),
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(ApiError::invalid(field, "contains a control character"));
            }
            Ok(Some(s.to_string()))
        }
        Some(other) => Err(ApiError::invalid(
            field,
            format!("must be a string, got {}", kind(other)),
        )),
    }
}

/// A positive integer sent as a number or as a decimal string (the design's
/// hook quotes every value).
fn number_field(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    let parsed = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::invalid(field, "must not be empty"));
        }
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(other) => {
            return Err(ApiError::invalid(
                field,
                format!("must be a positive integer, got {}", kind(other)),
            ));
        }
    };
    match parsed {
        Some(n) if n > 0 && n <= i64::MAX as u64 => Ok(Some(n)),
        _ => Err(ApiError::invalid(field, "must be a positive integer")),
    }
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
        if name.is_empty() || name.len() > MAX_ENV_NAME_LEN || name.contains('=') {
            let shown: String = name.chars().take(40).collect();
            return Err(ApiError::invalid(
                "environment",
                format!("bad variable name {shown:?}"),
            ));
        }
        match value {
            // The design's jq turns lines without '=' into null values: skip them.
            Value::Null => {}
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

fn needs_field(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let labels = match obj.get("needs") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v) => serde_json::from_value::<Labels>(v.clone()).map_err(|_| {
            ApiError::invalid(
                "needs",
                format!(
                    "must be an array of strings or a comma-separated string, got {}",
                    kind(v)
                ),
            )
        })?,
    };
    let set = labels
        .parse()
        .map_err(|e| ApiError::invalid("needs", e))?
        .into_vec();
    if set.len() > MAX_NEEDS {
        return Err(ApiError::invalid(
            "needs",
            format!("more than {MAX_NEEDS} entries"),
        ));
    }
    Ok(set)
}

/// What a delegate call carries, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub job: NewJob,
    /// How many environment entries were dropped as credentials.
    pub dropped_secrets: usize,
}

/// Parses the body of `POST /api/jobs/delegate` as the design's
/// `hooks/job-started.sh` builds it (plus the optional fields of `JobContext`).
/// Unknown fields are ignored; `secrets` is read past and never kept.
pub fn parse_delegation(body: &[u8]) -> Result<Delegation, ApiError> {
    let obj = json_object(body)?;
    let job_key = string_field(&obj, "jobId", true, MAX_KEY_LEN)?.unwrap_or_default();
    let run_id = number_field(&obj, "runId")?.ok_or_else(|| ApiError::missing("runId"))?;
    let run_attempt = number_field(&obj, "runAttempt")?.unwrap_or(1);
    let run_attempt =
        u32::try_from(run_attempt).map_err(|_| ApiError::invalid("runAttempt", "too large"))?;
    let repository = string_field(&obj, "repository", true, 201)?.unwrap_or_default();
    parse_repository(&repository).map_err(|e| ApiError::invalid("repository", e))?;
    let workflow = string_field(&obj, "workflow", false, MAX_NAME_LEN)?.unwrap_or_default();
    let runner_name = string_field(&obj, "runnerName", true, MAX_KEY_LEN)?.unwrap_or_default();
    let labels = match obj.get("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Labels>(v.clone())
            .map_err(|_| {
                ApiError::invalid(
                    "labels",
                    format!(
                        "must be a comma-separated string or an array of strings, got {}",
                        kind(v)
                    ),
                )
            })?
            .parse()
            .map_err(|e| ApiError::invalid("labels", e))?
            .into_vec(),
    };
    let (environment, dropped_secrets) = filter_environment(environment_field(&obj)?);
    let matrix = match obj.get("matrix") {
        None | Some(Value::Null) => None,
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
    let needs = needs_field(&obj)?;
    // Credentials inside the matrix are replaced, counted with the dropped
    // environment entries so that nothing vanishes unexplained.
    let mut matrix = matrix;
    let redacted = matrix.as_mut().map_or(0, redact_json);
    let dropped_secrets = dropped_secrets + redacted;
    Ok(Delegation {
        job: NewJob {
            job_key,
            run_id,
            run_attempt,
            repository,
            workflow,
            runner_name: Some(runner_name),
            labels,
            environment,
            matrix,
            needs,
            github_job_id: None,
            source: JobSource::Hook,
        },
        dropped_secrets,
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

pub fn parse_completion(body: &[u8]) -> Result<Completion, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Completion::default());
    }
    let obj = json_object(body)?;
    let exit_code = match obj.get("exitCode") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| ApiError::invalid("exitCode", "must be a 32-bit integer"))?,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<i32>()
                .map_err(|_| ApiError::invalid("exitCode", "must be an integer"))?,
        ),
        Some(other) => {
            return Err(ApiError::invalid(
                "exitCode",
                format!("must be an integer, got {}", kind(other)),
            ));
        }
    };
    let conclusion = string_field(&obj, "conclusion", false, 32)?.filter(|c| !c.is_empty());
    if let Some(c) = &conclusion
        && !c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
    {
        return Err(ApiError::invalid(
            "conclusion",
            "must be lower-case letters and '_' (e.g. success, failure, cancelled)",
        ));
    }
    Ok(Completion {
        exit_code,
        conclusion,
    })
}

/// Body of `POST /api/tokens`.
pub fn parse_token_request(body: &[u8]) -> Result<String, ApiError> {
    let obj = json_object(body)?;
    let runner = string_field(&obj, "runner", true, MAX_KEY_LEN)?.unwrap_or_default();
    Ok(runner)
}

/// Longest token value `POST /api/tokens/revoke` accepts (issued ones are
/// 47 characters).
const MAX_TOKEN_LEN: usize = 512;

/// Body of `POST /api/tokens/revoke`: `{"token": value}`. The value is a
/// secret from here on; errors never quote it.
pub fn parse_token_value(body: &[u8]) -> Result<SecretString, ApiError> {
    let obj = json_object(body)?;
    let token = string_field(&obj, "token", true, MAX_TOKEN_LEN)?.unwrap_or_default();
    Ok(SecretString::from(token))
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
        assert_eq!(d.dropped_secrets, 1);
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
        let c = parse_completion(br#"{"exitCode": "0", "conclusion": null}"#).unwrap();
        assert_eq!(c.effective_conclusion().as_deref(), Some("success"));
        let c = parse_completion(br#"{"conclusion": "cancelled"}"#).unwrap();
        assert_eq!(c.effective_conclusion().as_deref(), Some("cancelled"));
        for (body, field) in [
            (r#"{"exitCode": 1.5}"#, "exitCode"),
            (r#"{"exitCode": 99999999999}"#, "exitCode"),
            (r#"{"exitCode": []}"#, "exitCode"),
            (r#"{"conclusion": "Success!"}"#, "conclusion"),
            (r#"{"conclusion": 3}"#, "conclusion"),
        ] {
            let err = parse_completion(body.as_bytes()).unwrap_err();
            assert!(err.message.starts_with(field), "{body}: {}", err.message);
        }
        assert_eq!(parse_completion(b"{").unwrap_err().code, "bad_json");
    }
}
