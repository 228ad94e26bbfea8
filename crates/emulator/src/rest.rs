//! The REST API, shaped like api.github.com: runners at repository and
//! organization scope, workflow runs and jobs, App installations and tokens.
//! Every response carries GitHub's rate-limit and request-id headers; fault
//! knobs act here and nowhere else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxy_runner_domain::labels::same_label;
use proxy_runner_domain::names::parse_repository;
use proxy_runner_domain::ports::Scope;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::auth::{self, Caller};
use crate::http_util::{
    ApiError, Paging, RATE_LIMIT_DOCS_URL, REST_BODY_LIMIT, SECONDARY_RATE_LIMIT_DOCS_URL,
    empty_response, json_response, parse_json, timestamp, timestamp_millis,
};
use crate::model::{latest_attempts, node_id, same_scope, scope_account};
use crate::protocol::JitConfigDocument;
use crate::state::{
    DeleteError, Faults, JobOpError, RateWindow, RequestRecord, RunnerCreateError, RunnerTokenKind,
    Shared,
};

type ApiResult = Result<Response, ApiError>;
type PathParams = Result<Path<HashMap<String, String>>, PathRejection>;
type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

const RATE_WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// Longest runner name GitHub accepts.
const MAX_RUNNER_NAME: usize = 64;
const MAX_LABEL_LEN: usize = 255;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let runners = Router::new()
        .route("/actions/runners", get(list_runners))
        .route(
            "/actions/runners/registration-token",
            post(create_registration_token),
        )
        .route("/actions/runners/remove-token", post(create_remove_token))
        .route(
            "/actions/runners/generate-jitconfig",
            post(generate_jitconfig),
        )
        .route(
            "/actions/runners/{runner_id}",
            get(get_runner).delete(delete_runner),
        )
        .route("/installation", get(get_installation));
    let repo_only = Router::new()
        .route("/actions/runs", get(list_runs))
        .route("/actions/runs/{run_id}/jobs", get(list_run_jobs))
        .route("/actions/runs/{run_id}/cancel", post(cancel_run))
        .route("/actions/jobs/{job_id}", get(get_job))
        .route("/actions/jobs/{job_id}/rerun", post(rerun_job));
    Router::new()
        .nest("/repos/{owner}/{repo}", runners.clone().merge(repo_only))
        .nest("/orgs/{org}", runners)
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(create_installation_token),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(REST_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(shared.clone(), github_layer))
        .with_state(shared)
}

// ---------------------------------------------------------------- middleware

/// The rate-limit headers of one response.
struct RateHeaders {
    limit: u64,
    remaining: u64,
    used: u64,
    reset: DateTime<Utc>,
}

impl RateHeaders {
    fn of(w: &RateWindow) -> RateHeaders {
        RateHeaders {
            limit: w.limit,
            remaining: w.limit.saturating_sub(w.used),
            used: w.used,
            reset: w.reset,
        }
    }
}

/// Identifies the caller, counts the request against its rate limit, applies
/// fault knobs, runs the handler and adds GitHub's headers.
async fn github_layer(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let request_id = request_id();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "in-process".to_string());
    let now = Utc::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (caller, verdict, mut rate, latency, seq) = {
        let mut world = shared.world();
        let seq = world.next_request_seq;
        world.next_request_seq += 1;
        let caller = auth::identify(&shared.settings, &world, req.headers(), now);
        let (bucket, limit) = caller.bucket(&peer);
        let window = world.rate.entry(bucket).or_insert_with(|| RateWindow {
            limit,
            used: 0,
            reset: now + RATE_WINDOW,
        });
        if now >= window.reset {
            window.used = 0;
            window.reset = now + RATE_WINDOW;
        }
        let exhausted = window.used >= window.limit;
        if !exhausted {
            window.used += 1;
        }
        let rate = RateHeaders::of(window);
        let verdict = if exhausted {
            Some(Verdict::PrimaryLimit { reset: rate.reset })
        } else {
            fault_verdict(&mut world.faults, now)
        };
        (caller, verdict, rate, world.faults.latency, seq)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = verdict.as_ref().map(Verdict::name);
    let mut response = match verdict {
        Some(Verdict::PrimaryLimit { reset }) => {
            // Nothing left until reset, whether the limit is real or injected.
            rate.remaining = 0;
            rate.used = rate.limit;
            rate.reset = reset;
            primary_rate_limit_error().into_response()
        }
        Some(Verdict::Fail(error, _)) => error.into_response(),
        None => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
    };
    let h = response.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("x-ratelimit-limit", rate.limit.to_string());
    put("x-ratelimit-remaining", rate.remaining.to_string());
    put("x-ratelimit-used", rate.used.to_string());
    put("x-ratelimit-reset", rate.reset.timestamp().to_string());
    put("x-ratelimit-resource", "core".to_string());
    put("x-github-request-id", request_id);
    put("x-github-media-type", "github.v3; format=json".to_string());
    put("x-github-api-version-selected", "2022-11-28".to_string());
    let retry_after_secs = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    shared.world().record_request(RequestRecord {
        seq,
        received_at: now,
        answered_at: Utc::now(),
        method,
        path,
        status: response.status().as_u16(),
        fault,
        retry_after_secs,
    });
    response
}

fn primary_rate_limit_error() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "API rate limit exceeded. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
    )
    .with_docs(RATE_LIMIT_DOCS_URL)
}

/// Why a request is refused before it reaches its handler.
enum Verdict {
    /// GitHub's primary rate limit: 403 with `x-ratelimit-remaining: 0`.
    PrimaryLimit { reset: DateTime<Utc> },
    /// A fault knob's error, with the knob's name.
    Fail(ApiError, &'static str),
}

impl Verdict {
    /// The fault knob behind the refusal, as the request log names it.
    fn name(&self) -> &'static str {
        match self {
            Verdict::PrimaryLimit { .. } => "rateLimit",
            Verdict::Fail(_, knob) => knob,
        }
    }
}

/// Whether a fault knob fails this request. Time-bound knobs lift by
/// themselves when their time is up, like GitHub's limits.
fn fault_verdict(faults: &mut Faults, now: DateTime<Utc>) -> Option<Verdict> {
    if let Some(until) = faults.rate_limited_until {
        if now < until {
            return Some(Verdict::PrimaryLimit { reset: until });
        }
        faults.rate_limited_until = None;
    }
    if let Some(until) = faults.secondary_until {
        if now < until {
            let secs = ((until - now).num_milliseconds().max(0) as u64)
                .div_ceil(1000)
                .max(1);
            let status = faults
                .secondary_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            return Some(Verdict::Fail(
                ApiError::new(
                    status,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                )
                .with_docs(SECONDARY_RATE_LIMIT_DOCS_URL)
                .with_header(header::RETRY_AFTER, secs.to_string()),
                "secondaryRateLimit",
            ));
        }
        faults.secondary_until = None;
    }
    if faults.error_share > 0.0
        && faults.error_count != Some(0)
        && rand::random::<f64>() < faults.error_share
    {
        if let Some(left) = faults.error_count.as_mut() {
            *left -= 1;
        }
        let picked = match faults.error_statuses.len() {
            0 => None,
            n => faults.error_statuses.get(rand::random_range(0..n)).copied(),
        };
        let status = picked
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match status.as_u16() {
            500 => "Server Error",
            other => StatusCode::from_u16(other)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Server Error"),
        };
        return Some(Verdict::Fail(ApiError::new(status, message), "error"));
    }
    None
}

/// GitHub's request ids look like `C5A8:3F2E:1B2C3D:2A3B4C:65A1B2C3`.
fn request_id() -> String {
    let r: [u32; 5] = rand::random();
    format!(
        "{:04X}:{:04X}:{:06X}:{:06X}:{:08X}",
        r[0] & 0xFFFF,
        r[1] & 0xFFFF,
        r[2] & 0xFF_FFFF,
        r[3] & 0xFF_FFFF,
        r[4]
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

// ---------------------------------------------------------------- helpers

fn valid_name(s: &str) -> bool {
    parse_repository(&format!("{s}/x")).is_ok()
}

/// The scope of a `/repos/{owner}/{repo}/...` or `/orgs/{org}/...` path.
fn scope_of(path: PathParams) -> Result<(Scope, HashMap<String, String>), ApiError> {
    let Path(params) = path.map_err(|_| ApiError::not_found())?;
    let scope = if let Some(org) = params.get("org") {
        if !valid_name(org) {
            return Err(ApiError::not_found());
        }
        Scope::Organization { org: org.clone() }
    } else {
        let (owner, repo) = match (params.get("owner"), params.get("repo")) {
            (Some(o), Some(r)) => (o, r),
            _ => return Err(ApiError::not_found()),
        };
        parse_repository(&format!("{owner}/{repo}")).map_err(|_| ApiError::not_found())?;
        Scope::Repository {
            owner: owner.clone(),
            repo: repo.clone(),
        }
    };
    Ok((scope, params))
}

fn repo_of(scope: &Scope) -> Result<(&str, &str), ApiError> {
    match scope {
        Scope::Repository { owner, repo } => Ok((owner, repo)),
        Scope::Organization { .. } => Err(ApiError::not_found()),
    }
}

fn id_param(params: &HashMap<String, String>, key: &str) -> Result<u64, ApiError> {
    params
        .get(key)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(ApiError::not_found)
}

fn query_of(query: QueryParams) -> HashMap<String, String> {
    query.map(|Query(q)| q).unwrap_or_default()
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"))
}

/// `http://host/path` of this request, for `Link` headers. `uri` must be the
/// original URI: inside nested routers the plain one lacks the prefix.
fn request_url(shared: &Shared, headers: &HeaderMap, uri: &Uri) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() => format!("http://{host}{}", uri.path()),
        _ => format!("{}{}", shared.settings.public_url, uri.path()),
    }
}

fn paged(
    mut response: Response,
    paging: &Paging,
    url: &str,
    query: &HashMap<String, String>,
    last: usize,
) -> Response {
    if let Some(link) = paging.link_header(url, query, last)
        && let Ok(v) = HeaderValue::from_str(&link)
    {
        response.headers_mut().insert(header::LINK, v);
    }
    response
}

/// Problems with a `generate-jitconfig` body, GitHub-style.
fn check_jit_body(body: &Value) -> Result<(String, u64, Vec<String>), Vec<String>> {
    let Some(obj) = body.as_object() else {
        return Err(vec!["the request body must be a JSON object".into()]);
    };
    let mut errors = Vec::new();
    let name = match obj.get("name") {
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() {
                errors.push("name must not be empty".to_string());
            } else if t.chars().count() > MAX_RUNNER_NAME {
                errors.push(format!("name is longer than {MAX_RUNNER_NAME} characters"));
            } else if t.chars().any(char::is_control) {
                errors.push("name contains control characters".to_string());
            }
            t.to_string()
        }
        Some(_) => {
            errors.push("name is not of type string".into());
            String::new()
        }
        None => {
            errors.push("object is missing required key: name".into());
            String::new()
        }
    };
    let group = match obj.get("runner_group_id") {
        Some(v) => match v.as_u64() {
            Some(g) if g >= 1 => g,
            _ => {
                errors.push("runner_group_id is not a positive integer".into());
                0
            }
        },
        None => {
            errors.push("object is missing required key: runner_group_id".into());
            0
        }
    };
    let labels = match obj.get("labels") {
        Some(Value::Array(items)) => {
            if items.is_empty() {
                errors.push("labels must have at least 1 item".into());
            } else if items.len() > 100 {
                errors.push("labels must have at most 100 items".into());
            }
            let mut out: Vec<String> = Vec::new();
            for item in items.iter().take(100) {
                match item.as_str().map(str::trim) {
                    Some(l)
                        if !l.is_empty()
                            && l.chars().count() <= MAX_LABEL_LEN
                            && !l.chars().any(char::is_control) =>
                    {
                        if !out.iter().any(|x| same_label(x, l)) {
                            out.push(l.to_string());
                        }
                    }
                    _ => {
                        errors.push(
                            "labels must be non-empty strings of at most 255 characters".into(),
                        );
                        break;
                    }
                }
            }
            out
        }
        Some(_) => {
            errors.push("labels is not of type array".into());
            Vec::new()
        }
        None => {
            errors.push("object is missing required key: labels".into());
            Vec::new()
        }
    };
    if let Some(w) = obj.get("work_folder")
        && !w.is_string()
    {
        errors.push("work_folder is not of type string".into());
    }
    if errors.is_empty() {
        Ok((name, group, labels))
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------- runners

async fn list_runners(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> ApiResult {
    let (scope, _) = scope_of(path)?;
    caller.require_token(scope_account(&scope))?;
    let query = query_of(query);
    let paging = Paging::from_query(&query);
    let name = query.get("name").filter(|n| !n.is_empty());
    let now = Instant::now();
    let runners: Vec<Value> = shared
        .world()
        .runners
        .values()
        .filter(|r| same_scope(&r.scope, &scope))
        .filter(|r| name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
        .map(|r| r.to_json(now))
        .collect();
    let (page, last) = paging.slice(&runners);
    let response = json_response(
        StatusCode::OK,
        &json!({"total_count": runners.len(), "runners": page}),
    );
    let url = request_url(&shared, &headers, &uri);
    Ok(paged(response, &paging, &url, &query, last))
}

async fn get_runner(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    caller.require_token(scope_account(&scope))?;
    let id = id_param(&params, "runner_id")?;
    let world = shared.world();
    let runner = world
        .runners
        .get(&id)
        .filter(|r| same_scope(&r.scope, &scope))
        .ok_or_else(ApiError::not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &runner.to_json(Instant::now()),
    ))
}

async fn delete_runner(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    caller.require_token(scope_account(&scope))?;
    let id = id_param(&params, "runner_id")?;
    let deleted = shared.world().delete_runner(&scope, id);
    match deleted {
        Ok(()) => {
            // A long poll of the deleted runner ends now, not at its timeout.
            shared.job_queued.notify_waiters();
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Err(DeleteError::NotFound) => Err(ApiError::not_found()),
        Err(DeleteError::Busy(name)) => Err(ApiError::validation_simple(
            format!("Bad request - Runner \"{name}\" is still running a job\""),
            Vec::new(),
        )),
    }
}

async fn runner_token(
    shared: Arc<Shared>,
    caller: Caller,
    path: PathParams,
    kind: RunnerTokenKind,
) -> ApiResult {
    let (scope, _) = scope_of(path)?;
    caller.require_token(scope_account(&scope))?;
    let (token, expires_at) = shared.world().issue_runner_token(&scope, kind, Utc::now());
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"token": token.expose_secret(), "expires_at": timestamp_millis(expires_at)}),
    ))
}

async fn create_registration_token(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    runner_token(shared, caller, path, RunnerTokenKind::Registration).await
}

async fn create_remove_token(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    runner_token(shared, caller, path, RunnerTokenKind::Remove).await
}

async fn generate_jitconfig(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (scope, _) = scope_of(path)?;
    caller.require_token(scope_account(&scope))?;
    let body = parse_json(&body_of(body)?)?;
    let (name, group_id, labels) = check_jit_body(&body)
        .map_err(|errors| ApiError::validation_simple("Invalid request.", errors))?;
    let work_folder = body
        .get("work_folder")
        .and_then(Value::as_str)
        .unwrap_or("_work")
        .to_string();
    let created = shared
        .world()
        .create_runner(&scope, &name, &labels, group_id, true)
        .map_err(|RunnerCreateError::NameTaken| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("Already exists - A runner with the name {name} already exists."),
            )
        })?;
    let base = &shared.settings.public_url;
    let document = JitConfigDocument {
        url: base.clone(),
        scope_url: scope.runner_url(base),
        runner_id: created.runner.id,
        runner_name: created.runner.name.clone(),
        credential: created.credential.expose_secret().to_string(),
        work_folder,
    };
    let encoded = serde_json::to_vec(&document)
        .map(|json| base64::engine::general_purpose::STANDARD.encode(json))
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "runner": created.runner.to_json(Instant::now()),
            "encoded_jit_config": encoded,
        }),
    ))
}

// ---------------------------------------------------------------- runs and jobs

async fn list_runs(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> ApiResult {
    let (scope, _) = scope_of(path)?;
    let (owner, repo) = repo_of(&scope)?;
    caller.require_token(owner)?;
    let query = query_of(query);
    let paging = Paging::from_query(&query);
    let wanted = query.get("status").filter(|s| !s.is_empty());
    let base = &shared.settings.public_url;
    let runs: Vec<Value> = {
        let mut world = shared.world();
        let repository_id = world.repository_id(owner, repo);
        let world = &*world;
        world
            .runs
            .values()
            .rev()
            .filter(|r| r.in_repo(owner, repo))
            .filter_map(|run| {
                let jobs = latest_attempts(world.jobs.values().filter(|j| j.run_id == run.id));
                let (status, conclusion) = run.status(&jobs);
                let keep = wanted.is_none_or(|w| w == status || conclusion == Some(w.as_str()));
                keep.then(|| run.to_json(base, &jobs, repository_id))
            })
            .collect()
    };
    let (page, last) = paging.slice(&runs);
    let response = json_response(
        StatusCode::OK,
        &json!({"total_count": runs.len(), "workflow_runs": page}),
    );
    let url = request_url(&shared, &headers, &uri);
    Ok(paged(response, &paging, &url, &query, last))
}

async fn list_run_jobs(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
    query: QueryParams,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    let (owner, repo) = repo_of(&scope)?;
    caller.require_token(owner)?;
    let run_id = id_param(&params, "run_id")?;
    let query = query_of(query);
    let paging = Paging::from_query(&query);
    let all = query.get("filter").is_some_and(|f| f == "all");
    let base = &shared.settings.public_url;
    let jobs: Vec<Value> = {
        let world = shared.world();
        world
            .runs
            .get(&run_id)
            .filter(|r| r.in_repo(owner, repo))
            .ok_or_else(ApiError::not_found)?;
        let of_run = world.jobs.values().filter(|j| j.run_id == run_id);
        let chosen = if all {
            of_run.collect()
        } else {
            latest_attempts(of_run)
        };
        chosen.into_iter().map(|j| j.to_json(base)).collect()
    };
    let (page, last) = paging.slice(&jobs);
    let response = json_response(
        StatusCode::OK,
        &json!({"total_count": jobs.len(), "jobs": page}),
    );
    let url = request_url(&shared, &headers, &uri);
    Ok(paged(response, &paging, &url, &query, last))
}

async fn get_job(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    let (owner, repo) = repo_of(&scope)?;
    caller.require_token(owner)?;
    let id = id_param(&params, "job_id")?;
    let world = shared.world();
    let job = world
        .jobs
        .get(&id)
        .filter(|j| j.in_repo(owner, repo))
        .ok_or_else(ApiError::not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &job.to_json(&shared.settings.public_url),
    ))
}

async fn rerun_job(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    let (owner, repo) = repo_of(&scope)?;
    caller.require_token(owner)?;
    let id = id_param(&params, "job_id")?;
    let body = parse_json(&body_of(body)?)?;
    if !(body.is_null() || body.is_object()) {
        return Err(ApiError::validation_simple(
            "Invalid request.",
            vec!["the request body must be a JSON object".into()],
        ));
    }
    let mut world = shared.world();
    if !world.jobs.get(&id).is_some_and(|j| j.in_repo(owner, repo)) {
        return Err(ApiError::not_found());
    }
    match world.rerun_job(&shared, id, Utc::now()) {
        Ok(_) => Ok(json_response(StatusCode::CREATED, &json!({}))),
        Err(JobOpError::NotFound) => Err(ApiError::not_found()),
        Err(JobOpError::Conflict(message)) => Err(ApiError::new(StatusCode::FORBIDDEN, message)),
    }
}

async fn cancel_run(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    let (scope, params) = scope_of(path)?;
    let (owner, repo) = repo_of(&scope)?;
    caller.require_token(owner)?;
    let run_id = id_param(&params, "run_id")?;
    let mut world = shared.world();
    if !world
        .runs
        .get(&run_id)
        .is_some_and(|r| r.in_repo(owner, repo))
    {
        return Err(ApiError::not_found());
    }
    match world.cancel_run(&shared, run_id, Utc::now()) {
        Ok(()) => Ok(json_response(StatusCode::ACCEPTED, &json!({}))),
        Err(JobOpError::NotFound) => Err(ApiError::not_found()),
        Err(JobOpError::Conflict(message)) => Err(ApiError::new(StatusCode::CONFLICT, message)),
    }
}

// ---------------------------------------------------------------- GitHub App

fn installation_json(
    shared: &Shared,
    id: u64,
    account: &str,
    account_id: u64,
    app_id: u64,
) -> Value {
    let base = &shared.settings.public_url;
    let created = timestamp(DateTime::UNIX_EPOCH);
    json!({
        "id": id,
        "account": {
            "login": account,
            "id": account_id,
            "node_id": node_id("Organization", account_id),
            "type": "Organization",
            "site_admin": false,
        },
        "repository_selection": "all",
        "access_tokens_url": format!("{base}/app/installations/{id}/access_tokens"),
        "repositories_url": format!("{base}/installation/repositories"),
        "html_url": format!("{base}/organizations/{account}/settings/installations/{id}"),
        "app_id": app_id,
        "app_slug": "proxy-runner-emulator",
        "target_id": account_id,
        "target_type": "Organization",
        "permissions": default_permissions(),
        "events": ["workflow_job"],
        "created_at": created,
        "updated_at": created,
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    })
}

fn default_permissions() -> Value {
    json!({
        "administration": "write",
        "organization_self_hosted_runners": "write",
        "actions": "write",
        "metadata": "read",
    })
}

async fn get_installation(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: PathParams,
) -> ApiResult {
    let (scope, _) = scope_of(path)?;
    let app_id = caller.require_app()?;
    let account = scope_account(&scope).to_string();
    let (id, account_id) = {
        let mut world = shared.world();
        (world.installation_for(&account), world.account_id(&account))
    };
    Ok(json_response(
        StatusCode::OK,
        &installation_json(&shared, id, &account, account_id, app_id),
    ))
}

async fn create_installation_token(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    caller.require_app()?;
    let Path(params) = path.map_err(|_| ApiError::not_found())?;
    let id = id_param(&params, "installation_id")?;
    let body = parse_json(&body_of(body)?)?;
    let permissions = match &body {
        Value::Null => default_permissions(),
        Value::Object(obj) => match obj.get("permissions") {
            None | Some(Value::Null) => default_permissions(),
            Some(Value::Object(p)) if p.values().all(|v| v == "read" || v == "write") => {
                Value::Object(p.clone())
            }
            Some(_) => {
                return Err(ApiError::validation(
                    "Validation Failed",
                    vec![
                        json!({"resource": "Permissions", "field": "permissions", "code": "invalid"}),
                    ],
                ));
            }
        },
        _ => {
            return Err(ApiError::validation(
                "Invalid request.",
                vec![
                    json!({"code": "invalid", "message": "the request body must be a JSON object"}),
                ],
            ));
        }
    };
    let ttl = shared.settings.installation_token_ttl;
    let (token, expires_at) = shared
        .world()
        .issue_installation_token(id, ttl, Utc::now())
        .ok_or_else(ApiError::not_found)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "token": token.expose_secret(),
            "expires_at": timestamp(expires_at),
            "permissions": permissions,
            "repository_selection": "all",
        }),
    ))
}
