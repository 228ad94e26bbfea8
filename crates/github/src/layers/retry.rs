//! The retry layer: resends a call after a failure back-off may cure (5xx,
//! timeout, lost or refused connection), with jittered exponential back-off,
//! at most `max_retries` times and never past the call's deadline. A call
//! that must not repeat ([`Repeat::Once`]) is resent only when it surely
//! never reached GitHub. Gives back the last outcome when it stops, and marks
//! an answer that follows an ambiguous attempt.

use std::task::{Context, Poll};

use backon::BackoffBuilder;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::call::{Call, CallError, CallFuture, CallService, Repeat, Reply, status_error};
use crate::config::RetryConfig;

#[derive(Clone)]
pub(crate) struct RetryLayer {
    config: RetryConfig,
}

impl RetryLayer {
    pub(crate) fn new(config: RetryConfig) -> RetryLayer {
        RetryLayer { config }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService {
            inner,
            config: self.config.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RetryService<S> {
    inner: S,
    config: RetryConfig,
}

fn backoff(config: &RetryConfig) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.min_delay)
        .with_max_delay(config.max_delay)
        .with_max_times(config.max_retries)
        .with_jitter()
        .build()
}

impl<S: CallService> RetryService<S> {
    async fn retried(self, mut call: Call) -> Result<Reply, CallError> {
        let mut backoff = backoff(&self.config);
        let mut ambiguous = false;
        loop {
            let outcome = self.inner.clone().oneshot(call.clone()).await;
            // The outcome to give back if this was the last attempt, and why
            // it failed (for the log).
            let (last, failure) = match outcome {
                Ok(mut reply) if reply.status.is_server_error() => {
                    let failure = status_error(call.endpoint, &reply);
                    reply.after_ambiguous_attempt = ambiguous;
                    ambiguous = true;
                    if call.repeat == Repeat::Once {
                        return Ok(reply);
                    }
                    (Ok(reply), failure)
                }
                Ok(mut reply) => {
                    reply.after_ambiguous_attempt = ambiguous;
                    return Ok(reply);
                }
                Err(CallError::Unreachable(e)) => (Err(CallError::Unreachable(e.clone())), e),
                Err(CallError::Ambiguous(e)) => {
                    ambiguous = true;
                    if call.repeat == Repeat::Once {
                        return Err(CallError::Ambiguous(e));
                    }
                    (Err(CallError::Ambiguous(e.clone())), e)
                }
                Err(stopped_or_unusable) => return Err(stopped_or_unusable),
            };
            let Some(delay) = backoff.next() else {
                return last;
            };
            if Instant::now() + delay >= call.deadline {
                return last;
            }
            tracing::warn!(
                endpoint = call.endpoint,
                attempt = call.attempt,
                delay_ms = delay.as_millis() as u64,
                error = %failure,
                "GitHub request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            call.attempt += 1;
        }
    }
}

impl<S: CallService> Service<Call> for RetryService<S> {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The inner service's readiness is awaited per attempt (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        Box::pin(self.clone().retried(call))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use proxy_runner_domain::ports::GitHubError;

    use super::*;
    use crate::layers::testing::{Script, call_with, reply};

    fn layer(max_retries: usize) -> RetryLayer {
        RetryLayer::new(RetryConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retries,
            secondary_limit_wait: Duration::from_secs(60),
        })
    }

    fn timeout() -> CallError {
        CallError::Ambiguous(GitHubError::Timeout("no answer".into()))
    }

    fn refused() -> CallError {
        CallError::Unreachable(GitHubError::Transport("connection refused".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_exponentially_with_jitter_then_gives_back_the_last_answer() {
        let script = Script::new(|_, _| Ok(reply(StatusCode::BAD_GATEWAY)));
        let started = Instant::now();
        let answer = layer(3)
            .layer(script.service())
            .oneshot(call_with(Method::GET, Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert_eq!(script.calls(), 4, "the first attempt and three retries");
        // Delays 100, 200 and 400 ms, each with up to as much jitter again.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(1400),
            "{waited:?}"
        );
        let attempts: Vec<u32> = script.seen().iter().map(|c| c.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_an_ambiguous_attempt_says_so() {
        let script = Script::new(|_, i| {
            if i == 0 {
                Err(timeout())
            } else {
                Ok(reply(StatusCode::CONFLICT))
            }
        });
        let answer = layer(3)
            .layer(script.service())
            .oneshot(call_with(Method::POST, Duration::from_secs(30)).with_repeat(Repeat::Safe))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert!(answer.after_ambiguous_attempt);

        let clean = Script::new(|_, i| {
            if i == 0 {
                Err(refused())
            } else {
                Ok(reply(StatusCode::CONFLICT))
            }
        });
        let answer = layer(3)
            .layer(clean.service())
            .oneshot(call_with(Method::POST, Duration::from_secs(30)).with_repeat(Repeat::Safe))
            .await
            .unwrap();
        assert!(
            !answer.after_ambiguous_attempt,
            "a refused connection never reached GitHub"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_must_not_repeat_is_resent_only_when_it_never_arrived() {
        let once = || call_with(Method::POST, Duration::from_secs(30)).with_repeat(Repeat::Once);

        let ambiguous = Script::new(|_, _| Err(timeout()));
        let err = layer(3)
            .layer(ambiguous.service())
            .oneshot(once())
            .await
            .unwrap_err();
        assert_eq!(err, timeout());
        assert_eq!(ambiguous.calls(), 1);

        let server_error = Script::new(|_, _| Ok(reply(StatusCode::INTERNAL_SERVER_ERROR)));
        let answer = layer(3)
            .layer(server_error.service())
            .oneshot(once())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(server_error.calls(), 1);

        let unreachable = Script::new(|_, i| {
            if i < 2 {
                Err(refused())
            } else {
                Ok(reply(StatusCode::CREATED))
            }
        });
        let answer = layer(3)
            .layer(unreachable.service())
            .oneshot(once())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(unreachable.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_back_off_is_begun_that_would_end_past_the_deadline() {
        let script = Script::new(|_, _| Err(timeout()));
        let started = Instant::now();
        let err = RetryLayer::new(RetryConfig {
            min_delay: Duration::from_secs(4),
            max_delay: Duration::from_secs(4),
            max_retries: 100,
            secondary_limit_wait: Duration::from_secs(60),
        })
        .layer(script.service())
        .oneshot(call_with(Method::GET, Duration::from_secs(10)))
        .await
        .unwrap_err();
        assert_eq!(err, timeout());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // 4 s plus up to 4 s of jitter per delay: one or two delays fit.
        assert!((2..=3).contains(&script.calls()), "{}", script.calls());
    }

    #[tokio::test(start_paused = true)]
    async fn stopped_and_unusable_calls_are_not_resent() {
        for err in [
            CallError::Stopped(GitHubError::CircuitOpen { host: "h".into() }),
            CallError::Unusable(GitHubError::Http {
                status: 200,
                message: "too large".into(),
            }),
        ] {
            let answer = err.clone();
            let script = Script::new(move |_, _| Err(answer.clone()));
            let got = layer(3)
                .layer(script.service())
                .oneshot(call_with(Method::GET, Duration::from_secs(30)))
                .await
                .unwrap_err();
            assert_eq!(got, err);
            assert_eq!(script.calls(), 1);
        }
    }
}
