//! The supervisor's settings: defaults, then the `[runner]` section of the
//! file (other sections are left to the commands that own them), then
//! `PROXY_RUNNER_*` environment variables, then flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use proxy_runner_domain::labels::LabelSet;
use proxy_runner_domain::proxy_runner::{MAX_SLOTS, check_supervisor_name};
use secrecy::SecretString;
use serde::Deserialize;

/// How slot runners are registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// A JIT config per job, minted by the orchestrator (default).
    Jit,
    /// A registration token from the orchestrator and `config.sh --ephemeral`.
    RegistrationToken,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jit" => Ok(Registration::Jit),
            "registration-token" => Ok(Registration::RegistrationToken),
            other => Err(format!(
                "unknown registration {other:?}; expected jit or registration-token"
            )),
        }
    }
}

/// Flags of `proxy-runner runner`; each overrides its `[runner]` key and
/// environment variable.
#[derive(Args, Clone, Default)]
pub struct RunnerArgs {
    /// A TOML file with a `[runner]` section.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The orchestrator's URL (ORCHESTRATOR_URL).
    #[arg(long)]
    pub orchestrator_url: Option<String>,
    /// The runner the orchestrator token was issued for; slot runners are
    /// NAME-SLOT-N (PROXY_RUNNER_RUNNER_NAME).
    #[arg(long)]
    pub name: Option<String>,
    /// Listeners run side by side (PROXY_RUNNER_RUNNER_SLOTS, default 1).
    #[arg(long)]
    pub slots: Option<u32>,
    /// The labels of a proxy label set, comma-separated (PROXY_RUNNER_RUNNER_LABELS).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// The actions runner's directory (config.sh, bin/Runner.Listener) (PROXY_RUNNER_RUNNER_DIR).
    #[arg(long)]
    pub runner_dir: Option<PathBuf>,
    /// Where each slot's work folder goes: the orchestrator's
    /// `proxy.work_root` (PROXY_RUNNER_RUNNER_WORK_ROOT).
    #[arg(long)]
    pub work_root: Option<PathBuf>,
    /// Each slot's own copy of the runner's root (its credentials); never
    /// inside the work root (PROXY_RUNNER_RUNNER_STATE_DIR, default RUNNER_DIR/_slots).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The runner's `externals` as job containers mount it (the
    /// orchestrator's `proxy.externals_root`); copied there from the runner
    /// directory when set (PROXY_RUNNER_RUNNER_EXTERNALS_DIR).
    #[arg(long)]
    pub externals_dir: Option<PathBuf>,
    /// Where the hooks are (job-started.sh, job-completed.sh,
    /// container-hook.sh); default: the ones built into this binary,
    /// written under the state directory (PROXY_RUNNER_RUNNER_HOOKS_DIR).
    #[arg(long)]
    pub hooks_dir: Option<PathBuf>,
    /// Register at this organization (PROXY_RUNNER_RUNNER_ORGANIZATION;
    /// default: the orchestrator's github.organization).
    #[arg(long, conflicts_with = "repository")]
    pub organization: Option<String>,
    /// Register at this repository, OWNER/REPO (PROXY_RUNNER_RUNNER_REPOSITORY).
    #[arg(long)]
    pub repository: Option<String>,
    /// jit (default) or registration-token (PROXY_RUNNER_RUNNER_REGISTRATION).
    #[arg(long)]
    pub registration: Option<Registration>,
    /// After SIGTERM, running jobs get this many seconds to finish
    /// (PROXY_RUNNER_RUNNER_GRACE_SECS, default 600).
    #[arg(long = "grace")]
    pub grace_secs: Option<u64>,
    /// Seconds between heartbeats (PROXY_RUNNER_RUNNER_HEARTBEAT_SECS, default 30).
    #[arg(long)]
    pub heartbeat_secs: Option<u64>,
    /// First backoff after a failure, in milliseconds
    /// (PROXY_RUNNER_RUNNER_BACKOFF_BASE_MS, default 1000).
    #[arg(long)]
    pub backoff_base_ms: Option<u64>,
    /// Longest backoff (PROXY_RUNNER_RUNNER_BACKOFF_MAX_SECS, default 300).
    #[arg(long)]
    pub backoff_max_secs: Option<u64>,
    /// Exit codes 1 or 5 (or failed config.sh runs) since the slot's last
    /// job before it stops (PROXY_RUNNER_RUNNER_MAX_TERMINATIONS, default 5).
    #[arg(long)]
    pub max_terminations: Option<u32>,
    /// More variables passed from this process to the listeners (repeatable;
    /// PROXY_RUNNER_RUNNER_ENV, comma-separated).
    #[arg(long = "pass-env")]
    pub pass_env: Vec<String>,
}

/// The `[runner]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    orchestrator_url: Option<String>,
    /// The orchestrator token (better: PROXY_RUNNER_TOKEN or token_file).
    token: Option<String>,
    token_file: Option<PathBuf>,
    name: Option<String>,
    slots: Option<u32>,
    labels: Option<Vec<String>>,
    runner_dir: Option<PathBuf>,
    work_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    externals_dir: Option<PathBuf>,
    hooks_dir: Option<PathBuf>,
    organization: Option<String>,
    repository: Option<String>,
    registration: Option<Registration>,
    grace_secs: Option<u64>,
    heartbeat_secs: Option<u64>,
    backoff_base_ms: Option<u64>,
    backoff_max_secs: Option<u64>,
    max_terminations: Option<u32>,
    env: Option<Vec<String>>,
}

/// Everything the supervisor runs on.
pub struct Settings {
    pub orchestrator_url: String,
    pub token: SecretString,
    pub name: String,
    pub slots: u32,
    pub labels: Vec<String>,
    pub runner_dir: PathBuf,
    pub work_root: PathBuf,
    pub state_dir: PathBuf,
    pub externals_dir: Option<PathBuf>,
    pub hooks_dir: Option<PathBuf>,
    pub organization: Option<String>,
    pub repository: Option<String>,
    pub registration: Registration,
    pub grace: Duration,
    pub heartbeat: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_terminations: u32,
    pub pass_env: Vec<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("orchestrator_url", &self.orchestrator_url)
            .field("token", &"***")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("labels", &self.labels)
            .field("runner_dir", &self.runner_dir)
            .field("work_root", &self.work_root)
            .field("state_dir", &self.state_dir)
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parsed<T: std::str::FromStr>(
    env: &BTreeMap<String, String>,
    name: &str,
) -> anyhow::Result<Option<T>>
where
    T::Err: fmt::Display,
{
    match env.get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| anyhow::anyhow!("environment variable {name}: {e}")),
    }
}

impl Settings {
    /// Flags over `env` over the file's `[runner]` section over defaults.
    pub fn load(args: &RunnerArgs, env: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
        let section = match &args.config {
            Some(path) => read_section(path)?,
            None => Section::default(),
        };
        let e = |name: &str| env.get(name).filter(|v| !v.trim().is_empty()).cloned();
        let path = |name: &str| e(name).map(PathBuf::from);

        let orchestrator_url = args
            .orchestrator_url
            .clone()
            .or_else(|| e("ORCHESTRATOR_URL"))
            .or(section.orchestrator_url)
            .context("no orchestrator URL: --orchestrator-url, ORCHESTRATOR_URL or [runner] orchestrator_url")?;
        let orchestrator_url = orchestrator_url.trim().trim_end_matches('/').to_string();
        if !(orchestrator_url.starts_with("http://") || orchestrator_url.starts_with("https://")) {
            bail!("the orchestrator URL must be http(s)://...");
        }
        let token = match (e("PROXY_RUNNER_TOKEN"), section.token, section.token_file) {
            (Some(t), _, _) | (None, Some(t), _) => t,
            (None, None, Some(file)) => std::fs::read_to_string(&file)
                .with_context(|| format!("[runner] token_file {}", file.display()))?,
            (None, None, None) => bail!(
                "no orchestrator token: PROXY_RUNNER_TOKEN, or [runner] token / token_file (`proxy-runner token create --runner NAME`)"
            ),
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("the orchestrator token is empty");
        }
        let name = args
            .name
            .clone()
            .or_else(|| e("PROXY_RUNNER_RUNNER_NAME"))
            .or(section.name)
            .context("no runner name: --name, PROXY_RUNNER_RUNNER_NAME or [runner] name (the runner the token was issued for)")?;
        check_supervisor_name(&name)?;
        let slots = match args.slots {
            Some(n) => n,
            None => parsed(env, "PROXY_RUNNER_RUNNER_SLOTS")?
                .or(section.slots)
                .unwrap_or(1),
        };
        if slots == 0 || slots > MAX_SLOTS {
            bail!("slots must be 1 to {MAX_SLOTS}");
        }
        let labels = args
            .labels
            .clone()
            .or_else(|| e("PROXY_RUNNER_RUNNER_LABELS").map(|v| list(&v)))
            .or(section.labels)
            .context("no labels: --labels, PROXY_RUNNER_RUNNER_LABELS or [runner] labels (a proxy label set's)")?;
        let labels = LabelSet::parse_list(labels.iter().map(String::as_str))?.into_vec();
        if labels.is_empty() {
            bail!("labels must not be empty");
        }
        let runner_dir = args
            .runner_dir
            .clone()
            .or_else(|| path("PROXY_RUNNER_RUNNER_DIR"))
            .or(section.runner_dir)
            .context(
                "no runner directory: --runner-dir, PROXY_RUNNER_RUNNER_DIR or [runner] runner_dir",
            )?;
        let work_root = args
            .work_root
            .clone()
            .or_else(|| path("PROXY_RUNNER_RUNNER_WORK_ROOT"))
            .or(section.work_root)
            .context("no work root: --work-root, PROXY_RUNNER_RUNNER_WORK_ROOT or [runner] work_root (the orchestrator's proxy.work_root)")?;
        let state_dir = args
            .state_dir
            .clone()
            .or_else(|| path("PROXY_RUNNER_RUNNER_STATE_DIR"))
            .or(section.state_dir)
            .unwrap_or_else(|| runner_dir.join("_slots"));
        let externals_dir = args
            .externals_dir
            .clone()
            .or_else(|| path("PROXY_RUNNER_RUNNER_EXTERNALS_DIR"))
            .or(section.externals_dir);
        let hooks_dir = args
            .hooks_dir
            .clone()
            .or_else(|| path("PROXY_RUNNER_RUNNER_HOOKS_DIR"))
            .or(section.hooks_dir);
        let organization = args
            .organization
            .clone()
            .or_else(|| e("PROXY_RUNNER_RUNNER_ORGANIZATION"))
            .or(section.organization);
        let repository = args
            .repository
            .clone()
            .or_else(|| e("PROXY_RUNNER_RUNNER_REPOSITORY"))
            .or(section.repository);
        if organization.is_some() && repository.is_some() {
            bail!("name an organization or a repository, not both");
        }
        let registration = match args.registration {
            Some(r) => r,
            None => parsed(env, "PROXY_RUNNER_RUNNER_REGISTRATION")?
                .or(section.registration)
                .unwrap_or(Registration::Jit),
        };
        let secs =
            |flag: Option<u64>, var: &str, key: Option<u64>, default: u64| -> anyhow::Result<u64> {
                Ok(match flag {
                    Some(v) => v,
                    None => parsed(env, var)?.or(key).unwrap_or(default),
                })
            };
        let grace = secs(
            args.grace_secs,
            "PROXY_RUNNER_RUNNER_GRACE_SECS",
            section.grace_secs,
            600,
        )?;
        let heartbeat = secs(
            args.heartbeat_secs,
            "PROXY_RUNNER_RUNNER_HEARTBEAT_SECS",
            section.heartbeat_secs,
            30,
        )?;
        let backoff_base_ms = secs(
            args.backoff_base_ms,
            "PROXY_RUNNER_RUNNER_BACKOFF_BASE_MS",
            section.backoff_base_ms,
            1000,
        )?;
        let backoff_max_secs = secs(
            args.backoff_max_secs,
            "PROXY_RUNNER_RUNNER_BACKOFF_MAX_SECS",
            section.backoff_max_secs,
            300,
        )?;
        let max_terminations = match args.max_terminations {
            Some(v) => v,
            None => parsed(env, "PROXY_RUNNER_RUNNER_MAX_TERMINATIONS")?
                .or(section.max_terminations)
                .unwrap_or(5),
        };
        if heartbeat == 0 || backoff_base_ms == 0 || backoff_max_secs == 0 || max_terminations == 0
        {
            bail!(
                "heartbeat_secs, backoff_base_ms, backoff_max_secs and max_terminations must be at least 1"
            );
        }
        let mut pass_env = section.env.unwrap_or_default();
        pass_env.extend(
            e("PROXY_RUNNER_RUNNER_ENV")
                .map(|v| list(&v))
                .unwrap_or_default(),
        );
        pass_env.extend(args.pass_env.iter().cloned());
        let settings = Settings {
            orchestrator_url,
            token: SecretString::from(token),
            name,
            slots,
            labels,
            runner_dir,
            work_root,
            state_dir,
            externals_dir,
            hooks_dir,
            organization,
            repository,
            registration,
            grace: Duration::from_secs(grace),
            heartbeat: Duration::from_secs(heartbeat),
            backoff_base: Duration::from_millis(backoff_base_ms),
            backoff_max: Duration::from_secs(backoff_max_secs),
            max_terminations,
            pass_env,
        };
        settings.check_paths()?;
        Ok(settings)
    }

    /// The directories must be absolute, and the slots' roots (which hold
    /// runner credentials) must not be where job containers can mount.
    fn check_paths(&self) -> anyhow::Result<()> {
        for (what, dir) in [
            ("runner_dir", Some(&self.runner_dir)),
            ("work_root", Some(&self.work_root)),
            ("state_dir", Some(&self.state_dir)),
            ("externals_dir", self.externals_dir.as_ref()),
            ("hooks_dir", self.hooks_dir.as_ref()),
        ] {
            if let Some(dir) = dir
                && !dir.is_absolute()
            {
                bail!("{what} {} must be an absolute path", dir.display());
            }
        }
        let state = lexical(&self.state_dir);
        let work = lexical(&self.work_root);
        if state.starts_with(&work) || work.starts_with(&state) {
            bail!(
                "state_dir {} and work_root {} must not contain each other: job containers mount the work root, and the state directory holds runner credentials",
                self.state_dir.display(),
                self.work_root.display()
            );
        }
        if let Some(externals) = &self.externals_dir
            && lexical(externals).starts_with(&state)
        {
            bail!("externals_dir must not be inside state_dir");
        }
        Ok(())
    }
}

/// `.` and `..` resolved without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn read_section(path: &Path) -> anyhow::Result<Section> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    match table.remove("runner") {
        None => Ok(Section::default()),
        Some(value) => value
            .try_into()
            .with_context(|| format!("config file {}: [runner]", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("ORCHESTRATOR_URL", "http://orch:8080/"),
            ("PROXY_RUNNER_TOKEN", "prt_SECRET"),
            ("PROXY_RUNNER_RUNNER_NAME", "proxy-a"),
            ("PROXY_RUNNER_RUNNER_LABELS", "self-hosted, proxy"),
            ("PROXY_RUNNER_RUNNER_DIR", "/opt/runner"),
            ("PROXY_RUNNER_RUNNER_WORK_ROOT", "/srv/work"),
        ]
    }

    #[test]
    fn environment_then_defaults() {
        let s = Settings::load(&RunnerArgs::default(), &env(&base())).unwrap();
        assert_eq!(s.orchestrator_url, "http://orch:8080");
        assert_eq!(s.name, "proxy-a");
        assert_eq!(s.labels, ["self-hosted", "proxy"]);
        assert_eq!(s.slots, 1);
        assert_eq!(s.state_dir, PathBuf::from("/opt/runner/_slots"));
        assert_eq!(s.registration, Registration::Jit);
        assert_eq!(s.grace, Duration::from_secs(600));
        assert!(!format!("{s:?}").contains("SECRET"));
    }

    #[test]
    fn flags_over_environment_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runner.toml");
        std::fs::write(
            &file,
            "listen = \"ignored by the runner\"\n[runner]\nslots = 3\nname = \"from-file\"\ngrace_secs = 5\nregistration = \"registration-token\"\nenv = [\"A\"]\n",
        )
        .unwrap();
        let mut vars = base();
        vars.push(("PROXY_RUNNER_RUNNER_SLOTS", "2"));
        vars.push(("PROXY_RUNNER_RUNNER_ENV", "B,C"));
        let args = RunnerArgs {
            config: Some(file),
            slots: Some(4),
            pass_env: vec!["D".into()],
            ..RunnerArgs::default()
        };
        let s = Settings::load(&args, &env(&vars)).unwrap();
        assert_eq!(s.slots, 4);
        assert_eq!(s.name, "proxy-a", "the environment wins over the file");
        assert_eq!(s.grace, Duration::from_secs(5));
        assert_eq!(s.registration, Registration::RegistrationToken);
        assert_eq!(s.pass_env, ["A", "B", "C", "D"]);
        let s = Settings::load(
            &RunnerArgs {
                slots: None,
                ..args
            },
            &env(&vars),
        )
        .unwrap();
        assert_eq!(s.slots, 2);
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let without = |name: &str| {
            let vars: Vec<_> = base().into_iter().filter(|(k, _)| *k != name).collect();
            Settings::load(&RunnerArgs::default(), &env(&vars))
                .unwrap_err()
                .to_string()
        };
        assert!(without("PROXY_RUNNER_TOKEN").contains("no orchestrator token"));
        assert!(without("PROXY_RUNNER_RUNNER_NAME").contains("no runner name"));
        assert!(without("PROXY_RUNNER_RUNNER_LABELS").contains("no labels"));
        assert!(without("ORCHESTRATOR_URL").contains("no orchestrator URL"));
        let with = |k: &'static str, v: &'static str| {
            let mut vars = base();
            vars.push((k, v));
            Settings::load(&RunnerArgs::default(), &env(&vars))
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(with("PROXY_RUNNER_RUNNER_SLOTS", "0").contains("slots"));
        assert!(with("PROXY_RUNNER_RUNNER_SLOTS", "x").contains("PROXY_RUNNER_RUNNER_SLOTS"));
        assert!(
            with("PROXY_RUNNER_RUNNER_STATE_DIR", "/srv/work/state").contains("must not contain")
        );
        assert!(with("PROXY_RUNNER_RUNNER_STATE_DIR", "/srv").contains("must not contain"));
        assert!(with("PROXY_RUNNER_RUNNER_STATE_DIR", "relative").contains("absolute"));
        assert!(with("PROXY_RUNNER_RUNNER_NAME", "a b").contains("letters"));
        assert!(with("PROXY_RUNNER_RUNNER_REGISTRATION", "magic").contains("registration"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[runner]\nslotz = 2\n").unwrap();
        let err = Settings::load(
            &RunnerArgs {
                config: Some(file),
                ..RunnerArgs::default()
            },
            &env(&base()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("slotz"), "{err:#}");
    }
}
