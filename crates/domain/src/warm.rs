//! Warm runners: per label set and repository, runners registered at GitHub
//! and waiting in started containers before any job asks for them, so that
//! a queued job is picked up without a cold start. Their names, their
//! container, and the two decisions, pure: which queued jobs wait for a
//! warm runner instead of a cold start (`hold_for_warm`), and which warm
//! runners to start and to recycle (`plan`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::labels::LabelSet;
use crate::ports::{ContainerSpec, EnvVar, StdinSecret, labels as label_keys};
use crate::runner_plan::{Placement, RUNNER_BASE_LABELS, repository_labels};
use crate::schedule::Caps;

const PREFIX: &str = "warm-";

/// The key of a label set on warm containers (`proxy-runner.warm`) and in
/// metrics: its labels, lower-case, comma-joined.
pub fn pool_key(labels: &LabelSet) -> String {
    labels
        .as_slice()
        .iter()
        .map(|l| l.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// The name of warm runner `id`, on GitHub and on the engine alike:
/// `warm-{id}`. It names no job: the job is whichever GitHub gives it.
pub fn warm_name(id: Uuid) -> String {
    format!("{PREFIX}{id}")
}

/// The warm runner a runner or container name is, if any (the engine lists
/// container names with a leading `/`).
pub fn warm_id(name: &str) -> Option<Uuid> {
    let rest = name.trim_start_matches('/').strip_prefix(PREFIX)?;
    (rest.len() == 36).then(|| Uuid::parse_str(rest).ok())?
}

/// One warm runner to start: its label set and where it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRunnerSpec {
    pub id: Uuid,
    pub pool: String,
    pub repository: String,
    /// The label set's labels plus the ephemeral runner's base labels.
    pub labels: LabelSet,
    pub since: DateTime<Utc>,
}

impl WarmRunnerSpec {
    pub fn new(
        id: Uuid,
        pool_labels: &LabelSet,
        repository: &str,
        since: DateTime<Utc>,
    ) -> WarmRunnerSpec {
        let mut labels = LabelSet::default();
        labels.extend(RUNNER_BASE_LABELS);
        labels.extend(pool_labels.as_slice().iter().map(String::as_str));
        WarmRunnerSpec {
            id,
            pool: pool_key(pool_labels),
            repository: repository.to_ascii_lowercase(),
            labels,
            since,
        }
    }

    pub fn name(&self) -> String {
        warm_name(self.id)
    }

    /// The container: like a job's runner container, but it names no job
    /// (no `proxy-runner.job-id`); it carries its label set and the time it
    /// was started, so that a restarted orchestrator finds its warm runners
    /// and their ages on the engine. The credential goes on standard input.
    pub fn container(&self, placement: Placement, credential: StdinSecret) -> ContainerSpec {
        let mut labels = repository_labels(&self.repository, &placement.instance);
        labels.insert(label_keys::WARM.to_string(), self.pool.clone());
        labels.insert(
            label_keys::WARM_SINCE.to_string(),
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        ContainerSpec {
            name: self.name(),
            image: placement.image,
            env: vec![
                EnvVar::plain("RUNNER_NAME", self.name()),
                EnvVar::plain("RUNNER_LABELS", self.labels.as_slice().join(",")),
                EnvVar::plain("GITHUB_URL", placement.runner_url),
            ],
            stdin_secrets: vec![credential],
            command: None,
            labels,
            network: placement.network,
            hardening: placement.hardening,
            auto_remove: true,
        }
    }
}

/// How many warm runners a label set keeps waiting for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmTarget {
    pub pool: String,
    /// Lower-case `owner/name`.
    pub repository: String,
    pub count: usize,
}

/// Where a warm runner is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarmState {
    /// Credential minted or container being created: counted against the
    /// caps like an in-flight start.
    Starting,
    /// Registered and waiting for a job.
    Idle,
    /// Took a job: no longer warm, its container is the job's.
    Taken,
    /// Being deregistered and stopped.
    Recycling,
}

/// A warm runner as the decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRunner {
    pub id: Uuid,
    pub pool: String,
    pub repository: String,
    pub since: DateTime<Utc>,
    pub state: WarmState,
}

impl WarmRunner {
    fn available(&self) -> bool {
        matches!(self.state, WarmState::Starting | WarmState::Idle)
    }

    fn serves(&self, pool: &str, repository: &str) -> bool {
        self.pool == pool && self.repository.eq_ignore_ascii_case(repository)
    }
}

/// A queued job a warm runner could take: its label set and repository, and
/// since when it has been waiting for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmDemand {
    pub job: Uuid,
    pub pool: String,
    pub repository: String,
    /// When the job was first seen waiting (its place in line, too).
    pub since: DateTime<Utc>,
}

/// The queued jobs that wait for a warm runner instead of getting a cold
/// start now: each takes one available (idle or starting) warm runner of its
/// label set and repository, oldest job first, for at most `wait`; after
/// that it falls back to a cold start (and a warm runner may still take it
/// first: GitHub gives a job to any matching idle runner).
pub fn hold_for_warm(
    demand: &[WarmDemand],
    runners: &[WarmRunner],
    now: DateTime<Utc>,
    wait: Duration,
) -> HashSet<Uuid> {
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    let mut free: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in runners.iter().filter(|r| r.available()) {
        *free
            .entry((r.pool.clone(), r.repository.to_ascii_lowercase()))
            .or_default() += 1;
    }
    let mut order: Vec<&WarmDemand> = demand.iter().collect();
    order.sort_by_key(|d| (d.since, d.job));
    let mut held = HashSet::new();
    for d in order {
        if now - d.since >= wait {
            continue;
        }
        let key = (d.pool.clone(), d.repository.to_ascii_lowercase());
        if let Some(n) = free.get_mut(&key).filter(|n| **n > 0) {
            *n -= 1;
            held.insert(d.job);
        }
    }
    held
}

/// What the inventory and the caps look like in one scheduling round.
#[derive(Debug, Clone)]
pub struct WarmRound<'a> {
    pub targets: &'a [WarmTarget],
    pub runners: &'a [WarmRunner],
    /// Jobs held for a warm runner this round (`hold_for_warm`), by label
    /// set and repository: the warm runners they count on are not recycled
    /// to make room.
    pub held: &'a [(String, String)],
    /// Live containers per repository (lower-case), counting starts under
    /// way and the cold starts this round picked.
    pub live: &'a BTreeMap<String, usize>,
    pub caps: Caps,
    /// Repositories (lower-case) of queued jobs that are due, not held, and
    /// got no start this round: the caps are full. One entry per job.
    pub starved: &'a [String],
    pub now: DateTime<Utc>,
    pub max_age: Duration,
}

/// Why a warm runner is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recycle {
    /// Idle past `warm_max_age`.
    MaxAge,
    /// More than the target waits (the target went down, or a restart found
    /// more than it asks for), or its label set or repository is no longer
    /// configured warm.
    Surplus,
    /// A queued job needs its place under the caps.
    Capacity,
}

impl Recycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Recycle::MaxAge => "max_age",
            Recycle::Surplus => "surplus",
            Recycle::Capacity => "capacity",
        }
    }
}

/// What to do with the warm inventory this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmPlan {
    /// (label set, repository) of each warm runner to start.
    pub start: Vec<(String, String)>,
    pub recycle: Vec<(Uuid, Recycle)>,
}

/// Which warm runners to start and which to recycle.
///
/// Queued jobs come first: while a job is starved by the caps, no warm
/// runner starts, and idle warm runners no held job counts on are recycled
/// to make room (one per starved job, counting recycles already under way).
/// Otherwise idle runners past `max_age` and beyond their target are
/// recycled, and each target is topped up within the caps, label sets and
/// repositories taking turns.
pub fn plan(round: &WarmRound<'_>) -> WarmPlan {
    let mut out = WarmPlan::default();
    let max_age = chrono::Duration::from_std(round.max_age).unwrap_or(chrono::Duration::MAX);
    let mut recycled: HashSet<Uuid> = HashSet::new();
    fn recycle(out: &mut WarmPlan, recycled: &mut HashSet<Uuid>, id: Uuid, why: Recycle) {
        if recycled.insert(id) {
            out.recycle.push((id, why));
        }
    }

    // Idle runners, oldest first.
    let mut idle: Vec<&WarmRunner> = round
        .runners
        .iter()
        .filter(|r| r.state == WarmState::Idle)
        .collect();
    idle.sort_by_key(|r| (r.since, r.id));

    for r in &idle {
        if round.now - r.since >= max_age {
            recycle(&mut out, &mut recycled, r.id, Recycle::MaxAge);
        }
    }
    // Beyond the target (or no longer configured): the oldest idle ones go.
    let target = |pool: &str, repo: &str| {
        round
            .targets
            .iter()
            .find(|t| t.pool == pool && t.repository.eq_ignore_ascii_case(repo))
            .map_or(0, |t| t.count)
    };
    let mut counted: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in round.runners.iter().filter(|r| r.available()) {
        *counted
            .entry((r.pool.clone(), r.repository.to_ascii_lowercase()))
            .or_default() += 1;
    }
    for ((pool, repo), n) in &counted {
        let mut surplus = n.saturating_sub(target(pool, repo));
        for r in idle.iter().filter(|r| r.serves(pool, repo)) {
            if surplus == 0 {
                break;
            }
            if !recycled.contains(&r.id) {
                recycle(&mut out, &mut recycled, r.id, Recycle::Surplus);
            }
            surplus -= 1;
        }
    }

    // Room for starved jobs: recycles under way count first. A job held
    // back by its own repository's cap is helped only by that repository's
    // runners, and keeps warm runners from starting there only; a job held
    // back by the global cap keeps them from starting anywhere.
    let mut global_starved = false;
    let mut repo_starved: HashSet<String> = HashSet::new();
    if !round.starved.is_empty() {
        let mut pending: Vec<String> = round
            .runners
            .iter()
            .filter(|r| r.state == WarmState::Recycling)
            .map(|r| r.repository.to_ascii_lowercase())
            .collect();
        pending.extend(
            round
                .runners
                .iter()
                .filter(|r| recycled.contains(&r.id))
                .map(|r| r.repository.to_ascii_lowercase()),
        );
        // Idle runners no held job counts on, by label set and repository.
        let mut spare: Vec<&WarmRunner> = Vec::new();
        let mut needed: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (pool, repo) in round.held {
            *needed
                .entry((pool.clone(), repo.to_ascii_lowercase()))
                .or_default() += 1;
        }
        // Starting runners are counted on first: they cannot be recycled.
        for r in round
            .runners
            .iter()
            .filter(|r| r.state == WarmState::Starting)
        {
            if let Some(n) = needed
                .get_mut(&(r.pool.clone(), r.repository.to_ascii_lowercase()))
                .filter(|n| **n > 0)
            {
                *n -= 1;
            }
        }
        for r in idle.iter().rev().filter(|r| !recycled.contains(&r.id)) {
            let key = (r.pool.clone(), r.repository.to_ascii_lowercase());
            match needed.get_mut(&key).filter(|n| **n > 0) {
                Some(n) => *n -= 1,
                None => spare.push(r),
            }
        }
        // `spare` is youngest first; the oldest go first.
        spare.reverse();
        // The jobs before this one in line take their repository's places.
        let mut planned = round.live.clone();
        for repo in round.starved {
            let repo = repo.to_ascii_lowercase();
            let used = planned.entry(repo.clone()).or_default();
            let same_repo_only = *used >= round.caps.per_repository;
            if same_repo_only {
                repo_starved.insert(repo.clone());
            } else {
                global_starved = true;
                *used += 1;
            }
            let pending_at = pending.iter().position(|p| !same_repo_only || *p == repo);
            if let Some(i) = pending_at {
                pending.remove(i);
                continue;
            }
            let spare_at = spare
                .iter()
                .position(|r| !same_repo_only || r.repository.eq_ignore_ascii_case(&repo));
            if let Some(i) = spare_at {
                let r = spare.remove(i);
                recycle(&mut out, &mut recycled, r.id, Recycle::Capacity);
            }
        }
        if global_starved {
            return out;
        }
    }

    // Top up each target within the caps, taking turns.
    let mut live = round.live.clone();
    let mut free_global = round
        .caps
        .global
        .saturating_sub(live.values().sum::<usize>());
    let mut deficits: Vec<(&WarmTarget, usize)> = round
        .targets
        .iter()
        .map(|t| {
            let have = round
                .runners
                .iter()
                .filter(|r| {
                    r.available() && r.serves(&t.pool, &t.repository) && !recycled.contains(&r.id)
                })
                .count();
            (t, t.count.saturating_sub(have))
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    loop {
        let mut progressed = false;
        for (t, deficit) in deficits.iter_mut() {
            if free_global == 0 {
                return out;
            }
            let repo = t.repository.to_ascii_lowercase();
            let used = live.entry(repo.clone()).or_default();
            if *deficit == 0 || *used >= round.caps.per_repository || repo_starved.contains(&repo) {
                continue;
            }
            *used += 1;
            *deficit -= 1;
            free_global -= 1;
            progressed = true;
            out.start.push((t.pool.clone(), repo));
        }
        if !progressed {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn runner(n: u128, pool: &str, repo: &str, since: i64, state: WarmState) -> WarmRunner {
        WarmRunner {
            id: Uuid::from_u128(n),
            pool: pool.into(),
            repository: repo.into(),
            since: t(since),
            state,
        }
    }

    fn demand(n: u128, pool: &str, repo: &str, since: i64) -> WarmDemand {
        WarmDemand {
            job: Uuid::from_u128(n),
            pool: pool.into(),
            repository: repo.into(),
            since: t(since),
        }
    }

    fn target(pool: &str, repo: &str, count: usize) -> WarmTarget {
        WarmTarget {
            pool: pool.into(),
            repository: repo.into(),
            count,
        }
    }

    fn ids(set: &HashSet<Uuid>) -> Vec<u128> {
        let mut v: Vec<u128> = set.iter().map(|u| u.as_u128()).collect();
        v.sort();
        v
    }

    #[test]
    fn names_say_warm_and_nothing_else_is_warm() {
        let id = Uuid::from_u128(7);
        assert_eq!(warm_name(id), format!("warm-{id}"));
        assert_eq!(warm_id(&warm_name(id)), Some(id));
        assert_eq!(warm_id(&format!("/warm-{id}")), Some(id));
        assert_eq!(warm_id(&format!("warm-{id}-x")), None);
        assert_eq!(warm_id(&format!("ephemeral-{id}")), None);
        assert_eq!(warm_id(&format!("runner-{id}")), None);
        assert_eq!(warm_id("warm-not-a-uuid"), None);
        assert_eq!(
            crate::runner_plan::runner_owner(&warm_name(id)),
            None,
            "a warm runner is no job's runner"
        );
    }

    #[test]
    fn the_container_names_its_label_set_and_start_but_no_job_and_no_secret() {
        use crate::ports::{EnvValue, Hardening};
        use secrecy::SecretString;
        let labels = LabelSet::parse_list(["self-hosted", "Linux"]).unwrap();
        let spec = WarmRunnerSpec::new(Uuid::from_u128(3), &labels, "Octo/Repo", t(0));
        let c = spec.container(
            Placement {
                image: "img".into(),
                hardening: Hardening::default(),
                network: "net".into(),
                instance: "i1".into(),
                runner_url: "https://github.com/Octo/Repo".into(),
            },
            StdinSecret::new(
                crate::runner_plan::JITCONFIG_ENV,
                SecretString::from("s3cret"),
            ),
        );
        assert_eq!(c.name, warm_name(spec.id));
        assert_eq!(c.labels[label_keys::WARM], "self-hosted,linux");
        assert_eq!(c.labels[label_keys::REPOSITORY], "octo/repo");
        assert_eq!(c.labels[label_keys::INSTANCE], "i1");
        assert_eq!(c.labels[label_keys::WARM_SINCE], "2023-11-14T22:13:20.000Z");
        assert!(!c.labels.contains_key(label_keys::JOB_ID));
        assert!(c.auto_remove);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(c.env.iter().all(|e| matches!(e.value, EnvValue::Plain(_))));
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .map(|e| match &e.value {
                EnvValue::Plain(v) => (e.name.as_str(), v.as_str()),
                EnvValue::Secret(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            env["RUNNER_LABELS"],
            "ephemeral,container,self-hosted,Linux"
        );
        assert_eq!(env["RUNNER_NAME"], warm_name(spec.id));
    }

    #[test]
    fn jobs_wait_for_warm_runners_of_their_set_and_repository_one_each_for_a_while() {
        let wait = Duration::from_secs(10);
        let runners = [
            runner(1, "a", "o/r", 0, WarmState::Idle),
            runner(2, "a", "o/r", 0, WarmState::Starting),
            runner(3, "a", "o/other", 0, WarmState::Recycling),
            runner(4, "b", "o/r", 0, WarmState::Taken),
        ];
        struct Case {
            name: &'static str,
            demand: Vec<WarmDemand>,
            now: i64,
            held: Vec<u128>,
        }
        let cases = [
            Case {
                name: "one job, an idle runner",
                demand: vec![demand(10, "a", "o/r", 100)],
                now: 101,
                held: vec![10],
            },
            Case {
                name: "the repository's case does not matter",
                demand: vec![demand(10, "a", "O/R", 100)],
                now: 101,
                held: vec![10],
            },
            Case {
                name: "three jobs, two available runners: the oldest two wait",
                demand: vec![
                    demand(12, "a", "o/r", 102),
                    demand(10, "a", "o/r", 100),
                    demand(11, "a", "o/r", 101),
                ],
                now: 103,
                held: vec![10, 11],
            },
            Case {
                name: "past the wait: a cold start, and the runner goes to the next",
                demand: vec![demand(10, "a", "o/r", 0), demand(11, "a", "o/r", 100)],
                now: 101,
                held: vec![11],
            },
            Case {
                name: "exactly at the wait: a cold start",
                demand: vec![demand(10, "a", "o/r", 100)],
                now: 110,
                held: vec![],
            },
            Case {
                name: "another repository's runner, or one being recycled, is no use",
                demand: vec![demand(10, "a", "o/other", 100)],
                now: 101,
                held: vec![],
            },
            Case {
                name: "another label set's runner, or one that took a job, is no use",
                demand: vec![demand(10, "b", "o/r", 100)],
                now: 101,
                held: vec![],
            },
        ];
        for c in cases {
            let held = hold_for_warm(&c.demand, &runners, t(c.now), wait);
            assert_eq!(ids(&held), c.held, "{}", c.name);
        }
    }

    fn caps(global: usize, per_repository: usize) -> Caps {
        Caps {
            global,
            per_repository,
        }
    }

    struct PlanCase {
        name: &'static str,
        targets: Vec<WarmTarget>,
        runners: Vec<WarmRunner>,
        held: Vec<(&'static str, &'static str)>,
        live: Vec<(&'static str, usize)>,
        caps: Caps,
        starved: Vec<&'static str>,
        now: i64,
        start: Vec<(&'static str, &'static str)>,
        recycle: Vec<(u128, Recycle)>,
    }

    #[test]
    fn plans_start_and_recycle_warm_runners_within_the_caps() {
        use Recycle::*;
        use WarmState::*;
        let cases = vec![
            PlanCase {
                name: "an empty inventory is filled",
                targets: vec![target("a", "o/r", 2)],
                runners: vec![],
                held: vec![],
                live: vec![],
                caps: caps(10, 5),
                starved: vec![],
                now: 0,
                start: vec![("a", "o/r"), ("a", "o/r")],
                recycle: vec![],
            },
            PlanCase {
                name: "starting and idle runners count; taken and recycling ones do not",
                targets: vec![target("a", "o/r", 3)],
                runners: vec![
                    runner(1, "a", "o/r", 0, Starting),
                    runner(2, "a", "o/r", 0, Idle),
                    runner(3, "a", "o/r", 0, Taken),
                    runner(4, "a", "o/r", 0, Recycling),
                ],
                held: vec![],
                live: vec![("o/r", 4)],
                caps: caps(10, 5),
                starved: vec![],
                now: 1,
                start: vec![("a", "o/r")],
                recycle: vec![],
            },
            PlanCase {
                name: "the per-repository cap holds",
                targets: vec![target("a", "o/r", 3)],
                runners: vec![],
                held: vec![],
                live: vec![("o/r", 4)],
                caps: caps(10, 5),
                starved: vec![],
                now: 0,
                start: vec![("a", "o/r")],
                recycle: vec![],
            },
            PlanCase {
                name: "the global cap holds, and targets take turns",
                targets: vec![target("a", "o/r", 2), target("b", "o/s", 2)],
                runners: vec![],
                held: vec![],
                live: vec![("o/x", 7)],
                caps: caps(10, 5),
                starved: vec![],
                now: 0,
                start: vec![("a", "o/r"), ("b", "o/s"), ("a", "o/r")],
                recycle: vec![],
            },
            PlanCase {
                name: "idle past the max age: recycled and replaced",
                targets: vec![target("a", "o/r", 1)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![],
                live: vec![("o/r", 1)],
                caps: caps(10, 5),
                starved: vec![],
                now: 3600,
                start: vec![("a", "o/r")],
                recycle: vec![(1, MaxAge)],
            },
            PlanCase {
                name: "younger than the max age: kept",
                targets: vec![target("a", "o/r", 1)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![],
                live: vec![("o/r", 1)],
                caps: caps(10, 5),
                starved: vec![],
                now: 3599,
                start: vec![],
                recycle: vec![],
            },
            PlanCase {
                name: "beyond the target or no longer configured: the oldest idle go",
                targets: vec![target("a", "o/r", 1)],
                runners: vec![
                    runner(1, "a", "o/r", 20, Idle),
                    runner(2, "a", "o/r", 10, Idle),
                    runner(3, "a", "o/r", 30, Starting),
                    runner(4, "gone", "o/r", 0, Idle),
                ],
                held: vec![],
                live: vec![("o/r", 4)],
                caps: caps(10, 5),
                starved: vec![],
                now: 40,
                start: vec![],
                recycle: vec![(2, Surplus), (1, Surplus), (4, Surplus)],
            },
            PlanCase {
                name: "a starved job: no start, an idle runner nobody waits for makes room",
                targets: vec![target("a", "o/r", 2)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![],
                live: vec![("o/r", 2), ("o/s", 3)],
                caps: caps(5, 5),
                starved: vec!["o/s"],
                now: 10,
                start: vec![],
                recycle: vec![(1, Capacity)],
            },
            PlanCase {
                name: "a recycle under way already makes that room",
                targets: vec![target("a", "o/r", 2)],
                runners: vec![
                    runner(1, "a", "o/r", 0, Idle),
                    runner(2, "a", "o/r", 0, Recycling),
                ],
                held: vec![],
                live: vec![("o/r", 2), ("o/s", 3)],
                caps: caps(5, 5),
                starved: vec!["o/s"],
                now: 10,
                start: vec![],
                recycle: vec![],
            },
            PlanCase {
                name: "a runner a held job counts on is not recycled for room",
                targets: vec![target("a", "o/r", 1)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![("a", "o/r")],
                live: vec![("o/r", 1), ("o/s", 4)],
                caps: caps(5, 5),
                starved: vec!["o/s"],
                now: 10,
                start: vec![],
                recycle: vec![],
            },
            PlanCase {
                name: "a full repository is made room in by its own runners only",
                targets: vec![target("a", "o/r", 1), target("a", "o/s", 1)],
                runners: vec![
                    runner(1, "a", "o/r", 0, Idle),
                    runner(2, "a", "o/s", 5, Idle),
                ],
                held: vec![],
                live: vec![("o/r", 1), ("o/s", 2)],
                caps: caps(10, 2),
                starved: vec!["o/s"],
                now: 10,
                start: vec![],
                recycle: vec![(2, Capacity)],
            },
            PlanCase {
                name: "jobs behind their repository's full cap: room only from its own runners, and no warm start there",
                targets: vec![target("a", "o/r", 2), target("a", "o/s", 1)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![],
                live: vec![("o/r", 2), ("o/x", 2)],
                caps: caps(10, 2),
                starved: vec!["o/x", "o/r"],
                now: 10,
                start: vec![("a", "o/s")],
                recycle: vec![(1, Capacity)],
            },
            PlanCase {
                name: "two starved jobs of one repository, one place left in it: one runner recycled",
                targets: vec![target("a", "o/r", 2)],
                runners: vec![
                    runner(1, "a", "o/r", 0, Idle),
                    runner(2, "a", "o/r", 1, Idle),
                ],
                held: vec![],
                live: vec![("o/r", 2), ("o/s", 1)],
                caps: caps(3, 2),
                starved: vec!["o/s", "o/s"],
                now: 10,
                start: vec![],
                recycle: vec![(1, Capacity)],
            },
            PlanCase {
                name: "two starved jobs, one spare runner: one recycled",
                targets: vec![target("a", "o/r", 1)],
                runners: vec![runner(1, "a", "o/r", 0, Idle)],
                held: vec![],
                live: vec![("o/r", 1), ("o/s", 1)],
                caps: caps(2, 5),
                starved: vec!["o/s", "o/s"],
                now: 10,
                start: vec![],
                recycle: vec![(1, Capacity)],
            },
        ];
        for c in cases {
            let live: BTreeMap<String, usize> =
                c.live.iter().map(|(r, n)| (r.to_string(), *n)).collect();
            let held: Vec<(String, String)> = c
                .held
                .iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect();
            let starved: Vec<String> = c.starved.iter().map(|s| s.to_string()).collect();
            let got = plan(&WarmRound {
                targets: &c.targets,
                runners: &c.runners,
                held: &held,
                live: &live,
                caps: c.caps,
                starved: &starved,
                now: t(c.now),
                max_age: Duration::from_secs(3600),
            });
            let start: Vec<(String, String)> = c
                .start
                .iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect();
            let recycle: Vec<(Uuid, Recycle)> = c
                .recycle
                .iter()
                .map(|(n, why)| (Uuid::from_u128(*n), *why))
                .collect();
            assert_eq!(got.start, start, "{}", c.name);
            assert_eq!(got.recycle, recycle, "{}", c.name);
        }
    }
}
