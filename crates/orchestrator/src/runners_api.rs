//! `/api/runners/*`: what a proxy runner supervisor (`proxy-runner runner`)
//! asks of the orchestrator with its runner token. It holds no GitHub
//! credential, so the orchestrator registers its runners for it:
//!
//! - `POST /api/runners/jitconfig`: a just-in-time config for one slot
//!   runner (`{name}-{slot}-{n}`) with a proxy label set's labels;
//! - `POST /api/runners/registration-token`: a registration token for
//!   setups without JIT (`config.sh`);
//! - `DELETE /api/runners/{name}`: removes a slot runner from GitHub;
//! - `POST /api/runners/heartbeat`: the supervisor's health, as metrics.
//!
//! A token acts only for its runner's slot runners, and only with the
//! labels of a label set with `path = "proxy"`: never with labels that
//! would make the runner take an autoscaled label set's jobs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use proxy_runner_domain::labels::{LabelSet, Labels, same_label};
use proxy_runner_domain::ports::{GitHubError, JitRequest, RunnerRegistry, Scope};
use proxy_runner_domain::proxy_runner::{Heartbeat, MAX_RUNNER_NAME, MAX_SLOTS, is_slot_runner_of};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::api::{AppState, Body};
use crate::audit::Auditor;
use crate::auth::{Principal, bearer};
use crate::config::{Config, JobPath};
use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::requests::json_object;

/// The labels GitHub gives a runner configured with `config.sh` unless
/// told otherwise.
const DEFAULT_RUNNER_LABELS: &[&str] = &["self-hosted", "Linux", "X64"];
const MAX_WORK_FOLDER: usize = 1024;

/// What the routes need of the configuration.
#[derive(Debug, Clone)]
pub struct RunnersSettings {
    /// Every configured label set with its path (empty: every job asking
    /// for `self-hosted` is autoscaled).
    pub label_sets: Vec<(LabelSet, JobPath)>,
    /// Where runners are registered unless the supervisor names a scope.
    pub organization: Option<String>,
    /// The web URL runners are configured against (`config.sh --url`).
    pub web_url: String,
    pub runner_group_id: u64,
}

impl RunnersSettings {
    /// From the configuration; label sets that do not parse are left out
    /// (the autoscaler refuses them at start-up).
    pub fn from_config(config: &Config) -> RunnersSettings {
        RunnersSettings {
            label_sets: config
                .runners
                .label_sets
                .iter()
                .filter_map(|s| {
                    LabelSet::parse_list(s.labels.iter().map(String::as_str))
                        .ok()
                        .map(|l| (l, s.path))
                })
                .collect(),
            organization: config.github.organization.clone(),
            web_url: config.github.web_url.clone(),
            runner_group_id: config.github.runner_group_id,
        }
    }
}

#[derive(Clone)]
pub struct RunnersApiState {
    pub app: AppState,
    pub registry: Option<Arc<dyn RunnerRegistry>>,
    pub settings: Arc<RunnersSettings>,
    pub(crate) audit: Auditor,
}

impl RunnersApiState {
    pub fn new(
        app: AppState,
        registry: Option<Arc<dyn RunnerRegistry>>,
        settings: RunnersSettings,
    ) -> RunnersApiState {
        let audit = Auditor::new(
            app.orchestrator.store.clone(),
            app.orchestrator.sources.clock.clone(),
        );
        RunnersApiState {
            app,
            registry,
            settings: Arc::new(settings),
            audit,
        }
    }
}

pub fn routes(state: RunnersApiState) -> Router {
    Router::new()
        .route("/api/runners/jitconfig", post(jitconfig))
        .route("/api/runners/registration-token", post(registration_token))
        .route("/api/runners/heartbeat", post(heartbeat))
        .route("/api/runners/{name}", delete(delete_runner))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Which labels a proxy runner may carry: exactly a proxy label set's, and
/// never all the labels of an autoscaled set (the runner would take that
/// set's jobs). `carried` is what the runner ends up with (the requested
/// labels, plus GitHub's defaults for `config.sh` runners).
pub fn check_proxy_labels(
    requested: &LabelSet,
    carried: &LabelSet,
    sets: &[(LabelSet, JobPath)],
) -> Result<(), String> {
    if requested.is_empty() {
        return Err("labels: at least one label is required".into());
    }
    if sets.is_empty() {
        return Err(
            "no label set has path = \"proxy\": without label sets every job asking for self-hosted is autoscaled, so no proxy runner may register"
                .into(),
        );
    }
    for (set, path) in sets {
        // A runner takes every job whose labels it carries: all of this
        // set's labels means all of its jobs. (Jobs asking only for labels
        // both sets share can still go either way: give each set a label
        // of its own.)
        if *path == JobPath::Autoscale && carried.serves(set.as_slice()) {
            return Err(format!(
                "labels {:?} would make the runner take the jobs of the autoscaled label set {:?}",
                carried.as_slice(),
                set.as_slice()
            ));
        }
    }
    let equal = |a: &LabelSet, b: &LabelSet| {
        a.as_slice().len() == b.as_slice().len() && a.as_slice().iter().all(|l| b.contains(l))
    };
    if sets
        .iter()
        .any(|(set, path)| *path == JobPath::Proxy && equal(set, requested))
    {
        return Ok(());
    }
    Err(format!(
        "labels {:?} are not the labels of a label set with path = \"proxy\"",
        requested.as_slice()
    ))
}

/// A slot runner's name: one the caller acts for, and a name GitHub takes.
fn check_runner_name(who: &Principal, name: &str) -> ApiResult<()> {
    if name.is_empty()
        || name.len() > MAX_RUNNER_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::invalid(
            "name",
            format!("must be 1 to {MAX_RUNNER_NAME} letters, digits, '-', '_' or '.'"),
        ));
    }
    match who {
        Principal::Admin => Ok(()),
        Principal::Runner { name: own, .. } if is_slot_runner_of(own, name) => Ok(()),
        Principal::Runner { name: own, .. } => Err(ApiError::forbidden(format!(
            "{name:?} is not a slot runner of {own:?}: a supervisor registers {own}-SLOT-N"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationBody {
    name: Option<String>,
    labels: Option<Labels>,
    work_folder: Option<String>,
    organization: Option<String>,
    repository: Option<String>,
}

/// A registration request, checked.
struct Registration {
    name: String,
    labels: LabelSet,
    work_folder: String,
    scope: Scope,
}

fn scope_of(
    settings: &RunnersSettings,
    organization: Option<String>,
    repository: Option<String>,
) -> ApiResult<Scope> {
    let organization = organization.filter(|o| !o.is_empty());
    let repository = repository.filter(|r| !r.is_empty());
    match (organization, repository) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "organization",
            "name an organization or a repository, not both",
        )),
        (None, Some(repo)) => Scope::repository(&repo)
            .ok_or_else(|| ApiError::invalid("repository", "must be OWNER/REPO")),
        (org, None) => {
            let org = org
                .or_else(|| settings.organization.clone())
                .ok_or_else(|| {
                    ApiError::missing(
                        "organization (or repository; the orchestrator has no github.organization)",
                    )
                })?;
            if org.len() > 100 || !org.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(ApiError::invalid(
                    "organization",
                    "must be an organization name",
                ));
            }
            Ok(Scope::Organization { org })
        }
    }
}

async fn read_registration(
    state: &RunnersApiState,
    headers: &HeaderMap,
    body: Body,
    config_sh: bool,
) -> ApiResult<(Principal, Arc<dyn RunnerRegistry>, Registration)> {
    let who = state
        .app
        .orchestrator
        .authenticate(bearer(headers)?)
        .await?;
    let body = body.read().await?;
    let obj = json_object(&body)?;
    let parsed: RegistrationBody =
        serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                e.to_string(),
            )
        })?;
    let name = parsed.name.ok_or_else(|| ApiError::missing("name"))?;
    check_runner_name(&who, &name)?;
    let labels = parsed
        .labels
        .ok_or_else(|| ApiError::missing("labels"))?
        .parse()
        .map_err(|e| ApiError::invalid("labels", e))?;
    let mut carried = labels.clone();
    if config_sh {
        carried.extend(DEFAULT_RUNNER_LABELS.iter().copied());
    }
    check_proxy_labels(&labels, &carried, &state.settings.label_sets)
        .map_err(ApiError::forbidden)?;
    let work_folder = parsed.work_folder.unwrap_or_else(|| "_work".into());
    if work_folder.is_empty()
        || work_folder.len() > MAX_WORK_FOLDER
        || work_folder.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "workFolder",
            format!("must be a path of 1 to {MAX_WORK_FOLDER} characters"),
        ));
    }
    let scope = scope_of(&state.settings, parsed.organization, parsed.repository)?;
    let registry = state.registry.clone().ok_or_else(|| {
        ApiError::unavailable(
            "the orchestrator has no GitHub credentials: it cannot register runners",
        )
    })?;
    Ok((
        who,
        registry,
        Registration {
            name,
            labels,
            work_folder,
            scope,
        },
    ))
}

/// GitHub's refusal as an answer; the supervisor retries on 5xx only.
fn github_error(e: GitHubError) -> ApiError {
    match e {
        e if e.is_retryable() => ApiError::unavailable(format!("GitHub cannot be asked now: {e}")),
        GitHubError::Conflict(m) => ApiError::conflict(format!("GitHub: {m}")),
        GitHubError::Validation(m) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "github_validation",
            format!("GitHub refused the registration: {m}"),
        ),
        GitHubError::NotFound(m) => ApiError::not_found(format!("GitHub: {m}")),
        e => ApiError::new(StatusCode::BAD_GATEWAY, "github_error", e.to_string()),
    }
}

/// No cache may keep an answer that carries a credential.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn counted(kind: &'static str, result: &ApiResult<Response>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) if e.status.is_server_error() => "error",
        Err(_) => "refused",
    };
    metrics::counter!(m::PROXY_REGISTRATIONS, "kind" => kind, "outcome" => outcome).increment(1);
}

async fn jitconfig(
    State(state): State<RunnersApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let result = mint_jitconfig(&state, &headers, body).await;
    counted("jit", &result);
    result
}

async fn mint_jitconfig(
    state: &RunnersApiState,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (who, registry, reg) = read_registration(state, headers, body, false).await?;
    let request = JitRequest {
        name: reg.name.clone(),
        labels: reg.labels.as_slice().to_vec(),
        runner_group_id: state.settings.runner_group_id,
        work_folder: reg.work_folder.clone(),
    };
    let config = match registry.generate_jit_config(&reg.scope, &request).await {
        Ok(config) => config,
        // Like `config.sh --replace`: an idle runner of that name (one the
        // caller acts for, left over from an earlier start) goes first.
        Err(GitHubError::Conflict(_)) => {
            let removed = remove_named(registry.as_ref(), &reg.scope, &reg.name).await?;
            tracing::info!(runner = %reg.name, scope = %reg.scope, removed, "replaced a leftover runner registration");
            registry
                .generate_jit_config(&reg.scope, &request)
                .await
                .map_err(github_error)?
        }
        Err(e) => return Err(github_error(e)),
    };
    tracing::info!(runner = %config.runner_name, runner_id = config.runner_id, scope = %reg.scope, "proxy runner registered (JIT)");
    state
        .audit
        .record(
            &who.actor(),
            "runner.registered",
            None,
            json!({"kind": "jit", "name": config.runner_name, "runnerId": config.runner_id,
                   "labels": reg.labels, "scope": reg.scope.to_string()}),
        )
        .await;
    let body = json!({
        "runnerId": config.runner_id,
        "runnerName": config.runner_name,
        "encodedJitConfig": config.encoded_jit_config.expose_secret(),
    });
    Ok(no_store((StatusCode::CREATED, Json(body)).into_response()))
}

async fn registration_token(
    State(state): State<RunnersApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let result = async {
        let (who, registry, reg) = read_registration(&state, &headers, body, true).await?;
        let token = registry
            .create_registration_token(&reg.scope)
            .await
            .map_err(github_error)?;
        state
            .audit
            .record(
                &who.actor(),
                "runner.registration_token",
                None,
                json!({"name": reg.name, "labels": reg.labels, "scope": reg.scope.to_string()}),
            )
            .await;
        let body = json!({
            "token": token.token.expose_secret(),
            "expiresAt": token.expires_at,
            "url": reg.scope.runner_url(&state.settings.web_url),
        });
        Ok(no_store((StatusCode::CREATED, Json(body)).into_response()))
    }
    .await;
    counted("registration_token", &result);
    result
}

/// Deletes every runner called `name` in `scope`; how many went. A busy
/// runner is a conflict.
async fn remove_named(
    registry: &dyn RunnerRegistry,
    scope: &Scope,
    name: &str,
) -> ApiResult<usize> {
    let runners = registry.list_runners(scope).await.map_err(github_error)?;
    let mut removed = 0;
    for runner in runners.iter().filter(|r| same_label(&r.name, name)) {
        if runner.busy {
            return Err(ApiError::conflict(format!(
                "runner {name:?} is running a job"
            )));
        }
        match registry.delete_runner(scope, runner.id).await {
            Ok(()) | Err(GitHubError::NotFound(_)) => removed += 1,
            Err(GitHubError::Validation(m) | GitHubError::Conflict(m)) => {
                return Err(ApiError::conflict(format!(
                    "GitHub keeps runner {name:?}: {m}"
                )));
            }
            Err(e) => return Err(github_error(e)),
        }
    }
    Ok(removed)
}

async fn delete_runner(
    State(state): State<RunnersApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let who = state
        .app
        .orchestrator
        .authenticate(bearer(&headers)?)
        .await?;
    let Path(name) =
        name.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    let Query(mut query) = query.map_err(|e| ApiError::bad_query(e.body_text()))?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "organization" | "repository"))
    {
        return Err(ApiError::bad_query(format!(
            "unknown query parameter {unknown:?}"
        )));
    }
    check_runner_name(&who, &name)?;
    let scope = scope_of(
        &state.settings,
        query.remove("organization"),
        query.remove("repository"),
    )?;
    let registry = state.registry.clone().ok_or_else(|| {
        ApiError::unavailable(
            "the orchestrator has no GitHub credentials: it cannot delete runners",
        )
    })?;
    let deleted = remove_named(registry.as_ref(), &scope, &name).await?;
    if deleted > 0 {
        tracing::info!(runner = %name, scope = %scope, "proxy runner deleted");
        state
            .audit
            .record(
                &who.actor(),
                "runner.deleted",
                None,
                json!({"name": name, "scope": scope.to_string(), "deleted": deleted}),
            )
            .await;
    }
    Ok(Json(json!({"deleted": deleted})).into_response())
}

async fn heartbeat(
    State(state): State<RunnersApiState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = state
        .app
        .orchestrator
        .authenticate(bearer(&headers)?)
        .await?;
    let Principal::Runner { name, .. } = &who else {
        return Err(ApiError::forbidden(
            "heartbeats come from proxy runner supervisors (a runner token)",
        ));
    };
    let body = body.read().await?;
    let obj = json_object(&body)?;
    let beat: Heartbeat = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })?;
    if beat.slots.len() > MAX_SLOTS as usize {
        return Err(ApiError::invalid("slots", format!("at most {MAX_SLOTS}")));
    }
    if let Some(bad) = beat
        .slots
        .iter()
        .filter_map(|s| s.runner_name.as_deref())
        .find(|r| !who.acts_for(r))
    {
        return Err(ApiError::forbidden(format!(
            "runner {bad:?} is not a slot runner of {name:?}"
        )));
    }
    let now = state.app.orchestrator.sources.clock.now();
    crate::runner_health::record_heartbeat(name, &beat, now.timestamp_millis() as f64 / 1000.0);
    tracing::debug!(runner = %name, busy = beat.busy_slots(), slots = beat.slots.len(), "heartbeat");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[&str]) -> LabelSet {
        LabelSet::parse_list(labels.iter().copied()).unwrap()
    }

    #[test]
    fn proxy_runners_carry_a_proxy_label_set_and_never_take_autoscaled_jobs() {
        let sets = vec![
            (set(&["self-hosted", "linux", "gpu"]), JobPath::Autoscale),
            (set(&["self-hosted", "proxy"]), JobPath::Proxy),
            (set(&["self-hosted", "proxy", "big"]), JobPath::Proxy),
        ];
        let ok = |r: &[&str]| check_proxy_labels(&set(r), &set(r), &sets);
        assert!(ok(&["self-hosted", "proxy"]).is_ok());
        assert!(
            ok(&["PROXY", "Self-Hosted"]).is_ok(),
            "case and order do not count"
        );
        assert!(ok(&["self-hosted", "proxy", "big"]).is_ok());
        let err = ok(&["self-hosted", "linux", "gpu"]).unwrap_err();
        assert!(err.contains("autoscaled label set"), "{err}");
        let err = ok(&["self-hosted", "linux", "gpu", "proxy"]).unwrap_err();
        assert!(err.contains("autoscaled label set"), "{err}");
        let err = ok(&["self-hosted"]).unwrap_err();
        assert!(err.contains("not the labels of a label set"), "{err}");
        assert!(ok(&[]).is_err());
        // Without label sets every self-hosted job is autoscaled.
        let err =
            check_proxy_labels(&set(&["self-hosted", "proxy"]), &set(&["x"]), &[]).unwrap_err();
        assert!(err.contains("no label set"), "{err}");
        // config.sh adds GitHub's defaults: they count for the overlap.
        let sets = vec![
            (set(&["self-hosted", "linux"]), JobPath::Autoscale),
            (set(&["self-hosted", "proxy"]), JobPath::Proxy),
        ];
        let requested = set(&["self-hosted", "proxy"]);
        assert!(check_proxy_labels(&requested, &requested, &sets).is_ok());
        let mut carried = requested.clone();
        carried.extend(DEFAULT_RUNNER_LABELS.iter().copied());
        assert!(check_proxy_labels(&requested, &carried, &sets).is_err());
    }

    #[test]
    fn scopes() {
        let settings = RunnersSettings {
            label_sets: vec![],
            organization: Some("octo".into()),
            web_url: "https://github.com".into(),
            runner_group_id: 1,
        };
        assert_eq!(
            scope_of(&settings, None, None).unwrap(),
            Scope::Organization { org: "octo".into() }
        );
        assert_eq!(
            scope_of(&settings, None, Some("a/b".into())).unwrap(),
            Scope::repository("a/b").unwrap()
        );
        assert!(scope_of(&settings, Some("a".into()), Some("a/b".into())).is_err());
        assert!(scope_of(&settings, Some("a b".into()), None).is_err());
        assert!(scope_of(&settings, None, Some("nope".into())).is_err());
        let none = RunnersSettings {
            organization: None,
            ..settings
        };
        assert!(scope_of(&none, None, None).is_err());
    }
}
