//! The admin API (`/_emulator/*`): queue jobs, look at jobs, runners and
//! webhook deliveries, point webhooks somewhere, turn fault knobs. No
//! authentication: it is a test tool meant for loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use chrono::Utc;
use proxy_runner_domain::names::parse_repository;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use crate::WebhookTarget;
use crate::http_util::{ApiError, REST_BODY_LIMIT, empty_response, json_response, parse_json};
use crate::protocol::{ContainerSpec, RegistryCredentials, StepSpec};
use crate::state::{Faults, NewJob, Shared, is_http_url};

const MAX_STEPS: usize = 1000;
const MAX_STEP_LEN: usize = 64 * 1024;
const MAX_NAME_LEN: usize = 255;
/// Bounds of a job's containers (generous next to real workflows).
const MAX_SERVICES: usize = 50;
const MAX_IMAGE_LEN: usize = 512;
const MAX_OPTIONS_LEN: usize = 4096;
const MAX_ENV_ENTRIES: usize = 200;
const MAX_ENV_VALUE_LEN: usize = 32 * 1024;
const MAX_CONTAINER_LIST: usize = 100;
/// Longest injected latency.
const MAX_LATENCY_MS: u64 = 60_000;
/// Longest injected rate-limit window.
const MAX_LIMIT_SECS: u64 = 24 * 3600;

type AdminResult = Result<Response, ApiError>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/runners", get(list_runners))
        .route("/webhook", put(set_webhook).delete(clear_webhook))
        .route(
            "/faults",
            post(set_faults).delete(clear_faults).get(get_faults),
        )
        .route("/deliveries", get(list_deliveries))
        .route("/requests", get(list_requests))
        .layer(DefaultBodyLimit::max(REST_BODY_LIMIT))
        .with_state(shared)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn object_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body =
        body.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"))?;
    match parse_json(&body)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(invalid("the body must be a JSON object")),
    }
}

fn string_field(
    body: &Map<String, Value>,
    key: &str,
    default: Option<&str>,
) -> Result<String, ApiError> {
    match body.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_NAME_LEN => {
            Ok(s.trim().to_string())
        }
        None | Some(Value::Null) => default
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("{key} is required"))),
        Some(_) => Err(invalid(format!(
            "{key} must be a non-empty string of at most {MAX_NAME_LEN} bytes"
        ))),
    }
}

fn string_list(
    body: &Map<String, Value>,
    key: &str,
    max_items: usize,
    max_len: usize,
) -> Result<Vec<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= max_items => items
            .iter()
            .map(|v| match v.as_str() {
                Some(s) if s.len() <= max_len => Ok(s.to_string()),
                _ => Err(invalid(format!(
                    "{key} must hold strings of at most {max_len} bytes"
                ))),
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "{key} must be an array of at most {max_items} strings"
        ))),
    }
}

/// `steps`: each a command string, or `{"run": "...", "shell": "bash"|"sh"}`.
fn step_list(body: &Map<String, Value>) -> Result<Vec<StepSpec>, ApiError> {
    let bad = || {
        invalid(format!(
            "steps must be an array of at most {MAX_STEPS} commands (strings of at most {MAX_STEP_LEN} bytes, or objects {{run, shell}} with shell bash or sh)"
        ))
    };
    let items = match body.get("steps") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_STEPS => items,
        Some(_) => return Err(bad()),
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(run) if run.len() <= MAX_STEP_LEN => Ok(StepSpec::Command(run.clone())),
            Value::Object(step) => {
                let run = match step.get("run") {
                    Some(Value::String(run)) if run.len() <= MAX_STEP_LEN => run.clone(),
                    _ => return Err(bad()),
                };
                let shell = match step.get("shell") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(sh)) if sh == "bash" || sh == "sh" => Some(sh.clone()),
                    Some(_) => return Err(bad()),
                };
                Ok(StepSpec::new(run, shell))
            }
            _ => Err(bad()),
        })
        .collect()
}

fn bounded_text(v: &Value, what: &str, max: usize) -> Result<String, ApiError> {
    match v {
        Value::String(s) if s.len() <= max && !s.chars().any(char::is_control) => Ok(s.clone()),
        _ => Err(invalid(format!(
            "{what} must be a string of at most {max} bytes without control characters"
        ))),
    }
}

/// A `container:` or service: an image name, or an object with `image`,
/// `env`, `options`, `ports`, `volumes`, `credentials` (as in a workflow).
fn container_spec(v: &Value, what: &str) -> Result<ContainerSpec, ApiError> {
    let image_of = |v: &Value| -> Result<String, ApiError> {
        match v {
            Value::String(s)
                if !s.is_empty()
                    && s.len() <= MAX_IMAGE_LEN
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(s.clone())
            }
            _ => Err(invalid(format!(
                "{what}.image must be a non-empty image name of at most {MAX_IMAGE_LEN} bytes"
            ))),
        }
    };
    let spec = match v {
        Value::String(_) => {
            return Ok(ContainerSpec {
                image: image_of(v)?,
                env: BTreeMap::new(),
                options: None,
                ports: Vec::new(),
                volumes: Vec::new(),
                credentials: None,
            });
        }
        Value::Object(spec) => spec,
        _ => {
            return Err(invalid(format!(
                "{what} must be an image name or an object with an image"
            )));
        }
    };
    let image = image_of(spec.get("image").unwrap_or(&Value::Null))?;
    let mut env = BTreeMap::new();
    match spec.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) if vars.len() <= MAX_ENV_ENTRIES => {
            for (k, v) in vars {
                let name_ok = !k.is_empty()
                    && k.len() <= MAX_NAME_LEN
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                // Workflows may write numbers and booleans; they become strings.
                let value = match v {
                    Value::String(s) if s.len() <= MAX_ENV_VALUE_LEN => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                };
                let Some(value) = value.filter(|_| name_ok) else {
                    return Err(invalid(format!(
                        "{what}.env must map variable names to strings of at most {MAX_ENV_VALUE_LEN} bytes"
                    )));
                };
                env.insert(k.clone(), value);
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "{what}.env must be an object of at most {MAX_ENV_ENTRIES} variables"
            )));
        }
    }
    let options = match spec.get("options") {
        None | Some(Value::Null) => None,
        Some(v) => Some(bounded_text(
            v,
            &format!("{what}.options"),
            MAX_OPTIONS_LEN,
        )?),
    };
    let list = |key: &str| -> Result<Vec<String>, ApiError> {
        match spec.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() <= MAX_CONTAINER_LIST => items
                .iter()
                .map(|item| match item {
                    // Workflows may write a port as a number.
                    Value::Number(n) if key == "ports" => Ok(n.to_string()),
                    other => bounded_text(other, &format!("{what}.{key}[]"), MAX_OPTIONS_LEN)
                        .and_then(|s| {
                            if s.trim().is_empty() {
                                Err(invalid(format!("{what}.{key}[] must not be empty")))
                            } else {
                                Ok(s)
                            }
                        }),
                })
                .collect(),
            Some(_) => Err(invalid(format!(
                "{what}.{key} must be an array of at most {MAX_CONTAINER_LIST} strings"
            ))),
        }
    };
    let ports = list("ports")?;
    let volumes = list("volumes")?;
    let credentials = match spec.get("credentials") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => match (c.get("username"), c.get("password")) {
            (Some(Value::String(u)), Some(Value::String(p)))
                if u.len() <= MAX_NAME_LEN && p.len() <= MAX_OPTIONS_LEN =>
            {
                Some(RegistryCredentials {
                    username: u.clone(),
                    password: p.clone(),
                })
            }
            _ => {
                return Err(invalid(format!(
                    "{what}.credentials must have a username and a password"
                )));
            }
        },
        Some(_) => {
            return Err(invalid(format!(
                "{what}.credentials must be an object or null"
            )));
        }
    };
    Ok(ContainerSpec {
        image,
        env,
        options,
        ports,
        volumes,
        credentials,
    })
}

/// `services`: context name -> container.
fn service_map(body: &Map<String, Value>) -> Result<BTreeMap<String, ContainerSpec>, ApiError> {
    let services = match body.get("services") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(services)) if services.len() <= MAX_SERVICES => services,
        Some(_) => {
            return Err(invalid(format!(
                "services must be an object of at most {MAX_SERVICES} services"
            )));
        }
    };
    let mut out = BTreeMap::new();
    for (name, spec) in services {
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(invalid(
                "service names must be 1 to 100 letters, digits, _ or -",
            ));
        }
        out.insert(
            name.clone(),
            container_spec(spec, &format!("services.{name}"))?,
        );
    }
    Ok(out)
}

async fn create_job(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> AdminResult {
    let body = object_body(body)?;
    let repository = string_field(&body, "repository", None)?;
    let (owner, repo) = parse_repository(&repository).map_err(|e| invalid(e.to_string()))?;
    let mut labels: Vec<String> = Vec::new();
    for l in string_list(&body, "labels", 100, 255)? {
        let l = l.trim();
        if l.is_empty() || l.chars().any(char::is_control) {
            return Err(invalid(
                "labels must be non-empty without control characters",
            ));
        }
        labels.push(l.to_string());
    }
    let steps = step_list(&body)?;
    let container = match body.get("container") {
        None | Some(Value::Null) => None,
        Some(v) => Some(container_spec(v, "container")?),
    };
    let services = service_map(&body)?;
    let run_id = match body.get("runId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|id| *id > 0)
                .ok_or_else(|| invalid("runId must be a positive integer"))?,
        ),
    };
    let new = NewJob {
        owner: owner.to_string(),
        repo: repo.to_string(),
        labels,
        steps,
        container,
        services,
        workflow: string_field(&body, "workflow", Some("CI"))?,
        name: string_field(&body, "name", Some("build"))?,
        run_id,
        head_branch: string_field(&body, "headBranch", Some("main"))?,
    };
    let (id, run_id) = shared
        .world()
        .create_job(&shared, new, Utc::now())
        .map_err(invalid)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": id, "runId": run_id}),
    ))
}

async fn list_jobs(State(shared): State<Arc<Shared>>) -> AdminResult {
    let jobs: Vec<Value> = shared
        .world()
        .jobs
        .values()
        .map(|j| j.to_admin_json())
        .collect();
    Ok(json_response(StatusCode::OK, &Value::from(jobs)))
}

async fn get_job(
    State(shared): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
) -> AdminResult {
    let id = path
        .ok()
        .and_then(|Path(id)| id.parse::<u64>().ok())
        .ok_or_else(ApiError::not_found)?;
    let world = shared.world();
    let job = world.jobs.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(json_response(StatusCode::OK, &job.to_admin_json()))
}

async fn list_runners(State(shared): State<Arc<Shared>>) -> AdminResult {
    let now = Instant::now();
    let runners: Vec<Value> = shared
        .world()
        .runners
        .values()
        .map(|r| r.to_admin_json(now))
        .collect();
    Ok(json_response(StatusCode::OK, &Value::from(runners)))
}

async fn set_webhook(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> AdminResult {
    let body = object_body(body)?;
    let url = match body.get("url") {
        Some(Value::String(u)) if is_http_url(u) => u.clone(),
        _ => return Err(invalid("url must be an http(s) URL")),
    };
    let secret = match body.get("secret") {
        Some(Value::String(s)) => SecretString::from(s.clone()),
        _ => return Err(invalid("secret must be a string")),
    };
    shared.world().webhook_target = Some(WebhookTarget { url, secret });
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn clear_webhook(State(shared): State<Arc<Shared>>) -> AdminResult {
    shared.world().webhook_target = None;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

fn share(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|s| (0.0..=1.0).contains(s))
            .map(Some)
            .ok_or_else(|| invalid(format!("{key} must be a number from 0.0 to 1.0"))),
    }
}

fn count(body: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| invalid(format!("{key} must be an integer from 0 to {max}"))),
    }
}

fn secs_in(body: &Map<String, Value>, key: &str, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => count(inner, field, MAX_LIMIT_SECS)
            .and_then(|n| n.ok_or_else(|| invalid(format!("{key}.{field} is required"))))
            .map(Some),
        Some(_) => Err(invalid(format!("{key} must be an object or null"))),
    }
}

/// `errorStatus`: one status from 400 to 599, or a list of them (each
/// failed call gets one of the list at random).
fn error_statuses(body: &Map<String, Value>) -> Result<Vec<u16>, ApiError> {
    let bad =
        || invalid("errorStatus must be a status from 400 to 599 or a list of 1 to 10 of them");
    let one = |v: &Value| {
        v.as_u64()
            .filter(|s| (400..=599).contains(s))
            .map(|s| s as u16)
            .ok_or_else(bad)
    };
    match body.get("errorStatus") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if (1..=10).contains(&items.len()) => {
            items.iter().map(one).collect()
        }
        Some(Value::Array(_)) => Err(bad()),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Replaces every fault knob at once; knobs left out are off.
async fn set_faults(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> AdminResult {
    let body = object_body(body)?;
    let error_statuses = error_statuses(&body)?;
    let error_count = count(&body, "errorCount", u64::MAX)?;
    // A count alone fails that many calls in a row.
    let error_share =
        share(&body, "errorShare")?.unwrap_or(if error_count.is_some() { 1.0 } else { 0.0 });
    let latency_ms = count(&body, "latencyMs", MAX_LATENCY_MS)?.unwrap_or(0);
    let now = Utc::now();
    let until = |secs: Option<u64>| {
        secs.map(|s| now + chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)))
    };
    let secondary_status = match body.get("secondaryRateLimit") {
        Some(Value::Object(inner)) => match count(inner, "status", 599)? {
            None => None,
            Some(s @ (403 | 429)) => Some(s as u16),
            Some(_) => return Err(invalid("secondaryRateLimit.status must be 403 or 429")),
        },
        _ => None,
    };
    let faults = Faults {
        error_share: if !error_statuses.is_empty() || error_count.is_some() || error_share > 0.0 {
            error_share
        } else {
            0.0
        },
        error_count,
        latency: Duration::from_millis(latency_ms),
        rate_limited_until: until(secs_in(&body, "rateLimit", "resetInSecs")?),
        secondary_until: until(secs_in(&body, "secondaryRateLimit", "retryAfterSecs")?),
        secondary_status,
        error_statuses,
        drop_webhook_share: share(&body, "dropWebhookShare")?.unwrap_or(0.0),
        hold_jobs: match body.get("holdJobs") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("holdJobs must be true or false")),
        },
    };
    shared.world().faults = faults;
    // Runners waiting for work look again (held jobs may be free now).
    shared.job_queued.notify_waiters();
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> AdminResult {
    shared.world().faults = Faults::default();
    shared.job_queued.notify_waiters();
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> AdminResult {
    let f = shared.world().faults.clone();
    let now = Utc::now();
    let left = |until: Option<chrono::DateTime<Utc>>| {
        until
            .filter(|u| *u > now)
            .map(|u| (u - now).num_seconds().max(0))
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "errorStatus": match f.error_statuses.as_slice() {
                [] => Value::Null,
                [one] => Value::from(*one),
                many => Value::from(many.to_vec()),
            },
            "errorShare": f.error_share,
            "errorCount": f.error_count,
            "latencyMs": f.latency.as_millis() as u64,
            "rateLimit": left(f.rate_limited_until).map(|s| json!({"resetInSecs": s})),
            "secondaryRateLimit": left(f.secondary_until).map(|s| json!({"retryAfterSecs": s, "status": f.secondary_status.unwrap_or(403)})),
            "dropWebhookShare": f.drop_webhook_share,
            "holdJobs": f.hold_jobs,
        }),
    ))
}

async fn list_deliveries(State(shared): State<Arc<Shared>>) -> AdminResult {
    let deliveries: Vec<Value> = shared
        .world()
        .deliveries
        .iter()
        .filter_map(|d| serde_json::to_value(d).ok())
        .collect();
    Ok(json_response(StatusCode::OK, &Value::from(deliveries)))
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> AdminResult {
    let requests: Vec<Value> = shared
        .world()
        .requests
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    Ok(json_response(StatusCode::OK, &Value::from(requests)))
}
