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
mod tests;
