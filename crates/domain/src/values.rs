//! The rules for values that come from outside: a hook's delegation and
//! completion, a GitHub webhook, GitHub's REST answers read by the poller.
//! One function per kind of value, so that a value gets the same verdict
//! whichever way it arrives. A refusal names the field; nothing is trimmed,
//! cut or coerced silently.
//!
//! - ids (`runId`, `workflow_job.id`, `run_id`): integers from 1 to
//!   2^63 - 1 (the stores keep them as signed 64-bit integers), as a JSON
//!   integer or a canonical decimal string (the design's hook quotes every
//!   value): no sign, no spaces, no leading zeros.
//! - attempts (`runAttempt`, `run_attempt`): the same forms, from 1 to 2^32 - 1.
//! - exit codes: a JSON integer that fits 32 bits signed (Windows reports
//!   NTSTATUS codes as negative numbers), never a string.
//! - enums: a job's status and conclusion are GitHub's documented values.
//! - identifiers (repository, job key, runner names, labels): no leading or
//!   trailing whitespace, no control character, bounded length.
//! - free text (workflow and job names): bounded length, no control
//!   character except tab and newline (GitHub keeps them in names; refusing
//!   them would fail the job for a cosmetic reason).

use serde_json::{Map, Value};

use crate::labels::{LabelError, LabelSet, Labels};
use crate::names::parse_repository;
use crate::ports::WorkflowJobInfo;

/// Ids are kept as signed 64-bit integers by both stores.
pub const MAX_ID: u64 = i64::MAX as u64;
/// Job keys, runner names and the like.
pub const MAX_IDENTIFIER_LEN: usize = 100;
/// Workflow and job names.
pub const MAX_TEXT_LEN: usize = 1024;
/// `owner/name`: 39 + 1 + 100, within [`parse_repository`]'s bound per part.
pub const MAX_REPOSITORY_LEN: usize = 201;

/// A job's `status` as GitHub's REST description lists it (webhooks send
/// the first four).
pub const JOB_STATUSES: [&str; 6] = [
    "queued",
    "in_progress",
    "completed",
    "waiting",
    "requested",
    "pending",
];

/// A job's `conclusion` as GitHub's REST description lists it; a hook's
/// completion uses the same words.
pub const JOB_CONCLUSIONS: [&str; 7] = [
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
];

/// Why a field was refused; `field` is its JSON path (`workflow_job.id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
    /// The field is absent (or null) but required.
    pub missing: bool,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
            missing: false,
        }
    }

    pub fn missing(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: "required".into(),
            missing: true,
        }
    }
}

/// What kind of JSON value `v` is, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value shown in a message: escaped and at most 40 characters.
pub fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let more = if s.chars().count() > 40 { "..." } else { "" };
    format!("{:?}{more}", cut)
}

// ------------------------------------------------------------------ numbers

/// An unsigned integer given as a JSON integer or a canonical decimal string.
fn unsigned(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("must be a positive integer, got {n}")),
        Value::String(s) => canonical_decimal(s),
        other => Err(format!("must be a positive integer, got {}", kind(other))),
    }
}

/// `s` as a canonical decimal: digits only, no leading zero, fits 64 bits.
pub fn canonical_decimal(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "must be a decimal integer (digits only, no sign or spaces), got {}",
            shown(s)
        ));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(format!("must not have leading zeros, got {}", shown(s)));
    }
    s.parse::<u64>()
        .map_err(|_| format!("is too large, got {}", shown(s)))
}

/// A GitHub id (job, run, runner): 1 to [`MAX_ID`].
pub fn id(field: &str, v: &Value) -> Result<u64, FieldError> {
    let n = unsigned(v).map_err(|p| FieldError::invalid(field, p))?;
    check_id(field, n)
}

/// An id already read as a number.
pub fn check_id(field: &str, n: u64) -> Result<u64, FieldError> {
    if n == 0 || n > MAX_ID {
        return Err(FieldError::invalid(
            field,
            format!("must be an integer from 1 to {MAX_ID}, got {n}"),
        ));
    }
    Ok(n)
}

/// A run attempt: 1 or more, fits 32 bits.
pub fn attempt(field: &str, v: &Value) -> Result<u32, FieldError> {
    let n = unsigned(v).map_err(|p| FieldError::invalid(field, p))?;
    match u32::try_from(n) {
        Ok(a) if a >= 1 => Ok(a),
        _ => Err(FieldError::invalid(
            field,
            format!("must be an integer from 1 to {}, got {n}", u32::MAX),
        )),
    }
}

/// A process exit code: a JSON integer that fits 32 bits signed.
pub fn exit_code(field: &str, v: &Value) -> Result<i32, FieldError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .ok_or_else(|| {
                FieldError::invalid(field, format!("must be a 32-bit integer, got {n}"))
            }),
        other => Err(FieldError::invalid(
            field,
            format!("must be a JSON integer, got {}", kind(other)),
        )),
    }
}

// ------------------------------------------------------------------ strings

/// An identifier: non-empty, at most `max` characters, no leading or
/// trailing whitespace, no control character.
pub fn check_identifier(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    check_length(field, s, max)?;
    if s.trim() != s {
        return Err(FieldError::invalid(
            field,
            format!("has leading or trailing whitespace: {}", shown(s)),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(control_character(field, c));
    }
    Ok(())
}

/// Free text: at most `max` characters, no control character but tab and
/// newline.
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    check_length(field, s, max)?;
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n'))
    {
        return Err(control_character(field, c));
    }
    Ok(())
}

/// A repository `owner/name`, as GitHub spells it.
pub fn check_repository(field: &str, s: &str) -> Result<(), FieldError> {
    check_length(field, s, MAX_REPOSITORY_LEN)?;
    parse_repository(s)
        .map(|_| ())
        .map_err(|e| FieldError::invalid(field, e.to_string()))
}

/// One of `allowed`.
pub fn check_enum(field: &str, s: &str, allowed: &[&str]) -> Result<(), FieldError> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            format!("must be one of {}, got {}", allowed.join(", "), shown(s)),
        ))
    }
}

fn check_length(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.chars().count() > max {
        return Err(FieldError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    Ok(())
}

fn control_character(field: &str, c: char) -> FieldError {
    FieldError::invalid(
        field,
        format!("contains a control character (U+{:04X})", c as u32),
    )
}

/// Labels in either wire form (a comma-separated string or an array of
/// strings), within the label rules.
pub fn labels(field: &str, v: &Value) -> Result<Vec<String>, FieldError> {
    let parsed = serde_json::from_value::<Labels>(v.clone()).map_err(|_| {
        FieldError::invalid(
            field,
            format!(
                "must be a comma-separated string or an array of strings, got {}",
                kind(v)
            ),
        )
    })?;
    parsed
        .parse()
        .map(LabelSet::into_vec)
        .map_err(|e: LabelError| FieldError::invalid(field, e.to_string()))
}

// ------------------------------------------------------------------ objects

/// The fields of one JSON object, read under a path prefix (`workflow_job.`)
/// so that every refusal names the full path. A JSON `null` is the same as
/// an absent field.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, prefix: &'a str) -> Self {
        Fields { obj, prefix }
    }

    /// The field's name as shown in messages.
    pub fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn required(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.get(key)
            .ok_or_else(|| FieldError::missing(self.path(key)))
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(FieldError::invalid(
                self.path(key),
                format!("must be a string, got {}", kind(other)),
            )),
        }
    }

    pub fn id(&self, key: &str) -> Result<Option<u64>, FieldError> {
        self.get(key).map(|v| id(&self.path(key), v)).transpose()
    }

    /// An id GitHub reports as 0 while there is none (a job's runner and
    /// runner group before a runner takes it): 0 is `None`.
    pub fn id_or_none(&self, key: &str) -> Result<Option<u64>, FieldError> {
        match self.get(key) {
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(None),
            _ => self.id(key),
        }
    }

    pub fn attempt(&self, key: &str) -> Result<Option<u32>, FieldError> {
        self.get(key)
            .map(|v| attempt(&self.path(key), v))
            .transpose()
    }

    pub fn identifier(&self, key: &str, max: usize) -> Result<Option<String>, FieldError> {
        let Some(s) = self.str(key)? else {
            return Ok(None);
        };
        check_identifier(&self.path(key), s, max)?;
        Ok(Some(s.to_string()))
    }

    pub fn text(&self, key: &str, max: usize) -> Result<Option<String>, FieldError> {
        let Some(s) = self.str(key)? else {
            return Ok(None);
        };
        check_text(&self.path(key), s, max)?;
        Ok(Some(s.to_string()))
    }

    pub fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<String>, FieldError> {
        let Some(s) = self.str(key)? else {
            return Ok(None);
        };
        check_enum(&self.path(key), s, allowed)?;
        Ok(Some(s.to_string()))
    }

    pub fn labels(&self, key: &str) -> Result<Vec<String>, FieldError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(v) => labels(&self.path(key), v),
        }
    }

    /// A nested object, read with its own prefix (`prefix` must be
    /// `self.path(key) + "."`).
    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(FieldError::invalid(
                self.path(key),
                format!("must be an object, got {}", kind(other)),
            )),
        }
    }
}

/// A workflow job as GitHub describes it, in a webhook's `workflow_job` and
/// in the REST API's job objects alike (`fields` reads that object);
/// `repository` is the already checked `owner/name`.
pub fn workflow_job(fields: &Fields<'_>, repository: &str) -> Result<WorkflowJobInfo, FieldError> {
    let id = fields
        .id("id")?
        .ok_or_else(|| FieldError::missing(fields.path("id")))?;
    let run_id = fields
        .id("run_id")?
        .ok_or_else(|| FieldError::missing(fields.path("run_id")))?;
    let run_attempt = fields.attempt("run_attempt")?.unwrap_or(1);
    let name = fields.text("name", MAX_TEXT_LEN)?.unwrap_or_default();
    let workflow_name = fields
        .text("workflow_name", MAX_TEXT_LEN)?
        .unwrap_or_default();
    let status = fields
        .one_of("status", &JOB_STATUSES)?
        .ok_or_else(|| FieldError::missing(fields.path("status")))?;
    let conclusion = fields.one_of("conclusion", &JOB_CONCLUSIONS)?;
    let labels = fields.labels("labels")?;
    // GitHub reports an empty runner name while no runner has the job.
    let runner_id = fields.id_or_none("runner_id")?;
    let runner_name = match fields.str("runner_name")? {
        None | Some("") => None,
        Some(s) => {
            check_identifier(&fields.path("runner_name"), s, MAX_IDENTIFIER_LEN)?;
            Some(s.to_string())
        }
    };
    Ok(WorkflowJobInfo {
        id,
        run_id,
        run_attempt,
        repository: repository.to_string(),
        name,
        workflow_name,
        status,
        conclusion,
        labels,
        runner_id,
        runner_name,
    })
}

// ------------------------------------------------------------------ JSON

/// Parses a JSON document whose objects have no duplicate keys: with "last
/// one wins", a value spliced into a string (as the design's hook builds its
/// body) could override a field set before it.
pub fn strict_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(body).map(|v| v.0)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_positive_integers_or_canonical_decimal_strings() {
        let ok: &[(Value, u64)] = &[
            (json!(1), 1),
            (json!(12), 12),
            (json!("12"), 12),
            (json!("9223372036854775807"), MAX_ID),
            (json!(MAX_ID), MAX_ID),
        ];
        for (v, want) in ok {
            assert_eq!(id("runId", v), Ok(*want), "{v}");
        }
        let bad: &[(Value, &str)] = &[
            (json!(0), "from 1"),
            (json!("0"), "from 1"),
            (json!(-4), "positive integer"),
            (json!(1.5), "positive integer"),
            (json!(1e3), "positive integer"),
            (json!(" 12"), "digits only"),
            (json!("12 "), "digits only"),
            (json!("+12"), "digits only"),
            (json!("-12"), "digits only"),
            (json!("012"), "leading zeros"),
            (json!("1_000"), "digits only"),
            (json!("0x10"), "digits only"),
            (json!(""), "empty"),
            (json!("18446744073709551616"), "too large"),
            (json!("9223372036854775808"), "from 1"),
            (json!(u64::MAX), "from 1"),
            (json!(true), "a boolean"),
            (json!([1]), "an array"),
        ];
        for (v, mentions) in bad {
            let e = id("runId", v).unwrap_err();
            assert_eq!(e.field, "runId", "{v}");
            assert!(!e.missing);
            assert!(e.problem.contains(mentions), "{v}: {e}");
        }
    }

    #[test]
    fn attempts_start_at_one() {
        assert_eq!(attempt("runAttempt", &json!("1")), Ok(1));
        assert_eq!(attempt("runAttempt", &json!(3)), Ok(3));
        for v in [json!(0), json!("0"), json!(4_294_967_296u64), json!("01")] {
            assert_eq!(attempt("runAttempt", &v).unwrap_err().field, "runAttempt");
        }
    }

    #[test]
    fn exit_codes_are_json_integers() {
        assert_eq!(exit_code("exitCode", &json!(0)), Ok(0));
        assert_eq!(exit_code("exitCode", &json!(-1073741819)), Ok(-1073741819));
        for v in [
            json!("0"),
            json!(1.5),
            json!(99_999_999_999i64),
            json!(null),
        ] {
            assert_eq!(
                exit_code("exitCode", &v).unwrap_err().field,
                "exitCode",
                "{v}"
            );
        }
    }

    #[test]
    fn identifiers_and_free_text() {
        for s in ["p", "GitHub Actions 5", "runner-1.x_y"] {
            assert_eq!(check_identifier("runnerName", s, 100), Ok(()), "{s:?}");
        }
        for (s, mentions) in [
            ("", "empty"),
            (" p", "whitespace"),
            ("p ", "whitespace"),
            ("p\n", "whitespace"),
            ("a\u{0}b", "U+0000"),
            ("a\tb", "U+0009"),
            ("a\u{7f}b", "U+007F"),
            ("a\u{85}b", "U+0085"),
        ] {
            let e = check_identifier("runnerName", s, 100).unwrap_err();
            assert!(e.problem.contains(mentions), "{s:?}: {e}");
        }
        assert!(check_identifier("x", &"a".repeat(101), 100).is_err());
        assert_eq!(check_identifier("x", &"é".repeat(100), 100), Ok(()));

        for s in ["", "CI", "CI\tnightly", "line one\nline two", " padded "] {
            assert_eq!(check_text("workflow", s, 1024), Ok(()), "{s:?}");
        }
        for (s, mentions) in [
            ("a\u{0}", "U+0000"),
            ("a\rb", "U+000D"),
            ("\u{1b}[31m", "U+001B"),
        ] {
            let e = check_text("workflow", s, 1024).unwrap_err();
            assert!(e.problem.contains(mentions), "{s:?}: {e}");
        }
        assert!(check_text("workflow", &"w".repeat(1025), 1024).is_err());
    }

    #[test]
    fn repositories_and_enums() {
        assert_eq!(check_repository("repository", "octo-org/octo.repo"), Ok(()));
        for s in [" o/r", "o/r ", "o r", "o/r/x", "", "o/", "../.."] {
            assert!(check_repository("repository", s).is_err(), "{s:?}");
        }
        for s in JOB_CONCLUSIONS {
            assert_eq!(check_enum("conclusion", s, &JOB_CONCLUSIONS), Ok(()));
        }
        for s in ["bogus", "Success", "success ", ""] {
            let e = check_enum("conclusion", s, &JOB_CONCLUSIONS).unwrap_err();
            assert!(e.problem.contains("must be one of success"), "{e}");
        }
        assert!(check_enum("status", "exploded", &JOB_STATUSES).is_err());
    }

    fn job_json() -> Value {
        json!({"id": 7, "run_id": 8, "run_attempt": 2, "status": "queued",
               "name": "build (linux)", "workflow_name": "CI", "labels": ["self-hosted"],
               "runner_id": 0, "runner_name": "", "conclusion": null})
    }

    fn read(v: &Value) -> Result<WorkflowJobInfo, FieldError> {
        workflow_job(&Fields::new(v.as_object().unwrap(), "workflow_job."), "o/r")
    }

    #[test]
    fn a_github_job_object() {
        let job = read(&job_json()).unwrap();
        assert_eq!((job.id, job.run_id, job.run_attempt), (7, 8, 2));
        assert_eq!(job.runner_id, None);
        assert_eq!(job.runner_name, None);
        assert_eq!(job.labels, ["self-hosted"]);
        let cases: &[(&str, Value, &str)] = &[
            ("id", json!(0), "workflow_job.id"),
            ("id", json!(null), "workflow_job.id"),
            ("run_id", json!("+8"), "workflow_job.run_id"),
            ("run_attempt", json!(0), "workflow_job.run_attempt"),
            ("status", json!("exploded"), "workflow_job.status"),
            ("conclusion", json!("bogus"), "workflow_job.conclusion"),
            ("labels", json!(["a\u{0}"]), "workflow_job.labels"),
            ("labels", json!([" a"]), "workflow_job.labels"),
            ("name", json!("x\u{0}"), "workflow_job.name"),
            (
                "workflow_name",
                json!("x\u{1}"),
                "workflow_job.workflow_name",
            ),
            ("runner_name", json!(" r"), "workflow_job.runner_name"),
            ("runner_id", json!(-1), "workflow_job.runner_id"),
        ];
        for (key, value, field) in cases {
            let mut v = job_json();
            v[key] = value.clone();
            assert_eq!(read(&v).unwrap_err().field, *field, "{key} = {value}");
        }
        let mut many = job_json();
        many["labels"] = Value::Array(vec![json!("x"); 10_000]);
        assert_eq!(read(&many).unwrap_err().field, "workflow_job.labels");
        // Tab and newline in free text pass here as they pass in a delegation.
        let mut v = job_json();
        v["workflow_name"] = json!("CI\tnightly\nrun");
        assert_eq!(read(&v).unwrap().workflow_name, "CI\tnightly\nrun");
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(strict_json(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert!(strict_json(br#"[{"a":1},{"a":1}]"#).is_ok());
        assert_eq!(
            strict_json(br#"{"a":[1,"x",null,true,1.5,-2]}"#).unwrap(),
            json!({"a":[1,"x",null,true,1.5,-2]})
        );
    }
}
