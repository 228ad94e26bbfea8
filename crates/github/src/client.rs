//! The REST client and the runner / workflow-job endpoints proxy-runner
//! uses. How one request is sent (retries, rate limits, breaker) is in
//! `request`; credentials are in `auth`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use http::header::{ACCEPT, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use proxy_runner_domain::ports::{
    GitHubError, JitConfig, JitRequest, RegistrationToken, RunnerInfo, RunnerRegistry, Scope,
    WorkflowJobInfo,
};
use reqwest::Url;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::auth::Credentials;
use crate::breaker::{CircuitBreaker, CircuitState};
use crate::config::GitHubConfig;
use crate::metrics as m;
use crate::model::{
    ApiJob, ApiRunner, JitConfigResponse, JobPage, RunPage, RunnerPage, TokenResponse,
    WorkflowRunInfo,
};
use crate::rate_limit::RateLimit;
use crate::request::{Call, CallAuth, Repeat, Reply, decode, next_link, status_error};

/// The API version this client is written against.
pub const API_VERSION: &str = "2022-11-28";
/// Stops a misbehaving server from leading us through pages forever.
const MAX_PAGES: usize = 1000;

/// proxy-runner's only way to talk to GitHub. Cheap to clone: clones share
/// connections, token caches, rate-limit state and circuit breakers.
#[derive(Clone)]
pub struct GitHubClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    config: GitHubConfig,
    credentials: Credentials,
    breakers: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
    rate_limits: Mutex<HashMap<String, RateLimit>>,
    last_rate_limit: Mutex<Option<RateLimit>>,
}

impl fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.credentials {
            Credentials::Pat(_) => "pat".to_string(),
            Credentials::App(app) => format!("app {}", app.app_id),
        };
        f.debug_struct("GitHubClient")
            .field("api_url", &self.inner.base.as_str())
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

impl GitHubClient {
    /// Builds a client. Checks the URL and the credentials' shape (an App key
    /// must parse as RSA PEM); makes no request.
    pub fn new(config: GitHubConfig) -> Result<Self, GitHubError> {
        let mut base = Url::parse(config.api_url.trim()).map_err(|e| {
            GitHubError::Validation(format!("GitHub API URL {:?}: {e}", config.api_url))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(GitHubError::Validation(format!(
                "GitHub API URL {:?} must be an http(s) URL",
                config.api_url
            )));
        }
        if base.host_str().is_none() || !base.username().is_empty() || base.password().is_some() {
            return Err(GitHubError::Validation(
                "GitHub API URL must have a host and no user info".into(),
            ));
        }
        base.set_query(None);
        base.set_fragment(None);
        if base.scheme() == "http" && !is_loopback(&base) {
            tracing::warn!(api_url = %base, "GitHub API URL is plain http: credentials travel unencrypted");
        }

        let credentials = Credentials::new(&config.auth)?;

        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        // reqwest's `rustls` feature brings the aws-lc-rs provider and uses it
        // unless the process installed another default; nothing to install here.
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| GitHubError::Transport(format!("cannot build the HTTP client: {e}")))?;

        Ok(GitHubClient {
            inner: Arc::new(Inner {
                http,
                base,
                config,
                credentials,
                breakers: Mutex::new(HashMap::new()),
                rate_limits: Mutex::new(HashMap::new()),
                last_rate_limit: Mutex::new(None),
            }),
        })
    }

    /// The REST base URL in use.
    pub fn api_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// The last budget GitHub reported for `resource` (`core` for REST).
    pub fn rate_limit(&self, resource: &str) -> Option<RateLimit> {
        lock(&self.inner.rate_limits).get(resource).cloned()
    }

    /// The budget reported by the most recent response that carried one.
    pub fn last_rate_limit(&self) -> Option<RateLimit> {
        lock(&self.inner.last_rate_limit).clone()
    }

    /// State of the circuit breaker for the API host.
    pub fn circuit_state(&self) -> CircuitState {
        self.breaker_for(&self.inner.base).state()
    }

    pub(crate) fn config(&self) -> &GitHubConfig {
        &self.inner.config
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    // ------------------------------------------------------------ runners

    pub async fn get_runner(
        &self,
        scope: &Scope,
        runner_id: u64,
    ) -> Result<RunnerInfo, GitHubError> {
        let id = runner_id.to_string();
        let url = self.url(&scope_path(scope, &["actions", "runners", &id]), &[])?;
        let runner: ApiRunner = self
            .call_json(Call::get(url, "get_runner", CallAuth::Scope(scope)))
            .await?;
        Ok(runner.into())
    }

    /// Every runner of the scope, following `Link: rel="next"`.
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<RunnerInfo>, GitHubError> {
        self.list_runners_query(scope, None).await
    }

    /// The runner called `name`, if GitHub has one.
    pub async fn find_runner_by_name(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<RunnerInfo>, GitHubError> {
        let runners = self.list_runners_query(scope, Some(name)).await?;
        Ok(runners.into_iter().find(|r| r.name == name))
    }

    async fn list_runners_query(
        &self,
        scope: &Scope,
        name: Option<&str>,
    ) -> Result<Vec<RunnerInfo>, GitHubError> {
        let mut query = vec![("per_page", self.per_page())];
        if let Some(name) = name {
            query.push(("name", name.to_string()));
        }
        let url = self.url(&scope_path(scope, &["actions", "runners"]), &query)?;
        let mut out = Vec::new();
        self.for_each_page(
            url,
            "list_runners",
            CallAuth::Scope(scope),
            |page: RunnerPage| {
                out.extend(page.runners.into_iter().map(RunnerInfo::from));
            },
        )
        .await?;
        Ok(out)
    }

    /// Deletes a runner; `NotFound` when GitHub no longer has it, `Validation`
    /// when it is busy running a job.
    pub async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GitHubError> {
        let id = runner_id.to_string();
        let url = self.url(&scope_path(scope, &["actions", "runners", &id]), &[])?;
        let call = Call {
            method: Method::DELETE,
            url,
            endpoint: "delete_runner",
            auth: CallAuth::Scope(scope),
            body: None,
            repeat: Repeat::Idempotent,
        };
        self.call_empty(call).await
    }

    /// Registers a just-in-time runner (the default way to register an
    /// ephemeral runner).
    ///
    /// The call is retried after 5xx and timeouts: the runner name is fixed,
    /// so a repeat cannot create a second runner. If a repeat then answers
    /// 409, our own earlier attempt most likely created the runner and its
    /// config was lost with the answer; the orphan is looked up by name,
    /// deleted, and the request sent once more. A 409 on a first, clean
    /// attempt means someone else holds the name: that is returned as
    /// `Conflict` and nothing is deleted.
    pub async fn generate_jit_config(
        &self,
        scope: &Scope,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        let reply = self.post_jit(scope, request).await?;
        let reply = if reply.status == StatusCode::CONFLICT && reply.after_ambiguous_attempt {
            tracing::warn!(
                scope = %scope,
                runner = %request.name,
                "JIT name taken after an unanswered attempt; removing our orphan and retrying"
            );
            if let Some(orphan) = self.find_runner_by_name(scope, &request.name).await? {
                match self.delete_runner(scope, orphan.id).await {
                    Ok(()) | Err(GitHubError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.post_jit(scope, request).await?
        } else {
            reply
        };
        if !reply.status.is_success() {
            return Err(status_error("generate_jitconfig", &reply));
        }
        let parsed: JitConfigResponse = decode(&reply.body, "generate_jitconfig")?;
        Ok(JitConfig {
            runner_id: parsed.runner.id,
            runner_name: parsed.runner.name,
            encoded_jit_config: SecretString::from(parsed.encoded_jit_config),
        })
    }

    async fn post_jit(&self, scope: &Scope, request: &JitRequest) -> Result<Reply, GitHubError> {
        let url = self.url(
            &scope_path(scope, &["actions", "runners", "generate-jitconfig"]),
            &[],
        )?;
        let body = serde_json::json!({
            "name": request.name,
            "runner_group_id": request.runner_group_id,
            "labels": request.labels,
            "work_folder": request.work_folder,
        });
        let call = Call {
            method: Method::POST,
            url,
            endpoint: "generate_jitconfig",
            auth: CallAuth::Scope(scope),
            body: Some(body),
            repeat: Repeat::Safe,
        };
        self.execute(&call, self.deadline()).await
    }

    /// A token for `config.sh --token` (expires in an hour).
    pub async fn create_registration_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        self.runner_token(scope, "registration-token", "registration_token")
            .await
    }

    /// A token for `config.sh remove --token`.
    pub async fn create_remove_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        self.runner_token(scope, "remove-token", "remove_token")
            .await
    }

    async fn runner_token(
        &self,
        scope: &Scope,
        segment: &str,
        endpoint: &'static str,
    ) -> Result<RegistrationToken, GitHubError> {
        let url = self.url(&scope_path(scope, &["actions", "runners", segment]), &[])?;
        let call = Call {
            method: Method::POST,
            url,
            endpoint,
            auth: CallAuth::Scope(scope),
            body: None,
            repeat: Repeat::Safe,
        };
        let token: TokenResponse = self.call_json(call).await?;
        Ok(RegistrationToken {
            token: SecretString::from(token.token),
            expires_at: token.expires_at,
        })
    }

    // ------------------------------------------------------------ jobs

    pub async fn get_workflow_job(
        &self,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError> {
        let scope = repo_scope(owner, repo);
        let id = job_id.to_string();
        let url = self.url(&scope_path(&scope, &["actions", "jobs", &id]), &[])?;
        let job: ApiJob = self
            .call_json(Call::get(url, "get_job", CallAuth::Scope(&scope)))
            .await?;
        Ok(job.into_info(&format!("{owner}/{repo}")))
    }

    /// Workflow runs of a repository with the given status (`queued`,
    /// `in_progress`, ...), all pages.
    pub async fn list_workflow_runs(
        &self,
        owner: &str,
        repo: &str,
        status: &str,
    ) -> Result<Vec<WorkflowRunInfo>, GitHubError> {
        let scope = repo_scope(owner, repo);
        let url = self.url(
            &scope_path(&scope, &["actions", "runs"]),
            &[
                ("status", status.to_string()),
                ("per_page", self.per_page()),
            ],
        )?;
        let mut out = Vec::new();
        self.for_each_page(
            url,
            "list_runs",
            CallAuth::Scope(&scope),
            |page: RunPage| out.extend(page.workflow_runs),
        )
        .await?;
        Ok(out)
    }

    /// Jobs of the latest attempt of a workflow run, all pages.
    pub async fn list_run_jobs(
        &self,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        let scope = repo_scope(owner, repo);
        let id = run_id.to_string();
        let url = self.url(
            &scope_path(&scope, &["actions", "runs", &id, "jobs"]),
            &[("filter", "latest".into()), ("per_page", self.per_page())],
        )?;
        let full_name = format!("{owner}/{repo}");
        let mut out = Vec::new();
        self.for_each_page(
            url,
            "list_run_jobs",
            CallAuth::Scope(&scope),
            |page: JobPage| out.extend(page.jobs.into_iter().map(|j| j.into_info(&full_name))),
        )
        .await?;
        Ok(out)
    }

    /// Queued jobs of the repository's runs with `run_status` (deduplicated).
    pub async fn list_queued_jobs_in_runs(
        &self,
        owner: &str,
        repo: &str,
        run_status: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        let runs = self.list_workflow_runs(owner, repo, run_status).await?;
        let mut out: Vec<WorkflowJobInfo> = Vec::new();
        for run in runs {
            for job in self.list_run_jobs(owner, repo, run.id).await? {
                if job.status == "queued" && !out.iter().any(|j| j.id == job.id) {
                    out.push(job);
                }
            }
        }
        Ok(out)
    }

    /// Re-runs a job and its dependents. Not resent after an ambiguous
    /// failure: a second rerun request is not harmless.
    pub async fn rerun_job(&self, owner: &str, repo: &str, job_id: u64) -> Result<(), GitHubError> {
        let scope = repo_scope(owner, repo);
        let id = job_id.to_string();
        let url = self.url(&scope_path(&scope, &["actions", "jobs", &id, "rerun"]), &[])?;
        let call = Call {
            method: Method::POST,
            url,
            endpoint: "rerun_job",
            auth: CallAuth::Scope(&scope),
            body: None,
            repeat: Repeat::Once,
        };
        self.call_empty(call).await
    }

    // ------------------------------------------------------------ plumbing

    fn per_page(&self) -> String {
        self.inner.config.per_page.clamp(1, 100).to_string()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.request_deadline
    }

    /// `base` + path segments (each percent-encoded) + query.
    pub(crate) fn url(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Url, GitHubError> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| GitHubError::Validation("GitHub API URL cannot be a base".into()))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    async fn call_json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, GitHubError> {
        let reply = self.execute(&call, self.deadline()).await?;
        if !reply.status.is_success() {
            return Err(status_error(call.endpoint, &reply));
        }
        decode(&reply.body, call.endpoint)
    }

    async fn call_empty(&self, call: Call<'_>) -> Result<(), GitHubError> {
        let reply = self.execute(&call, self.deadline()).await?;
        if !reply.status.is_success() {
            return Err(status_error(call.endpoint, &reply));
        }
        Ok(())
    }

    /// GETs `first` and every page after it; each page gets its own deadline.
    async fn for_each_page<T: DeserializeOwned>(
        &self,
        first: Url,
        endpoint: &'static str,
        auth: CallAuth<'_>,
        mut each: impl FnMut(T),
    ) -> Result<(), GitHubError> {
        let mut next = Some(first);
        let mut pages = 0usize;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(GitHubError::Http {
                    status: 200,
                    message: format!("{endpoint}: more than {MAX_PAGES} pages; giving up"),
                });
            }
            let reply = self
                .execute(&Call::get(url, endpoint, auth), self.deadline())
                .await?;
            if !reply.status.is_success() {
                return Err(status_error(endpoint, &reply));
            }
            each(decode(&reply.body, endpoint)?);
            if let Some(link) = next_link(&reply.headers) {
                let url = Url::parse(&link).map_err(|_| GitHubError::Http {
                    status: reply.status.as_u16(),
                    message: format!("{endpoint}: unparsable Link rel=\"next\""),
                })?;
                // Never carry our credential to another origin.
                if url.origin() != self.inner.base.origin() {
                    return Err(GitHubError::Http {
                        status: reply.status.as_u16(),
                        message: format!(
                            "{endpoint}: Link rel=\"next\" points to another origin ({})",
                            url.origin().ascii_serialization()
                        ),
                    });
                }
                next = Some(url);
            }
        }
        Ok(())
    }

    pub(crate) fn breaker_for(&self, url: &Url) -> Arc<CircuitBreaker> {
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let mut breakers = lock(&self.inner.breakers);
        breakers
            .entry(host.clone())
            .or_insert_with(|| CircuitBreaker::new(host, self.inner.config.breaker.clone()))
            .clone()
    }

    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let retry = &self.inner.config.retry;
        backon::ExponentialBuilder::default()
            .with_min_delay(retry.min_delay)
            .with_max_delay(retry.max_delay)
            .with_max_times(retry.max_retries)
            .with_jitter()
            .build()
    }

    pub(crate) fn observe_rate_limit(&self, headers: &HeaderMap) {
        let Some(rl) = RateLimit::from_headers(headers) else {
            return;
        };
        metrics::gauge!(m::RATE_LIMIT_REMAINING, "resource" => rl.resource.clone())
            .set(rl.remaining as f64);
        if rl.remaining_fraction() < 0.1 {
            tracing::debug!(
                resource = %rl.resource,
                remaining = rl.remaining,
                limit = rl.limit,
                "GitHub rate limit running low"
            );
        }
        lock(&self.inner.rate_limits).insert(rl.resource.clone(), rl.clone());
        *lock(&self.inner.last_rate_limit) = Some(rl);
    }
}

#[async_trait]
impl RunnerRegistry for GitHubClient {
    async fn generate_jit_config(
        &self,
        scope: &Scope,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        GitHubClient::generate_jit_config(self, scope, request).await
    }

    async fn create_registration_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        GitHubClient::create_registration_token(self, scope).await
    }

    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GitHubError> {
        GitHubClient::delete_runner(self, scope, runner_id).await
    }

    async fn list_runners(&self, scope: &Scope) -> Result<Vec<RunnerInfo>, GitHubError> {
        GitHubClient::list_runners(self, scope).await
    }

    /// Queued jobs of the repository's queued runs.
    async fn list_queued_jobs(
        &self,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        self.list_queued_jobs_in_runs(owner, repo, "queued").await
    }

    async fn get_workflow_job(
        &self,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError> {
        GitHubClient::get_workflow_job(self, owner, repo, job_id).await
    }
}

// ---------------------------------------------------------------- helpers

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn repo_scope(owner: &str, repo: &str) -> Scope {
    Scope::Repository {
        owner: owner.to_string(),
        repo: repo.to_string(),
    }
}

/// `repos/{owner}/{repo}/...` or `orgs/{org}/...` as separate segments.
pub(crate) fn scope_path<'a>(scope: &'a Scope, rest: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = match scope {
        Scope::Repository { owner, repo } => vec!["repos", owner, repo],
        Scope::Organization { org } => vec!["orgs", org],
    };
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Auth;

    #[test]
    fn urls_are_built_per_segment() {
        for (base, want) in [
            (
                "https://api.github.com",
                "https://api.github.com/repos/o/r%3Fx/actions/runners?per_page=100",
            ),
            (
                "https://ghe.example/api/v3/",
                "https://ghe.example/api/v3/repos/o/r%3Fx/actions/runners?per_page=100",
            ),
            (
                "http://127.0.0.1:9999",
                "http://127.0.0.1:9999/repos/o/r%3Fx/actions/runners?per_page=100",
            ),
        ] {
            let client = GitHubClient::new(GitHubConfig::new(
                base,
                Auth::Pat(SecretString::from("t0ken")),
            ))
            .unwrap();
            let scope = repo_scope("o", "r?x");
            let url = client
                .url(
                    &scope_path(&scope, &["actions", "runners"]),
                    &[("per_page", "100".into())],
                )
                .unwrap();
            assert_eq!(url.as_str(), want);
        }
    }

    #[test]
    fn bad_configs_are_rejected() {
        let pat = || Auth::Pat(SecretString::from("t0ken"));
        assert!(GitHubClient::new(GitHubConfig::new("not a url", pat())).is_err());
        assert!(GitHubClient::new(GitHubConfig::new("ftp://x", pat())).is_err());
        assert!(GitHubClient::new(GitHubConfig::new("https://u:p@x", pat())).is_err());
        assert!(
            GitHubClient::new(GitHubConfig::new(
                "https://x",
                Auth::Pat(SecretString::from(" "))
            ))
            .is_err()
        );
        let bad_key = Auth::App {
            app_id: 1,
            private_key_pem: SecretString::from(
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            ),
        };
        let err = GitHubClient::new(GitHubConfig::new("https://x", bad_key)).unwrap_err();
        assert!(matches!(err, GitHubError::Validation(_)), "{err:?}");
    }
}
