//! The admin API (`/_emulator/*`): queue jobs, look at jobs, runners and
//! webhook deliveries, point webhooks somewhere, turn fault knobs. No
//! authentication: it is a test tool meant for loopback.

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
use crate::state::{Faults, NewJob, Shared, is_http_url};

const MAX_STEPS: usize = 1000;
const MAX_STEP_LEN: usize = 64 * 1024;
const MAX_NAME_LEN: usize = 255;
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
    let steps = string_list(&body, "steps", MAX_STEPS, MAX_STEP_LEN)?;
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

/// Replaces every fault knob at once; knobs left out are off.
async fn set_faults(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> AdminResult {
    let body = object_body(body)?;
    let error_status = match count(&body, "errorStatus", 599)? {
        Some(s) if s < 400 => return Err(invalid("errorStatus must be from 400 to 599")),
        other => other.map(|s| s as u16),
    };
    let error_count = count(&body, "errorCount", u64::MAX)?;
    // A count alone fails that many calls in a row.
    let error_share =
        share(&body, "errorShare")?.unwrap_or(if error_count.is_some() { 1.0 } else { 0.0 });
    let latency_ms = count(&body, "latencyMs", MAX_LATENCY_MS)?.unwrap_or(0);
    let now = Utc::now();
    let until = |secs: Option<u64>| {
        secs.map(|s| now + chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)))
    };
    let faults = Faults {
        error_status,
        error_share: if error_status.is_some() || error_count.is_some() || error_share > 0.0 {
            error_share
        } else {
            0.0
        },
        error_count,
        latency: Duration::from_millis(latency_ms),
        rate_limited_until: until(secs_in(&body, "rateLimit", "resetInSecs")?),
        secondary_until: until(secs_in(&body, "secondaryRateLimit", "retryAfterSecs")?),
        drop_webhook_share: share(&body, "dropWebhookShare")?.unwrap_or(0.0),
    };
    shared.world().faults = faults;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> AdminResult {
    shared.world().faults = Faults::default();
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
            "errorStatus": f.error_status,
            "errorShare": f.error_share,
            "errorCount": f.error_count,
            "latencyMs": f.latency.as_millis() as u64,
            "rateLimit": left(f.rate_limited_until).map(|s| json!({"resetInSecs": s})),
            "secondaryRateLimit": left(f.secondary_until).map(|s| json!({"retryAfterSecs": s})),
            "dropWebhookShare": f.drop_webhook_share,
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
