//! What the simulated runner needs to run a job the way the real runner
//! does around hooks: the work directory layout and its paths inside a job
//! container, the per-step file commands (GITHUB_ENV, GITHUB_PATH...), the
//! hook settings of the runner's environment, and the container hooks'
//! input and response files (actions/runner ContainerHookManager).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::protocol::{ContainerSpec, JobAssignment};

pub(crate) const HOOK_JOB_STARTED: &str = "ACTIONS_RUNNER_HOOK_JOB_STARTED";
pub(crate) const HOOK_JOB_COMPLETED: &str = "ACTIONS_RUNNER_HOOK_JOB_COMPLETED";
pub(crate) const CONTAINER_HOOKS: &str = "ACTIONS_RUNNER_CONTAINER_HOOKS";
pub(crate) const REQUIRE_JOB_CONTAINER: &str = "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER";
/// What the real runner says when it refuses a job without a container.
pub(crate) const JOB_CONTAINER_REQUIRED: &str = "Jobs without a job container are forbidden on this runner, please add a 'container:' to your job or contact your self-hosted runner administrator.";

/// Largest file-command file read after a step.
const MAX_FILE_COMMAND: u64 = 1024 * 1024;

/// The hooks configured in the runner's environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookSettings {
    pub job_started: Option<String>,
    pub job_completed: Option<String>,
    pub container_hooks: Option<String>,
    pub require_job_container: bool,
}

impl HookSettings {
    pub fn from_env(env: &[(String, String)]) -> HookSettings {
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        HookSettings {
            job_started: get(HOOK_JOB_STARTED),
            job_completed: get(HOOK_JOB_COMPLETED),
            container_hooks: get(CONTAINER_HOOKS),
            require_job_container: get(REQUIRE_JOB_CONTAINER)
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
        }
    }

    pub fn any_hook(&self) -> bool {
        self.job_started.is_some() || self.job_completed.is_some() || self.container_hooks.is_some()
    }
}

/// How a hook file is run: `.sh` as `bash -e <path>` (or `sh -e` without
/// bash), like the real runner. Other kinds are not simulated.
pub(crate) fn hook_command(
    path: &str,
    search_path: Option<&str>,
) -> Result<(PathBuf, Vec<String>), String> {
    let file = Path::new(path);
    if !file.is_file() {
        return Err(format!("File doesn't exist: '{path}'"));
    }
    match file.extension().and_then(|e| e.to_str()) {
        Some("sh") => {
            let shell = super::process::which("bash", search_path)
                .or_else(|| super::process::which("sh", search_path))
                .ok_or_else(|| "neither bash nor sh is on the PATH".to_string())?;
            Ok((shell, vec!["-e".to_string(), path.to_string()]))
        }
        Some("js") | Some("ps1") => Err(format!(
            "the simulated runner runs only .sh hooks, not '{path}'"
        )),
        _ => Err(format!(
            "Invalid file extension at '{path}': a hook must be a .sh, .js or .ps1 file"
        )),
    }
}

/// Where a job's files are on the host, and where the job container sees
/// them (the runner's system mounts).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `{root}/_work` (or the JIT config's work folder).
    pub work: PathBuf,
    pub externals: PathBuf,
    /// The repository's name (GITHUB_WORKSPACE is `work/name/name`).
    pub repo_name: String,
}

impl Layout {
    /// Creates the runner's directories for a job of `repository`.
    pub fn create(root: &Path, work_folder: &str, repository: &str) -> io::Result<Layout> {
        std::fs::create_dir_all(root)?;
        let root = std::fs::canonicalize(root)?;
        let folder = if work_folder.trim().is_empty() {
            "_work"
        } else {
            work_folder.trim()
        };
        let repo_name = repository
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("repo")
            .to_string();
        let layout = Layout {
            work: root.join(folder),
            externals: root.join("externals"),
            repo_name,
        };
        for dir in [
            layout.workspace(),
            layout.externals.clone(),
            layout.actions(),
            layout.tool(),
            layout.github_home(),
            layout.github_workflow(),
            layout.responses(),
            layout.file_commands(),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(layout)
    }

    pub fn temp(&self) -> PathBuf {
        self.work.join("_temp")
    }
    pub fn actions(&self) -> PathBuf {
        self.work.join("_actions")
    }
    pub fn tool(&self) -> PathBuf {
        self.work.join("_tool")
    }
    pub fn github_home(&self) -> PathBuf {
        self.temp().join("_github_home")
    }
    pub fn github_workflow(&self) -> PathBuf {
        self.temp().join("_github_workflow")
    }
    pub fn responses(&self) -> PathBuf {
        self.temp().join("_runner_hook_responses")
    }
    pub fn file_commands(&self) -> PathBuf {
        self.temp().join("_runner_file_commands")
    }
    /// RUNNER_WORKSPACE.
    pub fn runner_workspace(&self) -> PathBuf {
        self.work.join(&self.repo_name)
    }
    /// GITHUB_WORKSPACE.
    pub fn workspace(&self) -> PathBuf {
        self.runner_workspace().join(&self.repo_name)
    }

    /// Host path -> path in the job container (most specific mount first).
    pub fn container_path(&self, host: &Path) -> String {
        let mappings = [
            (self.github_home(), "/github/home"),
            (self.github_workflow(), "/github/workflow"),
            (self.work.clone(), "/__w"),
            (self.externals.clone(), "/__e"),
        ];
        for (source, target) in mappings {
            if let Ok(rest) = host.strip_prefix(&source) {
                return if rest.as_os_str().is_empty() {
                    target.to_string()
                } else {
                    format!("{target}/{}", rest.display())
                };
            }
        }
        host.display().to_string()
    }

    /// The job container's system mounts, in the runner's order.
    pub fn system_mounts(&self) -> Value {
        let mount = |source: &Path, target: &str, read_only: bool| {
            json!({
                "sourceVolumePath": source.display().to_string(),
                "targetVolumePath": target,
                "readOnly": read_only,
            })
        };
        Value::from(vec![
            mount(
                Path::new("/var/run/docker.sock"),
                "/var/run/docker.sock",
                false,
            ),
            mount(&self.work, "/__w", false),
            mount(&self.externals, "/__e", true),
            mount(&self.temp(), "/__w/_temp", false),
            mount(&self.actions(), "/__w/_actions", false),
            mount(&self.tool(), "/__w/_tool", false),
            mount(&self.github_home(), "/github/home", false),
            mount(&self.github_workflow(), "/github/workflow", false),
        ])
    }
}

/// The files of one step's file commands (GITHUB_ENV, GITHUB_PATH,
/// GITHUB_OUTPUT, GITHUB_STATE, GITHUB_STEP_SUMMARY).
#[derive(Debug, Clone)]
pub(crate) struct FileCommands {
    env: PathBuf,
    path: PathBuf,
    output: PathBuf,
    state: PathBuf,
    summary: PathBuf,
}

impl FileCommands {
    pub fn create(layout: &Layout) -> io::Result<FileCommands> {
        let dir = layout.file_commands();
        let file = |prefix: &str| -> io::Result<PathBuf> {
            let path = dir.join(format!("{prefix}_{}", uuid::Uuid::now_v7()));
            std::fs::File::create(&path)?;
            Ok(path)
        };
        Ok(FileCommands {
            env: file("set_env")?,
            path: file("add_path")?,
            output: file("set_output")?,
            state: file("save_state")?,
            summary: file("step_summary")?,
        })
    }

    /// The variables that name the files, with `show` mapping host paths.
    pub fn vars(&self, show: &dyn Fn(&Path) -> String) -> Vec<(String, String)> {
        [
            ("GITHUB_ENV", &self.env),
            ("GITHUB_PATH", &self.path),
            ("GITHUB_OUTPUT", &self.output),
            ("GITHUB_STATE", &self.state),
            ("GITHUB_STEP_SUMMARY", &self.summary),
        ]
        .into_iter()
        .map(|(k, p)| (k.to_string(), show(p)))
        .collect()
    }

    /// Applies what the step wrote: GITHUB_PATH entries go in front of the
    /// path (the newest first), GITHUB_ENV variables into later steps' env.
    pub fn apply(&self, prepend_path: &mut Vec<String>, job_env: &mut BTreeMap<String, String>) {
        for line in read_bounded(&self.path).lines() {
            let entry = line.trim();
            if entry.is_empty() {
                continue;
            }
            prepend_path.retain(|p| p != entry);
            prepend_path.push(entry.to_string());
        }
        job_env.extend(parse_env_file(&read_bounded(&self.env)));
    }
}

fn read_bounded(path: &Path) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(MAX_FILE_COMMAND).read_to_string(&mut text);
    }
    text
}

/// `NAME=value` lines and `NAME<<DELIMITER` ... `DELIMITER` blocks.
pub(crate) fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value: Vec<&str> = Vec::new();
            for l in lines.by_ref() {
                if l == delimiter {
                    break;
                }
                value.push(l);
            }
            if !name.is_empty() {
                vars.push((name.to_string(), value.join("\n")));
            }
        } else if let Some((name, value)) = line.split_once('=')
            && !name.is_empty()
        {
            vars.push((name.to_string(), value.to_string()));
        }
    }
    vars
}

/// The runner's context variables of a job (GITHUB_*, RUNNER_*, CI), with
/// paths shown by `show` (host paths for hooks, container paths for steps
/// in a job container).
pub(crate) fn context_env(
    job: &JobAssignment,
    runner_name: &str,
    server_url: &str,
    layout: &Layout,
    files: &FileCommands,
    show: &dyn Fn(&Path) -> String,
) -> Vec<(String, String)> {
    let owner = job.repository.split('/').next().unwrap_or_default();
    let mut env: Vec<(String, String)> = [
        ("CI", "true".to_string()),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_JOB", job.name.clone()),
        ("GITHUB_RUN_ID", job.run_id.to_string()),
        ("GITHUB_RUN_ATTEMPT", job.run_attempt.to_string()),
        ("GITHUB_WORKFLOW", job.workflow.clone()),
        ("GITHUB_REPOSITORY", job.repository.clone()),
        ("GITHUB_REPOSITORY_OWNER", owner.to_string()),
        ("GITHUB_SERVER_URL", server_url.to_string()),
        ("GITHUB_API_URL", server_url.to_string()),
        ("GITHUB_WORKSPACE", show(&layout.workspace())),
        ("RUNNER_NAME", runner_name.to_string()),
        ("RUNNER_OS", "Linux".to_string()),
        ("RUNNER_ARCH", "X64".to_string()),
        ("RUNNER_ENVIRONMENT", "self-hosted".to_string()),
        ("RUNNER_TEMP", show(&layout.temp())),
        ("RUNNER_TOOL_CACHE", show(&layout.tool())),
        ("RUNNER_WORKSPACE", show(&layout.runner_workspace())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(sha) = &job.head_sha {
        env.push(("GITHUB_SHA".into(), sha.clone()));
    }
    if let Some(branch) = &job.head_branch {
        env.push(("GITHUB_REF".into(), format!("refs/heads/{branch}")));
        env.push(("GITHUB_REF_NAME".into(), branch.clone()));
        env.push(("GITHUB_REF_TYPE".into(), "branch".into()));
    }
    env.extend(files.vars(show));
    env
}

/// The registry host of an image name, as the runner derives `serverUrl`
/// ("" for Docker Hub).
pub(crate) fn registry_server(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => String::new(),
    }
}

/// A `volumes:` entry: `target`, `source:target`, `target:ro` or
/// `source:target:ro`.
fn user_mount(volume: &str) -> Value {
    let parts: Vec<&str> = volume.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target, mode] => (Some(*source), *target, mode.eq_ignore_ascii_case("ro")),
        [target, mode] if mode.eq_ignore_ascii_case("ro") => (None, *target, true),
        [source, target] => (Some(*source), *target, false),
        _ => (None, volume, false),
    };
    json!({"sourceVolumePath": source, "targetVolumePath": target, "readOnly": read_only})
}

/// A HookContainer: the job container (with `layout`: working directory
/// and system mounts) or a service (with its context name).
fn hook_container(
    spec: &ContainerSpec,
    layout: Option<&Layout>,
    context_name: Option<&str>,
) -> Value {
    let mut c = json!({
        "image": spec.image,
        "dockerfile": null,
        "entryPoint": null,
        "entryPointArgs": [],
        "workingDirectory": layout.map(|l| l.container_path(&l.workspace())),
        "createOptions": spec.options,
        "registry": spec.credentials.as_ref().map(|c| json!({
            "username": c.username,
            "password": c.password,
            "serverUrl": registry_server(&spec.image),
        })),
        "environmentVariables": spec.env,
        "portMappings": spec.ports,
        "systemMountVolumes": layout.map(Layout::system_mounts).unwrap_or_else(|| json!([])),
        "userMountVolumes": spec.volumes.iter().map(|v| user_mount(v)).collect::<Vec<_>>(),
    });
    if let Some(name) = context_name {
        c["contextName"] = json!(name);
    }
    c
}

/// `prepare_job` args: `{container, services}`.
pub(crate) fn prepare_job_args(job: &JobAssignment, layout: &Layout) -> Value {
    json!({
        "container": job.container.as_ref().map(|c| hook_container(c, Some(layout), None)),
        "services": job
            .services
            .iter()
            .map(|(name, spec)| hook_container(spec, None, Some(name)))
            .collect::<Vec<_>>(),
    })
}

/// The shell of a `run:` step in a job container and its arguments, as the
/// runner formats them: `sh -e {0}` by default, `bash --noprofile --norc
/// -eo pipefail {0}` for `shell: bash`.
pub(crate) fn container_shell(shell: Option<&str>, script: &str) -> (String, Vec<String>) {
    match shell {
        Some("bash") => (
            "bash".to_string(),
            ["--noprofile", "--norc", "-eo", "pipefail", script]
                .map(str::to_string)
                .to_vec(),
        ),
        _ => ("sh".to_string(), vec!["-e".to_string(), script.to_string()]),
    }
}

/// One line of hook input.
pub(crate) fn hook_input(
    command: &str,
    response_file: &Path,
    args: Value,
    state: &Value,
) -> Vec<u8> {
    let mut line = json!({
        "command": command,
        "responseFile": response_file.display().to_string(),
        "args": args,
        "state": state,
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Reads (and deletes) a hook's response file. `Ok(None)`: no response;
/// with `require_alpine` (prepare_job of a job with a container) a missing
/// response or `isAlpine` is an error, as in the runner.
pub(crate) fn read_response(
    path: &Path,
    command: &str,
    require_alpine: bool,
) -> Result<Option<Value>, String> {
    use std::io::Read as _;
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(16 * 1024 * 1024).read_to_string(&mut text));
    let _ = std::fs::remove_file(path);
    if read.is_err() || text.trim().is_empty() {
        return if require_alpine {
            Err(format!(
                "Response file is required but not found for the hook running command '{command}'"
            ))
        } else {
            Ok(None)
        };
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the response file of command '{command}' is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "the response file of command '{command}' must hold a JSON object"
        ));
    }
    if require_alpine && !value.get("isAlpine").is_some_and(Value::is_boolean) {
        return Err(
            "The property 'isAlpine' is required but was not found in the response file.".into(),
        );
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            work: PathBuf::from("/r/_work"),
            externals: PathBuf::from("/r/externals"),
            repo_name: "app".into(),
        }
    }

    #[test]
    fn host_paths_map_to_the_container() {
        let l = layout();
        assert_eq!(l.container_path(&l.workspace()), "/__w/app/app");
        assert_eq!(l.container_path(&l.temp().join("x.sh")), "/__w/_temp/x.sh");
        assert_eq!(l.container_path(&l.github_home()), "/github/home");
        assert_eq!(
            l.container_path(&l.github_workflow().join("event.json")),
            "/github/workflow/event.json"
        );
        assert_eq!(
            l.container_path(Path::new("/r/externals/node")),
            "/__e/node"
        );
        assert_eq!(l.container_path(Path::new("/elsewhere")), "/elsewhere");
        // A sibling with the same prefix is not inside the work folder.
        assert_eq!(l.container_path(Path::new("/r/_work2/x")), "/r/_work2/x");
    }

    #[test]
    fn env_files_have_two_forms() {
        let vars = parse_env_file("A=1\nB<<EOF\nx\ny\nEOF\nC=a=b\nnot a command\n");
        assert_eq!(
            vars,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x\ny".into()),
                ("C".into(), "a=b".into())
            ]
        );
    }

    #[test]
    fn registries_come_from_the_image_name() {
        assert_eq!(registry_server("node:22"), "");
        assert_eq!(registry_server("library/node"), "");
        assert_eq!(registry_server("ghcr.io/o/i:1"), "ghcr.io");
        assert_eq!(registry_server("localhost:5000/i"), "localhost:5000");
        assert_eq!(registry_server("localhost/i"), "localhost");
    }

    #[test]
    fn volumes_parse_like_the_runner() {
        assert_eq!(
            user_mount("/data"),
            json!({"sourceVolumePath": null, "targetVolumePath": "/data", "readOnly": false})
        );
        assert_eq!(
            user_mount("vol:/data"),
            json!({"sourceVolumePath": "vol", "targetVolumePath": "/data", "readOnly": false})
        );
        assert_eq!(
            user_mount("/data:ro"),
            json!({"sourceVolumePath": null, "targetVolumePath": "/data", "readOnly": true})
        );
        assert_eq!(
            user_mount("/a:/b:ro"),
            json!({"sourceVolumePath": "/a", "targetVolumePath": "/b", "readOnly": true})
        );
    }

    #[test]
    fn shells_follow_the_runner() {
        assert_eq!(
            container_shell(None, "/__w/_temp/a.sh"),
            ("sh".into(), vec!["-e".into(), "/__w/_temp/a.sh".into()])
        );
        assert_eq!(
            container_shell(Some("bash"), "/s"),
            (
                "bash".into(),
                ["--noprofile", "--norc", "-eo", "pipefail", "/s"]
                    .map(String::from)
                    .to_vec()
            )
        );
    }

    #[test]
    fn hook_settings_come_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let s = HookSettings::from_env(&env(&[
            (HOOK_JOB_STARTED, "/h/start.sh"),
            (CONTAINER_HOOKS, " "),
            (REQUIRE_JOB_CONTAINER, "TRUE"),
        ]));
        assert_eq!(s.job_started.as_deref(), Some("/h/start.sh"));
        assert!(s.container_hooks.is_none());
        assert!(s.require_job_container);
        assert!(
            !HookSettings::from_env(&env(&[(REQUIRE_JOB_CONTAINER, "false")]))
                .require_job_container
        );
        assert!(!HookSettings::default().any_hook());
    }
}
