//! Sending one request well: circuit breaker, per-attempt timeout, retries
//! with jittered exponential back-off, rate-limit waits, one token renewal
//! on 401, an overall deadline, bounded bodies, and errors without secrets.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use proxy_runner_domain::ports::{GitHubError, Scope};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::auth::Credentials;
use crate::breaker::BreakerPermit;
use crate::client::GitHubClient;
use crate::metrics as m;
use crate::model::ApiErrorBody;
use crate::rate_limit::{Refusal, classify_refusal};

/// Error texts from the server are cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 300;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whose credential a request carries.
#[derive(Clone, Copy)]
pub(crate) enum CallAuth<'a> {
    /// The PAT, or the App's installation token for this scope.
    Scope(&'a Scope),
    /// The App's own JWT (installation lookup and token minting).
    AppJwt,
}

/// May a request be sent again after an answer that leaves open whether
/// GitHub applied it (5xx, timeout, connection lost after sending)?
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Repeat {
    /// Reads and deletes: repeating is harmless.
    Idempotent,
    /// Creates something, but repeating is safe: tokens (another token is
    /// minted) and JIT configs (fixed name; see `generate_jit_config`).
    Safe,
    /// Only resent when it surely never reached GitHub (connection refused,
    /// rate-limit refusal).
    Once,
}

pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: Url,
    /// Metric label and error prefix; a fixed name, never a path.
    pub endpoint: &'static str,
    pub auth: CallAuth<'a>,
    pub body: Option<serde_json::Value>,
    pub repeat: Repeat,
}

impl<'a> Call<'a> {
    pub(crate) fn get(url: Url, endpoint: &'static str, auth: CallAuth<'a>) -> Call<'a> {
        Call {
            method: Method::GET,
            url,
            endpoint,
            auth,
            body: None,
            repeat: Repeat::Idempotent,
        }
    }
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// An earlier attempt of this call may have been applied by GitHub.
    pub after_ambiguous_attempt: bool,
    /// The credential this answer was obtained with, to scrub it from texts.
    pub credential: SecretString,
}

enum AttemptError {
    Transport(reqwest::Error),
    TooLarge,
}

/// What to do after one attempt.
enum Next {
    Return(Result<Reply, GitHubError>),
    /// A failure back-off may cure.
    BackOff(GitHubError),
    /// A rate limit: wait this long, then send again.
    Wait(Duration),
    /// Send again at once (with a fresh credential).
    Again,
}

#[derive(Default)]
struct Progress {
    attempt: u32,
    ambiguous: bool,
    renewed_auth: bool,
    secondary_hits: u32,
}

impl GitHubClient {
    /// Sends `call` until it gets an answer worth returning, never going past
    /// `deadline`. Non-2xx answers that are not retried come back as they
    /// are; callers map them with [`status_error`].
    pub(crate) fn execute<'a>(
        &'a self,
        call: &'a Call<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Reply, GitHubError>> {
        Box::pin(async move {
            let breaker = self.breaker_for(&call.url);
            let mut backoff = self.backoff();
            let mut progress = Progress::default();
            loop {
                progress.attempt += 1;
                // Before the permit: fetching a token is a request of its own.
                let credential = self.credential(call.auth, deadline).await?;
                let permit = breaker.try_acquire().inspect_err(|_| {
                    count(call.endpoint, "circuit_open");
                })?;
                let started = Instant::now();
                if started >= deadline {
                    return Err(GitHubError::Timeout(format!(
                        "{}: deadline reached before attempt {}",
                        call.endpoint, progress.attempt
                    )));
                }
                let limit = self.config().attempt_timeout.min(deadline - started);
                let outcome = tokio::time::timeout(limit, self.send_once(call, &credential)).await;
                metrics::histogram!(m::REQUEST_DURATION_SECONDS, "endpoint" => call.endpoint)
                    .record(started.elapsed().as_secs_f64());
                let outcome = outcome.map_err(|_| limit);
                let next = self.judge(
                    call,
                    outcome,
                    permit,
                    credential,
                    &mut progress,
                    deadline,
                    started,
                );
                let failure = match next {
                    Next::Return(result) => return result,
                    Next::Again => continue,
                    Next::Wait(wait) => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Next::BackOff(failure) => failure,
                };
                let Some(delay) = backoff.next() else {
                    return Err(failure);
                };
                if Instant::now() + delay >= deadline {
                    return Err(failure);
                }
                tracing::warn!(
                    endpoint = call.endpoint,
                    attempt = progress.attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %failure,
                    "GitHub request failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        })
    }

    /// Decides what one attempt's outcome means (`Err(limit)`: timed out).
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        call: &Call<'_>,
        outcome: Result<Result<(StatusCode, HeaderMap, Bytes), AttemptError>, Duration>,
        permit: BreakerPermit,
        credential: SecretString,
        progress: &mut Progress,
        deadline: Instant,
        started: Instant,
    ) -> Next {
        // Ambiguous failures may be retried unless the call must not repeat.
        let ambiguous = |progress: &mut Progress, err: GitHubError| {
            progress.ambiguous = true;
            if call.repeat == Repeat::Once {
                Next::Return(Err(err))
            } else {
                Next::BackOff(err)
            }
        };
        let (status, headers, body) = match outcome {
            Err(limit) => {
                permit.failure();
                count(call.endpoint, "timeout");
                let err = GitHubError::Timeout(format!(
                    "{} {}: no answer within {limit:?}",
                    call.method, call.endpoint
                ));
                return ambiguous(progress, err);
            }
            Ok(Err(AttemptError::Transport(e))) => {
                permit.failure();
                count(call.endpoint, "transport");
                let err = GitHubError::Transport(redact(
                    &format!("{} {}: {}", call.method, call.endpoint, transport_text(&e)),
                    &credential,
                ));
                // A refused connection never reached GitHub: always retry.
                return if e.is_connect() {
                    Next::BackOff(err)
                } else {
                    ambiguous(progress, err)
                };
            }
            Ok(Err(AttemptError::TooLarge)) => {
                permit.success();
                count(call.endpoint, "too_large");
                return Next::Return(Err(GitHubError::Http {
                    status: 200,
                    message: format!(
                        "{}: response larger than {} bytes",
                        call.endpoint,
                        self.config().max_response_bytes
                    ),
                }));
            }
            Ok(Ok(answer)) => answer,
        };

        count(call.endpoint, status.as_str());
        self.observe_rate_limit(&headers);
        tracing::debug!(
            method = %call.method,
            endpoint = call.endpoint,
            path = %call.url.path(),
            status = status.as_u16(),
            attempt = progress.attempt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "GitHub answered"
        );
        let reply = Reply {
            status,
            headers,
            body,
            after_ambiguous_attempt: progress.ambiguous,
            credential,
        };
        if status.is_server_error() {
            permit.failure();
            return ambiguous(progress, status_error(call.endpoint, &reply));
        }
        permit.success();

        if status == StatusCode::UNAUTHORIZED
            && !progress.renewed_auth
            && let (CallAuth::Scope(scope), Credentials::App(app)) = (call.auth, self.credentials())
        {
            progress.renewed_auth = true;
            tracing::info!(scope = %scope, "installation token refused; renewing it");
            app.forget(scope);
            return Next::Again;
        }

        let message = ApiErrorBody::parse(&reply.body).describe();
        let now = Utc::now();
        let wait = match classify_refusal(status, &reply.headers, &message, now) {
            None | Some(Refusal::Forbidden) => return Next::Return(Ok(reply)),
            Some(Refusal::Primary { reset }) => {
                // A second more for clock skew between us and GitHub.
                let wait =
                    (reset - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1);
                if Instant::now() + wait > deadline {
                    return Next::Return(Err(GitHubError::RateLimited { until: reset }));
                }
                tracing::warn!(
                    endpoint = call.endpoint,
                    wait_secs = wait.as_secs(),
                    "GitHub rate limit exhausted; waiting for the reset"
                );
                wait
            }
            Some(Refusal::Secondary { retry_after }) => {
                // GitHub: honour retry-after; else wait a minute, then longer.
                let doubling = 1u32 << progress.secondary_hits.min(6);
                let wait = retry_after
                    .unwrap_or_else(|| {
                        self.config()
                            .retry
                            .secondary_limit_wait
                            .saturating_mul(doubling)
                    })
                    .max(Duration::from_secs(1));
                progress.secondary_hits += 1;
                if Instant::now() + wait > deadline {
                    let until = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
                    return Next::Return(Err(GitHubError::RateLimited { until }));
                }
                tracing::warn!(
                    endpoint = call.endpoint,
                    wait_secs = wait.as_secs(),
                    "GitHub secondary rate limit; waiting"
                );
                wait
            }
        };
        Next::Wait(wait)
    }

    async fn send_once(
        &self,
        call: &Call<'_>,
        credential: &SecretString,
    ) -> Result<(StatusCode, HeaderMap, Bytes), AttemptError> {
        // A credential that is not a valid header value is sent as a
        // placeholder (GitHub answers 401) rather than echoed in an error.
        let mut auth = HeaderValue::try_from(format!("Bearer {}", credential.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-credential"));
        auth.set_sensitive(true);
        let mut request = self
            .http()
            .request(call.method.clone(), call.url.clone())
            .header(AUTHORIZATION, auth);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(AttemptError::Transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let limit = self.config().max_response_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(AttemptError::Transport)? {
            if body.len() + chunk.len() > limit {
                return Err(AttemptError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, Bytes::from(body)))
    }
}

fn count(endpoint: &'static str, status: &str) {
    metrics::counter!(m::REQUESTS_TOTAL, "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<T, GitHubError> {
    // serde's message may quote the input (which can hold a token): report
    // only where decoding failed.
    serde_json::from_slice(body).map_err(|e| GitHubError::Http {
        status: 200,
        message: format!(
            "{endpoint}: unexpected response body ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

/// Maps a non-2xx answer to the port's error, with GitHub's message and
/// `errors[]` (cut short, credential scrubbed).
pub(crate) fn status_error(endpoint: &str, reply: &Reply) -> GitHubError {
    let described = ApiErrorBody::parse(&reply.body).describe();
    let described = if described.is_empty() {
        reply
            .status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        described
    };
    let text: String = described.chars().take(MAX_MESSAGE_CHARS).collect();
    let message = redact(&format!("{endpoint}: {text}"), &reply.credential);
    match reply.status {
        StatusCode::NOT_FOUND => GitHubError::NotFound(message),
        StatusCode::CONFLICT => GitHubError::Conflict(message),
        StatusCode::UNPROCESSABLE_ENTITY => GitHubError::Validation(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => GitHubError::Unauthorized(message),
        status => GitHubError::Http {
            status: status.as_u16(),
            message,
        },
    }
}

/// Removes the credential from a text that is about to leave the client.
pub(crate) fn redact(text: &str, credential: &SecretString) -> String {
    let secret = credential.expose_secret();
    if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "[redacted]")
    } else {
        text.to_string()
    }
}

/// reqwest's error and its causes, without the URL.
fn transport_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "error reading the response".to_string()
    } else {
        "error sending the request".to_string()
    };
    let mut source = e.source();
    for _ in 0..4 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// The `rel="next"` target of a `Link` header, if any.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
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
    fn redaction() {
        let s = SecretString::from("ghp_supersecret");
        assert_eq!(
            redact("bad ghp_supersecret here", &s),
            "bad [redacted] here"
        );
        assert_eq!(redact("nothing", &s), "nothing");
    }
}
