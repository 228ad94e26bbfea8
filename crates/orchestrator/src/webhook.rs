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
use proxy_runner_domain::ports::JobStore;
use proxy_runner_github::webhooks::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WORKFLOW_JOB_EVENT, WorkflowJobAction,
    parse_workflow_job_event, verify_signature,
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
}

pub fn routes(state: WebhookState) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/github", post(receive))
        .method_not_allowed_fallback(crate::api::method_not_allowed)
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
    let event = header(&headers, EVENT_HEADER)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_header",
                "X-GitHub-Event header is required",
            )
        })?
        .to_string();
    let delivery = header(&headers, DELIVERY_HEADER)
        .filter(|d| !d.is_empty() && d.len() <= 100)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_header",
                "X-GitHub-Delivery header is required",
            )
        })?
        .to_string();
    if event == "ping" {
        counted(&event, "", "pong");
        return Ok((StatusCode::OK, Json(json!({"outcome": "pong"}))).into_response());
    }
    if event != WORKFLOW_JOB_EVENT {
        counted(&event, "", "ignored_event");
        return Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({"outcome": "ignored", "reason": format!("event {event:?} is not handled")}),
            ),
        )
            .into_response());
    }
    let parsed = parse_workflow_job_event(&body).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let action = match parsed.action {
        WorkflowJobAction::Queued => JobAction::Queued,
        WorkflowJobAction::Waiting => JobAction::Waiting,
        WorkflowJobAction::InProgress => JobAction::InProgress,
        WorkflowJobAction::Completed => JobAction::Completed,
        WorkflowJobAction::Other(ref other) => {
            counted(&event, other, "ignored_action");
            return Ok((StatusCode::ACCEPTED, Json(json!({"outcome": "ignored", "reason": format!("action {other:?} is not handled")}))).into_response());
        }
    };
    let autoscaler = state
        .autoscaler
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("GitHub integration is not configured"))?;
    let now = chrono::Utc::now();
    if !state.store.record_delivery(&delivery, &event, now).await? {
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
            let (status, body) = match outcome {
                Ingested::Created(id) => (
                    StatusCode::CREATED,
                    json!({"outcome": "created", "jobId": id}),
                ),
                Ingested::Updated(id) => {
                    (StatusCode::OK, json!({"outcome": "updated", "jobId": id}))
                }
                Ingested::Unchanged(id) => {
                    (StatusCode::OK, json!({"outcome": "unchanged", "jobId": id}))
                }
                Ingested::Ignored(reason) => (
                    StatusCode::ACCEPTED,
                    json!({"outcome": "ignored", "reason": reason}),
                ),
            };
            counted(
                &event,
                parsed.action.as_str(),
                body["outcome"]
                    .as_str()
                    .map(|s| match s {
                        "created" => "created",
                        "updated" => "updated",
                        "unchanged" => "unchanged",
                        _ => "ignored",
                    })
                    .unwrap_or("ignored"),
            );
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
