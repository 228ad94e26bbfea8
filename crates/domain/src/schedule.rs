//! "What to do next": which queued jobs to start within the caps, and when to
//! retry a failed start. Pure functions; the orchestrator's loop feeds them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A queued job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: Uuid,
    pub repository: String,
    pub created_at: DateTime<Utc>,
    pub not_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Live containers across all repositories.
    pub global: usize,
    /// Live containers of one repository.
    pub per_repository: usize,
}

/// Picks the jobs to start now.
///
/// Jobs of one repository start oldest first; repositories take turns (round
/// robin, the repository with the oldest waiting job first), so one busy
/// repository cannot starve the others. `live` counts containers already
/// running per repository (lower-cased names).
pub fn pick_jobs_to_start(
    waiting: &[Waiting],
    live: &BTreeMap<String, usize>,
    caps: Caps,
    now: DateTime<Utc>,
) -> Vec<Uuid> {
    let mut free_global = caps.global.saturating_sub(live.values().sum());
    if free_global == 0 {
        return Vec::new();
    }
    let mut eligible: Vec<&Waiting> = waiting
        .iter()
        .filter(|w| w.not_before.is_none_or(|t| t <= now))
        .collect();
    eligible.sort_by_key(|w| (w.created_at, w.id));

    // Queues per repository, in order of each repository's oldest job.
    let mut order: Vec<String> = Vec::new();
    let mut queues: BTreeMap<String, VecDeque<Uuid>> = BTreeMap::new();
    for w in eligible {
        let repo = w.repository.to_ascii_lowercase();
        if !queues.contains_key(&repo) {
            order.push(repo.clone());
        }
        queues.entry(repo).or_default().push_back(w.id);
    }
    let mut free_repo: BTreeMap<&str, usize> = order
        .iter()
        .map(|r| {
            let used = live.get(r).copied().unwrap_or(0);
            (r.as_str(), caps.per_repository.saturating_sub(used))
        })
        .collect();

    let mut picked = Vec::new();
    loop {
        let mut progressed = false;
        for repo in &order {
            if free_global == 0 {
                return picked;
            }
            let free = free_repo
                .get_mut(repo.as_str())
                .expect("every repo has a slot count");
            if *free == 0 {
                continue;
            }
            if let Some(id) = queues.get_mut(repo).and_then(VecDeque::pop_front) {
                picked.push(id);
                *free -= 1;
                free_global -= 1;
                progressed = true;
            }
        }
        if !progressed {
            return picked;
        }
    }
}

/// Backoff before the next provisioning attempt: `base * 2^(attempt-1)`,
/// capped at `max`, with "full jitter" from `jitter` in `[0, 1)` applied to the
/// upper half so that a retry never comes sooner than half the nominal delay.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let nominal = base.saturating_mul(1u32 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    nominal.mul_f64(0.5 + 0.5 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn w(n: u128, repo: &str, created: i64) -> Waiting {
        Waiting {
            id: Uuid::from_u128(n),
            repository: repo.into(),
            created_at: t(created),
            not_before: None,
        }
    }

    fn ids(v: &[Uuid]) -> Vec<u128> {
        v.iter().map(|u| u.as_u128()).collect()
    }

    #[test]
    fn round_robin_across_repositories_fifo_within() {
        let waiting = vec![
            w(1, "a/a", 0),
            w(2, "a/a", 1),
            w(3, "a/a", 2),
            w(4, "b/b", 3),
            w(5, "c/c", 4),
            w(6, "b/b", 5),
        ];
        let caps = Caps {
            global: 10,
            per_repository: 10,
        };
        let got = pick_jobs_to_start(&waiting, &BTreeMap::new(), caps, t(10));
        assert_eq!(ids(&got), [1, 4, 5, 2, 6, 3]);
    }

    #[test]
    fn caps_are_respected() {
        let waiting: Vec<Waiting> = (0..20)
            .map(|i| w(i, if i % 2 == 0 { "a/a" } else { "b/b" }, i as i64))
            .collect();
        let live = BTreeMap::from([("a/a".to_string(), 1usize)]);
        let got = pick_jobs_to_start(
            &waiting,
            &live,
            Caps {
                global: 5,
                per_repository: 2,
            },
            t(100),
        );
        // a has 1 live -> 1 more; b gets 2; global 5 - 1 live = 4 free but repo caps bind.
        assert_eq!(ids(&got), [0, 1, 3]);
        let none = pick_jobs_to_start(
            &waiting,
            &live,
            Caps {
                global: 1,
                per_repository: 5,
            },
            t(100),
        );
        assert!(none.is_empty());
    }

    #[test]
    fn global_cap_cuts_mid_round() {
        let waiting = vec![w(1, "a/a", 0), w(2, "b/b", 1), w(3, "c/c", 2)];
        let got = pick_jobs_to_start(
            &waiting,
            &BTreeMap::new(),
            Caps {
                global: 2,
                per_repository: 9,
            },
            t(9),
        );
        assert_eq!(ids(&got), [1, 2]);
    }

    #[test]
    fn retries_wait_for_not_before() {
        let mut later = w(1, "a/a", 0);
        later.not_before = Some(t(50));
        let waiting = vec![later, w(2, "a/a", 1)];
        let caps = Caps {
            global: 9,
            per_repository: 9,
        };
        assert_eq!(
            ids(&pick_jobs_to_start(&waiting, &BTreeMap::new(), caps, t(10))),
            [2]
        );
        assert_eq!(
            ids(&pick_jobs_to_start(&waiting, &BTreeMap::new(), caps, t(50))),
            [1, 2]
        );
    }

    #[test]
    fn repository_case_does_not_split_caps() {
        let waiting = vec![w(1, "Octo/Repo", 0), w(2, "octo/repo", 1)];
        let got = pick_jobs_to_start(
            &waiting,
            &BTreeMap::new(),
            Caps {
                global: 9,
                per_repository: 1,
            },
            t(9),
        );
        assert_eq!(ids(&got), [1]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        assert_eq!(retry_delay(1, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(1, base, max, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(3, base, max, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(10, base, max, 1.0), max);
        assert_eq!(retry_delay(u32::MAX, base, max, 1.0), max);
    }
}
