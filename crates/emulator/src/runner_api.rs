//! Server side of the runner protocol (`/_runner/*`): registration with a
//! registration token, a long poll that hands out one job, step reports and
//! the job result. Fault knobs never apply here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use proxy_runner_domain::labels::same_label;
use proxy_runner_domain::names::parse_repository;
use proxy_runner_domain::ports::Scope;
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::http_util::{empty_response, json_response};
use crate::model::same_scope;
use crate::protocol::{
    ACQUIRE_MAX_WAIT_MS, AcquireRequest, CompleteRequest, CompleteResponse, JobAssignment,
    LogReport, RUNNER_BODY_LIMIT, RegisterRequest, RegisterResponse, StepAck, StepReport,
};
use crate::state::{Handout, JobOpError, RunnerCreateError, Shared};

/// Labels `config.sh` adds unless told not to.
const DEFAULT_RUNNER_LABELS: [&str; 3] = ["self-hosted", "Linux", "X64"];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/register", post(register))
        .route("/acquire", post(acquire))
        .route("/jobs/{job_id}/steps/{index}", post(report_step))
        .route("/jobs/{job_id}/log", post(report_log))
        .route("/jobs/{job_id}/complete", post(complete))
        .layer(DefaultBodyLimit::max(RUNNER_BODY_LIMIT))
        .with_state(shared)
}

struct ProtocolFailure(StatusCode, String);

impl IntoResponse for ProtocolFailure {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({"message": self.1}))
    }
}

type Answer = Result<Response, ProtocolFailure>;

fn fail(status: StatusCode, message: impl Into<String>) -> ProtocolFailure {
    ProtocolFailure(status, message.into())
}

fn parse<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ProtocolFailure> {
    let body = body.map_err(|_| fail(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid request body: {}", e.classify_message()),
        )
    })
}

fn parse_required<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ProtocolFailure> {
    let body = body.map_err(|_| fail(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))?;
    serde_json::from_slice(&body).map_err(|e| {
        fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid request body: {}", e.classify_message()),
        )
    })
}

/// A serde error description without the input it quotes.
trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "missing or mistyped fields",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// The runner whose credential is in `Authorization: Bearer`.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<u64, ProtocolFailure> {
    let unknown = || fail(StatusCode::UNAUTHORIZED, "unknown or removed runner");
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unknown)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(unknown)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unknown());
    }
    let credential = SecretString::from(token.trim().to_string());
    shared
        .world()
        .runner_by_credential(&credential)
        .ok_or_else(unknown)
}

/// The scope named by a runner URL like `http://host/owner/repo` or
/// `http://host/org` (what `config.sh --url` takes).
fn scope_of_url(url: &str) -> Option<Scope> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [org] => {
            parse_repository(&format!("{org}/x")).ok()?;
            Some(Scope::Organization {
                org: org.to_string(),
            })
        }
        [owner, repo] => {
            parse_repository(&format!("{owner}/{repo}")).ok()?;
            Some(Scope::Repository {
                owner: owner.to_string(),
                repo: repo.to_string(),
            })
        }
        _ => None,
    }
}

async fn register(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: RegisterRequest = parse_required(body)?;
    let scope = scope_of_url(&req.url).ok_or_else(|| {
        fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "url must name a repository (BASE/owner/repo) or an organization (BASE/org)",
        )
    })?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 64 characters without control characters",
        ));
    }
    let mut labels: Vec<String> = if req.no_default_labels {
        Vec::new()
    } else {
        DEFAULT_RUNNER_LABELS
            .iter()
            .map(|l| l.to_string())
            .collect()
    };
    for l in req.labels.iter().map(|l| l.trim()) {
        if l.is_empty() || l.chars().count() > 255 || l.chars().any(char::is_control) {
            return Err(fail(StatusCode::UNPROCESSABLE_ENTITY, "invalid label"));
        }
        if !labels.iter().any(|x| same_label(x, l)) {
            labels.push(l.to_string());
        }
    }
    if labels.is_empty() || labels.len() > 100 {
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a runner needs 1 to 100 labels",
        ));
    }
    let mut world = shared.world();
    let token_scope = world
        .registration_scope(&req.token, Utc::now())
        .ok_or_else(|| {
            fail(
                StatusCode::UNAUTHORIZED,
                "invalid or expired registration token",
            )
        })?;
    if !same_scope(&token_scope, &scope) {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "the registration token is not valid for this url",
        ));
    }
    let created = world
        .create_runner(&scope, &name, &labels, 1, req.ephemeral)
        .map_err(|RunnerCreateError::NameTaken| {
            fail(
                StatusCode::CONFLICT,
                format!("a runner named {name:?} already exists"),
            )
        })?;
    drop(world);
    let response = RegisterResponse {
        url: shared.settings.public_url.clone(),
        runner_id: created.runner.id,
        runner_name: created.runner.name,
        credential: created.credential.expose_secret().to_string(),
    };
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::to_value(&response).unwrap_or_default(),
    ))
}

/// Counts a runner as polling (and so online) while its long poll is open,
/// including when the caller goes away mid-poll.
struct PollGuard {
    shared: Arc<Shared>,
    runner_id: u64,
}

impl PollGuard {
    fn new(shared: Arc<Shared>, runner_id: u64) -> PollGuard {
        if let Some(r) = shared.world().runners.get_mut(&runner_id) {
            r.polling += 1;
        }
        PollGuard { shared, runner_id }
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(r) = self.shared.world().runners.get_mut(&self.runner_id) {
            r.polling = r.polling.saturating_sub(1);
            r.last_seen = Some(Instant::now());
        }
    }
}

fn assignment_json(h: Handout) -> Response {
    let a = JobAssignment {
        job_id: h.job_id,
        run_id: h.run_id,
        run_attempt: h.run_attempt,
        repository: h.repository,
        workflow: h.workflow,
        name: h.name,
        labels: h.labels,
        steps: h.steps,
        container: h.container,
        services: h.services,
        head_sha: Some(h.head_sha),
        head_branch: Some(h.head_branch),
    };
    json_response(
        StatusCode::OK,
        &serde_json::to_value(&a).unwrap_or_default(),
    )
}

async fn acquire(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let runner_id = authenticate(&shared, &headers)?;
    let req: AcquireRequest = parse(body)?;
    let wait = Duration::from_millis(req.wait_ms.min(ACQUIRE_MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    shared
        .world()
        .touch_runner(runner_id, req.os.as_deref(), req.version.as_deref());
    let _guard = PollGuard::new(shared.clone(), runner_id);
    loop {
        let notified = shared.job_queued.notified();
        tokio::pin!(notified);
        // Register for wake-ups before looking, so no new job slips by.
        notified.as_mut().enable();
        {
            let mut world = shared.world();
            if !world.runners.contains_key(&runner_id) {
                return Err(fail(StatusCode::UNAUTHORIZED, "unknown or removed runner"));
            }
            if let Some(handout) = world.assign(&shared, runner_id, Utc::now()) {
                return Ok(assignment_json(handout));
            }
        }
        if shared.is_closing() {
            return Ok(empty_response(StatusCode::NO_CONTENT));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(empty_response(StatusCode::NO_CONTENT));
            }
        }
    }
}

fn job_path(
    path: Result<Path<HashMap<String, String>>, PathRejection>,
) -> Result<(u64, Option<usize>), ProtocolFailure> {
    let not_found = || fail(StatusCode::NOT_FOUND, "no such job");
    let Path(params) = path.map_err(|_| not_found())?;
    let job_id = params
        .get("job_id")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(not_found)?;
    let index = match params.get("index") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| not_found())?),
        None => None,
    };
    Ok((job_id, index))
}

fn job_failure(e: JobOpError) -> ProtocolFailure {
    match e {
        JobOpError::NotFound => fail(StatusCode::NOT_FOUND, "no such job for this runner"),
        JobOpError::Conflict(message) => fail(StatusCode::CONFLICT, message),
    }
}

async fn report_step(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let runner_id = authenticate(&shared, &headers)?;
    let (job_id, index) = job_path(path)?;
    let index = index.ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such step"))?;
    let report: StepReport = parse_required(body)?;
    let mut world = shared.world();
    world.touch_runner(runner_id, None, None);
    let cancel_requested = world
        .report_step(
            runner_id,
            job_id,
            index,
            report.output,
            report.exit_code,
            Utc::now(),
        )
        .map_err(job_failure)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(StepAck { cancel_requested }).unwrap_or_default(),
    ))
}

async fn report_log(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let runner_id = authenticate(&shared, &headers)?;
    let (job_id, _) = job_path(path)?;
    let report: LogReport = parse_required(body)?;
    let name = report.name.trim();
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 255 characters without control characters",
        ));
    }
    let mut world = shared.world();
    world.touch_runner(runner_id, None, None);
    let cancel_requested = world
        .append_log(
            runner_id,
            job_id,
            name.to_string(),
            report.output,
            report.exit_code,
        )
        .map_err(job_failure)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(StepAck { cancel_requested }).unwrap_or_default(),
    ))
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let runner_id = authenticate(&shared, &headers)?;
    let (job_id, _) = job_path(path)?;
    let req: CompleteRequest = parse_required(body)?;
    let (cancelled, failed) = match req.result.as_str() {
        "succeeded" => (false, false),
        "failed" => (false, true),
        "cancelled" => (true, false),
        _ => {
            return Err(fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "result must be succeeded, failed or cancelled",
            ));
        }
    };
    let mut world = shared.world();
    world.touch_runner(runner_id, None, None);
    let conclusion = world
        .complete_job(&shared, runner_id, job_id, cancelled, failed, Utc::now())
        .map_err(job_failure)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(CompleteResponse {
            conclusion: conclusion.as_str().to_string(),
        })
        .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_urls_name_scopes() {
        assert_eq!(
            scope_of_url("http://127.0.0.1:9/octo/repo"),
            Some(Scope::Repository {
                owner: "octo".into(),
                repo: "repo".into()
            })
        );
        assert_eq!(
            scope_of_url("https://h/octo/"),
            Some(Scope::Organization { org: "octo".into() })
        );
        assert_eq!(scope_of_url("http://h"), None);
        assert_eq!(scope_of_url("http://h/a/b/c"), None);
        assert_eq!(scope_of_url("http://h/a b"), None);
    }
}
