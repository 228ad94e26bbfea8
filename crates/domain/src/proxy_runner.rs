//! The proxy runner's rules, pure: the names of the runners a supervisor
//! registers and which of them a runner token may act for, and what the
//! supervisor does after an actions runner listener exited.
//!
//! A supervisor named `{name}` (the runner its orchestrator token was issued
//! for) registers one runner per slot and job, named `{name}-{slot}-{n}`.
//! The token acts for `{name}` and for exactly these children, nothing else:
//! not `{name}-x` nor `{name}-0-1-2` (the children of another supervisor
//! called `{name}-0`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest runner name we register or accept as a supervisor's name
/// (GitHub's own limit is 64 characters).
pub const MAX_RUNNER_NAME: usize = 64;

/// Why a name cannot be a supervisor's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerNameError {
    #[error("a runner name must not be empty")]
    Empty,
    #[error(
        "runner name {0:?} is too long (the children {{name}}-{{slot}}-{{n}} must fit in {MAX_RUNNER_NAME} characters)"
    )]
    TooLong(String),
    #[error("runner name {0:?} may hold only letters, digits, '-', '_' and '.'")]
    BadCharacter(String),
}

/// Checks a supervisor's name: letters, digits, `-`, `_`, `.`, short enough
/// for its children's names (room for two numbers).
pub fn check_supervisor_name(name: &str) -> Result<(), RunnerNameError> {
    if name.is_empty() {
        return Err(RunnerNameError::Empty);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(RunnerNameError::BadCharacter(
            name.chars().take(80).collect(),
        ));
    }
    // "-{slot}-{n}": up to 3 + 8 characters in practice.
    if name.len() + 12 > MAX_RUNNER_NAME {
        return Err(RunnerNameError::TooLong(name.to_string()));
    }
    Ok(())
}

/// The runner a supervisor registers for `slot`, the `n`th time.
pub fn slot_runner_name(supervisor: &str, slot: u32, n: u64) -> String {
    format!("{supervisor}-{slot}-{n}")
}

/// Whether `runner` is `{supervisor}-{slot}-{n}` (decimal numbers, no
/// sign, no leading zeros).
pub fn is_slot_runner_of(supervisor: &str, runner: &str) -> bool {
    if supervisor.is_empty() {
        return false;
    }
    let Some(rest) = runner
        .strip_prefix(supervisor)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some((slot, n)) = rest.split_once('-') else {
        return false;
    };
    is_number(slot) && is_number(n)
}

fn is_number(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 19
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
}

/// Whether a runner token issued for `token_runner` acts for `runner`: the
/// runner itself, or one of its supervisor's slot runners.
pub fn token_acts_for(token_runner: &str, runner: &str) -> bool {
    token_runner == runner || is_slot_runner_of(token_runner, runner)
}

/// Return codes of `Runner.Listener` (actions/runner
/// `Constants.Runner.ReturnCode`).
pub mod return_code {
    pub const SUCCESS: i32 = 0;
    pub const TERMINATED_ERROR: i32 = 1;
    pub const RETRYABLE_ERROR: i32 = 2;
    pub const RUNNER_UPDATING: i32 = 3;
    pub const RUN_ONCE_RUNNER_UPDATING: i32 = 4;
    pub const SESSION_CONFLICT: i32 = 5;
    pub const CONFIGURATION_REFRESHED: i32 = 6;
    pub const RUNNER_VERSION_DEPRECATED: i32 = 7;
}

/// How a listener process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (a crash, or the OOM killer).
    Signal(i32),
}

/// Why a slot stops for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// 3 or 4: the runner wants to update itself; we run the listener
    /// directly and never follow a self-update.
    SelfUpdate,
    /// 7: GitHub no longer accepts this runner version.
    VersionDeprecated,
    /// 1 or 5 again and again without a job in between.
    KeepsTerminating,
}

impl StopReason {
    /// The message the supervisor logs and reports.
    pub fn message(self) -> &'static str {
        match self {
            StopReason::SelfUpdate => {
                "the runner tried to update itself: proxy-runner runs the listener directly and does not follow self-updates; install the new runner version in the image (it is pinned with its checksum) and restart"
            }
            StopReason::VersionDeprecated => {
                "GitHub no longer accepts this runner version (listener exit code 7): install a supported runner version in the image and restart"
            }
            StopReason::KeepsTerminating => {
                "the listener keeps terminating (exit code 1 or 5) with fresh registrations: check the runner's configuration, URL and labels, and the orchestrator's GitHub credentials"
            }
        }
    }
}

/// What the supervisor does after a listener exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// The single-use runner finished its job: register a fresh one and
    /// start it at once.
    Renew,
    /// The registration is still good (the trouble was elsewhere): start
    /// the listener again with it after a backoff.
    RestartAfterBackoff,
    /// The registration is unusable (deleted, refused, taken by another
    /// session): drop it and register afresh after a backoff.
    ReregisterAfterBackoff,
    /// Retrying cannot help: the slot stops with this reason.
    Stop(StopReason),
}

/// The supervisor's reaction to `exit`, after `terminations` earlier exits
/// with 1 or 5 since the slot's last finished job (this one not counted).
/// Exit codes 1 and 5 give up at the `max_terminations`th; 2 and crashes
/// never give up (the orchestrator or GitHub may be down for a while).
pub fn react(exit: ListenerExit, terminations: u32, max_terminations: u32) -> Reaction {
    use return_code::*;
    match exit {
        ListenerExit::Code(SUCCESS) => Reaction::Renew,
        // With ACTIONS_RUNNER_RETURN_JOB_RESULT_FOR_HOSTED the listener
        // returns 100 + the job's result: it also ran its one job.
        ListenerExit::Code(100..=105) => Reaction::Renew,
        ListenerExit::Code(TERMINATED_ERROR | SESSION_CONFLICT) => {
            if terminations + 1 >= max_terminations.max(1) {
                Reaction::Stop(StopReason::KeepsTerminating)
            } else {
                Reaction::ReregisterAfterBackoff
            }
        }
        ListenerExit::Code(RUNNER_UPDATING | RUN_ONCE_RUNNER_UPDATING) => {
            Reaction::Stop(StopReason::SelfUpdate)
        }
        ListenerExit::Code(RUNNER_VERSION_DEPRECATED) => {
            Reaction::Stop(StopReason::VersionDeprecated)
        }
        // 2, 6 (handled inside the listener, never expected here), any
        // other code, and crashes: the registration was not used up.
        ListenerExit::Code(_) | ListenerExit::Signal(_) => Reaction::RestartAfterBackoff,
    }
}

/// The pause before the next try after `failures_in_a_row` failures
/// (at least 1): exponential from `base`, capped at `max`, with jitter
/// (`jitter` in 0..=1 keeps half to all of it).
pub fn backoff(failures_in_a_row: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    crate::schedule::retry_delay(failures_in_a_row.max(1), base, max, jitter)
}

/// Most slots one supervisor runs (and reports).
pub const MAX_SLOTS: u32 = 256;

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Getting a registration from the orchestrator.
    Registering,
    /// The listener runs and waits for a job.
    Idle,
    /// The listener runs a job.
    Busy,
    /// Waiting before the next try.
    Backoff,
    /// Shutting down: no new registration.
    Draining,
    /// Stopped for good (see the supervisor's log for why).
    Stopped,
}

/// One slot in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotReport {
    pub slot: u32,
    pub state: SlotState,
    /// The runner registered for the slot now, if any.
    #[serde(default)]
    pub runner_name: Option<String>,
    /// Listener starts after a failure (not the fresh start after a job).
    #[serde(default)]
    pub restarts: u64,
    /// Jobs the slot's listeners ran.
    #[serde(default)]
    pub jobs: u64,
    /// How the last listener ended: its exit code, or 128 + the signal.
    #[serde(default)]
    pub last_exit_code: Option<i32>,
}

impl SlotReport {
    /// A slot about to register its first runner.
    pub fn new(slot: u32) -> SlotReport {
        SlotReport {
            slot,
            state: SlotState::Registering,
            runner_name: None,
            restarts: 0,
            jobs: 0,
            last_exit_code: None,
        }
    }

    /// The runner registered for the slot now (`None`: none).
    pub fn set_runner(&mut self, name: Option<String>) {
        self.runner_name = name;
    }
}

/// What a supervisor tells the orchestrator every so often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub uptime_seconds: u64,
    pub slots: Vec<SlotReport>,
}

impl Heartbeat {
    pub fn busy_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Busy)
            .count()
    }

    pub fn restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.restarts).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_runner_names() {
        assert_eq!(slot_runner_name("ci", 0, 1), "ci-0-1");
        for (supervisor, runner, expected) in [
            ("ci", "ci", false),
            ("ci", "ci-0-1", true),
            ("ci", "ci-12-3456", true),
            ("ci", "ci-0", false),
            ("ci", "ci-0-", false),
            ("ci", "ci--1", false),
            ("ci", "ci-x-1", false),
            ("ci", "ci-0-1-2", false),
            ("ci", "ci-01-1", false),
            ("ci", "ci-+1-1", false),
            ("ci", "cix-0-1", false),
            ("ci", "CI-0-1", false),
            ("ci-0", "ci-0-1-2", true),
            ("ci", "ci-0-99999999999999999999", false),
            ("", "-0-1", false),
        ] {
            assert_eq!(
                is_slot_runner_of(supervisor, runner),
                expected,
                "{supervisor} / {runner}"
            );
        }
    }

    #[test]
    fn a_token_acts_for_its_runner_and_its_slot_runners_only() {
        assert!(token_acts_for("ci", "ci"));
        assert!(token_acts_for("ci", "ci-2-7"));
        assert!(!token_acts_for("ci", "other"));
        assert!(!token_acts_for("ci", "ci-other"));
        assert!(!token_acts_for("ci-0", "ci"));
        assert!(
            !token_acts_for("ci-0", "ci-0-1"),
            "ci-0-1 is ci's, not ci-0's"
        );
        assert!(!token_acts_for("ci", "ci-0-1-2"), "ci-0-1-2 is ci-0's");
    }

    #[test]
    fn supervisor_names() {
        assert!(check_supervisor_name("proxy-a.example_1").is_ok());
        assert_eq!(check_supervisor_name(""), Err(RunnerNameError::Empty));
        assert!(matches!(
            check_supervisor_name("a b"),
            Err(RunnerNameError::BadCharacter(_))
        ));
        assert!(matches!(
            check_supervisor_name("a/b"),
            Err(RunnerNameError::BadCharacter(_))
        ));
        assert!(matches!(
            check_supervisor_name(&"a".repeat(60)),
            Err(RunnerNameError::TooLong(_))
        ));
    }

    /// The supervisor's reaction to every listener exit code (facts §2).
    #[test]
    fn reactions_to_every_listener_exit() {
        use ListenerExit::{Code, Signal};
        use Reaction::*;
        let table = [
            (Code(0), 0, Renew),
            (Code(0), 4, Renew),
            (Code(1), 0, ReregisterAfterBackoff),
            (Code(1), 3, ReregisterAfterBackoff),
            (Code(1), 4, Stop(StopReason::KeepsTerminating)),
            (Code(2), 0, RestartAfterBackoff),
            (Code(2), 1000, RestartAfterBackoff),
            (Code(3), 0, Stop(StopReason::SelfUpdate)),
            (Code(4), 0, Stop(StopReason::SelfUpdate)),
            (Code(5), 0, ReregisterAfterBackoff),
            (Code(5), 4, Stop(StopReason::KeepsTerminating)),
            (Code(6), 0, RestartAfterBackoff),
            (Code(7), 0, Stop(StopReason::VersionDeprecated)),
            (Code(78), 0, RestartAfterBackoff),
            (Code(100), 2, Renew),
            (Code(102), 0, Renew),
            (Code(105), 0, Renew),
            (Code(106), 0, RestartAfterBackoff),
            (Code(127), 0, RestartAfterBackoff),
            (Code(-1), 0, RestartAfterBackoff),
            (Signal(9), 0, RestartAfterBackoff),
            (Signal(11), 1000, RestartAfterBackoff),
        ];
        for (exit, failures, expected) in table {
            assert_eq!(
                react(exit, failures, 5),
                expected,
                "{exit:?} after {failures}"
            );
        }
        // A limit of 0 or 1 stops at the first termination.
        assert_eq!(react(Code(1), 0, 0), Stop(StopReason::KeepsTerminating));
        assert_eq!(react(Code(1), 0, 1), Stop(StopReason::KeepsTerminating));
    }

    #[test]
    fn stop_messages_say_what_to_do() {
        for reason in [
            StopReason::SelfUpdate,
            StopReason::VersionDeprecated,
            StopReason::KeepsTerminating,
        ] {
            assert!(reason.message().len() > 40);
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(0, base, max, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(50, base, max, 1.0), max);
        assert_eq!(backoff(50, base, max, 0.0), max / 2);
    }
}
