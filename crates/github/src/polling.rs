//! Polling for queued jobs: the fallback for lost webhook deliveries, paced
//! so that it never eats the rate-limit budget the runner calls need.

use std::time::Duration;

use chrono::{DateTime, Utc};
use proxy_runner_domain::names::parse_repository;
use proxy_runner_domain::ports::{GitHubError, RunnerRegistry, WorkflowJobInfo};

use crate::client::GitHubClient;
use crate::rate_limit::RateLimit;

/// Below this share of the budget left, polling slows down.
pub const LOW_BUDGET_FRACTION: f64 = 0.10;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("configured repository {0:?} is not \"owner/name\"")]
    InvalidRepository(String),
    #[error("polling {repository}: {source}")]
    GitHub {
        repository: String,
        #[source]
        source: GitHubError,
    },
}

/// How long to wait before the next poll.
///
/// With plenty of budget: `interval`. Below 10 % left: `interval` stretched
/// by 10 % / share-left (at 1 % left, ten times as long), but never past
/// the reset, when a fresh window starts. With nothing left: until the reset
/// (plus a second for clock skew).
pub fn pacing(interval: Duration, rate: Option<&RateLimit>, now: DateTime<Utc>) -> Duration {
    let Some(rl) = rate else {
        return interval;
    };
    let until_reset = rl.until_reset(now);
    if until_reset.is_zero() {
        return interval;
    }
    if rl.remaining == 0 {
        return interval.max(until_reset + Duration::from_secs(1));
    }
    let share = rl.remaining_fraction();
    if share >= LOW_BUDGET_FRACTION {
        return interval;
    }
    let stretched = interval.mul_f64(LOW_BUDGET_FRACTION / share);
    stretched.min(until_reset.max(interval))
}

/// Queued jobs of every configured repository (`owner/name`), through the
/// port so any [`RunnerRegistry`] works. Stops at the first error.
pub async fn poll_queued<R: RunnerRegistry + ?Sized>(
    registry: &R,
    repositories: &[String],
) -> Result<Vec<WorkflowJobInfo>, PollError> {
    let mut jobs: Vec<WorkflowJobInfo> = Vec::new();
    for full_name in repositories {
        let (owner, repo) = parse_repository(full_name)
            .map_err(|_| PollError::InvalidRepository(full_name.clone()))?;
        let found = registry
            .list_queued_jobs(owner, repo)
            .await
            .map_err(|source| PollError::GitHub {
                repository: full_name.clone(),
                source,
            })?;
        push_new(&mut jobs, found);
    }
    Ok(jobs)
}

/// What one round of polling found; a failing repository does not hide the
/// others' jobs.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub jobs: Vec<WorkflowJobInfo>,
    pub failures: Vec<PollError>,
}

/// Polls a fixed list of repositories with one client.
#[derive(Debug, Clone)]
pub struct Poller {
    client: GitHubClient,
    repositories: Vec<String>,
    interval: Duration,
    scan_in_progress_runs: bool,
}

impl Poller {
    pub fn new(client: GitHubClient, repositories: Vec<String>, interval: Duration) -> Self {
        Poller {
            client,
            repositories,
            interval,
            scan_in_progress_runs: false,
        }
    }

    /// Also look for queued jobs in runs that are already in progress (a
    /// run leaves `queued` as soon as its first job starts, so later jobs of
    /// a matrix are only found this way). Costs more requests.
    pub fn scan_in_progress_runs(mut self, enabled: bool) -> Self {
        self.scan_in_progress_runs = enabled;
        self
    }

    pub fn repositories(&self) -> &[String] {
        &self.repositories
    }

    /// One round over all repositories. Stops early when GitHub says to back
    /// off (rate limited, circuit open): more requests would only fail too.
    pub async fn poll_once(&self) -> PollOutcome {
        let mut outcome = PollOutcome::default();
        let mut statuses = vec!["queued"];
        if self.scan_in_progress_runs {
            statuses.push("in_progress");
        }
        'repos: for full_name in &self.repositories {
            let Ok((owner, repo)) = parse_repository(full_name) else {
                outcome
                    .failures
                    .push(PollError::InvalidRepository(full_name.clone()));
                continue;
            };
            for status in &statuses {
                match self
                    .client
                    .list_queued_jobs_in_runs(owner, repo, status)
                    .await
                {
                    Ok(found) => push_new(&mut outcome.jobs, found),
                    Err(source) => {
                        let stop = matches!(
                            source,
                            GitHubError::RateLimited { .. } | GitHubError::CircuitOpen { .. }
                        );
                        tracing::warn!(repository = %full_name, error = %source, "polling failed");
                        outcome.failures.push(PollError::GitHub {
                            repository: full_name.clone(),
                            source,
                        });
                        if stop {
                            break 'repos;
                        }
                        continue 'repos;
                    }
                }
            }
        }
        outcome
    }

    /// Delay before the next round, from the configured interval and the
    /// last budget GitHub reported.
    pub fn next_delay(&self) -> Duration {
        pacing(
            self.interval,
            self.client.rate_limit("core").as_ref(),
            Utc::now(),
        )
    }
}

fn push_new(into: &mut Vec<WorkflowJobInfo>, found: Vec<WorkflowJobInfo>) {
    for job in found {
        if !into.iter().any(|j| j.id == job.id) {
            into.push(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    fn rl(limit: u64, remaining: u64, reset_in_secs: i64) -> RateLimit {
        RateLimit {
            limit,
            remaining,
            used: limit - remaining,
            reset: now() + chrono::TimeDelta::seconds(reset_in_secs),
            resource: "core".into(),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn plenty_of_budget_keeps_the_interval() {
        assert_eq!(pacing(MIN, None, now()), MIN);
        assert_eq!(pacing(MIN, Some(&rl(5000, 4999, 3600)), now()), MIN);
        assert_eq!(pacing(MIN, Some(&rl(5000, 500, 3600)), now()), MIN);
    }

    #[test]
    fn low_budget_stretches_proportionally() {
        // 5 % left: twice the interval.
        assert_eq!(pacing(MIN, Some(&rl(5000, 250, 3600)), now()), 2 * MIN);
        // 1 % left: ten times.
        assert_eq!(pacing(MIN, Some(&rl(5000, 50, 3600)), now()), 10 * MIN);
        // Less left waits longer than more left.
        let a = pacing(MIN, Some(&rl(5000, 100, 3600)), now());
        let b = pacing(MIN, Some(&rl(5000, 400, 3600)), now());
        assert!(a > b, "{a:?} vs {b:?}");
    }

    #[test]
    fn never_waits_past_the_reset_while_budget_remains() {
        // 1 % left would mean 10 min, but the window resets in 3 min.
        assert_eq!(
            pacing(MIN, Some(&rl(5000, 50, 180)), now()),
            Duration::from_secs(180)
        );
        // ...but never shorter than the interval.
        assert_eq!(pacing(MIN, Some(&rl(5000, 50, 10)), now()), MIN);
    }

    #[test]
    fn exhausted_waits_until_reset() {
        assert_eq!(
            pacing(MIN, Some(&rl(5000, 0, 900)), now()),
            Duration::from_secs(901)
        );
        assert_eq!(pacing(MIN, Some(&rl(5000, 0, 5)), now()), MIN);
        // A reset in the past means a fresh window already.
        assert_eq!(pacing(MIN, Some(&rl(5000, 0, -5)), now()), MIN);
    }

    #[test]
    fn zero_limit_does_not_divide_by_zero() {
        assert_eq!(pacing(MIN, Some(&rl(0, 0, 0)), now()), MIN);
    }
}
