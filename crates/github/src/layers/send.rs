//! The base service: one HTTP attempt with reqwest, bounded in time (the
//! attempt limit, never past the call's deadline) and in size, measured, and
//! its failure sorted into a [`CallError`] kind for the layers above.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use proxy_runner_domain::ports::GitHubError;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tower::Service;

use crate::call::{Call, CallError, CallFuture, Reply, clip, redact};
use crate::metrics::{self as m, count_request};

#[derive(Clone)]
pub(crate) struct HttpSend {
    http: reqwest::Client,
    attempt_timeout: Duration,
    max_response_bytes: usize,
}

enum ExchangeError {
    Transport(reqwest::Error),
    TooLarge,
}

impl HttpSend {
    pub(crate) fn new(
        http: reqwest::Client,
        attempt_timeout: Duration,
        max_response_bytes: usize,
    ) -> HttpSend {
        HttpSend {
            http,
            attempt_timeout,
            max_response_bytes,
        }
    }

    async fn attempt(self, call: Call) -> Result<Reply, CallError> {
        let started = Instant::now();
        if started >= call.deadline {
            return Err(CallError::Stopped(GitHubError::Timeout(format!(
                "{}: deadline reached before attempt {}",
                call.endpoint, call.attempt
            ))));
        }
        let credential = call
            .bearer
            .clone()
            .unwrap_or_else(|| SecretString::from(""));
        let limit = self.attempt_timeout.min(call.deadline - started);
        let outcome = tokio::time::timeout(limit, self.exchange(&call, &credential)).await;
        metrics::histogram!(m::REQUEST_DURATION_SECONDS, "endpoint" => call.endpoint)
            .record(started.elapsed().as_secs_f64());
        let (status, headers, body) = match outcome {
            Err(_) => {
                count_request(call.endpoint, "timeout");
                return Err(CallError::Ambiguous(GitHubError::Timeout(format!(
                    "{} {}: no answer within {limit:?}",
                    call.method, call.endpoint
                ))));
            }
            Ok(Err(ExchangeError::Transport(e))) => {
                count_request(call.endpoint, "transport");
                let err = GitHubError::Transport(redact(
                    &format!("{} {}: {}", call.method, call.endpoint, transport_text(&e)),
                    &credential,
                ));
                return Err(if e.is_connect() {
                    CallError::Unreachable(err)
                } else {
                    CallError::Ambiguous(err)
                });
            }
            Ok(Err(ExchangeError::TooLarge)) => {
                count_request(call.endpoint, "too_large");
                return Err(CallError::Unusable(GitHubError::Http {
                    status: 200,
                    message: format!(
                        "{}: response larger than {} bytes",
                        call.endpoint, self.max_response_bytes
                    ),
                }));
            }
            Ok(Ok(answer)) => answer,
        };
        count_request(call.endpoint, status.as_str());
        tracing::debug!(
            method = %call.method,
            endpoint = call.endpoint,
            path = %call.url.path(),
            status = status.as_u16(),
            attempt = call.attempt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "GitHub answered"
        );
        Ok(Reply {
            status,
            headers,
            body,
            after_ambiguous_attempt: false,
            credential,
        })
    }

    async fn exchange(
        &self,
        call: &Call,
        credential: &SecretString,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ExchangeError> {
        // A credential that is not a valid header value is sent as a
        // placeholder (GitHub answers 401) rather than echoed in an error.
        let mut auth = HeaderValue::try_from(format!("Bearer {}", credential.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-credential"));
        auth.set_sensitive(true);
        let mut request = self
            .http
            .request(call.method.clone(), call.url.clone())
            .header(AUTHORIZATION, auth);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(ExchangeError::Transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ExchangeError::Transport)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(ExchangeError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, Bytes::from(body)))
    }
}

impl Service<Call> for HttpSend {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // reqwest queues on its own pool: always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        Box::pin(self.clone().attempt(call))
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
    clip(&text)
}
