//! The proxy path on the real engine: the real binary with `[proxy]` on, the
//! GitHub emulator, the local job image and a service image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_runner_docker::{
    DockerBackend, DockerOptions, RunnerImageOptions, build_runner_image, ensure_runner_image,
};
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::ports::ContainerBackend;
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_emulator::runner::{JobRun, RunnerHost, SimRunner};
use serde_json::{Value, json};
use sha2::Digest;

pub const ADMIN: &str = "admin-SECRET-proxy-path";
pub const PAT: &str = "ghp_proxy-path-SECRET";

/// The engine, or a skip outside CI (in CI a missing engine fails).
pub async fn docker() -> Option<DockerBackend> {
    let docker = DockerBackend::connect(DockerOptions::default())
        .await
        .unwrap();
    match docker.ping().await {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_some() => panic!("docker is required in CI: {e}"),
        Err(e) => {
            eprintln!("skipping: docker is not reachable ({e})");
            return None;
        }
    }
    if !Path::new(proxy_runner_docker::image::DEFAULT_BUSYBOX).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "busybox-static is required in CI"
        );
        eprintln!("skipping: busybox-static is not installed");
        return None;
    }
    Some(docker)
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_proxy-runner"))
}

pub fn digest() -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(binary()).unwrap()))[..16].to_string()
}

/// The job image (the local runner image) and a service image serving
/// `PONG` over HTTP on port 8080.
pub async fn images(docker: &DockerBackend) -> (String, String) {
    let job = format!("proxy-runner-local-runner:{}", digest());
    ensure_runner_image(docker, &RunnerImageOptions::new(job.clone(), binary()))
        .await
        .unwrap();
    let service = format!("proxy-runner-test-service:{}", digest());
    let mut options = RunnerImageOptions::new(service.clone(), binary());
    options.entrypoint = vec!["/bin/sh".into(), "-c".into()];
    options.command = Some(vec![
        "mkdir -p /tmp/www && echo PONG > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
            .into(),
    ]);
    if !docker.image_present(&service).await.unwrap() {
        build_runner_image(docker, &options).await.unwrap();
    }
    (job, service)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub async fn containers_of(instance: &str) -> Vec<String> {
    let out = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=proxy-runner.instance={instance}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

pub async fn inspect(id: &str) -> Value {
    let out = tokio::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .await
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

pub struct Rig {
    pub http: reqwest::Client,
    pub server: super::Server,
    pub emulator: proxy_runner_emulator::RunningEmulator,
    pub root: tempfile::TempDir,
    pub instance: String,
    pub repository: String,
}

impl Rig {
    pub async fn start(job_image: &str, service_image: &str) -> Rig {
        let root = tempfile::tempdir().unwrap();
        // The job container's user (1001) reads the scripts the runner writes.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for dir in ["_work", "externals"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let instance = format!("test-proxy-{suffix}");
        let images = format!("{job_image},{service_image}");
        let work = root.path().join("_work");
        let externals = root.path().join("externals");
        let server = super::serve(
            &root.path().join("db.sqlite"),
            Some(&root.path().join("orchestrator.log")),
            &["--backend", "docker"],
            &[
                ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
                ("PROXY_RUNNER_INSTANCE", &instance),
                ("PROXY_RUNNER_PROXY_IMAGES", &images),
                ("PROXY_RUNNER_PROXY_WORK_ROOT", work.to_str().unwrap()),
                (
                    "PROXY_RUNNER_PROXY_EXTERNALS_ROOT",
                    externals.to_str().unwrap(),
                ),
            ],
        );
        let emulator = proxy_runner_emulator::spawn(
            EmulatorConfig {
                pats: vec![PAT.into()],
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        Rig {
            http: reqwest::Client::new(),
            server,
            emulator,
            root,
            instance,
            repository: format!("octo/proxy-{suffix}"),
        }
    }

    /// A runner token for `runner` from the orchestrator.
    pub async fn token(&self, runner: &str) -> String {
        let r: Value = self
            .http
            .post(format!("{}/api/tokens", self.server.url))
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

    pub async fn queue(&self, job: Value) -> u64 {
        let mut body = json!({"repository": self.repository, "labels": ["self-hosted", "proxy"], "workflow": "CI", "name": "build"});
        for (k, v) in job.as_object().unwrap() {
            body[k] = v.clone();
        }
        let created: Value = self
            .http
            .post(format!("{}/_emulator/jobs", self.emulator.url()))
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

    /// A JIT proxy runner with the project's hooks, its token and the
    /// orchestrator's address: a runner host as `proxy-runner runner` sets it up.
    pub async fn proxy_runner(&self, name: &str) -> SimRunner {
        let config: Value = self
            .http
            .post(format!(
                "{}/repos/{}/actions/runners/generate-jitconfig",
                self.emulator.url(),
                self.repository
            ))
            .bearer_auth(PAT)
            .json(&json!({"name": name, "runner_group_id": 1, "labels": ["self-hosted", "proxy"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = self.token(name).await;
        let hooks = repo_root().join("hooks");
        let env = vec![
            ("PATH".to_string(), std::env::var("PATH").unwrap()),
            ("ORCHESTRATOR_URL".into(), self.server.url.clone()),
            ("PROXY_RUNNER_TOKEN".into(), token),
            ("PROXY_RUNNER_BIN".into(), binary().display().to_string()),
            ("RUNNER_LABELS".into(), "self-hosted,proxy".into()),
            (
                "ACTIONS_RUNNER_HOOK_JOB_STARTED".into(),
                hooks.join("job-started.sh").display().to_string(),
            ),
            (
                "ACTIONS_RUNNER_HOOK_JOB_COMPLETED".into(),
                hooks.join("job-completed.sh").display().to_string(),
            ),
            (
                "ACTIONS_RUNNER_CONTAINER_HOOKS".into(),
                hooks.join("container-hook.sh").display().to_string(),
            ),
            ("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER".into(), "true".into()),
        ];
        SimRunner::from_jit_config(config["encoded_jit_config"].as_str().unwrap())
            .unwrap()
            .with_host(RunnerHost {
                env,
                root: Some(self.root.path().to_path_buf()),
                hook_timeout: Duration::from_secs(120),
            })
    }

    pub async fn jobs(&self) -> Vec<Value> {
        let r: Value = self
            .http
            .get(format!("{}/api/jobs", self.server.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["jobs"].as_array().cloned().unwrap_or_default()
    }

    pub fn log_text(run: &JobRun) -> String {
        run.log
            .iter()
            .map(|e| format!("== {} (exit {:?})\n{}", e.name, e.exit_code, e.output))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
