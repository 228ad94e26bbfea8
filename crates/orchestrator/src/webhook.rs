//! `POST /webhooks/github`: GitHub's `workflow_job` deliveries. The signature
//! is checked over the raw body before anything is parsed; the answer comes
//! as soon as the event is recorded (provisioning happens in the background).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use proxy_runner_domain::JobSource;
use proxy_runner_domain::ports::{Clock, JobStore};
use proxy_runner_webhooks::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WORKFLOW_JOB_EVENT, WebhookError,
    WorkflowJobAction, parse_workflow_job_event, verify_signature,
};
use secrecy::SecretString;
use serde_json::json;

use crate::autoscaler::{Autoscaler, Ingested, JobAction};
use crate::error::ApiError;
use crate::metrics as m;

/// GitHub caps webhook payloads at 25 MiB.
pub const WEBHOOK_BODY_LIMIT: usize = 25 * 1024 * 1024;

#[derive(Clone)]
pub struct WebhookState {
    pub secret: Option<SecretString>,
    pub autoscaler: Option<Arc<Autoscaler>>,
    pub store: Arc<dyn JobStore>,
    pub clock: Arc<dyn Clock>,
}

pub fn routes(state: WebhookState) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/github", post(receive))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .with_state(state)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn counted(event: &str, action: &str, outcome: &'static str) {
    metrics::counter!(m::WEBHOOKS, "event" => event.to_string(), "action" => action.to_string(), "outcome" => outcome)
        .increment(1);
}

async fn receive(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("webhook body is larger than {WEBHOOK_BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::bad_json(format!("cannot read webhook body: {r}"))
        }
    })?;
    let secret = state.secret.as_ref().ok_or_else(|| {
        ApiError::unavailable("webhooks are not configured: set PROXY_RUNNER_WEBHOOK_SECRET")
    })?;
    if let Err(e) = verify_signature(secret, &body, header(&headers, SIGNATURE_HEADER)) {
        counted("unknown", "", "bad_signature");
        tracing::warn!(error = %e, "webhook refused");
        return Err(ApiError::unauthorized(e.to_string()));
    }
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
