//! `POST /webhooks/github`: GitHub's `workflow_job` deliveries. A delivery
//! without a well-formed signature header is refused before its body is
//! read; the signature is computed over the body as it streams in, and only
//! a `workflow_job` body is kept, within the limit, to be parsed once the
//! signature holds. The answer comes as soon as the event is recorded
//! (provisioning happens in the background).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use proxy_runner_domain::JobSource;
use proxy_runner_domain::ports::{Clock, JobStore};
use proxy_runner_webhooks::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, SignatureCheck, WORKFLOW_JOB_EVENT,
    WebhookError, WorkflowJobAction, parse_workflow_job_event,
};
use secrecy::SecretString;
use serde_json::json;

use crate::autoscaler::{Autoscaler, Ingested, JobAction};
use crate::error::ApiError;
use crate::metrics as m;

/// The default limit of a delivery's body. GitHub caps payloads at 25 MiB,
/// but a `workflow_job` payload is a few KiB: a lower limit keeps what an
/// unauthenticated sender can make us hold small (`[http]`).
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;
/// The most `[http] webhook_body_limit_bytes` may be: GitHub's own cap.
pub const WEBHOOK_BODY_LIMIT_MAX: usize = 25 * 1024 * 1024;

#[derive(Clone)]
pub struct WebhookState {
    pub secret: Option<SecretString>,
    pub autoscaler: Option<Arc<Autoscaler>>,
    pub store: Arc<dyn JobStore>,
    pub clock: Arc<dyn Clock>,
    /// Largest body accepted.
    pub body_limit: usize,
}

pub fn routes(state: WebhookState) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/github", post(receive))
        .with_state(state)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn counted(event: &str, action: &str, outcome: &'static str) {
    metrics::counter!(m::WEBHOOKS, "event" => event.to_string(), "action" => action.to_string(), "outcome" => outcome)
        .increment(1);
}

async fn receive(State(state): State<WebhookState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let secret = state.secret.as_ref().ok_or_else(|| {
        ApiError::unavailable("webhooks are not configured: set PROXY_RUNNER_WEBHOOK_SECRET")
    })?;
    let refused = |e: proxy_runner_webhooks::SignatureError| {
        counted("unknown", "", "bad_signature");
        tracing::warn!(error = %e, "webhook refused");
        ApiError::unauthorized(e.to_string())
    };
    let mut check =
        SignatureCheck::begin(secret, header(&headers, SIGNATURE_HEADER)).map_err(refused)?;
    // Only a body we will parse is kept; others are hashed and let go.
    let keep = header(&headers, EVENT_HEADER) == Some(WORKFLOW_JOB_EVENT);
    let body = read_signed(body, &mut check, keep, state.body_limit).await?;
    check.finish().map_err(refused)?;
    let event = required_header(&headers, EVENT_HEADER, "X-GitHub-Event")?;
    let delivery = required_header(&headers, DELIVERY_HEADER, "X-GitHub-Delivery")?;
    if event == "ping" {
        counted(&event, "", "pong");
        return Ok((StatusCode::OK, Json(json!({"outcome": "pong"}))).into_response());
    }
    if event != WORKFLOW_JOB_EVENT {
        counted(&event, "", "ignored_event");
        return Ok(ignored(format!("event {event:?} is not handled")));
    }
    // A refused payload is answered 4xx and leaves no trace in the store
    // (not even its delivery id: a corrected redelivery is processed).
    let parsed = parse_workflow_job_event(&body).map_err(|e| {
        counted(&event, "", "invalid");
        tracing::warn!(delivery = %delivery, error = %e, "webhook payload refused");
        match e {
            WebhookError::Json(_) => ApiError::bad_json(e.to_string()),
            WebhookError::Invalid(field) => ApiError::from(field),
        }
    })?;
    let action = match parsed.action {
        WorkflowJobAction::Queued => JobAction::Queued,
        WorkflowJobAction::Waiting => JobAction::Waiting,
        WorkflowJobAction::InProgress => JobAction::InProgress,
        WorkflowJobAction::Completed => JobAction::Completed,
        WorkflowJobAction::Other(ref other) => {
            counted(&event, other, "ignored_action");
            return Ok(ignored(format!("action {other:?} is not handled")));
        }
    };
    let autoscaler = state
        .autoscaler
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("GitHub integration is not configured"))?;
    if !state
        .store
        .record_delivery(&delivery, &event, state.clock.now())
        .await?
    {
        counted(&event, parsed.action.as_str(), "duplicate");
        return Ok((
            StatusCode::OK,
            Json(json!({"outcome": "duplicate", "delivery": delivery})),
        )
            .into_response());
    }
    match autoscaler
        .ingest(action, &parsed.job, JobSource::Webhook)
        .await
    {
        Ok(outcome) => {
            let (status, outcome, body) = answer(outcome);
            counted(&event, parsed.action.as_str(), outcome);
            Ok((status, Json(body)).into_response())
        }
        Err(e) => {
            // Let GitHub's redelivery be handled.
            let _ = state.store.forget_delivery(&delivery).await;
            tracing::error!(error = %e, delivery = %delivery, "webhook processing failed");
            Err(ApiError::unavailable(
                "could not record the event; redeliver it",
            ))
        }
    }
}

/// Streams the body through the signature check, within `limit`, keeping it
/// only when `keep`.
async fn read_signed(
    body: axum::body::Body,
    check: &mut SignatureCheck,
    keep: bool,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("webhook body is larger than {limit} bytes"),
        )
    };
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_json(format!("cannot read webhook body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            return Err(too_large());
        }
        check.update(&chunk);
        if keep {
            kept.extend_from_slice(&chunk);
        }
    }
    Ok(kept)
}

fn required_header(headers: &HeaderMap, name: &str, shown: &str) -> Result<String, ApiError> {
    header(headers, name)
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_header",
                format!("{shown} header is required"),
            )
        })
}

fn ignored(reason: String) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({"outcome": "ignored", "reason": reason})),
    )
        .into_response()
}

/// The answer to GitHub and the metric's outcome for what became of the event.
fn answer(outcome: Ingested) -> (StatusCode, &'static str, serde_json::Value) {
    match outcome {
        Ingested::Created(id) => (
            StatusCode::CREATED,
            "created",
            json!({"outcome": "created", "jobId": id}),
        ),
        Ingested::Updated(id) => (
            StatusCode::OK,
            "updated",
            json!({"outcome": "updated", "jobId": id}),
        ),
        Ingested::Unchanged(id) => (
            StatusCode::OK,
            "unchanged",
            json!({"outcome": "unchanged", "jobId": id}),
        ),
        Ingested::Ignored(reason) => (
            StatusCode::ACCEPTED,
            "ignored",
            json!({"outcome": "ignored", "reason": reason}),
        ),
    }
}
