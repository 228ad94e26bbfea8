//! Why a job's provisioning did not lead to a running job, and the one rule
//! that decides what happens next: fail it, or queue it again (now, after a
//! hand-off grace, or after a backoff), using an attempt or not.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ports::{BackendError, GitHubError};
use crate::schedule::retry_delay;

/// What went wrong with one provisioning attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No retry can help (no such repository, image missing): the job fails.
    Fatal(String),
    /// A failed attempt: counts against `max_attempts`, retried after a backoff.
    Retry(String),
    /// Waiting for something outside (engine down, rate limit, GitHub could
    /// not be asked): retried after a backoff without using an attempt.
    Wait(String),
    /// Not a failure: the job's runner took another job whose own runner is
    /// free to take this one; wait `handoff_grace` before starting another.
    Handoff(String),
    /// Not a failure: the job's runner took another job that had no runner
    /// of its own, so none is free: start a new one at once.
    HandoffNow(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Fatal(m)
            | Failure::Retry(m)
            | Failure::Wait(m)
            | Failure::Handoff(m)
            | Failure::HandoffNow(m) => m,
        }
    }

    /// Whether the attempt counts against `max_attempts`.
    pub fn uses_attempt(&self) -> bool {
        matches!(self, Failure::Fatal(_) | Failure::Retry(_))
    }

    /// Rate limits and an open breaker are waits; a name conflict at GitHub
    /// (an earlier runner still registered) is worth another attempt; other
    /// client errors cannot be fixed by retrying.
    pub fn from_github(e: &GitHubError) -> Self {
        match e {
            GitHubError::RateLimited { .. } | GitHubError::CircuitOpen { .. } => {
                Failure::Wait(e.to_string())
            }
            GitHubError::Conflict(_) => Failure::Retry(e.to_string()),
            _ if e.is_retryable() => Failure::Retry(e.to_string()),
            _ => Failure::Fatal(e.to_string()),
        }
    }

    /// An unreachable engine and a name still held by an exiting container
    /// are waits; a missing image is final (we never pull).
    pub fn from_backend(e: &BackendError) -> Self {
        match e {
            BackendError::DaemonUnreachable(_) | BackendError::NameConflict(_) => {
                Failure::Wait(e.to_string())
            }
            BackendError::ImageMissing { .. } => Failure::Fatal(e.to_string()),
            _ => Failure::Retry(e.to_string()),
        }
    }
}

/// The knobs of the requeue rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub handoff_grace: Duration,
}

/// What the rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Give up: the job fails.
    Fail,
    /// Queue again with this many attempts used, not before `not_before`.
    Queue {
        attempts: u32,
        not_before: Option<DateTime<Utc>>,
    },
}

/// The requeue rule. `attempts` counts the attempt that just failed;
/// `jitter` in `[0, 1]` spreads retries of many jobs apart.
pub fn decide(
    failure: &Failure,
    attempts: u32,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    jitter: f64,
) -> Requeue {
    let give_up = match failure {
        Failure::Fatal(_) => true,
        Failure::Retry(_) => attempts >= policy.max_attempts,
        _ => false,
    };
    if give_up {
        return Requeue::Fail;
    }
    // An attempt that did not count is given back.
    let attempts = if failure.uses_attempt() {
        attempts
    } else {
        attempts.saturating_sub(1)
    };
    let after = |d: Duration| Some(now + chrono::Duration::from_std(d).unwrap_or_default());
    let not_before = match failure {
        Failure::Handoff(_) => after(policy.handoff_grace),
        Failure::HandoffNow(_) => None,
        _ => after(retry_delay(
            attempts.max(1),
            policy.retry_base,
            policy.retry_max,
            jitter,
        )),
    };
    Requeue::Queue {
        attempts,
        not_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            handoff_grace: Duration::from_secs(10),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn fatal_fails_at_once_and_retries_fail_after_max_attempts() {
        let p = policy();
        assert_eq!(
            decide(&Failure::Fatal("x".into()), 1, &p, t(0), 0.0),
            Requeue::Fail
        );
        assert!(matches!(
            decide(&Failure::Retry("x".into()), 2, &p, t(0), 0.0),
            Requeue::Queue { attempts: 2, .. }
        ));
        assert_eq!(
            decide(&Failure::Retry("x".into()), 3, &p, t(0), 0.0),
            Requeue::Fail
        );
    }

    #[test]
    fn waits_and_handoffs_never_use_an_attempt_nor_fail() {
        let p = policy();
        for f in [
            Failure::Wait("w".into()),
            Failure::Handoff("h".into()),
            Failure::HandoffNow("n".into()),
        ] {
            match decide(&f, 3, &p, t(0), 0.5) {
                Requeue::Queue { attempts, .. } => assert_eq!(attempts, 2, "{f:?}"),
                Requeue::Fail => panic!("{f:?} must not fail the job"),
            }
        }
    }

    #[test]
    fn delays_follow_the_kind_of_failure() {
        let p = policy();
        let q = |f: Failure, jitter| match decide(&f, 1, &p, t(0), jitter) {
            Requeue::Queue { not_before, .. } => not_before,
            Requeue::Fail => panic!("failed"),
        };
        assert_eq!(q(Failure::Handoff("h".into()), 0.0), Some(t(10)));
        assert_eq!(q(Failure::HandoffNow("n".into()), 0.0), None);
        // Backoff of the first attempt: base 2 s, halved at jitter 0.
        assert_eq!(q(Failure::Retry("r".into()), 0.0), Some(t(1)));
        assert_eq!(q(Failure::Retry("r".into()), 1.0), Some(t(2)));
    }

    #[test]
    fn errors_of_the_ports_map_to_failures() {
        let until = t(100);
        assert!(matches!(
            Failure::from_github(&GitHubError::RateLimited { until }),
            Failure::Wait(_)
        ));
        assert!(matches!(
            Failure::from_github(&GitHubError::Conflict("name".into())),
            Failure::Retry(_)
        ));
        assert!(matches!(
            Failure::from_github(&GitHubError::NotFound("repo".into())),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            Failure::from_github(&GitHubError::Http {
                status: 502,
                message: "bad gateway".into()
            }),
            Failure::Retry(_)
        ));
        assert!(matches!(
            Failure::from_backend(&BackendError::ImageMissing { image: "i".into() }),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            Failure::from_backend(&BackendError::DaemonUnreachable("d".into())),
            Failure::Wait(_)
        ));
        assert!(matches!(
            Failure::from_backend(&BackendError::Other("o".into())),
            Failure::Retry(_)
        ));
    }
}
