//! Builds the local runner image without a registry.
//!
//! The engine may start with no images and nothing can be pulled, so the
//! image is built `FROM scratch` out of a build context made in memory: a
//! static busybox (for `/bin/sh` and friends), the given executable, every
//! shared library it links (found with `ldd`, loader included), and
//! `/etc/passwd` / `/etc/group` naming the non-root `runner` user (uid and
//! gid 1001). The build runs with networking disabled.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptions;
use futures::StreamExt;
use proxy_runner_domain::ports::BackendError;

use crate::backend::{DockerBackend, IMAGE_LABEL};
use crate::errors::engine_error;

/// Where Debian's `busybox-static` package installs its binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Where the executable lands inside the runner image.
pub const RUNNER_BINARY_PATH: &str = "/usr/local/bin/proxy-runner";

/// The busybox-only image the crate's tests run their containers from.
pub const TEST_BUSYBOX_IMAGE: &str = "proxy-runner-test-busybox:latest";

/// The uid and gid of the `runner` user in built images.
pub const RUNNER_UID: u32 = 1001;

/// Keeps this process from building the same tag twice at once (the loser's
/// image would be left dangling).
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What to put in a runner image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerImageOptions {
    /// Image name and tag, e.g. `proxy-runner-local-runner:dev`.
    pub tag: String,
    /// The executable copied to [`RUNNER_BINARY_PATH`].
    pub binary: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The image's `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// The image's `CMD` (arguments after the entrypoint), if any.
    pub command: Option<Vec<String>>,
}

impl RunnerImageOptions {
    /// An image running `proxy-runner sim-runner` from `binary`.
    pub fn new(tag: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        RunnerImageOptions {
            tag: tag.into(),
            binary: binary.into(),
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            entrypoint: vec![
                RUNNER_BINARY_PATH.to_string(),
                "sim-runner".to_string(),
                "--credentials-on-stdin".to_string(),
            ],
            command: None,
        }
    }
}

/// Builds (or rebuilds) the runner image described by `options`.
pub async fn build_runner_image(
    docker: &DockerBackend,
    options: &RunnerImageOptions,
) -> Result<(), BackendError> {
    let mut libraries = shared_libraries(&options.binary).await?;
    let context = if options.busybox.exists() {
        runner_build_context(options, &libraries)?
    } else {
        tracing::info!(busybox = %options.busybox.display(), "no static busybox here; the image gets this host's sh and tools");
        let (tools, more) = host_userland().await?;
        libraries.extend(more);
        libraries.sort();
        libraries.dedup();
        build_context(options, &libraries, &tools, false)?
    };
    build_from_context(docker, &options.tag, context).await
}

/// Builds the runner image unless an image with that tag exists; true when
/// it built one.
pub async fn ensure_runner_image(
    docker: &DockerBackend,
    options: &RunnerImageOptions,
) -> Result<bool, BackendError> {
    let _one_build_at_a_time = BUILD_LOCK.lock().await;
    if docker.image_exists(&options.tag).await? {
        return Ok(false);
    }
    build_runner_image(docker, options).await?;
    Ok(true)
}

/// Builds [`TEST_BUSYBOX_IMAGE`] from the busybox at `busybox`.
pub async fn build_test_busybox_image(
    docker: &DockerBackend,
    busybox: &Path,
) -> Result<(), BackendError> {
    let mut context = Context::new(Some(busybox))?;
    context.finish_dockerfile("test-busybox", &[], None, None);
    build_from_context(docker, TEST_BUSYBOX_IMAGE, context.into_tar()?).await
}

/// Builds [`TEST_BUSYBOX_IMAGE`] from [`DEFAULT_BUSYBOX`] unless present;
/// returns the image name.
pub async fn ensure_test_busybox_image(docker: &DockerBackend) -> Result<String, BackendError> {
    let _one_build_at_a_time = BUILD_LOCK.lock().await;
    if !docker.image_exists(TEST_BUSYBOX_IMAGE).await? {
        build_test_busybox_image(docker, Path::new(DEFAULT_BUSYBOX)).await?;
    }
    Ok(TEST_BUSYBOX_IMAGE.to_string())
}

/// Debian's CA bundle, copied into runner images at the same path.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The build context (a tar archive) of a runner image with busybox as its
/// shell and tools.
pub fn runner_build_context(
    options: &RunnerImageOptions,
    libraries: &[PathBuf],
) -> Result<Vec<u8>, BackendError> {
    build_context(options, libraries, &[], true)
}

/// Without busybox the image gets the host's own `sh` and a set of common
/// tools (dash and coreutils are on every Debian machine); `tools` are
/// `(host file, path in the image)` pairs, their libraries in `libraries`.
fn build_context(
    options: &RunnerImageOptions,
    libraries: &[PathBuf],
    tools: &[(PathBuf, String)],
    with_busybox: bool,
) -> Result<Vec<u8>, BackendError> {
    let mut context = Context::new(with_busybox.then_some(options.busybox.as_path()))?;
    context.add_host_file(&options.binary, RUNNER_BINARY_PATH, 0o755)?;
    for (host, inside) in tools {
        context.add_host_file(host, inside, 0o755)?;
    }
    // TLS clients (the runner talks HTTPS to GitHub) refuse to start
    // without trust roots: carry the host's bundle when it has one.
    let ca_bundle = Path::new(CA_BUNDLE);
    if ca_bundle.exists() {
        context.add_host_file(ca_bundle, CA_BUNDLE, 0o644)?;
    }
    let mut library_dirs = BTreeSet::new();
    for library in libraries {
        let inside = library
            .to_str()
            .ok_or_else(|| BackendError::Other(format!("library path {library:?} is not UTF-8")))?;
        context.add_host_file(library, inside, 0o755)?;
        if let Some(dir) = library.parent().and_then(Path::to_str) {
            library_dirs.insert(dir.to_string());
        }
    }
    let env = (!library_dirs.is_empty()).then(|| {
        (
            "LD_LIBRARY_PATH",
            library_dirs.into_iter().collect::<Vec<_>>().join(":"),
        )
    });
    context.finish_dockerfile(
        "runner",
        &options.entrypoint,
        options.command.as_deref(),
        env,
    );
    context.into_tar()
}

/// Tools the job steps of the local image can count on when it is built
/// from the host's userland (the shell is `dash`, as `/bin/sh`).
const HOST_TOOLS: &[&str] = &[
    "cat", "chmod", "cp", "cut", "date", "dirname", "basename", "echo", "env", "false", "grep",
    "head", "hostname", "id", "ls", "mkdir", "mv", "printf", "pwd", "rm", "sed", "sleep", "sort",
    "tail", "tee", "touch", "tr", "true", "uname", "wc",
];

/// The host's `/bin/sh` and [`HOST_TOOLS`] that exist here, resolved to real
/// files, with the shared libraries they need.
async fn host_userland() -> Result<(Vec<(PathBuf, String)>, Vec<PathBuf>), BackendError> {
    let find = |name: &str| {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .and_then(|p| std::fs::canonicalize(p).ok())
    };
    let shell = std::fs::canonicalize("/bin/sh").map_err(|e| {
        BackendError::Other(format!("no /bin/sh on this host to put in the image: {e}"))
    })?;
    let mut tools = vec![(shell, "/bin/sh".to_string())];
    for name in HOST_TOOLS {
        if let Some(real) = find(name) {
            tools.push((real, format!("/bin/{name}")));
        }
    }
    let mut libraries = BTreeSet::new();
    for (host, _) in &tools {
        libraries.extend(shared_libraries(host).await?);
    }
    Ok((tools, libraries.into_iter().collect()))
}

/// The shared libraries `binary` loads, the dynamic loader included; empty
/// for a static executable.
pub async fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, BackendError> {
    let output = tokio::process::Command::new("ldd")
        .arg(binary)
        .output()
        .await
        .map_err(|e| BackendError::Other(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(BackendError::Other(format!(
            "ldd {} failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse_ldd_output(&stdout).map_err(BackendError::Other)
}

/// Paths of the libraries in `ldd` output; an error names a library that
/// was not found.
pub fn parse_ldd_output(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = BTreeSet::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let candidate = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("shared library {} not found", name.trim()));
                }
                target.split_whitespace().next()
            }
            // The loader (`/lib64/ld-linux-x86-64.so.2 (0x...)`) or the vDSO.
            None => line.split_whitespace().next(),
        };
        if let Some(path) = candidate.filter(|p| p.starts_with('/')) {
            paths.insert(PathBuf::from(path));
        }
    }
    Ok(paths.into_iter().collect())
}

async fn build_from_context(
    docker: &DockerBackend,
    tag: &str,
    context: Vec<u8>,
) -> Result<(), BackendError> {
    let client = docker.client().await?;
    let options = BuildImageOptions {
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        // Nothing in the build may need the network.
        networkmode: Some("none".into()),
        ..Default::default()
    };
    let mut output = client.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = output.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(BackendError::Other(format!("building {tag}: {error}")));
            }
            Err(err) => return Err(engine_error(err)),
        };
        if let Some(detail) = info.error_detail {
            let message = detail.message.unwrap_or_default();
            return Err(BackendError::Other(format!(
                "building {tag}: {message} (after: {})",
                tail.join(" | ")
            )));
        }
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            tracing::debug!(image = %tag, "{line}");
            tail.push(line.to_string());
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
    }
    if docker.image_exists(tag).await? {
        tracing::info!(image = %tag, "image built");
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "building {tag} finished but the image is absent (after: {})",
            tail.join(" | ")
        )))
    }
}

/// An in-memory build context: busybox, a root file tree and a Dockerfile.
struct Context {
    tar: tar::Builder<Vec<u8>>,
    dockerfile: String,
}

impl Context {
    /// A context with a shell: busybox when given, else nothing yet (the
    /// caller adds the host's own shell and tools).
    fn new(busybox: Option<&Path>) -> Result<Self, BackendError> {
        let mut context = Context {
            tar: tar::Builder::new(Vec::new()),
            dockerfile: String::new(),
        };
        let uid = RUNNER_UID;
        let passwd = format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             runner:x:{uid}:{uid}:runner:/home/runner:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        );
        let group = format!("root:x:0:\nrunner:x:{uid}:\nnogroup:x:65534:\n");
        context.add_bytes("rootfs/etc/passwd", passwd.as_bytes(), 0o644)?;
        context.add_bytes("rootfs/etc/group", group.as_bytes(), 0o644)?;
        context
            .dockerfile
            .push_str("# Built in memory by proxy-runner; nothing is pulled.\nFROM scratch\n");
        match busybox {
            Some(busybox) => {
                let busybox_bytes = std::fs::read(busybox).map_err(|e| {
                    BackendError::Other(format!(
                        "cannot read busybox at {} (Debian package busybox-static): {e}",
                        busybox.display()
                    ))
                })?;
                context.add_bytes("busybox", &busybox_bytes, 0o755)?;
                context.dockerfile.push_str(&format!(
                    "COPY busybox /bin/busybox\n\
                     RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                     RUN mkdir -p /tmp /home/runner && chmod 1777 /tmp \
                     && chown {uid}:{uid} /home/runner && chmod 0755 /home/runner\n"
                ));
            }
            None => {
                // No shell to RUN anything with during the build: the
                // directories come from the archive itself.
                context.add_dir("rootfs/tmp", 0o1777, 0)?;
                context.add_dir("rootfs/home/runner", 0o755, uid)?;
            }
        }
        context.dockerfile.push_str("COPY rootfs/ /\n");
        Ok(context)
    }

    fn add_dir(&mut self, path: &str, mode: u32, owner: u32) -> Result<(), BackendError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(mode);
        header.set_uid(owner.into());
        header.set_gid(owner.into());
        header.set_mtime(0);
        self.tar
            .append_data(&mut header, path, std::io::empty())
            .map_err(|e| BackendError::Other(format!("build context: {e}")))
    }

    /// Copies a host file into the image at the absolute path `inside`.
    fn add_host_file(&mut self, host: &Path, inside: &str, mode: u32) -> Result<(), BackendError> {
        let bytes = std::fs::read(host)
            .map_err(|e| BackendError::Other(format!("cannot read {}: {e}", host.display())))?;
        let relative = inside.trim_start_matches('/');
        if relative.is_empty() || relative.split('/').any(|part| part == "..") {
            return Err(BackendError::Other(format!(
                "bad path {inside:?} for the image"
            )));
        }
        self.add_bytes(&format!("rootfs/{relative}"), &bytes, mode)
    }

    fn add_bytes(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), BackendError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        self.tar
            .append_data(&mut header, path, data)
            .map_err(|e| BackendError::Other(format!("build context: {e}")))
    }

    fn finish_dockerfile(
        &mut self,
        kind: &str,
        entrypoint: &[String],
        command: Option<&[String]>,
        env: Option<(&str, String)>,
    ) {
        let uid = RUNNER_UID;
        if let Some((name, value)) = env {
            self.dockerfile
                .push_str(&format!("ENV {name}={}\n", json(value.as_str())));
        }
        self.dockerfile
            .push_str(&format!("LABEL {IMAGE_LABEL}={}\n", json(kind)));
        self.dockerfile
            .push_str(&format!("USER {uid}:{uid}\nWORKDIR /home/runner\n"));
        if !entrypoint.is_empty() {
            self.dockerfile
                .push_str(&format!("ENTRYPOINT {}\n", json(entrypoint)));
        }
        match command {
            Some(command) => self
                .dockerfile
                .push_str(&format!("CMD {}\n", json(command))),
            None if entrypoint.is_empty() => self.dockerfile.push_str("CMD [\"/bin/sh\"]\n"),
            None => {}
        }
    }

    fn into_tar(mut self) -> Result<Vec<u8>, BackendError> {
        let dockerfile = std::mem::take(&mut self.dockerfile);
        self.add_bytes("Dockerfile", dockerfile.as_bytes(), 0o644)?;
        self.tar
            .into_inner()
            .map_err(|e| BackendError::Other(format!("build context: {e}")))
    }
}

/// JSON for Dockerfile values (exec-form arrays, quoted strings).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Strings and string lists always serialise.
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ldd_output_lists_libraries_and_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0a1c000000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1be00000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c0a0000)\n";
        assert_eq!(
            parse_ldd_output(output),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
        assert_eq!(parse_ldd_output("\tstatically linked\n"), Ok(vec![]));
        assert_eq!(
            parse_ldd_output("\tlinux-vdso.so.1 =>  (0x00007ffc8a5f2000)\n"),
            Ok(vec![])
        );
        let missing = parse_ldd_output("\tlibfoo.so.1 => not found\n");
        assert!(matches!(missing, Err(ref m) if m.contains("libfoo.so.1")));
    }

    #[test]
    fn runner_context_holds_binary_libraries_users_and_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let busybox = dir.path().join("busybox");
        let binary = dir.path().join("tool");
        let library = dir.path().join("libx.so.1");
        std::fs::write(&busybox, b"bb").expect("write");
        std::fs::write(&binary, b"bin").expect("write");
        std::fs::write(&library, b"lib").expect("write");
        let mut options = RunnerImageOptions::new("t:1", &binary);
        options.busybox = busybox;
        options.command = Some(vec!["--flag".into()]);
        let tar = runner_build_context(&options, std::slice::from_ref(&library)).expect("context");

        let mut archive = tar::Archive::new(tar.as_slice());
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("utf8");
            files.insert(path, text);
        }
        let library_inside = format!("rootfs{}", library.display());
        assert_eq!(files.get("busybox").map(String::as_str), Some("bb"));
        assert_eq!(
            files
                .get("rootfs/usr/local/bin/proxy-runner")
                .map(String::as_str),
            Some("bin")
        );
        assert_eq!(files.get(&library_inside).map(String::as_str), Some("lib"));
        assert!(files["rootfs/etc/passwd"].contains("runner:x:1001:1001:runner:/home/runner:"));
        assert!(files["rootfs/etc/group"].contains("runner:x:1001:"));
        let dockerfile = &files["Dockerfile"];
        assert!(dockerfile.contains("FROM scratch\n"));
        assert!(dockerfile.contains("USER 1001:1001\n"));
        assert!(
            dockerfile.contains(
                "ENTRYPOINT [\"/usr/local/bin/proxy-runner\",\"sim-runner\",\"--credentials-on-stdin\"]\n"
            ),
            "{dockerfile}"
        );
        assert!(dockerfile.contains("CMD [\"--flag\"]\n"));
        assert!(dockerfile.contains("LABEL proxy-runner.image=\"runner\"\n"));
        assert!(dockerfile.contains(&format!(
            "ENV LD_LIBRARY_PATH=\"{}\"\n",
            dir.path().display()
        )));
    }

    #[test]
    fn missing_busybox_is_a_clear_error() {
        let options = RunnerImageOptions {
            busybox: PathBuf::from("/nonexistent/busybox"),
            ..RunnerImageOptions::new("t:1", "/nonexistent/bin")
        };
        let err = runner_build_context(&options, &[]).expect_err("no busybox");
        assert!(matches!(err, BackendError::Other(ref m) if m.contains("busybox-static")));
    }
}
