//! A small circuit breaker per GitHub host, so that an outage turns into
//! fast failures instead of every caller waiting out its retries.
//!
//! closed --N consecutive failures--> open --cool-down--> half-open
//! half-open lets one probe through: success closes, failure re-opens.
//! Only 5xx, timeouts and transport errors count as failures; any other
//! answer proves the host is up. Time is tokio time, so tests can pause it.

use std::sync::{Arc, Mutex, MutexGuard};

use proxy_runner_domain::ports::GitHubError;
use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    host: String,
    config: BreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(host: impl Into<String>, config: BreakerConfig) -> Arc<Self> {
        let breaker = Arc::new(CircuitBreaker {
            host: host.into(),
            config,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
        });
        breaker.publish(CircuitState::Closed);
        breaker
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The current state (an open breaker whose cool-down is over reports
    /// half-open: the next call will be the probe).
    pub fn state(&self) -> CircuitState {
        let mut state = self.lock();
        self.advance(&mut state);
        Self::public(&state)
    }

    /// Asks to send a request. Fails fast with `CircuitOpen` while open, and
    /// while half-open with a probe already in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, GitHubError> {
        let mut state = self.lock();
        self.advance(&mut state);
        let probe = match &mut *state {
            State::Closed { .. } => false,
            State::HalfOpen { probe_in_flight } if !*probe_in_flight => {
                *probe_in_flight = true;
                true
            }
            State::HalfOpen { .. } | State::Open { .. } => {
                return Err(GitHubError::CircuitOpen {
                    host: self.host.clone(),
                });
            }
        };
        Ok(BreakerPermit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still valid.
        proxy_runner_domain::sync::lock(&self.state)
    }

    fn public(state: &State) -> CircuitState {
        match state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Moves open → half-open once the cool-down has passed.
    fn advance(&self, state: &mut State) {
        if let State::Open { until } = state
            && Instant::now() >= *until
        {
            *state = State::HalfOpen {
                probe_in_flight: false,
            };
            self.publish(CircuitState::HalfOpen);
            tracing::info!(host = %self.host, "GitHub circuit half-open: next call probes");
        }
    }

    fn on_success(&self, probe: bool) {
        let mut state = self.lock();
        let was = Self::public(&state);
        match &mut *state {
            State::Closed {
                consecutive_failures,
            } => *consecutive_failures = 0,
            // A late success from before the breaker opened changes nothing.
            State::Open { .. } => {}
            State::HalfOpen { .. } => {
                if probe {
                    *state = State::Closed {
                        consecutive_failures: 0,
                    };
                }
            }
        }
        let now = Self::public(&state);
        if now != was {
            self.publish(now);
            tracing::info!(host = %self.host, "GitHub circuit closed");
        }
    }

    fn on_failure(&self, probe: bool) {
        let mut state = self.lock();
        let was = Self::public(&state);
        match &mut *state {
            State::Closed {
                consecutive_failures,
            } => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.config.failure_threshold.max(1) {
                    *state = self.opened();
                }
            }
            State::Open { .. } => {}
            State::HalfOpen { .. } => {
                if probe {
                    *state = self.opened();
                }
            }
        }
        let now = Self::public(&state);
        if now != was {
            self.publish(now);
            tracing::warn!(
                host = %self.host,
                cool_down_secs = self.config.cool_down.as_secs_f64(),
                "GitHub circuit open: failing fast"
            );
        }
    }

    /// A probe that ended without an answer (caller gave up) frees the slot.
    fn on_abandoned(&self, probe: bool) {
        if probe {
            let mut state = self.lock();
            if let State::HalfOpen { probe_in_flight } = &mut *state {
                *probe_in_flight = false;
            }
        }
    }

    fn opened(&self) -> State {
        State::Open {
            until: Instant::now() + self.config.cool_down,
        }
    }

    fn publish(&self, state: CircuitState) {
        metrics::gauge!(m::CIRCUIT_STATE, "host" => self.host.clone()).set(state.gauge_value());
    }
}

/// Permission to send one request; report how it went.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    /// The host answered (any status but 5xx).
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.on_success(self.probe);
    }

    /// 5xx, timeout or transport error.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.on_abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(threshold: u32, cool_down_secs: u64) -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "api.example.test",
            BreakerConfig {
                failure_threshold: threshold,
                cool_down: Duration::from_secs(cool_down_secs),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 30);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success(); // resets the count
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        let err = b.try_acquire().unwrap_err();
        assert_eq!(
            err,
            GitHubError::CircuitOpen {
                host: "api.example.test".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_cool_down_lets_one_probe() {
        let b = breaker(1, 30);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(b.try_acquire().is_err());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_another_cool_down() {
        let b = breaker(2, 10);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        tokio::time::sleep(Duration::from_secs(10)).await;
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_the_slot() {
        let b = breaker(1, 5);
        b.try_acquire().unwrap().failure();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let probe = b.try_acquire().unwrap();
        drop(probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_results_of_non_probes_do_not_close_half_open() {
        let b = breaker(1, 5);
        let slow = b.try_acquire().unwrap(); // sent while closed
        b.try_acquire().unwrap().failure(); // opens
        tokio::time::sleep(Duration::from_secs(5)).await;
        slow.success();
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }
}
