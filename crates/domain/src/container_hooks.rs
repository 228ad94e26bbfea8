//! The actions runner's container-hook input (`ACTIONS_RUNNER_CONTAINER_HOOKS`)
//! and the answer to `prepare_job`.
//!
//! The runner writes one line of camelCase JSON to the hook's stdin:
//! `{command, responseFile, args, state}`. It adds fields over time, so
//! unknown fields are ignored; wrong types, missing required fields and
//! values over the limits in [`limits`] are errors that name the field (by
//! its JSON path, e.g. `args.container.image`). Error messages never carry a
//! value, only names, kinds and sizes: values may be credentials.
//!
//! Parsing goes through [`serde_json::Value`] by hand rather than derived
//! `Deserialize`, because derived errors do not say which nested field was
//! wrong. The types still implement `Deserialize` (with the same checks) so
//! they can sit in request bodies.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Size limits of the hook input. Generous for real jobs, small enough that
/// a broken or hostile runner cannot make the orchestrator hold much.
pub mod limits {
    /// The whole input line.
    pub const INPUT_BYTES: usize = 4 * 1024 * 1024;
    /// Image names, paths, entry points, registry fields, names.
    pub const STRING_BYTES: usize = 4096;
    /// `createOptions`.
    pub const CREATE_OPTIONS_BYTES: usize = 8192;
    /// One entry-point argument (Linux's limit on one argument string).
    pub const ARG_BYTES: usize = 128 * 1024;
    /// Items of `entryPointArgs`, `portMappings` and `prependPath`.
    pub const LIST_ITEMS: usize = 256;
    /// Items of each mount list.
    pub const MOUNTS: usize = 64;
    /// Service containers of one job.
    pub const SERVICES: usize = 32;
    /// Variables in one `environmentVariables`.
    pub const ENV_VARS: usize = 4096;
    /// One variable's value (Linux's limit on one environment string).
    pub const ENV_VALUE_BYTES: usize = 128 * 1024;
    /// All variables of one `environmentVariables`, names and values.
    pub const ENV_TOTAL_BYTES: usize = 1024 * 1024;
    /// `state`, serialized.
    pub const STATE_BYTES: usize = 64 * 1024;
}

/// Why a hook input was refused. `field` is the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookInputError {
    #[error("hook input is not valid JSON: {0}")]
    Syntax(String),
    #[error("{field}: missing")]
    Missing { field: String },
    #[error("{field}: expected {expected}, found {found}")]
    WrongType {
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{field}: too large ({actual} {unit}; the limit is {limit})")]
    TooLarge {
        field: String,
        actual: usize,
        limit: usize,
        unit: &'static str,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl HookInputError {
    /// The JSON path of the field at fault (none for a syntax error).
    pub fn field(&self) -> Option<&str> {
        match self {
            HookInputError::Syntax(_) => None,
            HookInputError::Missing { field }
            | HookInputError::WrongType { field, .. }
            | HookInputError::TooLarge { field, .. }
            | HookInputError::Invalid { field, .. } => Some(field),
        }
    }
}

type Result<T> = std::result::Result<T, HookInputError>;

/// The four things the runner asks of a container hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookCommand {
    PrepareJob,
    CleanupJob,
    RunScriptStep,
    RunContainerStep,
}

impl HookCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            HookCommand::PrepareJob => "prepare_job",
            HookCommand::CleanupJob => "cleanup_job",
            HookCommand::RunScriptStep => "run_script_step",
            HookCommand::RunContainerStep => "run_container_step",
        }
    }

    pub fn parse(text: &str) -> Option<HookCommand> {
        [
            HookCommand::PrepareJob,
            HookCommand::CleanupJob,
            HookCommand::RunScriptStep,
            HookCommand::RunContainerStep,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }
}

impl std::fmt::Display for HookCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook call as the runner writes it to stdin.
#[derive(Debug, Clone)]
pub struct HookInput {
    pub command: HookCommand,
    /// Where the runner expects the answer; null for steps.
    pub response_file: Option<String>,
    pub args: HookArgs,
    /// What the hook answered earlier (any JSON); `Null` when absent.
    pub state: Value,
}

/// The arguments, typed by command.
#[derive(Debug, Clone)]
pub enum HookArgs {
    PrepareJob(Box<PrepareJobArgs>),
    RunScriptStep(ScriptStepArgs),
    RunContainerStep(Box<HookContainer>),
    /// `cleanup_job` takes no arguments.
    CleanupJob,
}

#[derive(Debug, Clone, Default)]
pub struct PrepareJobArgs {
    /// The job container; null for a job with only `services:`.
    pub container: Option<HookContainer>,
    pub services: Vec<HookContainer>,
}

/// A container as the runner describes it (job, service or step container).
#[derive(Debug, Clone, Default)]
pub struct HookContainer {
    /// Required for job and service containers; a container step may give a
    /// `dockerfile` instead.
    pub image: Option<String>,
    pub dockerfile: Option<String>,
    pub entry_point: Option<String>,
    pub entry_point_args: Vec<String>,
    pub working_directory: Option<String>,
    /// docker-create options written by the workflow (`options:`).
    pub create_options: Option<String>,
    pub registry: Option<Registry>,
    pub environment_variables: BTreeMap<String, String>,
    pub port_mappings: Vec<String>,
    pub system_mount_volumes: Vec<Mount>,
    pub user_mount_volumes: Vec<Mount>,
    /// The service's key in the workflow (`services: redis:` -> `redis`).
    pub context_name: Option<String>,
    /// Sent with container steps by some runner versions.
    pub prepend_path: Vec<String>,
}

/// Registry credentials of a container. The runner sends the object even
/// without credentials (all fields null).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub username: Option<String>,
    /// Never printed: `SecretString`'s Debug is redacted.
    pub password: Option<SecretString>,
    pub server_url: Option<String>,
}

impl Registry {
    /// Whether a username and a password were given.
    pub fn has_credentials(&self) -> bool {
        self.username.as_deref().is_some_and(|u| !u.is_empty())
            && self
                .password
                .as_ref()
                .is_some_and(|p| !p.expose_secret().is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A host path, or (refused by the policy) a named volume.
    pub source_volume_path: String,
    pub target_volume_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptStepArgs {
    /// The program to run, e.g. `bash`.
    pub entry_point: String,
    pub entry_point_args: Vec<String>,
    pub environment_variables: BTreeMap<String, String>,
    /// Directories to put in front of `PATH`, first one first. The runner
    /// sends a `:`-joined string; the upstream examples an array; both parse.
    pub prepend_path: Vec<String>,
    pub working_directory: Option<String>,
}

// ---------------------------------------------------------------- parsing

impl HookInput {
    /// Parses one hook input line, refusing more than [`limits::INPUT_BYTES`].
    pub fn parse(input: &[u8]) -> Result<HookInput> {
        if input.len() > limits::INPUT_BYTES {
            return Err(HookInputError::TooLarge {
                field: "(input)".into(),
                actual: input.len(),
                limit: limits::INPUT_BYTES,
                unit: "bytes",
            });
        }
        let value: Value =
            serde_json::from_slice(input).map_err(|e| HookInputError::Syntax(e.to_string()))?;
        HookInput::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<HookInput> {
        let top = Obj::new(value, "")?;
        let command_text = top.req_string("command", limits::STRING_BYTES)?;
        let command = HookCommand::parse(&command_text).ok_or_else(|| HookInputError::Invalid {
            field: "command".into(),
            reason: format!(
                "unknown command {:?} (expected prepare_job, cleanup_job, run_script_step or run_container_step)",
                truncated(&command_text)
            ),
        })?;
        let response_file = top.opt_string("responseFile", limits::STRING_BYTES)?;
        let state = parse_state(top.get("state"), "state")?;
        let args = match command {
            HookCommand::PrepareJob => HookArgs::PrepareJob(Box::new(PrepareJobArgs::parse_at(
                top.req("args")?,
                "args",
            )?)),
            HookCommand::RunScriptStep => {
                HookArgs::RunScriptStep(ScriptStepArgs::parse_at(top.req("args")?, "args")?)
            }
            HookCommand::RunContainerStep => HookArgs::RunContainerStep(Box::new(
                HookContainer::parse_step(top.req("args")?, "args")?,
            )),
            HookCommand::CleanupJob => {
                // Nothing is read, but a present value must still be an object.
                if let Some(args) = top.get("args") {
                    Obj::new(args, "args")?;
                }
                HookArgs::CleanupJob
            }
        };
        Ok(HookInput {
            command,
            response_file,
            args,
            state,
        })
    }
}

/// `state` as given (any JSON), bounded in size.
fn parse_state(value: Option<&Value>, field: &str) -> Result<Value> {
    let Some(value) = value else {
        return Ok(Value::Null);
    };
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
    if size > limits::STATE_BYTES {
        return Err(HookInputError::TooLarge {
            field: field.into(),
            actual: size,
            limit: limits::STATE_BYTES,
            unit: "bytes",
        });
    }
    Ok(value.clone())
}

impl PrepareJobArgs {
    /// Parses `args` of `prepare_job` (as sent in the orchestrator API too).
    pub fn from_value(value: &Value) -> Result<PrepareJobArgs> {
        PrepareJobArgs::parse_at(value, "args")
    }

    fn parse_at(value: &Value, path: &str) -> Result<PrepareJobArgs> {
        let args = Obj::new(value, path)?;
        let container = match args.get("container") {
            Some(v) => Some(HookContainer::parse_with_image(
                v,
                &field_path(path, "container"),
            )?),
            None => None,
        };
        let services_path = field_path(path, "services");
        let services = match args.get("services") {
            None => Vec::new(),
            Some(v) => {
                let items = as_array(v, &services_path)?;
                check_count(items.len(), limits::SERVICES, &services_path)?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        HookContainer::parse_with_image(s, &format!("{services_path}[{i}]"))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(PrepareJobArgs {
            container,
            services,
        })
    }
}

impl HookContainer {
    /// Parses `args` of `run_container_step`.
    pub fn from_value(value: &Value) -> Result<HookContainer> {
        HookContainer::parse_step(value, "args")
    }

    /// A job or service container: the image is required.
    fn parse_with_image(value: &Value, path: &str) -> Result<HookContainer> {
        let container = HookContainer::parse_at(value, path)?;
        if container.image.as_deref().is_none_or(str::is_empty) {
            return Err(HookInputError::Missing {
                field: field_path(path, "image"),
            });
        }
        Ok(container)
    }

    /// A container step: an image or a Dockerfile.
    fn parse_step(value: &Value, path: &str) -> Result<HookContainer> {
        let container = HookContainer::parse_at(value, path)?;
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if !given(&container.image) && !given(&container.dockerfile) {
            return Err(HookInputError::Missing {
                field: field_path(path, "image"),
            });
        }
        Ok(container)
    }

    fn parse_at(value: &Value, path: &str) -> Result<HookContainer> {
        let o = Obj::new(value, path)?;
        let registry = match o.get("registry") {
            Some(v) => Some(Registry::parse_at(v, &field_path(path, "registry"))?),
            None => None,
        };
        Ok(HookContainer {
            image: o.opt_string("image", limits::STRING_BYTES)?,
            dockerfile: o.opt_string("dockerfile", limits::STRING_BYTES)?,
            entry_point: o.opt_string("entryPoint", limits::STRING_BYTES)?,
            entry_point_args: o.string_list("entryPointArgs", limits::ARG_BYTES)?,
            working_directory: o.opt_string("workingDirectory", limits::STRING_BYTES)?,
            create_options: o.opt_string("createOptions", limits::CREATE_OPTIONS_BYTES)?,
            registry,
            environment_variables: o.env("environmentVariables")?,
            port_mappings: o.string_list("portMappings", limits::STRING_BYTES)?,
            system_mount_volumes: o.mounts("systemMountVolumes")?,
            user_mount_volumes: o.mounts("userMountVolumes")?,
            context_name: o.opt_string("contextName", limits::STRING_BYTES)?,
            prepend_path: o.path_list("prependPath")?,
        })
    }
}

impl Registry {
    fn parse_at(value: &Value, path: &str) -> Result<Registry> {
        let o = Obj::new(value, path)?;
        Ok(Registry {
            username: o.opt_string("username", limits::STRING_BYTES)?,
            password: o
                .opt_string("password", limits::STRING_BYTES)?
                .map(SecretString::from),
            server_url: o.opt_string("serverUrl", limits::STRING_BYTES)?,
        })
    }
}

impl ScriptStepArgs {
    /// Parses `args` of `run_script_step`.
    pub fn from_value(value: &Value) -> Result<ScriptStepArgs> {
        ScriptStepArgs::parse_at(value, "args")
    }

    fn parse_at(value: &Value, path: &str) -> Result<ScriptStepArgs> {
        let o = Obj::new(value, path)?;
        let entry_point = o.req_string("entryPoint", limits::STRING_BYTES)?;
        if entry_point.is_empty() {
            return Err(HookInputError::Invalid {
                field: field_path(path, "entryPoint"),
                reason: "empty".into(),
            });
        }
        Ok(ScriptStepArgs {
            entry_point,
            entry_point_args: o.string_list("entryPointArgs", limits::ARG_BYTES)?,
            environment_variables: o.env("environmentVariables")?,
            prepend_path: o.path_list("prependPath")?,
            working_directory: o.opt_string("workingDirectory", limits::STRING_BYTES)?,
        })
    }
}

macro_rules! deserialize_via_value {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let value = Value::deserialize(d)?;
                <$ty>::from_value(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

deserialize_via_value!(HookInput);
deserialize_via_value!(PrepareJobArgs);
deserialize_via_value!(ScriptStepArgs);
deserialize_via_value!(HookContainer);

// ---------------------------------------------------------------- the answer

/// What the hook writes to `responseFile` after `prepare_job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareJobResponse {
    /// Handed back by the runner on every later call.
    pub state: Value,
    pub context: PrepareJobContext,
    /// Whether the job container runs Alpine (the runner then uses its
    /// musl build of node for JavaScript actions).
    pub is_alpine: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareJobContext {
    /// Null when the job has only services.
    pub container: Option<ContainerContext>,
    /// One per service, in the order of `args.services` (the runner matches
    /// them by position).
    #[serde(default)]
    pub services: Vec<ContainerContext>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerContext {
    pub id: String,
    pub network: String,
    /// Container port (e.g. `8080/tcp`) -> published host port; empty when
    /// nothing is published.
    #[serde(default)]
    pub ports: BTreeMap<String, String>,
}

/// The `state` proxy-runner returns at `prepare_job` and gets back later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    pub job_id: Uuid,
    /// The job container's id; absent for a job with only services.
    #[serde(default)]
    pub container: Option<String>,
    pub network: String,
    /// contextName -> container id.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- helpers

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Short enough to quote in an error.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

fn as_array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
    value.as_array().ok_or_else(|| HookInputError::WrongType {
        field: path.to_string(),
        expected: "an array",
        found: kind(value),
    })
}

fn as_string<'a>(value: &'a Value, path: &str, limit: usize) -> Result<&'a str> {
    let text = value.as_str().ok_or_else(|| HookInputError::WrongType {
        field: path.to_string(),
        expected: "a string",
        found: kind(value),
    })?;
    check_size(text.len(), limit, path)?;
    if text.contains('\0') {
        return Err(HookInputError::Invalid {
            field: path.to_string(),
            reason: "contains a NUL character".into(),
        });
    }
    Ok(text)
}

fn check_size(actual: usize, limit: usize, path: &str) -> Result<()> {
    if actual > limit {
        return Err(HookInputError::TooLarge {
            field: path.to_string(),
            actual,
            limit,
            unit: "bytes",
        });
    }
    Ok(())
}

fn check_count(actual: usize, limit: usize, path: &str) -> Result<()> {
    if actual > limit {
        return Err(HookInputError::TooLarge {
            field: path.to_string(),
            actual,
            limit,
            unit: "items",
        });
    }
    Ok(())
}

/// A JSON object being read, with its path for errors. Null counts as absent.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: &'a str) -> Result<Obj<'a>> {
        let map = value.as_object().ok_or_else(|| HookInputError::WrongType {
            field: if path.is_empty() {
                "(input)".into()
            } else {
                path.to_string()
            },
            expected: "an object",
            found: kind(value),
        })?;
        Ok(Obj { map, path })
    }

    fn field(&self, key: &str) -> String {
        field_path(self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn req(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| HookInputError::Missing {
            field: self.field(key),
        })
    }

    fn opt_string(&self, key: &str, limit: usize) -> Result<Option<String>> {
        self.get(key)
            .map(|v| as_string(v, &self.field(key), limit).map(str::to_string))
            .transpose()
    }

    fn req_string(&self, key: &str, limit: usize) -> Result<String> {
        Ok(as_string(self.req(key)?, &self.field(key), limit)?.to_string())
    }

    fn string_list(&self, key: &str, item_limit: usize) -> Result<Vec<String>> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let path = self.field(key);
        let items = as_array(value, &path)?;
        check_count(items.len(), limits::LIST_ITEMS, &path)?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                as_string(item, &format!("{path}[{i}]"), item_limit).map(str::to_string)
            })
            .collect()
    }

    /// `prependPath`: a `:`-joined string (the runner) or an array.
    fn path_list(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            Some(Value::String(_)) => {
                let path = self.field(key);
                let text = as_string(self.req(key)?, &path, limits::ENV_VALUE_BYTES)?;
                let dirs: Vec<String> = text
                    .split(':')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect();
                check_count(dirs.len(), limits::LIST_ITEMS, &path)?;
                Ok(dirs)
            }
            _ => self.string_list(key, limits::STRING_BYTES),
        }
    }

    fn env(&self, key: &str) -> Result<BTreeMap<String, String>> {
        let Some(value) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        let path = self.field(key);
        let map = value.as_object().ok_or_else(|| HookInputError::WrongType {
            field: path.clone(),
            expected: "an object",
            found: kind(value),
        })?;
        check_count(map.len(), limits::ENV_VARS, &path)?;
        let mut total = 0usize;
        let mut env = BTreeMap::new();
        for (name, value) in map {
            let field = format!("{path}.{}", truncated(name));
            check_size(name.len(), limits::STRING_BYTES, &field)?;
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(HookInputError::Invalid {
                    field,
                    reason: "not a valid environment variable name".into(),
                });
            }
            // C# strings may be null: an empty value, as `docker -e NAME=`.
            let value = match value {
                Value::Null => "",
                other => as_string(other, &field, limits::ENV_VALUE_BYTES)?,
            };
            total += name.len() + value.len() + 2;
            env.insert(name.clone(), value.to_string());
        }
        check_size(total, limits::ENV_TOTAL_BYTES, &path)?;
        Ok(env)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let path = self.field(key);
        let items = as_array(value, &path)?;
        check_count(items.len(), limits::MOUNTS, &path)?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                let o = Obj::new(item, &item_path)?;
                let read_only = match o.get("readOnly") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(HookInputError::WrongType {
                            field: o.field("readOnly"),
                            expected: "a boolean",
                            found: kind(other),
                        });
                    }
                };
                Ok(Mount {
                    source_volume_path: o.req_string("sourceVolumePath", limits::STRING_BYTES)?,
                    target_volume_path: o.req_string("targetVolumePath", limits::STRING_BYTES)?,
                    read_only,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/container-hooks")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn parse_json(value: Value) -> Result<HookInput> {
        HookInput::parse(value.to_string().as_bytes())
    }

    /// A minimal valid prepare_job input to break in tests.
    fn prepare() -> Value {
        json!({
            "command": "prepare_job",
            "responseFile": "/tmp/r.json",
            "state": {},
            "args": {"container": {"image": "node:22"}, "services": []}
        })
    }

    fn err_field(value: Value) -> String {
        match parse_json(value) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.field().unwrap_or_default().to_string(),
        }
    }

    #[test]
    fn prepare_job_fixture_parses_completely() {
        let input = HookInput::parse(&fixture("prepare-job.json")).expect("parses");
        assert_eq!(input.command, HookCommand::PrepareJob);
        assert_eq!(
            input.response_file.as_deref(),
            Some("/users/thboop/runner/_work/{guid}.json")
        );
        assert_eq!(input.state, json!({}));
        let HookArgs::PrepareJob(args) = input.args else {
            panic!("prepare args");
        };
        let c = args.container.expect("job container");
        assert_eq!(c.image.as_deref(), Some("node:22"));
        assert_eq!(c.working_directory.as_deref(), Some("/__w/repo/repo"));
        assert_eq!(c.create_options.as_deref(), Some("--cpus 1"));
        assert_eq!(
            c.environment_variables,
            BTreeMap::from([("NODE_ENV".to_string(), "development".to_string())])
        );
        assert_eq!(
            c.user_mount_volumes,
            vec![Mount {
                source_volume_path: "my_docker_volume".into(),
                target_volume_path: "/volume_mount".into(),
                read_only: false,
            }]
        );
        assert_eq!(c.system_mount_volumes.len(), 8);
        assert_eq!(
            c.system_mount_volumes[0].source_volume_path,
            "/var/run/docker.sock"
        );
        assert_eq!(
            c.system_mount_volumes[2],
            Mount {
                source_volume_path: "/Users/thomas/git/runner/_layout/externals".into(),
                target_volume_path: "/__e".into(),
                read_only: true,
            }
        );
        let registry = c.registry.expect("registry");
        assert_eq!(registry.username.as_deref(), Some("foo"));
        assert_eq!(
            registry.password.as_ref().map(|p| p.expose_secret()),
            Some("bar")
        );
        assert_eq!(
            registry.server_url.as_deref(),
            Some("https://index.docker.io/v1")
        );
        assert!(registry.has_credentials());
        assert_eq!(c.port_mappings, vec!["80:8080".to_string()]);
        assert_eq!(c.dockerfile, None);
        assert_eq!(c.entry_point, None);
        assert!(c.entry_point_args.is_empty());

        assert_eq!(args.services.len(), 1);
        let s = &args.services[0];
        assert_eq!(s.context_name.as_deref(), Some("redis"));
        assert_eq!(s.image.as_deref(), Some("redis"));
        // `"entrypoint": null` (lower-case p) is an unknown field: ignored.
        assert_eq!(s.entry_point, None);
        assert_eq!(s.port_mappings, vec!["8080:80", "8088:8080"]);
        assert_eq!(s.user_mount_volumes.len(), 1);
        assert!(s.environment_variables.is_empty());
    }

    #[test]
    fn run_script_step_fixture_parses_completely() {
        let input = HookInput::parse(&fixture("run-script-step.json")).expect("parses");
        assert_eq!(input.command, HookCommand::RunScriptStep);
        assert_eq!(input.response_file, None);
        assert_eq!(
            input.state["container"],
            "82e8219701fe096a35941d869cf8d71af1d943b5d3bdd718850fb87ac3042480"
        );
        let HookArgs::RunScriptStep(args) = input.args else {
            panic!("script args");
        };
        assert_eq!(
            args,
            ScriptStepArgs {
                entry_point: "bash".into(),
                entry_point_args: vec!["-e".into(), "example-script.sh".into()],
                environment_variables: BTreeMap::from([(
                    "NODE_ENV".to_string(),
                    "development".to_string()
                )]),
                prepend_path: vec!["/foo/bar".into(), "bar/foo".into()],
                working_directory: Some("/__w/repo/repo".into()),
            }
        );
    }

    #[test]
    fn run_container_step_fixture_parses_completely() {
        let input = HookInput::parse(&fixture("run-container-step.json")).expect("parses");
        assert_eq!(input.command, HookCommand::RunContainerStep);
        assert_eq!(
            input.state["services"]["redis"],
            "60972d9aa486605e66b0dad4abb638dc3d9116f566579e418166eedb8abb9105"
        );
        let HookArgs::RunContainerStep(c) = input.args else {
            panic!("container step args");
        };
        assert_eq!(c.image.as_deref(), Some("node:22"));
        assert_eq!(c.dockerfile, None);
        assert_eq!(c.entry_point.as_deref(), Some("bash"));
        assert_eq!(c.entry_point_args, vec!["-e", "example-script.sh"]);
        assert_eq!(c.prepend_path, vec!["/foo/bar", "bar/foo"]);
        assert!(c.registry.is_none());
        assert_eq!(c.system_mount_volumes.len(), 7);
        assert_eq!(
            c.system_mount_volumes[5].source_volume_path,
            "//Users/thomas/git/runner/_layout/_work/_temp/_github_home"
        );
        assert_eq!(c.port_mappings, vec!["8080:8080"]);
    }

    #[test]
    fn fixtures_also_deserialize_through_serde() {
        for name in [
            "prepare-job.json",
            "run-script-step.json",
            "run-container-step.json",
        ] {
            let parsed: std::result::Result<HookInput, _> = serde_json::from_slice(&fixture(name));
            assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
        }
        let args: ScriptStepArgs =
            serde_json::from_value(json!({"entryPoint": "sh", "prependPath": "/a:/b"}))
                .expect("args");
        assert_eq!(args.prepend_path, vec!["/a", "/b"]);
        let bad = serde_json::from_value::<PrepareJobArgs>(json!({"container": {"image": 5}}))
            .expect_err("wrong type");
        assert!(bad.to_string().contains("args.container.image"), "{bad}");
    }

    #[test]
    fn the_runner_sends_prepend_path_as_one_string() {
        let input = parse_json(json!({
            "command": "run_script_step",
            "responseFile": null,
            "state": null,
            "args": {"entryPoint": "bash", "prependPath": "/new/bin:/tool/bin:"}
        }))
        .expect("parses");
        let HookArgs::RunScriptStep(args) = input.args else {
            panic!("script args");
        };
        assert_eq!(args.prepend_path, vec!["/new/bin", "/tool/bin"]);
        assert_eq!(input.state, Value::Null);
    }

    #[test]
    fn unknown_fields_are_ignored_everywhere() {
        let mut v = prepare();
        v["newTopLevel"] = json!({"x": 1});
        v["args"]["newArg"] = json!([1, 2]);
        v["args"]["container"]["newField"] = json!(true);
        v["args"]["container"]["systemMountVolumes"] =
            json!([{"sourceVolumePath": "/a", "targetVolumePath": "/b", "propagation": "x"}]);
        let input = parse_json(v).expect("unknown fields ignored");
        let HookArgs::PrepareJob(args) = input.args else {
            panic!("prepare");
        };
        assert!(!args.container.expect("container").system_mount_volumes[0].read_only);
    }

    #[test]
    fn nulls_count_as_absent_and_cleanup_needs_no_args() {
        let input = parse_json(
            json!({"command": "cleanup_job", "responseFile": null, "state": {"jobId": "x"}}),
        )
        .expect("cleanup");
        assert!(matches!(input.args, HookArgs::CleanupJob));
        assert_eq!(input.state["jobId"], "x");
        let mut v = prepare();
        v["args"]["container"]["registry"] =
            json!({"username": null, "password": null, "serverUrl": null});
        v["args"]["container"]["entryPointArgs"] = Value::Null;
        v["args"]["container"]["environmentVariables"] = json!({"EMPTY": null});
        let HookArgs::PrepareJob(args) = parse_json(v).expect("parses").args else {
            panic!("prepare");
        };
        let c = args.container.expect("container");
        assert!(!c.registry.expect("registry").has_credentials());
        assert_eq!(c.environment_variables["EMPTY"], "");
        assert!(c.entry_point_args.is_empty());
        let only_services = parse_json(json!({
            "command": "prepare_job",
            "args": {"container": null, "services": [{"image": "redis", "contextName": "redis"}]}
        }))
        .expect("services only");
        let HookArgs::PrepareJob(args) = only_services.args else {
            panic!("prepare");
        };
        assert!(args.container.is_none());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"command": 1}), "command"),
            (json!({"command": "prepare_job", "args": []}), "args"),
            (
                json!({"command": "prepare_job", "args": {"container": "node"}}),
                "args.container",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": 22}}}),
                "args.container.image",
            ),
            (
                json!({"command": "prepare_job", "args": {"services": {}}}),
                "args.services",
            ),
            (
                json!({"command": "prepare_job", "args": {"services": [{"image": "r", "portMappings": [80]}]}}),
                "args.services[0].portMappings[0]",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": "i", "environmentVariables": {"A": 1}}}}),
                "args.container.environmentVariables.A",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": "i", "environmentVariables": ["A=1"]}}}),
                "args.container.environmentVariables",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": "i", "userMountVolumes": [{"sourceVolumePath": "/a", "targetVolumePath": "/b", "readOnly": "yes"}]}}}),
                "args.container.userMountVolumes[0].readOnly",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": "i", "registry": {"password": 5}}}}),
                "args.container.registry.password",
            ),
            (
                json!({"command": "run_script_step", "args": {"entryPoint": "bash", "entryPointArgs": "-e x"}}),
                "args.entryPointArgs",
            ),
            (
                json!({"command": "run_script_step", "args": {"entryPoint": "bash", "prependPath": 3}}),
                "args.prependPath",
            ),
            (json!({"command": "cleanup_job", "args": 3}), "args"),
        ];
        for (value, field) in cases {
            let text = value.to_string();
            assert_eq!(err_field(value), field, "{text}");
        }
        let top = parse_json(json!([1])).expect_err("not an object");
        assert_eq!(top.field(), Some("(input)"));
    }

    #[test]
    fn missing_required_fields_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"args": {}}), "command"),
            (json!({"command": "prepare_job"}), "args"),
            (json!({"command": "run_script_step"}), "args"),
            (
                json!({"command": "run_script_step", "args": {"entryPointArgs": []}}),
                "args.entryPoint",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"workingDirectory": "/w"}}}),
                "args.container.image",
            ),
            (
                json!({"command": "prepare_job", "args": {"services": [{"image": "r"}, {"contextName": "db"}]}}),
                "args.services[1].image",
            ),
            (
                json!({"command": "run_container_step", "args": {"entryPoint": "sh"}}),
                "args.image",
            ),
            (
                json!({"command": "prepare_job", "args": {"container": {"image": "i", "systemMountVolumes": [{"sourceVolumePath": "/a"}]}}}),
                "args.container.systemMountVolumes[0].targetVolumePath",
            ),
        ];
        for (value, field) in cases {
            let text = value.to_string();
            assert_eq!(err_field(value), field, "{text}");
        }
        // A container step may name a Dockerfile instead of an image.
        parse_json(json!({"command": "run_container_step", "args": {"dockerfile": "Dockerfile"}}))
            .expect("dockerfile step");
    }

    #[test]
    fn unknown_commands_and_bad_values_are_refused() {
        let err = parse_json(json!({"command": "prepare_everything", "args": {}}))
            .expect_err("unknown command");
        assert_eq!(err.field(), Some("command"));
        assert!(err.to_string().contains("prepare_everything"));
        let mut v = prepare();
        v["args"]["container"]["environmentVariables"] = json!({"A=B": "x"});
        assert_eq!(err_field(v), "args.container.environmentVariables.A=B");
        let mut v = prepare();
        v["args"]["container"]["workingDirectory"] = json!("/a\u{0}b");
        assert_eq!(err_field(v), "args.container.workingDirectory");
        assert!(matches!(
            HookInput::parse(b"{\"command\": "),
            Err(HookInputError::Syntax(_))
        ));
    }

    #[test]
    fn over_limit_sizes_are_refused_naming_the_field() {
        let long = "x".repeat(limits::STRING_BYTES + 1);
        let mut v = prepare();
        v["args"]["container"]["image"] = json!(long);
        assert_eq!(err_field(v), "args.container.image");

        let mut v = prepare();
        v["args"]["container"]["createOptions"] = json!("-e A=1 ".repeat(2000));
        assert_eq!(err_field(v), "args.container.createOptions");

        let mut v = prepare();
        v["args"]["container"]["portMappings"] = json!(vec!["80"; limits::LIST_ITEMS + 1]);
        assert_eq!(err_field(v), "args.container.portMappings");

        let mut v = prepare();
        let mount = json!({"sourceVolumePath": "/a", "targetVolumePath": "/b"});
        v["args"]["container"]["userMountVolumes"] = json!(vec![mount; limits::MOUNTS + 1]);
        assert_eq!(err_field(v), "args.container.userMountVolumes");

        let mut v = prepare();
        v["args"]["services"] = json!(vec![json!({"image": "r"}); limits::SERVICES + 1]);
        assert_eq!(err_field(v), "args.services");

        let mut v = prepare();
        v["args"]["container"]["environmentVariables"] =
            json!({"BIG": "y".repeat(limits::ENV_VALUE_BYTES + 1)});
        assert_eq!(err_field(v), "args.container.environmentVariables.BIG");

        let mut v = prepare();
        let many: Map<String, Value> = (0..10)
            .map(|i| {
                (
                    format!("V{i}"),
                    json!("z".repeat(limits::ENV_VALUE_BYTES - 10)),
                )
            })
            .collect();
        v["args"]["container"]["environmentVariables"] = Value::Object(many);
        let err = parse_json(v).expect_err("total env too large");
        assert_eq!(err.field(), Some("args.container.environmentVariables"));
        assert!(matches!(err, HookInputError::TooLarge { .. }));

        let mut v = prepare();
        v["state"] = json!({"blob": "s".repeat(limits::STATE_BYTES)});
        assert_eq!(err_field(v), "state");

        let huge = vec![b' '; limits::INPUT_BYTES + 1];
        assert!(matches!(
            HookInput::parse(&huge),
            Err(HookInputError::TooLarge { .. })
        ));
    }

    #[test]
    fn registry_password_is_never_printed() {
        let input = HookInput::parse(&fixture("prepare-job.json")).expect("parses");
        let debug = format!("{input:?}");
        assert!(!debug.contains("\"bar\""), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
        // Nor in an error about it.
        let err = parse_json(json!({"command": "prepare_job", "args": {"container": {"image": "i", "registry": {"password": ["hunter2"]}}}}))
            .expect_err("wrong type");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn prepare_job_response_serializes_as_the_runner_reads_it() {
        let state = HookState {
            job_id: Uuid::nil(),
            container: Some("c1".into()),
            network: "net".into(),
            services: BTreeMap::from([("redis".to_string(), "s1".to_string())]),
        };
        let response = PrepareJobResponse {
            state: serde_json::to_value(&state).expect("state"),
            context: PrepareJobContext {
                container: Some(ContainerContext {
                    id: "c1".into(),
                    network: "net".into(),
                    ports: BTreeMap::new(),
                }),
                services: vec![ContainerContext {
                    id: "s1".into(),
                    network: "net".into(),
                    ports: BTreeMap::from([("6379/tcp".to_string(), "49153".to_string())]),
                }],
            },
            is_alpine: false,
        };
        let value = serde_json::to_value(&response).expect("serializes");
        assert_eq!(
            value,
            json!({
                "state": {
                    "jobId": "00000000-0000-0000-0000-000000000000",
                    "container": "c1",
                    "network": "net",
                    "services": {"redis": "s1"}
                },
                "context": {
                    "container": {"id": "c1", "network": "net", "ports": {}},
                    "services": [{"id": "s1", "network": "net", "ports": {"6379/tcp": "49153"}}]
                },
                "isAlpine": false
            })
        );
        let back: PrepareJobResponse = serde_json::from_value(value).expect("round trip");
        assert_eq!(back, response);
        let state_back: HookState = serde_json::from_value(back.state).expect("state round trip");
        assert_eq!(state_back, state);
    }
}
