//! The HTTP API: `fn app(state) -> Router`, tested in-process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use proxy_runner_domain::JobStatus;
use proxy_runner_domain::ports::{JobFilter, TokenFilter, TokenRecord};
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Principal, bearer};
use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::requests::{parse_completion, parse_delegation, parse_token_request, parse_token_value};
use crate::service::Orchestrator;

/// Largest body accepted on the job and token routes.
pub const API_BODY_LIMIT: usize = 1024 * 1024;
/// Default and largest page of `GET /api/jobs`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 500;

#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
}

/// A request body, read only when the handler asks for it: handlers
/// authenticate first, so the body of a caller without credentials is never
/// read. Over-limit bodies get a JSON 413 instead of axum's plain-text answer.
pub struct Body(Request);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = std::convert::Infallible;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Body(req))
    }
}

impl Body {
    /// Reads the whole body within the route's limit; JSON media type only.
    pub async fn read(self) -> Result<Bytes, ApiError> {
        let unsupported = |message: String| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            )
        };
        let req = self.0;
        let declared = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|ct| ct.to_str().unwrap_or("").to_string());
        if let Some(ct) = &declared
            && !is_json_media_type(ct)
        {
            return Err(unsupported(format!(
                "Content-Type {ct:?} is not JSON; send application/json"
            )));
        }
        let bytes = Bytes::from_request(req, &()).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body is larger than this route accepts",
                )
            } else {
                ApiError::bad_json(format!("cannot read request body: {rejection}"))
            }
        })?;
        if declared.is_none() && !bytes.is_empty() {
            return Err(unsupported(
                "Content-Type is missing; send the body as application/json".into(),
            ));
        }
        Ok(bytes)
    }
}

/// `application/json`, parameters (`charset`) allowed. Other JSON-based
/// types (`application/json-patch+json`, ...) mean something else.
fn is_json_media_type(ct: &str) -> bool {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
}

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        state
            .orchestrator
            .authenticate(token)
            .await
            .map(Caller)
            .map_err(ApiError::from)
    }
}

/// The API's routes with their body limit; `compose::app` merges them into
/// what is served.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/jobs/delegate", post(delegate))
        .route("/api/jobs/{id}/complete", post(complete))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/tokens", post(create_token).get(list_tokens))
        .route("/api/tokens/revoke", post(revoke_token_by_value))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .with_state(state)
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text())
}

/// JSON answers for unknown routes and methods (public: the webhook router uses them too).
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn delegate(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    metrics::counter!(m::DELEGATIONS_RECEIVED).increment(1);
    let result = async {
        // Authenticate first: an anonymous caller learns nothing about the body.
        let who = state.orchestrator.authenticate(bearer(&headers)?).await?;
        let body = body.read().await?;
        let delegation = parse_delegation(&body)?;
        Ok::<_, ApiError>(state.orchestrator.delegate(&who, delegation).await?)
    }
    .await;
    match result {
        Ok((job, created)) => {
            metrics::counter!(m::DELEGATIONS_SUCCEEDED).increment(1);
            metrics::histogram!(m::TIME_TO_DELEGATE).record(started.elapsed().as_secs_f64());
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(job)).into_response()
        }
        Err(e) => {
            metrics::counter!(m::DELEGATIONS_FAILED, "reason" => e.code).increment(1);
            tracing::warn!(code = e.code, message = %e.message, "delegation rejected");
            e.into_response()
        }
    }
}

async fn complete(
    State(state): State<AppState>,
    Caller(who): Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    let Path(id) = id.map_err(bad_path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "runner") {
        return Err(ApiError::bad_query(format!(
            "unknown query parameter {unknown:?}"
        )));
    }
    let completion = parse_completion(&body.read().await?)?;
    let job = state
        .orchestrator
        .resolve_for_completion(&who, &id, query.get("runner").map(String::as_str))
        .await?;
    let job = state.orchestrator.complete(&who, job, completion).await?;
    Ok(Json(job).into_response())
}

fn parse_list_query(query: &HashMap<String, String>) -> ApiResult<JobFilter> {
    let mut filter = JobFilter {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (k, v) in query {
        match k.as_str() {
            "status" => {
                filter.status = Some(
                    v.parse::<JobStatus>()
                        .map_err(|e| ApiError::bad_query(format!("status: {e}")))?,
                )
            }
            "repository" => filter.repository = Some(v.clone()),
            "limit" => filter.limit = page_limit(v)?,
            "after" => filter.after = Some(page_after(v, "job")?),
            other => {
                return Err(ApiError::bad_query(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok(filter)
}

async fn list_jobs(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let filter = parse_list_query(&query)?;
    let jobs = state.orchestrator.list_jobs(&who, &filter).await?;
    let next = (jobs.len() == filter.limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(Json(json!({"jobs": jobs, "nextAfter": next})))
}

async fn get_job(
    State(state): State<AppState>,
    Caller(who): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id.map_err(bad_path)?;
    Ok(Json(state.orchestrator.get_job(&who, &id).await?).into_response())
}

async fn create_token(
    State(state): State<AppState>,
    Caller(who): Caller,
    body: Body,
) -> ApiResult<Response> {
    who.require_admin()?;
    let runner = parse_token_request(&body.read().await?)?;
    let issued = state.orchestrator.issue_token(&who, &runner).await?;
    let body = json!({
        "id": issued.record.id,
        "runner": issued.record.runner,
        "token": issued.token.expose_secret(),
        "createdAt": issued.record.created_at,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_token(
    State(state): State<AppState>,
    Caller(who): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id.map_err(bad_path)?;
    state.orchestrator.revoke_token(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A token as listed: never its value (the store has only its hash).
fn token_json(record: &TokenRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "runner": record.runner,
        "createdAt": record.created_at,
        "revokedAt": record.revoked_at,
    })
}

/// `POST /api/tokens/revoke` `{"token"}`: revokes by value, for an admin who
/// holds a token but not its id. The value travels in the body, never in a URL.
async fn revoke_token_by_value(
    State(state): State<AppState>,
    Caller(who): Caller,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    who.require_admin()?;
    let token = parse_token_value(&body.read().await?)?;
    let record = state
        .orchestrator
        .revoke_token_by_value(&who, &token)
        .await?;
    Ok(Json(token_json(&record)))
}

/// `limit` of a paged listing.
fn page_limit(v: &str) -> ApiResult<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| ApiError::bad_query(format!("limit: must be 1..={MAX_PAGE}")))
}

/// `after` of a paged listing: the id of the last item of the page before.
fn page_after(v: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(v).map_err(|_| ApiError::bad_query(format!("after: must be a {what} id")))
}

fn parse_token_query(query: &HashMap<String, String>) -> ApiResult<TokenFilter> {
    let mut filter = TokenFilter {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (k, v) in query {
        match k.as_str() {
            "runner" => filter.runner = Some(v.clone()),
            "limit" => filter.limit = page_limit(v)?,
            "after" => filter.after = Some(page_after(v, "token")?),
            other => {
                return Err(ApiError::bad_query(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok(filter)
}

async fn list_tokens(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    who.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    let filter = parse_token_query(&query)?;
    let tokens = state.orchestrator.list_tokens(&who, &filter).await?;
    let next = (tokens.len() == filter.limit)
        .then(|| tokens.last().map(|t| t.id))
        .flatten();
    let tokens: Vec<_> = tokens.iter().map(token_json).collect();
    Ok(Json(json!({"tokens": tokens, "nextAfter": next})))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "uptimeSeconds": state.started.elapsed().as_secs()}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let checks = state.orchestrator.readiness().await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            };
            (name.to_string(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": body}))).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
