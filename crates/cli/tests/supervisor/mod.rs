//! A proxy runner set-up for process tests: the GitHub emulator, the real
//! `proxy-runner serve` with a proxy label set, and the real
//! `proxy-runner runner` over a runner directory, each a process (or, for
//! the emulator, a server) of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use proxy_runner_emulator::EmulatorConfig;
use serde_json::{Value, json};

use super::common;

pub const ADMIN: &str = "admin-SECRET-supervisor";
pub const PAT: &str = "ghp_supervisor-SECRET";
pub const ORG: &str = "octo";
pub const LABELS: &str = "self-hosted,proxy";

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_proxy-runner"))
}

/// Where everything of one test lives.
pub struct Dirs {
    pub root: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        let root = tempfile::Builder::new()
            .disable_cleanup(std::env::var_os("KEEP_TEST_DIRS").is_some())
            .tempdir()
            .unwrap();
        eprintln!("test directory: {}", root.path().display());
        // Job containers' users read what the runner writes under here.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Dirs { root }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    pub fn runner_dir(&self) -> PathBuf {
        self.path("runner")
    }
    pub fn work_root(&self) -> PathBuf {
        self.path("work")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
}

/// The simulated runner directory (`proxy-runner sim-runner install`).
pub fn install_sim_runner(dir: &Path) {
    let out = std::process::Command::new(binary())
        .args(["sim-runner", "install"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn emulator() -> proxy_runner_emulator::RunningEmulator {
    proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![PAT.into()],
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

/// `proxy-runner serve` with GitHub = the emulator, a proxy label set
/// `self-hosted,proxy`, and the proxy path over `dirs`' work root.
pub fn orchestrator(
    dirs: &Dirs,
    emulator_url: &str,
    backend: &str,
    instance: &str,
    images: &[&str],
) -> common::Server {
    let config = dirs.path("orchestrator.toml");
    let externals = dirs.runner_dir().join("externals");
    std::fs::create_dir_all(&externals).unwrap();
    std::fs::create_dir_all(dirs.work_root()).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"instance = "{instance}"
[github]
api_url = "{emulator_url}"
web_url = "{emulator_url}"
organization = "{ORG}"
[[runners.label_sets]]
labels = ["self-hosted", "proxy"]
path = "proxy"
[proxy]
images = {images}
work_root = "{work}"
externals_root = "{externals}"
"#,
            images = json!(images),
            work = dirs.work_root().display(),
            externals = externals.display(),
        ),
    )
    .unwrap();
    common::serve(
        &dirs.path("db.sqlite"),
        Some(&dirs.path("orchestrator.log")),
        &["--config", config.to_str().unwrap(), "--backend", backend],
        &[
            ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
            ("PROXY_RUNNER_GITHUB_TOKEN", PAT),
            ("PROXY_RUNNER_LOG", "info,proxy_runner_orchestrator=debug"),
        ],
    )
}

pub async fn token(url: &str, runner: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{url}/api/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"runner": runner}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_string()
}

pub async fn get(url: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

pub async fn metrics(orchestrator_url: &str) -> String {
    reqwest::get(format!("{orchestrator_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn jobs(orchestrator_url: &str) -> Vec<Value> {
    get(&format!("{orchestrator_url}/api/jobs")).await["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Runners registered in the emulator, by name.
pub async fn runners(emulator_url: &str) -> Vec<String> {
    get(&format!("{emulator_url}/_emulator/runners"))
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect()
}

pub async fn queue(emulator_url: &str, job: Value) -> u64 {
    let mut body = json!({"labels": ["self-hosted", "proxy"], "workflow": "CI", "name": "build"});
    for (k, v) in job.as_object().unwrap() {
        body[k] = v.clone();
    }
    let created: Value = reqwest::Client::new()
        .post(format!("{emulator_url}/_emulator/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{created}"))
}

pub async fn emulator_job(emulator_url: &str, id: u64) -> Value {
    get(&format!("{emulator_url}/_emulator/jobs/{id}")).await
}

/// The job log as the simulated runner reported it.
pub fn log_text(job: &Value) -> String {
    job["log"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "== {} (exit {})\n{}",
                e["name"].as_str().unwrap_or(""),
                e["exitCode"],
                e["output"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running `proxy-runner runner`; killed (SIGKILL) when dropped.
pub struct Supervisor {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Supervisor {
    pub fn start(
        dirs: &Dirs,
        orchestrator_url: &str,
        token: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Supervisor {
        let log = dirs.path("supervisor.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("runner")
            .args(["--name", "sup", "--labels", LABELS, "--organization", ORG])
            .arg("--runner-dir")
            .arg(dirs.runner_dir())
            .arg("--work-root")
            .arg(dirs.work_root())
            .arg("--state-dir")
            .arg(dirs.state_dir())
            .args([
                "--heartbeat-secs",
                "1",
                "--backoff-base-ms",
                "20",
                "--backoff-max-secs",
                "1",
            ])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            )
            .env("ORCHESTRATOR_URL", orchestrator_url)
            .env("PROXY_RUNNER_TOKEN", token)
            .env("PROXY_RUNNER_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        Supervisor {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap()).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
    }

    /// Waits for the supervisor to exit (bounded only to fail a broken run).
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the supervisor did not exit:\n{}", self.log()),
        }
    }
}

/// Entries of a directory, if it exists.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
