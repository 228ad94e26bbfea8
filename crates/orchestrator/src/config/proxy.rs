//! `[proxy]` and the path of each label set: the proxy path's configuration.

use std::path::PathBuf;

use proxy_runner_domain::policy::{HardeningProfile, ProxyPolicy, ResourceLimits};
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, EnvSource, env_parse};

/// Which path serves the jobs of a label set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPath {
    /// An ephemeral runner container per queued job.
    #[default]
    Autoscale,
    /// Long-lived proxy runners take the jobs; their container hooks run
    /// the steps in containers the orchestrator creates.
    Proxy,
}

/// `[proxy]`: the container-hook side of the proxy path. The orchestrator is
/// the only holder of the engine, so this is the security boundary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySection {
    /// Images jobs may use: exact references, or a prefix ending in `*`.
    pub images: Vec<String>,
    /// Pull missing images (with the workflow's registry credentials, held
    /// in memory only). Off: a missing image fails `prepare_job`.
    pub pull: bool,
    /// Publish `ports:` on the host; off, services are reachable only from
    /// the job's container, by name.
    pub publish_ports: bool,
    /// The proxy runners' work folder (`_work`) as this host sees it; job
    /// mounts must be inside it or `externals_root`.
    pub work_root: PathBuf,
    pub externals_root: PathBuf,
    /// Hardening of proxy-path containers unless a label set says otherwise.
    pub profile: HardeningProfile,
    pub limits: ResourceLimits,
    /// A delegated job whose completion never comes is closed, and its
    /// containers removed, after this long (GitHub's own job limit: 6 h).
    pub job_timeout_secs: u64,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            images: Vec::new(),
            pull: false,
            publish_ports: false,
            work_root: PathBuf::new(),
            externals_root: PathBuf::new(),
            profile: HardeningProfile::Standard,
            limits: ResourceLimits::default(),
            job_timeout_secs: 6 * 3600,
        }
    }
}

impl ProxySection {
    /// Checks what the policy relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, root) in [
            ("proxy.work_root", &self.work_root),
            ("proxy.externals_root", &self.externals_root),
        ] {
            if !root.as_os_str().is_empty() && !root.is_absolute() {
                return bad(format!(
                    "{name} {} must be an absolute path",
                    root.display()
                ));
            }
        }
        if self.work_root.as_os_str().is_empty() {
            return bad(
                "proxy.work_root is required: the runners' work folder (_work) as this host sees it"
                    .into(),
            );
        }
        if self.job_timeout_secs == 0 {
            return bad("proxy.job_timeout_secs must be at least 1".into());
        }
        self.policy(self.profile)
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("proxy: {e}")))
    }

    /// The policy of proxy-path containers under `profile`.
    pub fn policy(&self, profile: HardeningProfile) -> ProxyPolicy {
        ProxyPolicy {
            allowed_images: self.images.clone(),
            profile,
            limits: self.limits.clone(),
            work_root: self.work_root.clone(),
            externals_root: self.externals_root.clone(),
            publish_ports: self.publish_ports,
        }
    }
}

impl Config {
    /// `PROXY_RUNNER_PROXY_*`: any of them turns the proxy path on.
    pub(super) fn apply_proxy_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        let images = env_parse::<String>(env, "PROXY_RUNNER_PROXY_IMAGES")?;
        let pull = env_parse::<bool>(env, "PROXY_RUNNER_PROXY_PULL")?;
        let publish = env_parse::<bool>(env, "PROXY_RUNNER_PROXY_PUBLISH_PORTS")?;
        let work = env_parse::<String>(env, "PROXY_RUNNER_PROXY_WORK_ROOT")?;
        let externals = env_parse::<String>(env, "PROXY_RUNNER_PROXY_EXTERNALS_ROOT")?;
        let profile = env_parse::<String>(env, "PROXY_RUNNER_PROXY_PROFILE")?;
        let timeout = env_parse::<u64>(env, "PROXY_RUNNER_PROXY_JOB_TIMEOUT_SECS")?;
        let any = images.is_some()
            || pull.is_some()
            || publish.is_some()
            || work.is_some()
            || externals.is_some()
            || profile.is_some()
            || timeout.is_some();
        if !any {
            return Ok(());
        }
        let proxy = self.proxy.get_or_insert_with(ProxySection::default);
        if let Some(v) = images {
            proxy.images = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = pull {
            proxy.pull = v;
        }
        if let Some(v) = publish {
            proxy.publish_ports = v;
        }
        if let Some(v) = work {
            proxy.work_root = PathBuf::from(v);
        }
        if let Some(v) = externals {
            proxy.externals_root = PathBuf::from(v);
        }
        if let Some(v) = profile {
            proxy.profile = match v.as_str() {
                "standard" => HardeningProfile::Standard,
                "strict" => HardeningProfile::Strict,
                other => {
                    return Err(ConfigError::Env {
                        name: "PROXY_RUNNER_PROXY_PROFILE".into(),
                        message: format!("{other:?} is not standard or strict"),
                    });
                }
            };
        }
        if let Some(v) = timeout {
            proxy.job_timeout_secs = v;
        }
        Ok(())
    }

    /// Which ways in are on, one line each, as `config check` prints them.
    pub fn paths_summary(&self) -> Vec<String> {
        let gh = &self.github;
        let github = gh.token.is_set() || gh.app_id.is_some();
        let mut lines = vec![if github {
            "autoscaling path: on (GitHub credentials set; webhooks and polling feed it)"
                .to_string()
        } else {
            "autoscaling path: off (no GitHub credentials: set PROXY_RUNNER_GITHUB_TOKEN or github.app_id); webhooks are refused".to_string()
        }];
        lines.push(match &self.proxy {
            Some(p) => format!(
                "proxy path: on (container hooks; {} allowed image pattern(s), profile {:?}, pulls {})",
                p.images.len(),
                p.profile,
                if p.pull { "on" } else { "off" }
            ),
            None => "proxy path: delegation API only (no [proxy] section: container hooks are refused)".to_string(),
        });
        lines
    }
}
