//! The REST client and the runner / workflow-job endpoints proxy-runner
//! uses. Each endpoint builds a [`Call`] and hands it to the layered stack
//! (`layers`), which sends it well: credentials, retries, rate limits and
//! the circuit breaker.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
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
use tower::ServiceExt;

use crate::breaker::CircuitState;
use crate::call::{Call, CallAuth, Repeat, Reply, api_url, decode, scope_path, status_error};
use crate::config::GitHubConfig;
use crate::layers::{self, Credentials, HttpSend, Shared, Stack};
use crate::model::{
    ApiRunner, JitConfigResponse, JobPage, RunPage, RunnerPage, TokenResponse, WorkflowRunInfo,
    job_info,
};
use crate::rate_limit::RateLimit;

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
    base: Url,
    config: GitHubConfig,
    stack: Stack,
    shared: Shared,
}

impl fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubClient")
            .field("api_url", &self.inner.base.as_str())
            .field("auth", &self.inner.shared.credentials.kind())
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

        let shared = Shared::new(&config, credentials);
        let send = HttpSend::new(http, config.attempt_timeout, config.max_response_bytes);
        let stack = layers::stack(send, base.clone(), &config, &shared);
        Ok(GitHubClient {
            inner: Arc::new(Inner {
                base,
                config,
                stack,
                shared,
            }),
        })
    }

    /// The REST base URL in use.
    pub fn api_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// The last budget GitHub reported for `resource` (`core` for REST).
    pub fn rate_limit(&self, resource: &str) -> Option<RateLimit> {
        self.inner.shared.rate_limits.get(resource)
    }

    /// The budget reported by the most recent response that carried one.
    pub fn last_rate_limit(&self) -> Option<RateLimit> {
        self.inner.shared.rate_limits.last()
    }

    /// State of the circuit breaker for the API host.
    pub fn circuit_state(&self) -> CircuitState {
        self.inner.shared.breakers.state(&self.inner.base)
    }

    // ------------------------------------------------------------ runners

    pub async fn get_runner(
        &self,
        scope: &Scope,
        runner_id: u64,
    ) -> Result<RunnerInfo, GitHubError> {
        let id = runner_id.to_string();
        let url = self.url(&scope_path(scope, &["actions", "runners", &id]), &[])?;
        let runner: ApiRunner = self.call_json(self.get(url, "get_runner", scope)).await?;
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
        self.for_each_page(url, "list_runners", scope, |page: RunnerPage| {
            out.extend(page.runners.into_iter().map(RunnerInfo::from));
        })
        .await?;
        Ok(out)
    }

    /// Deletes a runner; `NotFound` when GitHub no longer has it, `Validation`
    /// when it is busy running a job.
    pub async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> Result<(), GitHubError> {
        let id = runner_id.to_string();
        let url = self.url(&scope_path(scope, &["actions", "runners", &id]), &[])?;
        let call = self.call(Method::DELETE, url, "delete_runner", scope);
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
        let call = self
            .call(Method::POST, url, "generate_jitconfig", scope)
            .with_body(body)
            .with_repeat(Repeat::Safe);
        self.execute(call).await
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
        let call = self
            .call(Method::POST, url, endpoint, scope)
            .with_repeat(Repeat::Safe);
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
        let job: serde_json::Value = self.call_json(self.get(url, "get_job", &scope)).await?;
        job_info(&job, &format!("{owner}/{repo}")).map_err(|e| GitHubError::Http {
            status: 200,
            message: format!("get_job: answer refused: {e}"),
        })
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
        self.for_each_page(url, "list_runs", &scope, |page: RunPage| {
            out.extend(page.workflow_runs)
        })
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
        self.for_each_page(url, "list_run_jobs", &scope, |page: JobPage| {
            for job in &page.jobs {
                match job_info(job, &full_name) {
                    Ok(info) => out.push(info),
                    // One malformed job does not hide the others; it is
                    // never recorded, and the log says why.
                    Err(e) => tracing::warn!(
                        repository = %full_name, run_id, error = %e,
                        "job from GitHub refused"
                    ),
                }
            }
        })
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
        let call = self
            .call(Method::POST, url, "rerun_job", &scope)
            .with_repeat(Repeat::Once);
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
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, GitHubError> {
        api_url(&self.inner.base, segments, query)
    }

    /// A call with the scope's credential and a fresh deadline.
    fn call(&self, method: Method, url: Url, endpoint: &'static str, scope: &Scope) -> Call {
        Call::new(
            method,
            url,
            endpoint,
            CallAuth::Scope(scope.clone()),
            self.deadline(),
        )
    }

    fn get(&self, url: Url, endpoint: &'static str, scope: &Scope) -> Call {
        self.call(Method::GET, url, endpoint, scope)
    }

    /// Sends a call through the stack. Non-2xx answers come back as they
    /// are; callers map them with [`status_error`].
    async fn execute(&self, call: Call) -> Result<Reply, GitHubError> {
        Ok(self.inner.stack.clone().oneshot(call).await?)
    }

    async fn call_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, GitHubError> {
        let endpoint = call.endpoint;
        let reply = self.execute(call).await?;
        if !reply.status.is_success() {
            return Err(status_error(endpoint, &reply));
        }
        decode(&reply.body, endpoint)
    }

    async fn call_empty(&self, call: Call) -> Result<(), GitHubError> {
        let endpoint = call.endpoint;
        let reply = self.execute(call).await?;
        if !reply.status.is_success() {
            return Err(status_error(endpoint, &reply));
        }
        Ok(())
    }

    /// GETs `first` and every page after it; each page gets its own deadline.
    async fn for_each_page<T: DeserializeOwned>(
        &self,
        first: Url,
        endpoint: &'static str,
        scope: &Scope,
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
            let reply = self.execute(self.get(url, endpoint, scope)).await?;
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

/// The `rel="next"` target of a `Link` header, if any.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>')?;
            let target = &after[..close];
            let params_end = after[close + 1..]
                .find('<')
                .map(|i| close + 1 + i)
                .unwrap_or(after.len());
            let params = &after[close + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.strip_prefix("rel=")
                    .map(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
                    .unwrap_or(false)
            });
            if is_next {
                return Some(target.to_string());
            }
            rest = &after[params_end..];
        }
    }
    None
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

    fn link(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::LINK, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn next_link_parsing() {
        assert_eq!(
            next_link(&link(
                r#"<https://api.github.com/resource?page=2>; rel="next", <https://api.github.com/resource?page=5>; rel="last""#
            ))
            .as_deref(),
            Some("https://api.github.com/resource?page=2")
        );
        assert_eq!(
            next_link(&link(
                r#"<https://x/r?page=1>; rel="prev", <https://x/r?a=1,2&page=3>; rel="next""#
            ))
            .as_deref(),
            Some("https://x/r?a=1,2&page=3")
        );
        assert_eq!(
            next_link(&link(
                r#"<https://x/r?page=1>; rel="first", <https://x/r?page=1>; rel="prev""#
            )),
            None
        );
        assert_eq!(next_link(&link("garbage <no close")), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
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
