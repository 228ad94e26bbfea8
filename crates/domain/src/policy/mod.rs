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
mod tests;
