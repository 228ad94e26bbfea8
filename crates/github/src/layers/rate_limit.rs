//! The rate-limit layer: notes the budget every answer reports
//! (`x-ratelimit-*`), and turns GitHub's refusals into waits. A primary
//! limit (403/429 with nothing remaining) waits until the reset; a secondary
//! limit waits `retry-after`, else a minute, doubled on each repeat. GitHub's
//! limits hold for the whole account, so a refusal pauses every call of the
//! client, not only the refused one: no call is sent before the time GitHub
//! named. A wait that would end past the call's deadline is not begun: the
//! call fails with `RateLimited`.

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

/// The budgets GitHub last reported, per resource and overall, and the
/// pause a refusal imposed on every call.
#[derive(Debug, Default)]
pub(crate) struct RateLimitBook {
    by_resource: Mutex<HashMap<String, RateLimit>>,
    last: Mutex<Option<RateLimit>>,
    paused: Mutex<Option<Pause>>,
}

/// No call is sent before `resume` (tokio time; `until` is the same moment
/// as wall-clock time, for the error a call past its deadline gets).
#[derive(Debug, Clone, Copy)]
struct Pause {
    resume: Instant,
    until: chrono::DateTime<Utc>,
}

impl RateLimitBook {
    /// Holds every call back until `resume`; a later pause extends it, an
    /// earlier one never shortens it.
    fn pause(&self, resume: Instant, until: chrono::DateTime<Utc>) {
        let mut paused = lock(&self.paused);
        if paused.is_none_or(|p| p.resume < resume) {
            *paused = Some(Pause { resume, until });
        }
    }

    /// The pause in force, if any.
    fn pause_in_force(&self) -> Option<Pause> {
        let mut paused = lock(&self.paused);
        match *paused {
            Some(p) if p.resume > Instant::now() => Some(p),
            _ => {
                *paused = None;
                None
            }
        }
    }

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
            // Another call's refusal holds this one back too.
            if let Some(pause) = self.book.pause_in_force() {
                if pause.resume > call.deadline {
                    return Err(CallError::Stopped(GitHubError::RateLimited {
                        until: pause.until,
                    }));
                }
                tokio::time::sleep_until(pause.resume).await;
                continue;
            }
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
            let (wait, until, what) =
                match classify_refusal(reply.status, &reply.headers, &message, now) {
                    None | Some(Refusal::Forbidden) => return Ok(reply),
                    Some(Refusal::Primary { reset }) => {
                        // A second more for clock skew between us and GitHub.
                        let wait = (reset - now).to_std().unwrap_or(Duration::ZERO)
                            + Duration::from_secs(1);
                        (
                            wait,
                            reset,
                            "GitHub rate limit exhausted; waiting for the reset",
                        )
                    }
                    Some(Refusal::Secondary { retry_after }) => {
                        // GitHub: honour retry-after; else wait a minute, then longer.
                        let doubling = 1u32 << secondary_hits.min(6);
                        let wait = retry_after
                            .unwrap_or_else(|| self.secondary_limit_wait.saturating_mul(doubling))
                            .max(Duration::from_secs(1));
                        secondary_hits += 1;
                        let until = now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
                        (wait, until, "GitHub secondary rate limit; waiting")
                    }
                };
            // Every call waits, including those that give up now.
            let resume = Instant::now() + wait;
            self.book.pause(resume, until);
            if resume > call.deadline {
                return Err(CallError::Stopped(GitHubError::RateLimited { until }));
            }
            tracing::warn!(
                endpoint = call.endpoint,
                wait_secs = wait.as_secs(),
                "{what}"
            );
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
    async fn a_refusal_holds_back_every_call_until_retry_after() {
        let (_, layer) = layer();
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let log = sent.clone();
        let script = Script::new(move |_, i| {
            log.lock().unwrap().push(Instant::now());
            Ok(if i == 0 {
                with_header(reply(StatusCode::TOO_MANY_REQUESTS), "retry-after", 7)
            } else {
                reply(StatusCode::OK)
            })
        });
        let started = Instant::now();
        let first = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)));
        let first = tokio::spawn(first);
        // A second call, begun after the refusal arrived.
        while script.calls() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(first.await.unwrap().unwrap().status, StatusCode::OK);
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 3);
        for at in &sent[1..] {
            assert!(
                *at >= started + Duration::from_secs(7),
                "a call was sent {:?} after the refusal",
                *at - started
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_deadline_ends_within_the_pause_is_not_sent() {
        let (_, layer) = layer();
        let script = Script::new(|_, i| {
            Ok(if i == 0 {
                with_header(secondary(), "retry-after", 20)
            } else {
                reply(StatusCode::OK)
            })
        });
        let _ = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(10)))
            .await;
        let err = layer
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Stopped(GitHubError::RateLimited { .. })),
            "{err:?}"
        );
        assert_eq!(script.calls(), 1);
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
