//! The auth layer: puts the bearer credential on every call. A PAT is sent
//! as it is. A GitHub App signs a short-lived JWT for its own endpoints and
//! trades it for an installation token per repository / organization,
//! cached and renewed before it expires; a burst of calls mints one token.
//! A token GitHub refuses (401) is dropped, and the call sent once more with
//! a fresh one.
//!
//! Token lookups and mints are calls of their own, sent through the layers
//! below this one (retries, rate limits, breaker) within the deadline of the
//! call that needs the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use http::{Method, StatusCode};
use proxy_runner_domain::ports::{GitHubError, Scope};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::call::{
    Call, CallAuth, CallError, CallFuture, CallService, Repeat, Reply, api_url, decode, scope_path,
    status_error,
};
use crate::config::Auth;
use crate::model::{InstallationResponse, TokenResponse};
use proxy_runner_domain::sync::lock;

/// App JWTs are valid for 9 minutes; a new one is signed after this long.
const JWT_REUSE: Duration = Duration::from_secs(5 * 60);
/// Installation tokens live an hour; one claiming to live longer is still
/// renewed after this long.
const LONGEST_TOKEN_USE: Duration = Duration::from_secs(24 * 3600);

pub(crate) enum Credentials {
    Pat(SecretString),
    App(Box<AppCredentials>),
}

pub(crate) struct AppCredentials {
    app_id: u64,
    key: jsonwebtoken::EncodingKey,
    jwt: Mutex<Option<CachedJwt>>,
    installations: Mutex<HashMap<Scope, u64>>,
    tokens: Mutex<HashMap<u64, CachedToken>>,
    /// Serialises token refreshes so a burst of calls mints one token.
    refresh: tokio::sync::Mutex<()>,
}

struct CachedJwt {
    jwt: SecretString,
    reuse_until: Expiry,
}

struct CachedToken {
    token: SecretString,
    renew_at: Expiry,
}

/// When a cached credential is due, on two clocks: tokio's, which tests can
/// pause and move, and the wall clock, which keeps running while a host
/// sleeps (tokio's monotonic clock may not).
struct Expiry {
    at: Instant,
    wall: DateTime<Utc>,
}

impl Expiry {
    fn after(wait: Duration) -> Expiry {
        let wall = TimeDelta::from_std(wait)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Expiry {
            at: Instant::now() + wait,
            wall,
        }
    }

    fn passed(&self) -> bool {
        Instant::now() >= self.at || Utc::now() >= self.wall
    }
}

impl Credentials {
    /// Checks the credential's shape (a PAT is not blank, an App key parses
    /// as RSA PEM and signs).
    pub(crate) fn new(auth: &Auth) -> Result<Credentials, GitHubError> {
        match auth {
            Auth::Pat(token) => {
                if token.expose_secret().trim().is_empty() {
                    return Err(GitHubError::Validation(
                        "GitHub personal access token is empty".into(),
                    ));
                }
                Ok(Credentials::Pat(token.clone()))
            }
            Auth::App {
                app_id,
                private_key_pem,
            } => {
                crate::config::validate_private_key(private_key_pem)
                    .map_err(|e| GitHubError::Validation(e.to_string()))?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(
                    private_key_pem.expose_secret().as_bytes(),
                )
                .map_err(|_| {
                    GitHubError::Validation(
                        "the GitHub App private key is not a usable RSA PEM key".into(),
                    )
                })?;
                Ok(Credentials::App(Box::new(AppCredentials {
                    app_id: *app_id,
                    key,
                    jwt: Mutex::new(None),
                    installations: Mutex::new(HashMap::new()),
                    tokens: Mutex::new(HashMap::new()),
                    refresh: tokio::sync::Mutex::new(()),
                })))
            }
        }
    }

    /// The kind of credential, for `Debug`: never the secret.
    pub(crate) fn kind(&self) -> String {
        match self {
            Credentials::Pat(_) => "pat".to_string(),
            Credentials::App(app) => format!("app {}", app.app_id),
        }
    }
}

impl AppCredentials {
    /// A JWT for App endpoints: RS256, iss = app id, iat a minute back (clock
    /// drift), exp in 9 minutes (GitHub allows at most 10).
    fn jwt(&self) -> Result<SecretString, GitHubError> {
        let mut cached = lock(&self.jwt);
        if let Some(c) = cached.as_ref()
            && !c.reuse_until.passed()
        {
            return Ok(c.jwt.clone());
        }
        let now = Utc::now();
        let claims = serde_json::json!({
            "iat": (now - TimeDelta::seconds(60)).timestamp(),
            "exp": (now + TimeDelta::minutes(9)).timestamp(),
            "iss": self.app_id.to_string(),
        });
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|_| GitHubError::Unauthorized("cannot sign the GitHub App JWT".into()))?;
        let jwt = SecretString::from(jwt);
        *cached = Some(CachedJwt {
            jwt: jwt.clone(),
            reuse_until: Expiry::after(JWT_REUSE),
        });
        Ok(jwt)
    }

    fn cached_token(&self, scope: &Scope) -> Option<SecretString> {
        let id = *lock(&self.installations).get(scope)?;
        let tokens = lock(&self.tokens);
        let cached = tokens.get(&id)?;
        (!cached.renew_at.passed()).then(|| cached.token.clone())
    }

    /// Drops what we know about the scope's installation (after a 401).
    fn forget(&self, scope: &Scope) {
        if let Some(id) = lock(&self.installations).remove(scope) {
            lock(&self.tokens).remove(&id);
        }
    }
}

/// How long a token with `lifetime` left is used: until `margin` before it
/// expires, or half its lifetime when it lives less than twice the margin.
fn use_for(lifetime: TimeDelta, margin: Duration) -> Duration {
    let lifetime = lifetime.to_std().unwrap_or(Duration::ZERO);
    (lifetime - margin.min(lifetime / 2)).min(LONGEST_TOKEN_USE)
}

#[derive(Clone)]
pub(crate) struct AuthLayer {
    credentials: Arc<Credentials>,
    base: Arc<Url>,
    token_renew_margin: Duration,
}

impl AuthLayer {
    /// `base` is the API root the App's own endpoints are under.
    pub(crate) fn new(
        credentials: Arc<Credentials>,
        base: Url,
        token_renew_margin: Duration,
    ) -> AuthLayer {
        AuthLayer {
            credentials,
            base: Arc::new(base),
            token_renew_margin,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            credentials: self.credentials.clone(),
            base: self.base.clone(),
            token_renew_margin: self.token_renew_margin,
        }
    }
}

#[derive(Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    credentials: Arc<Credentials>,
    base: Arc<Url>,
    token_renew_margin: Duration,
}

/// A call that failed for want of a credential was itself never sent.
fn not_sent(e: impl Into<GitHubError>) -> CallError {
    CallError::Stopped(e.into())
}

impl<S: CallService> AuthService<S> {
    async fn authorized(self, mut call: Call) -> Result<Reply, CallError> {
        let app = match &*self.credentials {
            Credentials::Pat(token) => {
                call.bearer = Some(token.clone());
                return self.inner.clone().oneshot(call).await;
            }
            Credentials::App(app) => app,
        };
        let CallAuth::Scope(scope) = call.auth.clone() else {
            return self.as_app(app, call).await;
        };
        call.bearer = Some(self.installation_token(app, &scope, call.deadline).await?);
        let first = self.inner.clone().oneshot(call.clone()).await?;
        if first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        // Revoked, or the App was re-installed: one fresh token, then
        // GitHub's answer stands.
        tracing::info!(scope = %scope, "installation token refused; renewing it");
        app.forget(&scope);
        call.bearer = Some(self.installation_token(app, &scope, call.deadline).await?);
        let mut again = self.inner.clone().oneshot(call).await?;
        again.after_ambiguous_attempt |= first.after_ambiguous_attempt;
        Ok(again)
    }

    /// Sends `call` with the App's JWT.
    async fn as_app(&self, app: &AppCredentials, mut call: Call) -> Result<Reply, CallError> {
        call.bearer = Some(app.jwt().map_err(not_sent)?);
        self.inner.clone().oneshot(call).await
    }

    async fn installation_token(
        &self,
        app: &AppCredentials,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<SecretString, CallError> {
        if let Some(token) = app.cached_token(scope) {
            return Ok(token);
        }
        let _refreshing = app.refresh.lock().await;
        if let Some(token) = app.cached_token(scope) {
            return Ok(token);
        }
        let cached_id = lock(&app.installations).get(scope).copied();
        let installation_id = match cached_id {
            Some(id) => id,
            None => {
                let id = self.find_installation(app, scope, deadline).await?;
                lock(&app.installations).insert(scope.clone(), id);
                // Another scope may already hold a token of this installation.
                if let Some(token) = app.cached_token(scope) {
                    return Ok(token);
                }
                id
            }
        };
        self.mint(app, scope, installation_id, deadline).await
    }

    async fn mint(
        &self,
        app: &AppCredentials,
        scope: &Scope,
        installation_id: u64,
        deadline: Instant,
    ) -> Result<SecretString, CallError> {
        const ENDPOINT: &str = "installation_token";
        let id = installation_id.to_string();
        let url = api_url(
            &self.base,
            &["app", "installations", &id, "access_tokens"],
            &[],
        )
        .map_err(not_sent)?;
        // Minting a second token is harmless.
        let call = Call::new(Method::POST, url, ENDPOINT, CallAuth::AppJwt, deadline)
            .with_repeat(Repeat::Safe);
        let reply = self.as_app(app, call).await.map_err(not_sent)?;
        if !reply.status.is_success() {
            if reply.status == StatusCode::NOT_FOUND {
                // The App may have been re-installed under a new id.
                lock(&app.installations).remove(scope);
            }
            return Err(not_sent(status_error(ENDPOINT, &reply)));
        }
        let minted: TokenResponse = decode(&reply.body, ENDPOINT).map_err(not_sent)?;
        let token = SecretString::from(minted.token);
        let use_for = use_for(minted.expires_at - Utc::now(), self.token_renew_margin);
        lock(&app.tokens).insert(
            installation_id,
            CachedToken {
                token: token.clone(),
                renew_at: Expiry::after(use_for),
            },
        );
        tracing::debug!(installation_id, expires_at = %minted.expires_at, "minted installation token");
        Ok(token)
    }

    async fn find_installation(
        &self,
        app: &AppCredentials,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<u64, CallError> {
        const ENDPOINT: &str = "get_installation";
        let mut segments = scope_path(scope, &[]);
        segments.push("installation");
        let url = api_url(&self.base, &segments, &[]).map_err(not_sent)?;
        let call = Call::get(url, ENDPOINT, CallAuth::AppJwt, deadline);
        let reply = self.as_app(app, call).await.map_err(not_sent)?;
        if !reply.status.is_success() {
            return Err(not_sent(status_error(ENDPOINT, &reply)));
        }
        let installation: InstallationResponse = decode(&reply.body, ENDPOINT).map_err(not_sent)?;
        tracing::debug!(scope = %scope, installation_id = installation.id, "found App installation");
        Ok(installation.id)
    }
}

impl<S: CallService> Service<Call> for AuthService<S> {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The inner service's readiness is awaited per call (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        Box::pin(self.clone().authorized(call))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::layers::testing::{Script, app_key, call_to, json_reply, reply};

    const API: &str = "https://api.example.test";
    const RUNNERS: &str = "https://api.example.test/repos/octo/hello/actions/runners";

    fn app_layer() -> AuthLayer {
        let credentials = Credentials::new(&Auth::App {
            app_id: 7,
            private_key_pem: app_key(),
        })
        .unwrap();
        AuthLayer::new(
            Arc::new(credentials),
            Url::parse(API).unwrap(),
            Duration::from_secs(5 * 60),
        )
    }

    /// GitHub's App endpoints: installation 42 everywhere, tokens `ghs_N`
    /// living `token_ttl`; API calls answer 401 to the tokens in `refused`.
    fn app_api(token_ttl: TimeDelta, refused: &'static [&'static str]) -> Script {
        let minted = Arc::new(AtomicUsize::new(0));
        Script::new(move |call, _| {
            let bearer = call
                .bearer
                .as_ref()
                .map(|b| b.expose_secret().to_string())
                .unwrap_or_default();
            Ok(match call.url.path() {
                "/repos/octo/hello/installation" => {
                    assert_eq!(call.auth, CallAuth::AppJwt);
                    assert!(bearer.starts_with("eyJ"), "a JWT: {bearer:.8}");
                    json_reply(StatusCode::OK, json!({"id": 42}))
                }
                "/app/installations/42/access_tokens" => {
                    assert!(bearer.starts_with("eyJ"), "a JWT: {bearer:.8}");
                    let n = minted.fetch_add(1, Ordering::SeqCst) + 1;
                    json_reply(
                        StatusCode::CREATED,
                        json!({"token": format!("ghs_{n}"), "expires_at": Utc::now() + token_ttl}),
                    )
                }
                _ if refused.contains(&bearer.as_str()) => reply(StatusCode::UNAUTHORIZED),
                _ => reply(StatusCode::OK),
            })
        })
    }

    fn paths(script: &Script) -> Vec<String> {
        script
            .seen()
            .iter()
            .map(|c| c.url.path().to_string())
            .collect()
    }

    fn bearers(script: &Script) -> Vec<String> {
        script
            .seen()
            .iter()
            .filter(|c| c.url.path().ends_with("/runners"))
            .map(|c| c.bearer.as_ref().unwrap().expose_secret().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_pat_is_sent_as_it_is() {
        let layer = AuthLayer::new(
            Arc::new(Credentials::new(&Auth::Pat(SecretString::from("ghp_abc"))).unwrap()),
            Url::parse(API).unwrap(),
            Duration::from_secs(300),
        );
        let script = Script::new(|_, _| Ok(reply(StatusCode::OK)));
        layer
            .layer(script.service())
            .oneshot(call_to(RUNNERS))
            .await
            .unwrap();
        assert_eq!(bearers(&script), vec!["ghp_abc"]);
    }

    #[tokio::test]
    async fn a_burst_of_calls_mints_one_token() {
        let script = app_api(TimeDelta::hours(1), &[]);
        let service = app_layer().layer(script.service());
        let calls: Vec<_> = (0..20)
            .map(|_| tokio::spawn(service.clone().oneshot(call_to(RUNNERS))))
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().status, StatusCode::OK);
        }
        let paths = paths(&script);
        let count = |p: &str| paths.iter().filter(|x| x.as_str() == p).count();
        assert_eq!(count("/repos/octo/hello/installation"), 1);
        assert_eq!(count("/app/installations/42/access_tokens"), 1);
        assert_eq!(bearers(&script), vec!["ghs_1"; 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_is_renewed_the_margin_before_it_expires() {
        let script = app_api(TimeDelta::hours(1), &[]);
        let service = app_layer().layer(script.service());
        service.clone().oneshot(call_to(RUNNERS)).await.unwrap();
        // Ten minutes before it expires, the token is still used...
        tokio::time::sleep(Duration::from_secs(50 * 60)).await;
        service.clone().oneshot(call_to(RUNNERS)).await.unwrap();
        // ...five minutes (the margin) before, no longer.
        tokio::time::sleep(Duration::from_secs(5 * 60)).await;
        service.clone().oneshot(call_to(RUNNERS)).await.unwrap();
        assert_eq!(bearers(&script), vec!["ghs_1", "ghs_1", "ghs_2"]);
        let installation_lookups = paths(&script)
            .iter()
            .filter(|p| p.ends_with("/installation"))
            .count();
        assert_eq!(installation_lookups, 1, "the installation id is kept");
    }

    #[tokio::test]
    async fn a_refused_token_is_renewed_once_then_the_answer_stands() {
        let script = app_api(TimeDelta::hours(1), &["ghs_1"]);
        let service = app_layer().layer(script.service());
        let answer = service.clone().oneshot(call_to(RUNNERS)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(bearers(&script), vec!["ghs_1", "ghs_2"]);

        let refusing = app_api(TimeDelta::hours(1), &["ghs_1", "ghs_2"]);
        let service = app_layer().layer(refusing.service());
        let answer = service.clone().oneshot(call_to(RUNNERS)).await.unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(bearers(&refusing), vec!["ghs_1", "ghs_2"], "no loop");
    }

    #[tokio::test]
    async fn no_installation_is_not_found_and_the_call_is_not_sent() {
        let script = Script::new(|_, _| Ok(reply(StatusCode::NOT_FOUND)));
        let err = app_layer()
            .layer(script.service())
            .oneshot(call_to(RUNNERS))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Stopped(GitHubError::NotFound(m)) if m.contains("get_installation")),
            "{err:?}"
        );
        assert_eq!(paths(&script), vec!["/repos/octo/hello/installation"]);
    }

    #[test]
    fn tokens_are_used_until_the_margin_or_half_their_life() {
        let margin = Duration::from_secs(300);
        assert_eq!(
            use_for(TimeDelta::hours(1), margin),
            Duration::from_secs(3300)
        );
        assert_eq!(
            use_for(TimeDelta::seconds(6), margin),
            Duration::from_secs(3)
        );
        assert_eq!(use_for(TimeDelta::seconds(-5), margin), Duration::ZERO);
        assert_eq!(use_for(TimeDelta::days(365), margin), LONGEST_TOKEN_USE);
    }
}
