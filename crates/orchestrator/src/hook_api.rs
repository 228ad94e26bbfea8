//! `/api/hooks/*`: the container hooks of a proxy runner, authenticated by
//! the runner's orchestrator token. Steps answer with a stream of JSON lines
//! (`{"stdout": b64}`, `{"stderr": b64}`, then `{"exitCode": n}` or
//! `{"error": {...}}`), written as the step produces them.

use std::sync::Arc;

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use futures::StreamExt;
use proxy_runner_domain::container_hooks::limits;
use proxy_runner_domain::job_containers::StepOutput;
use proxy_runner_domain::ports::BackendError;
use proxy_runner_domain::values::{Fields, MAX_IDENTIFIER_LEN};
use serde_json::{Value, json};

use crate::api::{AppState, Body};
use crate::auth::{Principal, bearer};
use crate::error::{ApiError, ApiResult};
use crate::proxy::{HookRequest, ProxyError, ProxyJobs, StepRun};
use crate::requests::json_object;

#[derive(Clone)]
pub struct HookApiState {
    pub app: AppState,
    pub proxy: Option<Arc<ProxyJobs>>,
}

pub fn routes(state: HookApiState) -> axum::Router {
    axum::Router::new()
        .route("/api/hooks/prepare-job", post(prepare_job))
        .route("/api/hooks/run-script-step", post(run_script_step))
        .route("/api/hooks/run-container-step", post(run_container_step))
        .route("/api/hooks/cleanup-job", post(cleanup_job))
        .layer(DefaultBodyLimit::max(limits::INPUT_BYTES))
        .with_state(state)
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Service(e) => e.into(),
            ProxyError::Input(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                e.to_string(),
            ),
            ProxyError::Policy(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_refused",
                format!("refused by the proxy policy: {e}"),
            ),
            ProxyError::Engine(e @ BackendError::ImageMissing { .. }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "image_missing",
                e.to_string(),
            ),
            ProxyError::Engine(e @ BackendError::DaemonUnreachable(_)) => {
                ApiError::unavailable(e.to_string())
            }
            ProxyError::Engine(BackendError::NotFound(what)) => {
                ApiError::not_found(format!("gone from the container engine: {what}"))
            }
            ProxyError::Engine(e) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "engine_error", e.to_string())
            }
            ProxyError::State(m) => ApiError::new(StatusCode::CONFLICT, "bad_state", m),
        }
    }
}

/// Authenticates first (an anonymous caller learns nothing about the body),
/// then reads `{runnerName, args, state}`.
async fn read(
    state: &HookApiState,
    headers: &HeaderMap,
    body: Body,
    args_required: bool,
) -> ApiResult<(Arc<ProxyJobs>, Principal, HookRequest)> {
    let who = state
        .app
        .orchestrator
        .authenticate(bearer(headers)?)
        .await?;
    let proxy = state.proxy.clone().ok_or_else(|| {
        ApiError::unavailable("the proxy path is off: configure a [proxy] section")
    })?;
    let body = body.read().await?;
    Ok((proxy, who, parse_hook_request(&body, args_required)?))
}

/// Reads a hook route's body `{runnerName, args, state}`; `args` is checked
/// to be an object here and parsed by the use case.
pub fn parse_hook_request(body: &[u8], args_required: bool) -> ApiResult<HookRequest> {
    let mut obj = json_object(body)?;
    // The runner name meets the rule it met when the job was delegated.
    let runner_name = Fields::new(&obj, "")
        .identifier("runnerName", MAX_IDENTIFIER_LEN)?
        .ok_or_else(|| ApiError::missing("runnerName"))?;
    obj.remove("runnerName");
    let args = match obj.remove("args") {
        None | Some(Value::Null) if args_required => return Err(ApiError::missing("args")),
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(ApiError::invalid("args", "must be an object")),
    };
    let state = obj.remove("state").unwrap_or(Value::Null);
    Ok(HookRequest {
        runner_name,
        args,
        state,
    })
}

async fn prepare_job(
    State(state): State<HookApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (proxy, who, request) = read(&state, &headers, body, true).await?;
    let prepared = proxy.prepare(&who, request).await?;
    Ok(Json(json!({
        "jobId": prepared.job_id,
        "response": prepared.response,
        "notices": prepared.notices,
    }))
    .into_response())
}

async fn cleanup_job(
    State(state): State<HookApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (proxy, who, request) = read(&state, &headers, body, false).await?;
    let (job_id, removed) = proxy.cleanup(&who, request).await?;
    Ok(Json(json!({"jobId": job_id, "removed": removed})).into_response())
}

async fn run_script_step(
    State(state): State<HookApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (proxy, who, request) = read(&state, &headers, body, true).await?;
    Ok(streamed(proxy.run_script_step(&who, request).await?))
}

async fn run_container_step(
    State(state): State<HookApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (proxy, who, request) = read(&state, &headers, body, true).await?;
    Ok(streamed(proxy.run_container_step(&who, request).await?))
}

/// The step's output as JSON lines, each written as it comes.
fn streamed(run: StepRun) -> Response {
    let b64 = base64::engine::general_purpose::STANDARD;
    let lines = run.output.map(move |item| {
        let line = match item {
            Ok(StepOutput::Stdout(bytes)) => json!({"stdout": b64.encode(&bytes)}),
            Ok(StepOutput::Stderr(bytes)) => json!({"stderr": b64.encode(&bytes)}),
            Ok(StepOutput::Exit(code)) => json!({"exitCode": code}),
            Err(message) => json!({"error": {"code": "step_failed", "message": message}}),
        };
        let mut text = line.to_string();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(text)
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        HttpBody::from_stream(lines),
    )
        .into_response()
}
