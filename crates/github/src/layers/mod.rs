//! How a call reaches GitHub: tower layers around one base service. From
//! the outside in:
//!
//! ```text
//! auth ─▶ retry ─▶ rate_limit ─▶ breaker ─▶ send
//! ```
//!
//! - `auth` puts the credential on the call (PAT, or App JWT traded for an
//!   installation token). It sits outside the others so that its own token
//!   calls get retries, rate-limit waits and the breaker too.
//! - `retry` resends after 5xx answers, timeouts and lost connections, with
//!   jittered exponential back-off, within the call's deadline.
//! - `rate_limit` waits out GitHub's refusals inside one retry attempt, so a
//!   wait never uses up a retry.
//! - `breaker` fails fast while the host's circuit is open; it sees every
//!   attempt, including those after a wait.
//! - `send` makes one HTTP attempt with reqwest, bounded and measured.
//!
//! Each layer knows the call types (`crate::call`) and its own state, never
//! another layer.

mod auth;
mod breaker;
mod rate_limit;
mod retry;
mod send;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use reqwest::Url;
use tower::ServiceBuilder;

pub(crate) use auth::{AuthLayer, AuthService, Credentials};
pub(crate) use breaker::{BreakerLayer, BreakerService, Breakers};
pub(crate) use rate_limit::{RateLimitBook, RateLimitLayer, RateLimitService};
pub(crate) use retry::{RetryLayer, RetryService};
pub(crate) use send::HttpSend;

use crate::config::GitHubConfig;

/// The whole stack around a base service (reqwest's, or a test double).
pub(crate) type Stack<S = HttpSend> =
    AuthService<RetryService<RateLimitService<BreakerService<S>>>>;

/// What the layers keep between calls and the client reads.
#[derive(Clone)]
pub(crate) struct Shared {
    pub credentials: Arc<Credentials>,
    pub breakers: Arc<Breakers>,
    pub rate_limits: Arc<RateLimitBook>,
}

impl Shared {
    pub(crate) fn new(config: &GitHubConfig, credentials: Credentials) -> Shared {
        Shared {
            credentials: Arc::new(credentials),
            breakers: Arc::new(Breakers::new(config.breaker.clone())),
            rate_limits: Arc::new(RateLimitBook::default()),
        }
    }
}

/// Wraps `send` in the layers, in the order above. `api` is the REST root
/// (the App's token endpoints are under it).
pub(crate) fn stack<S>(send: S, api: Url, config: &GitHubConfig, shared: &Shared) -> Stack<S> {
    ServiceBuilder::new()
        .layer(AuthLayer::new(
            shared.credentials.clone(),
            api,
            config.token_renew_margin,
        ))
        .layer(RetryLayer::new(config.retry.clone()))
        .layer(RateLimitLayer::new(
            shared.rate_limits.clone(),
            config.retry.secondary_limit_wait,
        ))
        .layer(BreakerLayer::new(shared.breakers.clone()))
        .service(send)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use proxy_runner_domain::ports::GitHubError;
    use secrecy::SecretString;
    use serde_json::json;
    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;
    use crate::call::CallError;
    use crate::config::Auth;
    use crate::layers::testing::{Script, app_key, call_to, json_reply, reply, with_header};

    const API: &str = "https://api.example.test";
    const RUNNERS: &str = "https://api.example.test/repos/octo/hello/actions/runners";

    fn stack_over(
        script: &Script,
        auth: Auth,
        tweak: impl FnOnce(&mut GitHubConfig),
    ) -> Stack<Script> {
        let mut config = GitHubConfig::new(API, auth);
        config.retry.min_delay = Duration::from_millis(100);
        config.retry.max_delay = Duration::from_secs(1);
        tweak(&mut config);
        let shared = Shared::new(&config, Credentials::new(&config.auth).unwrap());
        stack(script.service(), Url::parse(API).unwrap(), &config, &shared)
    }

    fn pat() -> Auth {
        Auth::Pat(SecretString::from("ghp_stack_test"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_wait_does_not_use_up_a_retry() {
        let script = Script::new(|_, i| {
            Ok(match i {
                0 => reply(StatusCode::BAD_GATEWAY),
                1 => with_header(reply(StatusCode::TOO_MANY_REQUESTS), "retry-after", 3),
                _ => reply(StatusCode::OK),
            })
        });
        let stack = stack_over(&script, pat(), |c| c.retry.max_retries = 1);
        let answer = stack.oneshot(call_to(RUNNERS)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(script.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_is_not_retried() {
        let script = Script::new(|_, _| Ok(reply(StatusCode::SERVICE_UNAVAILABLE)));
        let stack = stack_over(&script, pat(), |c| {
            c.retry.max_retries = 5;
            c.breaker.failure_threshold = 2;
        });
        let err = stack.oneshot(call_to(RUNNERS)).await.unwrap_err();
        assert_eq!(
            err,
            CallError::Stopped(GitHubError::CircuitOpen {
                host: "api.example.test".into()
            })
        );
        assert_eq!(script.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn token_calls_ride_the_layers_below_auth() {
        let script = Script::new(|call, i| {
            Ok(match (i, call.url.path()) {
                (0, _) => reply(StatusCode::SERVICE_UNAVAILABLE),
                (_, "/repos/octo/hello/installation") => {
                    json_reply(StatusCode::OK, json!({"id": 42}))
                }
                (_, "/app/installations/42/access_tokens") => json_reply(
                    StatusCode::CREATED,
                    json!({"token": "ghs_1", "expires_at": chrono::Utc::now() + chrono::TimeDelta::hours(1)}),
                ),
                _ => reply(StatusCode::OK),
            })
        });
        let auth = Auth::App {
            app_id: 7,
            private_key_pem: app_key(),
        };
        let started = Instant::now();
        let answer = stack_over(&script, auth, |_| {})
            .oneshot(call_to(RUNNERS))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let paths: Vec<String> = script
            .seen()
            .iter()
            .map(|c| c.url.path().to_string())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/repos/octo/hello/installation",
                "/repos/octo/hello/installation",
                "/app/installations/42/access_tokens",
                "/repos/octo/hello/actions/runners",
            ]
        );
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "backed off"
        );
    }
}
