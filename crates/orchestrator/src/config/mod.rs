//! Configuration: defaults, then the TOML file, then `PROXY_RUNNER_*`
//! environment variables, then command-line flags (the caller applies flags
//! last through [`Overrides`]). The environment comes in as a map so that
//! loading is testable without touching the process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proxy_runner_domain::policy::HardeningProfile;
use proxy_runner_domain::ports::Hardening;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod proxy;
pub use proxy::{JobPath, ProxySection};

/// A secret read from config: kept in memory, shown as `***` everywhere.
#[derive(Clone, Default)]
pub struct Secret(pub Option<SecretString>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Some(SecretString::from(value.into())))
    }
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
    pub fn get(&self) -> Option<&SecretString> {
        self.0.as_ref()
    }
    fn is_unset(&self) -> bool {
        self.0.is_none()
    }
    fn masked(&self) -> &'static str {
        if self.is_set() { MASKED } else { "(not set)" }
    }
}

/// What a set secret renders as. Refused as a secret's value: a rendered
/// configuration used as a file would otherwise make it the secret.
const MASKED: &str = "***";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == MASKED || s == "(not set)" {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is how a rendered configuration masks a secret, not a secret"
            )));
        }
        Ok(if s.is_empty() {
            Secret(None)
        } else {
            Secret::new(s)
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.masked())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Docker,
    DryRun,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(BackendKind::Docker),
            "dry-run" => Ok(BackendKind::DryRun),
            other => Err(format!(
                "unknown backend {other:?}; expected docker or dry-run"
            )),
        }
    }
}

/// How ephemeral runners are registered with GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// `generate-jitconfig`: one single-use config per container (default).
    Jit,
    /// The design's way: a registration token and `config.sh --ephemeral`.
    RegistrationToken,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// SQLite database file (`:memory:` for a throw-away store).
    pub database: PathBuf,
    pub backend: BackendKind,
    /// Admin bearer token for the HTTP API. Without one, admin calls are refused.
    #[serde(skip_serializing_if = "Secret::is_unset")]
    pub admin_token: Secret,
    /// Value of the `proxy-runner.instance` label on everything we create, so
    /// that several orchestrators can share one engine.
    pub instance: String,
    pub github: GitHubSection,
    pub runners: RunnersSection,
    /// Connection limits of the HTTP server.
    pub http: HttpSection,
    /// On SIGTERM, how long requests and provisioning under way may take to
    /// finish (`PROXY_RUNNER_SHUTDOWN_GRACE_SECS`); running jobs are left
    /// alone whatever it is.
    pub shutdown_grace_secs: u64,
    /// The proxy path (container hooks); absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            database: PathBuf::from("proxy-runner.db"),
            backend: BackendKind::Docker,
            admin_token: Secret::default(),
            instance: "default".into(),
            github: GitHubSection::default(),
            runners: RunnersSection::default(),
            http: HttpSection::default(),
            shutdown_grace_secs: 30,
            proxy: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitHubSection {
    /// REST API base: `https://api.github.com`, `https://HOST/api/v3`, or an emulator.
    pub api_url: String,
    /// Web base runners are configured against (`--url`): `https://github.com`.
    pub web_url: String,
    /// A personal access token (repo / admin:org scope).
    #[serde(skip_serializing_if = "Secret::is_unset")]
    pub token: Secret,
    /// GitHub App id; with `private_key_path`, used instead of `token`.
    pub app_id: Option<u64>,
    pub private_key_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Secret::is_unset")]
    pub webhook_secret: Secret,
    pub registration: Registration,
    pub runner_group_id: u64,
    /// Register runners at the organization instead of each repository.
    pub organization: Option<String>,
    pub poll: PollSection,
}

impl Default for GitHubSection {
    fn default() -> Self {
        GitHubSection {
            api_url: "https://api.github.com".into(),
            web_url: "https://github.com".into(),
            token: Secret::default(),
            app_id: None,
            private_key_path: None,
            webhook_secret: Secret::default(),
            registration: Registration::Jit,
            runner_group_id: 1,
            organization: None,
            poll: PollSection::default(),
        }
    }
}

/// `[http]`: what keeps the server up for valid clients while others are
/// slow, idle or hostile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// A request's headers (and the next request on an idle connection)
    /// must arrive within this (`PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS`).
    pub header_read_timeout_secs: u64,
    /// Open connections at most (`PROXY_RUNNER_HTTP_MAX_CONNECTIONS`); keep
    /// it below the process's open-file limit.
    pub max_connections: usize,
    /// A request body that stalls this long is given up
    /// (`PROXY_RUNNER_HTTP_BODY_TIMEOUT_SECS`).
    pub body_read_timeout_secs: u64,
    /// Largest webhook delivery (`PROXY_RUNNER_HTTP_WEBHOOK_BODY_LIMIT_BYTES`);
    /// at most GitHub's 25 MiB.
    pub webhook_body_limit_bytes: usize,
    /// Bodies over 64 KiB read at once (`PROXY_RUNNER_HTTP_MAX_LARGE_BODIES`).
    pub max_large_bodies: usize,
    /// How long a large body waits for its turn before a 503 with
    /// `Retry-After` (`PROXY_RUNNER_HTTP_LARGE_BODY_WAIT_SECS`).
    pub large_body_wait_secs: u64,
    /// A request's body must have arrived in full within this
    /// (`PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS`): a body trickled in a byte at
    /// a time never stalls, but may not hold a connection longer.
    pub body_read_deadline_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        let limits = crate::server::ServerLimits::default();
        let bodies = crate::compose::BodyLimits::default();
        HttpSection {
            header_read_timeout_secs: limits.header_read_timeout.as_secs(),
            max_connections: limits.max_connections,
            body_read_timeout_secs: bodies.read_timeout.as_secs(),
            webhook_body_limit_bytes: bodies.webhook,
            max_large_bodies: bodies.max_large_bodies,
            large_body_wait_secs: bodies.large_body_wait.as_secs(),
            body_read_deadline_secs: bodies.read_deadline.as_secs(),
        }
    }
}

impl HttpSection {
    pub fn limits(&self) -> crate::server::ServerLimits {
        crate::server::ServerLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            max_connections: self.max_connections,
            ..Default::default()
        }
    }

    pub fn body_limits(&self) -> crate::compose::BodyLimits {
        crate::compose::BodyLimits {
            webhook: self.webhook_body_limit_bytes,
            read_timeout: std::time::Duration::from_secs(self.body_read_timeout_secs),
            max_large_bodies: self.max_large_bodies,
            large_body_wait: std::time::Duration::from_secs(self.large_body_wait_secs),
            read_deadline: std::time::Duration::from_secs(self.body_read_deadline_secs),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollSection {
    /// `owner/repo` names to poll for queued jobs; empty disables polling.
    pub repositories: Vec<String>,
    pub interval_secs: u64,
}

impl Default for PollSection {
    fn default() -> Self {
        PollSection {
            repositories: Vec::new(),
            interval_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnersSection {
    /// Image of the ephemeral runner container (the design's default name).
    pub image: String,
    /// Per-repository networks are `{network_prefix}-{owner}-{repo}`.
    pub network_prefix: String,
    /// Live job containers across all repositories.
    pub max_concurrent: usize,
    /// Live job containers of one repository.
    pub max_per_repository: usize,
    /// Provisioning attempts before a job is marked failed.
    pub max_attempts: u32,
    /// A runner that has not taken a job after this many seconds is stopped.
    pub idle_timeout_secs: u64,
    /// Label sets we serve. A job is ours when its labels are a subset of one
    /// set. Empty: every job that asks for `self-hosted`.
    pub label_sets: Vec<LabelSetConfig>,
    /// Hardening of every job container unless a label set overrides it.
    pub hardening: Hardening,
    /// A warm runner that took no job for this many seconds is recycled
    /// (`PROXY_RUNNER_WARM_MAX_AGE_SECS`).
    pub warm_max_age_secs: u64,
    /// How long a queued job waits for a warm runner of its label set and
    /// repository before it gets a cold start (`PROXY_RUNNER_WARM_WAIT_SECS`).
    pub warm_wait_secs: u64,
}

impl Default for RunnersSection {
    fn default() -> Self {
        RunnersSection {
            image: "github-runner:latest".into(),
            network_prefix: "proxy-runner".into(),
            max_concurrent: 10,
            max_per_repository: 5,
            max_attempts: 5,
            idle_timeout_secs: 600,
            label_sets: Vec::new(),
            hardening: Hardening::default(),
            warm_max_age_secs: 3600,
            warm_wait_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelSetConfig {
    pub labels: Vec<String>,
    /// `autoscale` (default) or `proxy`.
    #[serde(default)]
    pub path: JobPath,
    /// Proxy path: `standard` or `strict` (default: `proxy.profile`).
    #[serde(default)]
    pub profile: Option<HardeningProfile>,
    /// Image for jobs of this set (default: `runners.image`).
    #[serde(default)]
    pub image: Option<String>,
    /// Hardening for jobs of this set (default: `runners.hardening`).
    #[serde(default)]
    pub hardening: Option<Hardening>,
    /// Warm runners kept waiting for each of `warm_repositories` (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warm: usize,
    /// `owner/name` of the repositories warm runners wait for: runners are
    /// registered and networked per repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_repositories: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line flags; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub database: Option<PathBuf>,
    pub backend: Option<BackendKind>,
}

/// The process environment, or a map in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

fn env_parse<T: std::str::FromStr>(
    env: &dyn EnvSource,
    name: &str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    match env.var(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
            name: name.into(),
            message: e.to_string(),
        }),
    }
}

impl Config {
    /// Parses a TOML document; unknown keys are an error.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Defaults, then `file` (if any), then the environment, then `flags`.
    pub fn load(
        file: Option<&Path>,
        env: &dyn EnvSource,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_sources(Some((&text, path)), env, flags)
            }
            None => Config::from_sources(None, env, flags),
        }
    }

    /// [`Config::load`] with the file's text already read: defaults, then
    /// `file` (text and the path it came from), then `env`, then `flags`.
    pub fn from_sources(
        file: Option<(&str, &Path)>,
        env: &dyn EnvSource,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some((text, path)) => Config::from_toml(text, path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(v) = flags.listen {
            config.listen = v;
        }
        if let Some(v) = &flags.database {
            config.database = v.clone();
        }
        if let Some(v) = flags.backend {
            config.backend = v;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        if let Some(v) = env_parse(env, "PROXY_RUNNER_LISTEN")? {
            self.listen = v;
        }
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_DB")? {
            self.database = PathBuf::from(v);
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_BACKEND")? {
            self.backend = v;
        }
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_INSTANCE")? {
            self.instance = v;
        }
        if let Some(v) = env
            .var("PROXY_RUNNER_ADMIN_TOKEN")
            .filter(|v| !v.is_empty())
        {
            self.admin_token = Secret::new(v);
        }
        let gh = &mut self.github;
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_GITHUB_API_URL")? {
            gh.api_url = v;
        }
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_GITHUB_WEB_URL")? {
            gh.web_url = v;
        }
        if let Some(v) = env
            .var("PROXY_RUNNER_GITHUB_TOKEN")
            .filter(|v| !v.is_empty())
        {
            gh.token = Secret::new(v);
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_GITHUB_APP_ID")? {
            gh.app_id = Some(v);
        }
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_GITHUB_PRIVATE_KEY_PATH")? {
            gh.private_key_path = Some(PathBuf::from(v));
        }
        if let Some(v) = env
            .var("PROXY_RUNNER_WEBHOOK_SECRET")
            .filter(|v| !v.is_empty())
        {
            gh.webhook_secret = Secret::new(v);
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS")? {
            self.http.header_read_timeout_secs = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_MAX_CONNECTIONS")? {
            self.http.max_connections = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_SHUTDOWN_GRACE_SECS")? {
            self.shutdown_grace_secs = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_BODY_TIMEOUT_SECS")? {
            self.http.body_read_timeout_secs = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_WEBHOOK_BODY_LIMIT_BYTES")? {
            self.http.webhook_body_limit_bytes = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_MAX_LARGE_BODIES")? {
            self.http.max_large_bodies = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_LARGE_BODY_WAIT_SECS")? {
            self.http.large_body_wait_secs = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS")? {
            self.http.body_read_deadline_secs = v;
        }
        if let Some(v) = env_parse::<String>(env, "PROXY_RUNNER_RUNNER_IMAGE")? {
            self.runners.image = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_WARM_MAX_AGE_SECS")? {
            self.runners.warm_max_age_secs = v;
        }
        if let Some(v) = env_parse(env, "PROXY_RUNNER_WARM_WAIT_SECS")? {
            self.runners.warm_wait_secs = v;
        }
        self.apply_proxy_env(env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(format!(
                "instance {:?} must be non-empty letters, digits, '-', '_' or '.'",
                self.instance
            ));
        }
        let r = &self.runners;
        if r.max_concurrent == 0 || r.max_per_repository == 0 {
            return bad(
                "runners.max_concurrent and runners.max_per_repository must be at least 1".into(),
            );
        }
        if r.max_attempts == 0 {
            return bad("runners.max_attempts must be at least 1".into());
        }
        if r.image.trim().is_empty() {
            return bad("runners.image must not be empty".into());
        }
        for set in &r.label_sets {
            if set.labels.is_empty() {
                return bad("every runners.label_sets entry needs at least one label".into());
            }
        }
        self.validate_warm()?;
        for h in std::iter::once(&r.hardening)
            .chain(r.label_sets.iter().filter_map(|s| s.hardening.as_ref()))
        {
            let user = h.user.split(':').next().unwrap_or_default();
            if user.is_empty() || user == "0" || user == "root" {
                return bad(format!(
                    "hardening.user {:?}: job containers never run as root",
                    h.user
                ));
            }
        }
        if self.http.header_read_timeout_secs == 0
            || self.http.max_connections == 0
            || self.http.body_read_deadline_secs == 0
        {
            return bad(
                "http.header_read_timeout_secs, http.max_connections and http.body_read_deadline_secs must be at least 1".into(),
            );
        }
        if self.http.body_read_timeout_secs == 0 || self.http.max_large_bodies == 0 {
            return bad(
                "http.body_read_timeout_secs and http.max_large_bodies must be at least 1".into(),
            );
        }
        let webhook_max = crate::webhook::WEBHOOK_BODY_LIMIT_MAX;
        if !(1024..=webhook_max).contains(&self.http.webhook_body_limit_bytes) {
            return bad(format!(
                "http.webhook_body_limit_bytes must be between 1024 and {webhook_max} (GitHub's own cap)"
            ));
        }
        if let Some(proxy) = &self.proxy {
            proxy.validate()?;
        } else if r.label_sets.iter().any(|s| s.path == JobPath::Proxy) {
            return bad(
                "a runners.label_sets entry has path = \"proxy\" but there is no [proxy] section"
                    .into(),
            );
        }
        let gh = &self.github;
        if gh.app_id.is_some() != gh.private_key_path.is_some() {
            return bad("github.app_id and github.private_key_path go together".into());
        }
        for repo in &gh.poll.repositories {
            proxy_runner_domain::names::parse_repository(repo)
                .map_err(|e| ConfigError::Invalid(format!("github.poll.repositories: {e}")))?;
        }
        if gh.poll.interval_secs == 0 {
            return bad("github.poll.interval_secs must be at least 1".into());
        }
        Ok(())
    }

    /// Warm runners: JIT registration, autoscaled sets, a list of distinct
    /// repositories, and no more of them than the caps hold.
    fn validate_warm(&self) -> Result<(), ConfigError> {
        let r = &self.runners;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut per_repo: BTreeMap<String, usize> = BTreeMap::new();
        for (i, set) in r.label_sets.iter().enumerate() {
            let at = format!("runners.label_sets[{i}] (labels {:?})", set.labels);
            if set.warm == 0 {
                if !set.warm_repositories.is_empty() {
                    return bad(format!(
                        "{at}: warm_repositories is set but warm is 0; set warm = N (runners per repository)"
                    ));
                }
                continue;
            }
            if set.path != JobPath::Autoscale {
                return bad(format!(
                    "{at}: warm = {} on a proxy label set; warm runners are for path = \"autoscale\"",
                    set.warm
                ));
            }
            if self.github.registration != Registration::Jit {
                return bad(format!(
                    "{at}: warm runners need github.registration = \"jit\" (a single-use config per runner)"
                ));
            }
            if set.warm_repositories.is_empty() {
                return bad(format!(
                    "{at}: warm = {} needs warm_repositories = [\"owner/name\", ...]: runners are registered, networked and capped per repository",
                    set.warm
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for repo in &set.warm_repositories {
                proxy_runner_domain::names::parse_repository(repo)
                    .map_err(|e| ConfigError::Invalid(format!("{at}: warm_repositories: {e}")))?;
                if !seen.insert(repo.to_ascii_lowercase()) {
                    return bad(format!(
                        "{at}: warm_repositories names {repo:?} twice (names are compared ignoring case)"
                    ));
                }
                *per_repo.entry(repo.to_ascii_lowercase()).or_default() += set.warm;
            }
        }
        for (repo, n) in &per_repo {
            if *n > r.max_per_repository {
                return bad(format!(
                    "{n} warm runners for {repo} exceed runners.max_per_repository = {}: a job would never find room",
                    r.max_per_repository
                ));
            }
        }
        let total: usize = per_repo.values().sum();
        if total > r.max_concurrent {
            return bad(format!(
                "{total} warm runners in all exceed runners.max_concurrent = {}: a job would never find room",
                r.max_concurrent
            ));
        }
        if total > 0 && (r.warm_max_age_secs == 0 || r.warm_wait_secs == 0) {
            return bad(
                "runners.warm_max_age_secs and runners.warm_wait_secs must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML with every secret masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// True when `token` equals the admin token.
    pub fn admin_token_value(&self) -> Option<&str> {
        self.admin_token.get().map(|s| s.expose_secret())
    }
}

#[cfg(test)]
mod tests;
