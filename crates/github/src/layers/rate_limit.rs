//! The rate-limit layer: notes the budget every answer reports
//! (`x-ratelimit-*`), and turns GitHub's refusals into waits. A primary
//! limit (403/429 with nothing remaining) waits until the reset; a secondary
//! limit waits `retry-after`, else a minute, doubled on each repeat. A wait
//! that would end past the call's deadline is not begun: the call fails with
//! `RateLimited`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use http::{HeaderMap, StatusCode};
use proxy_runner_domain::ports::GitHubError;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::call::{Call, CallError, CallFuture, CallService, Reply};
use crate::metrics as m;
use crate::model::ApiErrorBody;
use crate::rate_limit::{RateLimit, Refusal, classify_refusal};
use proxy_runner_domain::sync::lock;

/// The budgets GitHub last reported, per resource and overall.
#[derive(Debug, Default)]
pub(crate) struct RateLimitBook {
    by_resource: Mutex<HashMap<String, RateLimit>>,
    last: Mutex<Option<RateLimit>>,
}

impl RateLimitBook {
    pub(crate) fn get(&self, resource: &str) -> Option<RateLimit> {
        lock(&self.by_resource).get(resource).cloned()
    }

    pub(crate) fn last(&self) -> Option<RateLimit> {
        lock(&self.last).clone()
    }

    fn observe(&self, headers: &HeaderMap) {
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
        lock(&self.by_resource).insert(rl.resource.clone(), rl.clone());
        *lock(&self.last) = Some(rl);
    }
}

#[derive(Clone)]
pub(crate) struct RateLimitLayer {
    book: Arc<RateLimitBook>,
    /// First wait after a secondary limit without `retry-after`.
    secondary_limit_wait: Duration,
}

impl RateLimitLayer {
    pub(crate) fn new(book: Arc<RateLimitBook>, secondary_limit_wait: Duration) -> RateLimitLayer {
        RateLimitLayer {
            book,
            secondary_limit_wait,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            book: self.book.clone(),
            secondary_limit_wait: self.secondary_limit_wait,
        }
    }
}

#[derive(Clone)]
pub(crate) struct RateLimitService<S> {
    inner: S,
    book: Arc<RateLimitBook>,
    secondary_limit_wait: Duration,
}

impl<S: CallService> RateLimitService<S> {
    async fn paced(self, call: Call) -> Result<Reply, CallError> {
        let mut secondary_hits = 0u32;
        loop {
            let reply = self.inner.clone().oneshot(call.clone()).await?;
            self.book.observe(&reply.headers);
            if !matches!(
                reply.status,
                StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
            ) {
                return Ok(reply);
            }
            let message = ApiErrorBody::parse(&reply.body).describe();
            let now = Utc::now();
            let wait = match classify_refusal(reply.status, &reply.headers, &message, now) {
                None | Some(Refusal::Forbidden) => return Ok(reply),
                Some(Refusal::Primary { reset }) => {
                    // A second more for clock skew between us and GitHub.
                    let wait =
                        (reset - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1);
                    if Instant::now() + wait > call.deadline {
                        return Err(CallError::Stopped(GitHubError::RateLimited {
                            until: reset,
                        }));
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
                    let doubling = 1u32 << secondary_hits.min(6);
                    let wait = retry_after
                        .unwrap_or_else(|| self.secondary_limit_wait.saturating_mul(doubling))
                        .max(Duration::from_secs(1));
                    secondary_hits += 1;
                    if Instant::now() + wait > call.deadline {
                        let until = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
                        return Err(CallError::Stopped(GitHubError::RateLimited { until }));
                    }
                    tracing::warn!(
                        endpoint = call.endpoint,
                        wait_secs = wait.as_secs(),
                        "GitHub secondary rate limit; waiting"
                    );
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl<S: CallService> Service<Call> for RateLimitService<S> {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The inner service's readiness is awaited per call (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        Box::pin(self.clone().paced(call))
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::layers::testing::{
        Script, assert_waited, call_with, json_reply, reply, with_header,
    };

    fn layer() -> (Arc<RateLimitBook>, RateLimitLayer) {
        let book = Arc::new(RateLimitBook::default());
        (
            book.clone(),
            RateLimitLayer::new(book, Duration::from_secs(60)),
        )
    }

    fn budget(reply: Reply, remaining: u64, reset_epoch: i64) -> Reply {
        let reply = with_header(reply, "x-ratelimit-limit", 5000);
        let reply = with_header(reply, "x-ratelimit-remaining", remaining);
        with_header(reply, "x-ratelimit-reset", reset_epoch)
    }

    fn secondary() -> Reply {
        json_reply(
            StatusCode::FORBIDDEN,
            json!({"message": "You have exceeded a secondary rate limit."}),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let (_, layer) = layer();
        let script = Script::new(|_, i| {
            Ok(if i == 0 {
                with_header(secondary(), "retry-after", 7)
            } else {
                reply(StatusCode::OK)
            })
        });
        let started = Instant::now();
        let answer = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_waited(started, Duration::from_secs(7));
        assert_eq!(script.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn secondary_without_retry_after_waits_a_minute_then_doubles() {
        let (_, layer) = layer();
        let script = Script::new(|_, i| {
            Ok(if i < 2 {
                secondary()
            } else {
                reply(StatusCode::OK)
            })
        });
        let started = Instant::now();
        layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(600)))
            .await
            .unwrap();
        assert_waited(started, Duration::from_secs(60 + 120));
    }

    #[tokio::test(start_paused = true)]
    async fn primary_limit_waits_for_the_reset_and_books_the_budget() {
        let (book, layer) = layer();
        // The reset is wall-clock time: ten minutes out, so that a slow
        // machine cannot blur what is asserted.
        let reset = Utc::now().timestamp() + 600;
        let script = Script::new(move |_, i| {
            Ok(if i == 0 {
                budget(
                    json_reply(
                        StatusCode::FORBIDDEN,
                        json!({"message": "API rate limit exceeded"}),
                    ),
                    0,
                    reset,
                )
            } else {
                budget(reply(StatusCode::OK), 4999, reset + 3600)
            })
        });
        let started = Instant::now();
        layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(1200)))
            .await
            .unwrap();
        // Until the reset, plus a second for clock skew.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(540) && waited <= Duration::from_secs(602),
            "{waited:?}"
        );
        assert_eq!(book.get("core").map(|rl| rl.remaining), Some(4999));
        assert_eq!(book.last(), book.get("core"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_is_not_begun() {
        let (book, layer) = layer();
        let reset = Utc::now().timestamp() + 3600;
        let script =
            Script::new(move |_, _| Ok(budget(reply(StatusCode::TOO_MANY_REQUESTS), 0, reset)));
        let started = Instant::now();
        let err = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Stopped(GitHubError::RateLimited {
                until: chrono::DateTime::from_timestamp(reset, 0).unwrap()
            })
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(book.get("core").map(|rl| rl.remaining), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_forbidden_is_an_answer_not_a_wait() {
        let (_, layer) = layer();
        let script = Script::new(|_, _| {
            Ok(budget(
                json_reply(
                    StatusCode::FORBIDDEN,
                    json!({"message": "Resource not accessible by integration"}),
                ),
                4000,
                Utc::now().timestamp() + 600,
            ))
        });
        let answer = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(script.calls(), 1);
    }
}
