//! The circuit-breaker layer: every attempt asks its host's breaker first
//! and fails fast while it is open; 5xx answers, timeouts and transport
//! errors count against the host, any other answer for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use reqwest::Url;
use tower::{Layer, Service, ServiceExt};

use crate::breaker::{CircuitBreaker, CircuitState};
use crate::call::{Call, CallError, CallFuture, CallService, Reply};
use crate::config::BreakerConfig;
use crate::metrics::count_request;
use proxy_runner_domain::sync::lock;

/// One breaker per host (`host[:port]`), made on first use.
#[derive(Debug)]
pub(crate) struct Breakers {
    config: BreakerConfig,
    by_host: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            config,
            by_host: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn for_url(&self, url: &Url) -> Arc<CircuitBreaker> {
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        lock(&self.by_host)
            .entry(host.clone())
            .or_insert_with(|| CircuitBreaker::new(host, self.config.clone()))
            .clone()
    }

    pub(crate) fn state(&self, url: &Url) -> CircuitState {
        self.for_url(url).state()
    }
}

#[derive(Clone)]
pub(crate) struct BreakerLayer {
    breakers: Arc<Breakers>,
}

impl BreakerLayer {
    pub(crate) fn new(breakers: Arc<Breakers>) -> BreakerLayer {
        BreakerLayer { breakers }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            inner,
            breakers: self.breakers.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct BreakerService<S> {
    inner: S,
    breakers: Arc<Breakers>,
}

impl<S: CallService> BreakerService<S> {
    async fn guarded(self, call: Call) -> Result<Reply, CallError> {
        let endpoint = call.endpoint;
        let permit = self
            .breakers
            .for_url(&call.url)
            .try_acquire()
            .map_err(|open| {
                count_request(endpoint, "circuit_open");
                CallError::Stopped(open)
            })?;
        let outcome = self.inner.oneshot(call).await;
        match &outcome {
            Ok(reply) if reply.status.is_server_error() => permit.failure(),
            Ok(_) | Err(CallError::Unusable(_)) => permit.success(),
            Err(CallError::Unreachable(_) | CallError::Ambiguous(_)) => permit.failure(),
            // Not sent: says nothing about the host; frees a probe's slot.
            Err(CallError::Stopped(_)) => drop(permit),
        }
        outcome
    }
}

impl<S: CallService> Service<Call> for BreakerService<S> {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The inner service's readiness is awaited per call (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        Box::pin(self.clone().guarded(call))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use proxy_runner_domain::ports::GitHubError;

    use super::*;
    use crate::layers::testing::{Script, call_to, reply};

    fn layer(threshold: u32, cool_down: Duration) -> (Arc<Breakers>, BreakerLayer) {
        let breakers = Arc::new(Breakers::new(BreakerConfig {
            failure_threshold: threshold,
            cool_down,
        }));
        (breakers.clone(), BreakerLayer::new(breakers))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_failures_and_then_fails_fast() {
        let (breakers, layer) = layer(3, Duration::from_secs(30));
        let script = Script::new(|_, _| Ok(reply(StatusCode::SERVICE_UNAVAILABLE)));
        let service = layer.layer(script.service());
        let call = call_to("https://api.example.test/x");
        for _ in 0..3 {
            let answer = service.clone().oneshot(call.clone()).await.unwrap();
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(breakers.state(&call.url), CircuitState::Open);
        let err = service.clone().oneshot(call.clone()).await.unwrap_err();
        assert_eq!(
            err,
            CallError::Stopped(GitHubError::CircuitOpen {
                host: "api.example.test".into()
            })
        );
        assert_eq!(script.calls(), 3, "an open circuit sends nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn other_hosts_keep_their_own_breaker() {
        let (breakers, layer) = layer(1, Duration::from_secs(30));
        let script = Script::new(|call, _| {
            Ok(reply(if call.url.host_str() == Some("down.test") {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            }))
        });
        let service = layer.layer(script.service());
        let down = call_to("https://down.test/x");
        let up = call_to("https://up.test:8443/x");
        service.clone().oneshot(down.clone()).await.unwrap();
        assert!(service.clone().oneshot(up.clone()).await.is_ok());
        assert_eq!(breakers.state(&down.url), CircuitState::Open);
        assert_eq!(breakers.state(&up.url), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_kinds_and_answers_are_told_apart() {
        let (breakers, layer) = layer(2, Duration::from_secs(30));
        // Unreachable, then too large (an answer: resets the count), then
        // ambiguous, then a call stopped before sending (no effect), then
        // ambiguous again: only the last two failures are consecutive.
        let script = Script::new(|_, i| match i {
            0 => Err(CallError::Unreachable(GitHubError::Transport(
                "refused".into(),
            ))),
            1 => Err(CallError::Unusable(GitHubError::Http {
                status: 200,
                message: "too large".into(),
            })),
            2 | 4 => Err(CallError::Ambiguous(GitHubError::Timeout("slow".into()))),
            _ => Err(CallError::Stopped(GitHubError::Timeout("deadline".into()))),
        });
        let service = layer.layer(script.service());
        let call = call_to("https://api.example.test/x");
        for expected in [
            CircuitState::Closed,
            CircuitState::Closed,
            CircuitState::Closed,
            CircuitState::Closed,
            CircuitState::Open,
        ] {
            assert!(service.clone().oneshot(call.clone()).await.is_err());
            assert_eq!(breakers.state(&call.url), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_after_the_cool_down_closes_it_again() {
        let (breakers, layer) = layer(1, Duration::from_secs(10));
        let script = Script::new(|_, i| {
            Ok(reply(if i == 0 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }))
        });
        let service = layer.layer(script.service());
        let call = call_to("https://api.example.test/x");
        service.clone().oneshot(call.clone()).await.unwrap();
        assert_eq!(breakers.state(&call.url), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(breakers.state(&call.url), CircuitState::HalfOpen);
        service.clone().oneshot(call.clone()).await.unwrap();
        assert_eq!(breakers.state(&call.url), CircuitState::Closed);
        assert_eq!(script.calls(), 2);
    }
}
