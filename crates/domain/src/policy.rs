//! The proxy policy: which images a hook-driven job may use, which of the
//! workflow's `options:` (createOptions) are honoured, which host paths are
//! mounted, whether ports are published, and how containers are confined.
//!
//! Pure functions. The one thing that needs the filesystem, turning a mount
//! source into its canonical path, comes in as a [`Resolver`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container_hooks::{HookContainer, Mount};
use crate::job_containers::{
    ALLOWED_CAPABILITIES, BindMount, Confinement, JobContainerSpec, PortMapping, PortProtocol,
};
use crate::ports::{EnvVar, Hardening};

/// Turns a host path into its canonical form (symlinks followed, `.` and
/// `..` gone), or says why it cannot. The orchestrator passes
/// `std::fs::canonicalize`; tests pass a table.
pub type Resolver<'a> = &'a dyn Fn(&Path) -> std::result::Result<PathBuf, String>;

/// Told to the job log when the runner asks for the engine socket.
pub const DOCKER_SOCKET_NOTICE: &str = "the Docker socket is not mounted into job containers";

/// Told to the job log when port mappings are not published.
pub const PORTS_NOT_PUBLISHED_NOTICE: &str = "port mappings are not published on the host; services are reachable from the job container by their name on the job's network";

/// Where the engine's socket lives on Linux hosts.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// The engine refuses memory limits below this.
const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;

const SUPPORTED_OPTIONS: &str =
    "--cpus, --memory/-m, --env/-e, --workdir/-w, --user/-u, --hostname/-h";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("image {image:?} is not allowed by the proxy policy")]
    ImageNotAllowed { image: String },
    #[error("no image given")]
    MissingImage,
    #[error(
        "container actions built from a Dockerfile are not supported on the proxy path; use a prebuilt image"
    )]
    DockerfileUnsupported,
    #[error("createOptions: {option} is refused: {reason}")]
    OptionRefused { option: String, reason: String },
    #[error("createOptions: {option}: {reason}")]
    OptionInvalid { option: String, reason: String },
    #[error("createOptions: {0}")]
    CreateOptionsSyntax(String),
    #[error("mount of {path:?} is refused: {reason}")]
    MountRefused { path: String, reason: String },
    #[error(
        "named volume {name:?} is refused: only directories of the runner's work and externals folders are mounted"
    )]
    NamedVolumeRefused { name: String },
    #[error("port mapping {mapping:?} is invalid: {reason}")]
    PortInvalid { mapping: String, reason: String },
    #[error("proxy policy is invalid: {0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, PolicyError>;

/// How proxy-path containers are confined. See [`HardeningProfile::confinement`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardeningProfile {
    /// Root may administer its own container (install packages) but not
    /// reach beyond it.
    #[default]
    Standard,
    /// What autoscaling containers get: [`Hardening::default`].
    Strict,
}

/// Capabilities the standard profile keeps (everything else is dropped):
/// what a root `apt-get install` needs.
pub const STANDARD_CAPABILITIES: [&str; 7] = ALLOWED_CAPABILITIES;

/// CPU, memory and process limits; requests in createOptions may ask for
/// up to the maxima.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    pub default_nano_cpus: i64,
    pub max_nano_cpus: i64,
    pub default_memory_bytes: i64,
    pub max_memory_bytes: i64,
    pub pids_limit: i64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            default_nano_cpus: 1_000_000_000,
            max_nano_cpus: 2_000_000_000,
            default_memory_bytes: 2 * 1024 * 1024 * 1024,
            max_memory_bytes: 4 * 1024 * 1024 * 1024,
            pids_limit: 1024,
        }
    }
}

/// The operator's rules for hook-driven jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyPolicy {
    /// Exact image references, or prefixes ending in `*` (`ghcr.io/octo/*`;
    /// `*` alone allows every image). Empty: no image is allowed.
    pub allowed_images: Vec<String>,
    pub profile: HardeningProfile,
    pub limits: ResourceLimits,
    /// The proxy runner's work folder (`_work`) as the engine's host sees it.
    pub work_root: PathBuf,
    /// The proxy runner's `externals` folder.
    pub externals_root: PathBuf,
    /// Publish the workflow's port mappings on the host.
    pub publish_ports: bool,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            allowed_images: Vec::new(),
            profile: HardeningProfile::default(),
            limits: ResourceLimits::default(),
            work_root: PathBuf::new(),
            externals_root: PathBuf::new(),
            publish_ports: false,
        }
    }
}

/// The createOptions that were accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    /// In order; a later value of a name wins.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
}

/// Mounts that passed, and what to tell the job log about dropped ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountPlan {
    pub mounts: Vec<BindMount>,
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub ports: Vec<PortMapping>,
    pub notices: Vec<String>,
}

/// Everything the policy decided about one hook container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub image: String,
    pub env: Vec<EnvVar>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<BindMount>,
    pub ports: Vec<PortMapping>,
    pub confinement: Confinement,
    /// Lines for the job log (dropped mounts, unpublished ports).
    pub notices: Vec<String>,
}

impl ContainerPlan {
    /// The spec to create, once the caller has named and placed it.
    pub fn into_spec(
        self,
        name: String,
        labels: BTreeMap<String, String>,
        network: String,
        network_aliases: Vec<String>,
    ) -> JobContainerSpec {
        JobContainerSpec {
            name,
            image: self.image,
            env: self.env,
            entrypoint: self.entrypoint,
            command: self.command,
            working_dir: self.working_dir,
            user: self.user,
            hostname: self.hostname,
            mounts: self.mounts,
            labels,
            network,
            network_aliases,
            confinement: self.confinement,
            ports: self.ports,
            init: false,
        }
    }
}

impl ProxyPolicy {
    /// Checks the policy's own numbers.
    pub fn validate(&self) -> Result<()> {
        let l = &self.limits;
        if l.default_nano_cpus <= 0 || l.default_nano_cpus > l.max_nano_cpus {
            return Err(PolicyError::Config(
                "default CPU limit must be positive and at most the maximum".into(),
            ));
        }
        if l.default_memory_bytes < MIN_MEMORY_BYTES || l.default_memory_bytes > l.max_memory_bytes
        {
            return Err(PolicyError::Config(
                "default memory limit must be at least 6 MiB and at most the maximum".into(),
            ));
        }
        if l.pids_limit <= 0 {
            return Err(PolicyError::Config("pids limit must be positive".into()));
        }
        if let Some(bad) = self
            .allowed_images
            .iter()
            .find(|p| p.is_empty() || p.strip_suffix('*').unwrap_or(p).contains('*'))
        {
            return Err(PolicyError::Config(format!(
                "image pattern {bad:?}: only a trailing * is supported"
            )));
        }
        Ok(())
    }

    /// Whether `image` is on the allowlist: an exact match, or a match of
    /// the part before a pattern's trailing `*`.
    pub fn check_image(&self, image: &str) -> Result<()> {
        let allowed = !image.is_empty()
            && self
                .allowed_images
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => image == pattern,
                });
        if allowed {
            Ok(())
        } else {
            Err(PolicyError::ImageNotAllowed {
                image: image.to_string(),
            })
        }
    }

    /// Parses createOptions and checks the requested limits against this
    /// policy's maxima (see [`parse_create_options`] for the subset).
    pub fn create_options(&self, text: Option<&str>) -> Result<CreateOptions> {
        let options = parse_create_options(text.unwrap_or_default())?;
        let (max_cpus, max_memory) = self.maxima();
        if let Some(cpus) = options.nano_cpus
            && cpus > max_cpus
        {
            return Err(PolicyError::OptionInvalid {
                option: "--cpus".into(),
                reason: format!(
                    "{} CPUs exceeds the limit of {}",
                    format_cpus(cpus),
                    format_cpus(max_cpus)
                ),
            });
        }
        if let Some(memory) = options.memory_bytes {
            if memory > max_memory {
                return Err(PolicyError::OptionInvalid {
                    option: "--memory".into(),
                    reason: format!("{memory} bytes exceeds the limit of {max_memory} bytes"),
                });
            }
            if memory < MIN_MEMORY_BYTES {
                return Err(PolicyError::OptionInvalid {
                    option: "--memory".into(),
                    reason: format!("{memory} bytes is below the minimum of {MIN_MEMORY_BYTES}"),
                });
            }
        }
        if self.profile == HardeningProfile::Strict
            && let Some(user) = &options.user
            && is_root_user(user)
        {
            return Err(PolicyError::OptionRefused {
                option: "--user".into(),
                reason: "root is not allowed under the strict profile".into(),
            });
        }
        Ok(options)
    }

    /// CPU and memory maxima of the profile in force.
    fn maxima(&self) -> (i64, i64) {
        match self.profile {
            HardeningProfile::Standard => (self.limits.max_nano_cpus, self.limits.max_memory_bytes),
            HardeningProfile::Strict => {
                let strict = Hardening::default();
                (
                    strict.nano_cpus.min(self.limits.max_nano_cpus),
                    strict.memory_bytes.min(self.limits.max_memory_bytes),
                )
            }
        }
    }

    /// The confinement of a container under this policy's profile, with the
    /// limits that createOptions asked for (already checked).
    pub fn confinement(&self, options: &CreateOptions) -> Confinement {
        match self.profile {
            HardeningProfile::Standard => Confinement {
                capabilities: STANDARD_CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                read_only_root_filesystem: false,
                tmpfs: Vec::new(),
                pids_limit: self.limits.pids_limit,
                memory_bytes: options
                    .memory_bytes
                    .unwrap_or(self.limits.default_memory_bytes),
                nano_cpus: options.nano_cpus.unwrap_or(self.limits.default_nano_cpus),
            },
            HardeningProfile::Strict => {
                let strict = Hardening::default();
                let (max_cpus, max_memory) = self.maxima();
                Confinement {
                    capabilities: Vec::new(),
                    read_only_root_filesystem: strict.read_only_root_filesystem,
                    tmpfs: strict.tmpfs,
                    pids_limit: strict.pids_limit.min(self.limits.pids_limit),
                    memory_bytes: options.memory_bytes.unwrap_or(max_memory),
                    nano_cpus: options.nano_cpus.unwrap_or(max_cpus),
                }
            }
        }
    }

    /// The user a container runs as: the image's default (None) unless
    /// createOptions says otherwise; the strict profile never runs the
    /// image's default, which may be root.
    pub fn user(&self, options: &CreateOptions) -> Option<String> {
        match self.profile {
            HardeningProfile::Standard => options.user.clone(),
            HardeningProfile::Strict => Some(
                options
                    .user
                    .clone()
                    .unwrap_or_else(|| Hardening::default().user),
            ),
        }
    }

    /// Checks the runner's mounts. Sources must be absolute host paths whose
    /// canonical form lies inside the work or externals root; the engine's
    /// socket is dropped with [`DOCKER_SOCKET_NOTICE`]; anything else is
    /// refused, naming the path.
    pub fn check_mounts(
        &self,
        system: &[Mount],
        user: &[Mount],
        resolve: Resolver<'_>,
    ) -> Result<MountPlan> {
        let roots: Vec<PathBuf> = [&self.work_root, &self.externals_root]
            .into_iter()
            .filter(|root| root.is_absolute())
            .filter_map(|root| resolve(root).ok())
            .collect();
        let mut plan = MountPlan::default();
        let mut targets = BTreeSet::new();
        for mount in system.iter().chain(user) {
            let source = mount.source_volume_path.as_str();
            if !source.starts_with('/') {
                return Err(PolicyError::NamedVolumeRefused {
                    name: source.to_string(),
                });
            }
            if is_docker_socket(&lexical(Path::new(source))) {
                push_once(&mut plan.notices, DOCKER_SOCKET_NOTICE);
                continue;
            }
            let refused = |reason: String| PolicyError::MountRefused {
                path: source.to_string(),
                reason,
            };
            let resolved = resolve(Path::new(source))
                .map_err(|e| refused(format!("cannot be resolved: {e}")))?;
            if is_docker_socket(&resolved) {
                push_once(&mut plan.notices, DOCKER_SOCKET_NOTICE);
                continue;
            }
            if !resolved.is_absolute() || !roots.iter().any(|root| resolved.starts_with(root)) {
                return Err(refused(
                    "outside the runner's work and externals folders".into(),
                ));
            }
            let resolved = resolved
                .to_str()
                .ok_or_else(|| refused("not a UTF-8 path".into()))?
                .to_string();
            let target = mount.target_volume_path.as_str();
            check_target(target).map_err(|reason| PolicyError::MountRefused {
                path: target.to_string(),
                reason,
            })?;
            if !targets.insert(lexical(Path::new(target))) {
                return Err(PolicyError::MountRefused {
                    path: target.to_string(),
                    reason: "mounted twice".into(),
                });
            }
            plan.mounts.push(BindMount {
                source: resolved,
                target: target.to_string(),
                read_only: mount.read_only,
            });
        }
        Ok(plan)
    }

    /// Parses `[[ip:]host:]container[/tcp|/udp]` mappings; they are
    /// published only when the policy says so.
    pub fn check_ports(&self, mappings: &[String]) -> Result<PortPlan> {
        let mut plan = PortPlan::default();
        for mapping in mappings {
            let mut port = parse_port(mapping)?;
            port.publish = self.publish_ports;
            plan.ports.push(port);
        }
        if !plan.ports.is_empty() && !self.publish_ports {
            plan.notices.push(PORTS_NOT_PUBLISHED_NOTICE.to_string());
        }
        Ok(plan)
    }

    /// Applies the whole policy to one container of the runner.
    pub fn plan_container(
        &self,
        container: &HookContainer,
        resolve: Resolver<'_>,
    ) -> Result<ContainerPlan> {
        let image = match container.image.as_deref() {
            Some(image) if !image.is_empty() => image,
            _ if container
                .dockerfile
                .as_deref()
                .is_some_and(|d| !d.is_empty()) =>
            {
                return Err(PolicyError::DockerfileUnsupported);
            }
            _ => return Err(PolicyError::MissingImage),
        };
        self.check_image(image)?;
        let options = self.create_options(container.create_options.as_deref())?;
        let mounts = self.check_mounts(
            &container.system_mount_volumes,
            &container.user_mount_volumes,
            resolve,
        )?;
        let ports = self.check_ports(&container.port_mappings)?;
        // createOptions come last on the runner's own docker command line,
        // so they win over the runner's values.
        let mut env: BTreeMap<&str, &str> = container
            .environment_variables
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (name, value) in &options.env {
            env.insert(name, value);
        }
        let mut notices = mounts.notices;
        notices.extend(ports.notices);
        Ok(ContainerPlan {
            image: image.to_string(),
            env: env.into_iter().map(|(k, v)| EnvVar::plain(k, v)).collect(),
            entrypoint: container
                .entry_point
                .as_ref()
                .filter(|e| !e.is_empty())
                .map(|e| vec![e.clone()]),
            command: (!container.entry_point_args.is_empty())
                .then(|| container.entry_point_args.clone()),
            working_dir: options
                .working_dir
                .clone()
                .or_else(|| container.working_directory.clone()),
            user: self.user(&options),
            hostname: options.hostname.clone(),
            mounts: mounts.mounts,
            ports: ports.ports,
            confinement: self.confinement(&options),
            notices,
        })
    }
}

// ---------------------------------------------------------------- createOptions

/// What an option takes.
#[derive(Clone, Copy)]
enum Known {
    Cpus,
    Memory,
    Env,
    Workdir,
    User,
    Hostname,
}

fn known(name: &str) -> Option<Known> {
    Some(match name {
        "--cpus" => Known::Cpus,
        "--memory" | "-m" => Known::Memory,
        "--env" | "-e" => Known::Env,
        "--workdir" | "-w" => Known::Workdir,
        "--user" | "-u" => Known::User,
        "--hostname" | "-h" => Known::Hostname,
        _ => return None,
    })
}

/// Options refused outright, with why.
fn refused(name: &str) -> Option<&'static str> {
    Some(match name {
        "--privileged" => "it gives the container every capability and the host's devices",
        "--cap-add" => "capabilities are fixed by the hardening profile",
        "--volume" | "-v" | "--mount" => {
            "host paths are mounted only from the runner's work and externals folders"
        }
        "--network" | "--net" => "the job's network is chosen by proxy-runner",
        "--pid" => "containers never share a PID namespace",
        "--ipc" => "containers never share an IPC namespace",
        "--device" => "host devices are not passed into job containers",
        "--security-opt" => "security options are fixed by the hardening profile",
        "--userns" => "the user namespace is fixed by the engine",
        _ => return None,
    })
}

/// Parses createOptions into the safe subset: `--cpus`, `--memory`/`-m`,
/// `--env`/`-e NAME=value`, `--workdir`/`-w`, `--user`/`-u` and
/// `--hostname`/`-h`, each as `--opt value`, `--opt=value`, `-o value` or
/// `-ovalue`. Words split like a shell (quotes and backslashes; nothing is
/// expanded). Every other option is refused, naming it; values are never
/// quoted back (they may be credentials).
pub fn parse_create_options(text: &str) -> Result<CreateOptions> {
    let words = split_words(text)?;
    let mut options = CreateOptions::default();
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        let (name, inline) = if let Some(long) = word.strip_prefix("--") {
            if long.is_empty() {
                return Err(PolicyError::CreateOptionsSyntax(
                    "unexpected \"--\"; only options are accepted".into(),
                ));
            }
            match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (word.clone(), None),
            }
        } else if let Some(short) = word.strip_prefix('-').and_then(|s| s.chars().next()) {
            let value = &word[1 + short.len_utf8()..];
            let value = value.strip_prefix('=').unwrap_or(value);
            (
                format!("-{short}"),
                (!value.is_empty()).then(|| value.to_string()),
            )
        } else {
            return Err(PolicyError::CreateOptionsSyntax(
                "unexpected argument; only options are accepted".into(),
            ));
        };
        if let Some(reason) = refused(&name) {
            return Err(PolicyError::OptionRefused {
                option: name,
                reason: reason.into(),
            });
        }
        let Some(kind) = known(&name) else {
            return Err(PolicyError::OptionRefused {
                option: name,
                reason: format!("not in the supported subset ({SUPPORTED_OPTIONS})"),
            });
        };
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| PolicyError::OptionInvalid {
                    option: name.clone(),
                    reason: "needs a value".into(),
                })?,
        };
        let invalid = |reason: &str| PolicyError::OptionInvalid {
            option: name.clone(),
            reason: reason.to_string(),
        };
        match kind {
            Known::Cpus => {
                options.nano_cpus = Some(
                    parse_cpus(&value)
                        .ok_or_else(|| invalid("expects a positive number of CPUs, e.g. 1.5"))?,
                );
            }
            Known::Memory => {
                options.memory_bytes = Some(
                    parse_memory(&value)
                        .ok_or_else(|| invalid("expects a size, e.g. 512m or 2g"))?,
                );
            }
            Known::Env => {
                let Some((var, val)) = value.split_once('=') else {
                    return Err(invalid(
                        "expects NAME=value (a bare name would copy a variable of the orchestrator's environment)",
                    ));
                };
                if var.is_empty() || var.contains('\0') || val.contains('\0') {
                    return Err(invalid("not a valid environment variable"));
                }
                options.env.push((var.to_string(), val.to_string()));
            }
            Known::Workdir => {
                if !value.starts_with('/') || value.contains('\0') {
                    return Err(invalid("expects an absolute path"));
                }
                options.working_dir = Some(value);
            }
            Known::User => {
                if !is_user_spec(&value) {
                    return Err(invalid("expects name|uid[:group|gid]"));
                }
                options.user = Some(value);
            }
            Known::Hostname => {
                if !is_hostname(&value) {
                    return Err(invalid("expects an RFC 1123 host name of at most 64 bytes"));
                }
                options.hostname = Some(value);
            }
        }
    }
    Ok(options)
}

/// Splits like a POSIX shell without expansions: blanks separate words,
/// single quotes keep everything, double quotes keep everything but `\"`,
/// `\\`, `\$` and `` \` ``, a backslash outside quotes keeps the next
/// character.
pub fn split_words(text: &str) -> Result<Vec<String>> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = Quote::None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Quote::None => match c {
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                '\'' => {
                    quote = Quote::Single;
                    in_word = true;
                }
                '"' => {
                    quote = Quote::Double;
                    in_word = true;
                }
                '\\' => match chars.next() {
                    // A line continuation.
                    Some('\n') => {}
                    Some(next) => {
                        word.push(next);
                        in_word = true;
                    }
                    None => {
                        return Err(PolicyError::CreateOptionsSyntax(
                            "ends with a lone backslash".into(),
                        ));
                    }
                },
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
            Quote::Single => match c {
                '\'' => quote = Quote::None,
                c => word.push(c),
            },
            Quote::Double => match c {
                '"' => quote = Quote::None,
                '\\' => match chars.peek() {
                    Some(&next @ ('"' | '\\' | '$' | '`')) => {
                        word.push(next);
                        chars.next();
                    }
                    Some('\n') => {
                        chars.next();
                    }
                    _ => word.push('\\'),
                },
                c => word.push(c),
            },
        }
    }
    if quote != Quote::None {
        return Err(PolicyError::CreateOptionsSyntax(
            "unterminated quote".into(),
        ));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `1`, `0.5`, `.25` CPUs as NanoCPUs; None unless positive.
fn parse_cpus(text: &str) -> Option<i64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let fraction: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let nano = whole.checked_mul(1_000_000_000)?.checked_add(fraction)?;
    (nano > 0).then_some(nano)
}

fn format_cpus(nano: i64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:09}").trim_end_matches('0'))
    }
}

/// Docker's sizes: a number, an optional blank, an optional binary unit
/// (k, m, g, t, p), an optional `i` and an optional `b`, any case.
fn parse_memory(text: &str) -> Option<i64> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return None;
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    let bytes = value * 1024f64.powi(power);
    (bytes.is_finite() && bytes >= 1.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
}

fn is_user_spec(text: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !s.starts_with('-')
    };
    match text.split_once(':') {
        Some((user, group)) => part(user) && part(group),
        None => part(text),
    }
}

/// Root by name or uid (groups aside).
fn is_root_user(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or_default();
    name == "root" || name.parse::<u32>() == Ok(0)
}

fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

// ---------------------------------------------------------------- mounts

/// `.` and `..` folded and repeated slashes dropped, without the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn is_docker_socket(path: &Path) -> bool {
    DOCKER_SOCKETS.iter().any(|s| path == Path::new(s))
}

fn check_target(target: &str) -> std::result::Result<(), String> {
    if !target.starts_with('/') {
        return Err("the container path must be absolute".into());
    }
    if lexical(Path::new(target)) == Path::new("/") {
        return Err("cannot mount over the container's root".into());
    }
    Ok(())
}

fn push_once(notices: &mut Vec<String>, notice: &str) {
    if !notices.iter().any(|n| n == notice) {
        notices.push(notice.to_string());
    }
}

// ---------------------------------------------------------------- ports

fn parse_port(mapping: &str) -> Result<PortMapping> {
    let invalid = |reason: &str| PolicyError::PortInvalid {
        mapping: mapping.to_string(),
        reason: reason.to_string(),
    };
    let (body, protocol) = match mapping.rsplit_once('/') {
        Some((body, "tcp")) => (body, PortProtocol::Tcp),
        Some((body, "udp")) => (body, PortProtocol::Udp),
        Some(_) => return Err(invalid("the protocol must be tcp or udp")),
        None => (mapping, PortProtocol::Tcp),
    };
    if body.contains('-') {
        return Err(invalid("port ranges are not supported"));
    }
    // An IPv6 host address comes in brackets: [::1]:8080:80.
    let (host_ip, ports) = match body.strip_prefix('[') {
        Some(rest) => {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or_else(|| invalid("unterminated IPv6 address"))?;
            (Some(ip.to_string()), ports)
        }
        None => (None, body),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => return Err(invalid("expected [[ip:]host:]container[/protocol]")),
    };
    let port = |text: &str| text.parse::<u16>().ok().filter(|p| *p > 0);
    let container_port = port(container).ok_or_else(|| invalid("bad container port"))?;
    let host_port = match host {
        None | Some("") => None,
        Some(h) => Some(port(h).ok_or_else(|| invalid("bad host port"))?),
    };
    Ok(PortMapping {
        container_port,
        protocol,
        host_port,
        host_ip: ip.filter(|ip| !ip.is_empty()),
        publish: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_hooks::{HookArgs, HookInput};
    use crate::ports::EnvValue;

    const WORK: &str = "/Users/thomas/git/runner/_layout/_work";
    const EXTERNALS: &str = "/Users/thomas/git/runner/_layout/externals";

    fn policy() -> ProxyPolicy {
        ProxyPolicy {
            allowed_images: vec!["node:22".into(), "redis".into(), "ghcr.io/octo/*".into()],
            work_root: WORK.into(),
            externals_root: EXTERNALS.into(),
            ..ProxyPolicy::default()
        }
    }

    /// A filesystem of plain directories plus these symlinks; paths under
    /// `/missing` do not exist.
    fn resolver(
        links: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&Path) -> std::result::Result<PathBuf, String> {
        move |path: &Path| {
            let mut current = lexical(path);
            for _ in 0..40 {
                if current.starts_with("/missing") {
                    return Err("No such file or directory".into());
                }
                let Some((from, to)) = links.iter().find(|(from, _)| current.starts_with(from))
                else {
                    return Ok(current);
                };
                let rest = current.strip_prefix(from).map_err(|e| e.to_string())?;
                current = lexical(&Path::new(to).join(rest));
            }
            Err("too many levels of symbolic links".into())
        }
    }

    fn mount(source: &str, target: &str) -> Mount {
        Mount {
            source_volume_path: source.into(),
            target_volume_path: target.into(),
            read_only: false,
        }
    }

    fn fixture_input(name: &str) -> HookInput {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/container-hooks")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        HookInput::parse(&bytes).expect("fixture parses")
    }

    // ------------------------------------------------------------ images

    #[test]
    fn images_must_be_on_the_allowlist() {
        let p = policy();
        assert_eq!(p.check_image("node:22"), Ok(()));
        assert_eq!(p.check_image("redis"), Ok(()));
        assert_eq!(p.check_image("ghcr.io/octo/tool:1"), Ok(()));
        for refused in [
            "node:20",
            "node",
            "redis:7",
            "ghcr.io/other/x",
            "ghcr.io/octopus",
            "",
        ] {
            let err = p.check_image(refused).expect_err(refused);
            assert_eq!(
                err,
                PolicyError::ImageNotAllowed {
                    image: refused.into()
                }
            );
            assert!(err.to_string().contains(&format!("{refused:?}")));
        }
        let everything = ProxyPolicy {
            allowed_images: vec!["*".into()],
            ..policy()
        };
        assert_eq!(everything.check_image("anything:1"), Ok(()));
        let nothing = ProxyPolicy::default();
        assert!(nothing.check_image("node:22").is_err());
    }

    #[test]
    fn policy_numbers_and_patterns_are_validated() {
        assert_eq!(policy().validate(), Ok(()));
        let mut p = policy();
        p.allowed_images = vec!["ghcr.io/*/tool".into()];
        assert!(p.validate().is_err());
        p.allowed_images = vec!["registry.example/équipe/*".into(), "ü".into()];
        assert_eq!(p.validate(), Ok(()));
        p.allowed_images = vec![String::new()];
        assert!(p.validate().is_err());
        let mut p = policy();
        p.limits.default_nano_cpus = p.limits.max_nano_cpus + 1;
        assert!(p.validate().is_err());
        let mut p = policy();
        p.limits.default_memory_bytes = 1024;
        assert!(p.validate().is_err());
        let mut p = policy();
        p.limits.pids_limit = 0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn policy_reads_from_config() {
        let p: ProxyPolicy = serde_json::from_value(serde_json::json!({
            "allowed_images": ["node:*"],
            "profile": "strict",
            "work_root": "/srv/runner/_work",
            "limits": {"max_nano_cpus": 4000000000i64}
        }))
        .expect("config");
        assert_eq!(p.profile, HardeningProfile::Strict);
        assert_eq!(p.limits.max_nano_cpus, 4_000_000_000);
        assert_eq!(p.limits.pids_limit, 1024);
        assert!(
            serde_json::from_value::<ProxyPolicy>(serde_json::json!({"allow_everything": true}))
                .is_err()
        );
    }

    // ------------------------------------------------------------ createOptions

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words(r#"  -e 'A=x y'  -e "B=\"q\" \$HOME" -e C=a\ b --cpus=1 "" "#)
                .expect("splits"),
            vec![
                "-e",
                "A=x y",
                "-e",
                r#"B="q" $HOME"#,
                "-e",
                "C=a b",
                "--cpus=1",
                ""
            ]
        );
        assert_eq!(split_words("").expect("empty"), Vec::<String>::new());
        assert_eq!(
            split_words("-e A=1\\\n -e B=2").expect("continuation"),
            vec!["-e", "A=1", "-e", "B=2"]
        );
        assert_eq!(split_words(r#""a\b""#).expect("kept"), vec![r"a\b"]);
        for bad in ["-e 'A=1", "-e \"A=1", "-e A=1\\"] {
            assert!(
                matches!(split_words(bad), Err(PolicyError::CreateOptionsSyntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_safe_subset_parses_in_every_form() {
        let o = parse_create_options(
            "--cpus 1.5 -m 512m -e A=1 --env=B=two=2 -eC=3 -w /src --user 1000:1000 -h build-box",
        )
        .expect("parses");
        assert_eq!(
            o,
            CreateOptions {
                nano_cpus: Some(1_500_000_000),
                memory_bytes: Some(512 * 1024 * 1024),
                env: vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two=2".into()),
                    ("C".into(), "3".into())
                ],
                working_dir: Some("/src".into()),
                user: Some("1000:1000".into()),
                hostname: Some("build-box".into()),
            }
        );
        let o = parse_create_options("--memory=1g --workdir=/w -u=runner --hostname=a.b -m=2GiB")
            .expect("parses");
        assert_eq!(o.memory_bytes, Some(2 * 1024 * 1024 * 1024));
        assert_eq!(o.user.as_deref(), Some("runner"));
        assert_eq!(o.working_dir.as_deref(), Some("/w"));
        assert_eq!(
            parse_create_options("").expect("empty"),
            CreateOptions::default()
        );
    }

    #[test]
    fn every_dangerous_option_is_refused_by_name() {
        let cases = [
            ("--privileged", "--privileged"),
            ("--privileged=true", "--privileged"),
            ("--cap-add SYS_ADMIN", "--cap-add"),
            ("--cap-add=ALL", "--cap-add"),
            ("-v /:/host", "-v"),
            ("-v/etc:/etc", "-v"),
            ("--volume /etc:/etc", "--volume"),
            ("--volume=/etc:/etc", "--volume"),
            ("--mount type=bind,src=/,dst=/h", "--mount"),
            ("--network host", "--network"),
            ("--net=host", "--net"),
            ("--pid host", "--pid"),
            ("--ipc=host", "--ipc"),
            ("--device /dev/kvm", "--device"),
            ("--security-opt seccomp=unconfined", "--security-opt"),
            ("--userns host", "--userns"),
        ];
        for (text, option) in cases {
            match parse_create_options(&format!("--cpus 1 {text}")) {
                Err(PolicyError::OptionRefused { option: o, reason }) => {
                    assert_eq!(o, option, "{text}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_options_are_refused_by_name_without_their_values() {
        for (text, option) in [
            ("--health-cmd 'redis-cli ping'", "--health-cmd"),
            ("--env-file /etc/secrets", "--env-file"),
            ("--cap-drop ALL", "--cap-drop"),
            ("--tmpfs /run", "--tmpfs"),
            ("-it", "-i"),
            ("-p 80:80", "-p"),
            ("--rm", "--rm"),
            ("--label x=TOKEN123", "--label"),
        ] {
            let err = parse_create_options(text).expect_err(text);
            assert!(
                matches!(&err, PolicyError::OptionRefused { option: o, .. } if o == option),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains("supported subset"), "{err}");
            assert!(!err.to_string().contains("TOKEN123"));
        }
        assert!(matches!(
            parse_create_options("ubuntu"),
            Err(PolicyError::CreateOptionsSyntax(_))
        ));
        assert!(matches!(
            parse_create_options("-- --cpus 1"),
            Err(PolicyError::CreateOptionsSyntax(_))
        ));
    }

    #[test]
    fn bad_values_are_refused_naming_the_option() {
        for (text, option) in [
            ("--cpus", "--cpus"),
            ("--cpus 0", "--cpus"),
            ("--cpus -1", "--cpus"),
            ("--cpus lots", "--cpus"),
            ("--cpus 1.0000000001", "--cpus"),
            ("-m", "-m"),
            ("-m 12q", "-m"),
            ("--memory 0", "--memory"),
            ("-e NAME_ONLY", "-e"),
            ("--env =x", "--env"),
            ("-w relative/dir", "-w"),
            ("--user 'a b'", "--user"),
            ("-u :0", "-u"),
            ("--hostname -bad", "--hostname"),
            ("-h a_b", "-h"),
        ] {
            let err = parse_create_options(text).expect_err(text);
            assert!(
                matches!(&err, PolicyError::OptionInvalid { option: o, .. } if o == option),
                "{text}: {err:?}"
            );
        }
        // The value of a refused -e is not echoed.
        let err = parse_create_options("-e SECRET_TOKEN").expect_err("bare name");
        assert!(!err.to_string().contains("SECRET_TOKEN"), "{err}");
    }

    #[test]
    fn limits_are_checked_against_the_maxima() {
        let p = policy();
        assert_eq!(
            p.create_options(Some("--cpus 2 -m 4g"))
                .expect("at the maxima"),
            CreateOptions {
                nano_cpus: Some(2_000_000_000),
                memory_bytes: Some(4 * 1024 * 1024 * 1024),
                ..CreateOptions::default()
            }
        );
        let err = p.create_options(Some("--cpus 2.5")).expect_err("over");
        assert_eq!(
            err.to_string(),
            "createOptions: --cpus: 2.5 CPUs exceeds the limit of 2"
        );
        assert!(matches!(
            p.create_options(Some("--memory 5g")),
            Err(PolicyError::OptionInvalid { option, .. }) if option == "--memory"
        ));
        assert!(matches!(
            p.create_options(Some("-m 1m")),
            Err(PolicyError::OptionInvalid { option, .. }) if option == "--memory"
        ));
        assert_eq!(
            p.create_options(None).expect("none"),
            CreateOptions::default()
        );
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("1b"), Some(1));
        assert_eq!(parse_memory("2k"), Some(2048));
        assert_eq!(parse_memory("1.5g"), Some(1536 * 1024 * 1024));
        assert_eq!(parse_memory("1 GB"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_memory("3MiB"), Some(3 * 1024 * 1024));
        for bad in ["", "m", ".5g", "1.2.3m", "1x", "-1m", "1 g b"] {
            assert_eq!(parse_memory(bad), None, "{bad}");
        }
        assert_eq!(parse_cpus(".25"), Some(250_000_000));
        assert_eq!(parse_cpus("3"), Some(3_000_000_000));
        assert_eq!(parse_cpus("0.000000001"), Some(1));
        assert_eq!(parse_cpus("."), None);
        assert_eq!(format_cpus(1_250_000_000), "1.25");
    }

    // ------------------------------------------------------------ mounts

    #[test]
    fn fixture_mounts_drop_the_socket_and_refuse_the_named_volume() {
        let input = fixture_input("prepare-job.json");
        let HookArgs::PrepareJob(args) = input.args else {
            panic!("prepare");
        };
        let c = args.container.expect("container");
        let resolve = resolver(&[]);
        let p = policy();
        // The user's named volume is refused...
        let err = p
            .check_mounts(&c.system_mount_volumes, &c.user_mount_volumes, &resolve)
            .expect_err("named volume");
        assert_eq!(
            err,
            PolicyError::NamedVolumeRefused {
                name: "my_docker_volume".into()
            }
        );
        // ...and without it, the system mounts pass but the socket.
        let plan = p
            .check_mounts(&c.system_mount_volumes, &[], &resolve)
            .expect("system mounts");
        assert_eq!(plan.notices, vec![DOCKER_SOCKET_NOTICE.to_string()]);
        assert_eq!(plan.mounts.len(), 7);
        assert!(
            plan.mounts
                .iter()
                .all(|m| !m.source.contains("docker.sock"))
        );
        assert_eq!(
            plan.mounts[1],
            BindMount {
                source: EXTERNALS.into(),
                target: "/__e".into(),
                read_only: true,
            }
        );
        assert_eq!(plan.mounts[0].source, WORK);
        assert_eq!(plan.mounts[0].target, "/__w");
    }

    #[test]
    fn the_socket_is_dropped_however_it_is_spelled() {
        let p = policy();
        let resolve = resolver(&[
            ("/var/run", "/run"),
            (
                "/Users/thomas/git/runner/_layout/_work/sock",
                "/run/docker.sock",
            ),
        ]);
        for source in [
            "/var/run/docker.sock",
            "//var/run//docker.sock",
            "/run/docker.sock",
            "/var/run/./docker.sock",
            "/tmp/../var/run/docker.sock",
            "/Users/thomas/git/runner/_layout/_work/sock",
        ] {
            let plan = p
                .check_mounts(&[mount(source, "/var/run/docker.sock")], &[], &resolve)
                .expect(source);
            assert!(plan.mounts.is_empty(), "{source}");
            assert_eq!(
                plan.notices,
                vec![DOCKER_SOCKET_NOTICE.to_string()],
                "{source}"
            );
        }
        // Several socket mounts, one notice.
        let plan = p
            .check_mounts(
                &[mount("/var/run/docker.sock", "/a")],
                &[mount("/run/docker.sock", "/b")],
                &resolve,
            )
            .expect("dropped");
        assert_eq!(plan.notices.len(), 1);
    }

    #[test]
    fn sources_outside_the_roots_are_refused_by_path() {
        let p = policy();
        let resolve = resolver(&[]);
        for source in [
            "/etc",
            "/",
            "/Users/thomas/git/runner/_layout/_work2",
            "/Users/thomas/git/runner/_layout",
            "/Users/thomas/git/runner/_layout/_work/../secrets",
            "/home/user/.ssh",
        ] {
            let err = p
                .check_mounts(&[], &[mount(source, "/x")], &resolve)
                .expect_err(source);
            assert!(
                matches!(&err, PolicyError::MountRefused { path, .. } if path == source),
                "{source}: {err:?}"
            );
            assert!(err.to_string().contains(source));
        }
        for name in ["my_docker_volume", "cache", "./relative"] {
            assert_eq!(
                p.check_mounts(&[mount(name, "/x")], &[], &resolve),
                Err(PolicyError::NamedVolumeRefused { name: name.into() })
            );
        }
    }

    #[test]
    fn symlinks_escaping_the_roots_are_refused() {
        let p = policy();
        let resolve = resolver(&[
            ("/Users/thomas/git/runner/_layout/_work/repo/evil", "/etc"),
            (
                "/Users/thomas/git/runner/_layout/_work/repo/ok",
                "/Users/thomas/git/runner/_layout/externals/node",
            ),
        ]);
        let err = p
            .check_mounts(
                &[],
                &[mount(
                    "/Users/thomas/git/runner/_layout/_work/repo/evil/shadow",
                    "/x",
                )],
                &resolve,
            )
            .expect_err("escape");
        assert!(
            matches!(&err, PolicyError::MountRefused { path, reason }
                if path.ends_with("evil/shadow") && reason.contains("outside")),
            "{err:?}"
        );
        // A link from one root into the other is fine, and the canonical
        // path is what gets mounted.
        let plan = p
            .check_mounts(
                &[],
                &[mount(
                    "/Users/thomas/git/runner/_layout/_work/repo/ok",
                    "/node",
                )],
                &resolve,
            )
            .expect("inside");
        assert_eq!(
            plan.mounts[0].source,
            "/Users/thomas/git/runner/_layout/externals/node"
        );
        // A root that is itself a symlink is compared in its canonical form.
        let linked = ProxyPolicy {
            work_root: "/srv/work".into(),
            ..policy()
        };
        let resolve = resolver(&[("/srv/work", "/data/work")]);
        let plan = linked
            .check_mounts(&[mount("/srv/work/_temp", "/__w/_temp")], &[], &resolve)
            .expect("inside the linked root");
        assert_eq!(plan.mounts[0].source, "/data/work/_temp");
    }

    #[test]
    fn unresolvable_sources_and_bad_targets_are_refused() {
        let p = policy();
        let resolve = resolver(&[]);
        let err = p
            .check_mounts(&[mount("/missing/dir", "/x")], &[], &resolve)
            .expect_err("missing");
        assert!(matches!(&err, PolicyError::MountRefused { path, reason }
            if path == "/missing/dir" && reason.contains("No such file")));
        for target in ["relative", "/", "//."] {
            let err = p
                .check_mounts(&[mount(WORK, target)], &[], &resolve)
                .expect_err(target);
            assert!(matches!(&err, PolicyError::MountRefused { path, .. } if path == target));
        }
        let err = p
            .check_mounts(
                &[mount(WORK, "/__w")],
                &[mount(EXTERNALS, "/__w/")],
                &resolve,
            )
            .expect_err("twice");
        assert!(err.to_string().contains("mounted twice"));
        // Without usable roots nothing is mounted.
        let rootless = ProxyPolicy::default();
        assert!(
            rootless
                .check_mounts(&[mount(WORK, "/__w")], &[], &resolve)
                .is_err()
        );
    }

    // ------------------------------------------------------------ ports

    #[test]
    fn ports_are_parsed_and_published_only_when_allowed() {
        let mappings: Vec<String> = [
            "80:8080",
            "8088",
            "127.0.0.1:5432:5432",
            "53:53/udp",
            "[::1]:9000:9000/tcp",
            "127.0.0.1::6379",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let plan = policy().check_ports(&mappings).expect("ports");
        assert_eq!(plan.notices, vec![PORTS_NOT_PUBLISHED_NOTICE.to_string()]);
        assert!(plan.ports.iter().all(|p| !p.publish));
        let p = &plan.ports;
        assert_eq!((p[0].host_port, p[0].container_port), (Some(80), 8080));
        assert_eq!((p[1].host_port, p[1].container_port), (None, 8088));
        assert_eq!(p[2].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[3].protocol, PortProtocol::Udp);
        assert_eq!(p[4].host_ip.as_deref(), Some("::1"));
        assert_eq!((p[5].host_port, p[5].container_port), (None, 6379));

        let publishing = ProxyPolicy {
            publish_ports: true,
            ..policy()
        };
        let plan = publishing.check_ports(&mappings).expect("ports");
        assert!(plan.notices.is_empty());
        assert!(plan.ports.iter().all(|p| p.publish));
        assert!(policy().check_ports(&[]).expect("none").notices.is_empty());

        for bad in [
            "",
            "http",
            "80:",
            "0",
            "70000",
            "8000-8010:8000-8010",
            "80/sctp",
            "a:b:c:d",
            "[::1:80:80",
        ] {
            let err = policy().check_ports(&[bad.to_string()]).expect_err(bad);
            assert!(matches!(&err, PolicyError::PortInvalid { mapping, .. } if mapping == bad));
        }
    }

    // ------------------------------------------------------------ profiles

    #[test]
    fn the_standard_profile_keeps_what_apt_needs_and_the_image_user() {
        let p = policy();
        let options = p.create_options(Some("--cpus 1.5")).expect("options");
        let c = p.confinement(&options);
        assert_eq!(
            c.capabilities,
            vec![
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETGID",
                "SETUID"
            ]
        );
        assert!(!c.read_only_root_filesystem);
        assert!(c.tmpfs.is_empty());
        assert_eq!(c.nano_cpus, 1_500_000_000);
        assert_eq!(c.memory_bytes, p.limits.default_memory_bytes);
        assert_eq!(c.pids_limit, p.limits.pids_limit);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(p.user(&options), None);
        let root = p.create_options(Some("--user 0:0")).expect("root allowed");
        assert_eq!(p.user(&root).as_deref(), Some("0:0"));
    }

    #[test]
    fn the_strict_profile_is_the_autoscaling_hardening() {
        let p = ProxyPolicy {
            profile: HardeningProfile::Strict,
            ..policy()
        };
        let strict = Hardening::default();
        let options = p.create_options(None).expect("none");
        let c = p.confinement(&options);
        assert!(c.capabilities.is_empty());
        assert!(c.read_only_root_filesystem);
        assert_eq!(c.tmpfs, strict.tmpfs);
        assert_eq!(c.pids_limit, strict.pids_limit);
        assert_eq!(c.memory_bytes, strict.memory_bytes);
        assert_eq!(c.nano_cpus, strict.nano_cpus);
        assert_eq!(p.user(&options), Some(strict.user.clone()));
        // Requests may lower the limits, not raise them.
        let lower = p.create_options(Some("-m 512m --cpus 0.5")).expect("lower");
        assert_eq!(p.confinement(&lower).memory_bytes, 512 * 1024 * 1024);
        assert!(p.create_options(Some("--cpus 2")).is_err());
        for root in ["--user root", "-u 0", "-u 0:1001"] {
            assert!(
                matches!(p.create_options(Some(root)), Err(PolicyError::OptionRefused { option, .. }) if option == "--user"),
                "{root}"
            );
        }
        let other = p.create_options(Some("-u 2000:2000")).expect("non-root");
        assert_eq!(p.user(&other).as_deref(), Some("2000:2000"));
    }

    // ------------------------------------------------------------ whole plans

    #[test]
    fn a_fixture_container_becomes_a_plan() {
        let HookArgs::PrepareJob(args) = fixture_input("prepare-job.json").args else {
            panic!("prepare");
        };
        let mut c = args.container.expect("container");
        c.user_mount_volumes.clear();
        c.create_options = Some("--cpus 1 -e NODE_ENV=production -w /__w/other".into());
        let plan = policy().plan_container(&c, &resolver(&[])).expect("plan");
        assert_eq!(plan.image, "node:22");
        let env: Vec<(String, String)> = plan
            .env
            .iter()
            .map(|v| match &v.value {
                EnvValue::Plain(p) => (v.name.clone(), p.clone()),
                EnvValue::Secret(_) => panic!("job env is plain"),
            })
            .collect();
        assert_eq!(
            env,
            vec![("NODE_ENV".to_string(), "production".to_string())]
        );
        assert_eq!(plan.working_dir.as_deref(), Some("/__w/other"));
        assert_eq!(plan.user, None);
        assert_eq!(plan.entrypoint, None);
        assert_eq!(plan.confinement.nano_cpus, 1_000_000_000);
        assert_eq!(plan.mounts.len(), 7);
        assert_eq!(plan.ports.len(), 1);
        assert!(!plan.ports[0].publish);
        assert_eq!(
            plan.notices,
            vec![
                DOCKER_SOCKET_NOTICE.to_string(),
                PORTS_NOT_PUBLISHED_NOTICE.to_string()
            ]
        );
        let spec = plan.into_spec("job-1".into(), BTreeMap::new(), "net".into(), vec![]);
        assert_eq!(spec.image, "node:22");
        assert_eq!(spec.network, "net");
        assert!(!spec.init);

        let service = &args.services[0];
        let mut service = service.clone();
        service.user_mount_volumes.clear();
        let plan = policy()
            .plan_container(&service, &resolver(&[]))
            .expect("service");
        assert_eq!(plan.image, "redis");
        assert_eq!(plan.ports.len(), 2);

        let mut refused = c.clone();
        refused.image = Some("node:20".into());
        assert_eq!(
            policy()
                .plan_container(&refused, &resolver(&[]))
                .map(|_| ()),
            Err(PolicyError::ImageNotAllowed {
                image: "node:20".into()
            })
        );
        let mut dockerfile = c.clone();
        dockerfile.image = None;
        dockerfile.dockerfile = Some("Dockerfile".into());
        assert_eq!(
            policy()
                .plan_container(&dockerfile, &resolver(&[]))
                .map(|_| ()),
            Err(PolicyError::DockerfileUnsupported)
        );
    }

    #[test]
    fn a_container_step_keeps_its_entry_point_and_arguments() {
        let HookArgs::RunContainerStep(c) = fixture_input("run-container-step.json").args else {
            panic!("container step");
        };
        let mut c = *c;
        c.user_mount_volumes.clear();
        let plan = policy().plan_container(&c, &resolver(&[])).expect("plan");
        assert_eq!(plan.entrypoint, Some(vec!["bash".to_string()]));
        assert_eq!(
            plan.command,
            Some(vec!["-e".to_string(), "example-script.sh".to_string()])
        );
        // `//Users/...` resolves like `/Users/...`.
        assert!(
            plan.mounts
                .iter()
                .any(|m| m.source == format!("{WORK}/_temp/_github_home"))
        );
    }
}
