//! The proxy path end to end on the real engine: the emulator hands a
//! container job with a service to a simulated proxy runner; its job hooks
//! delegate and report through the real binary's API, and its container hook
//! (`hooks/container-hook.sh` → `proxy-runner hook container`) has every step
//! run in the job container the orchestrator created, next to the service,
//! on the repository's network.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_runner_docker::{
    DockerBackend, DockerOptions, RunnerImageOptions, build_runner_image, ensure_runner_image,
};
use proxy_runner_domain::job_containers::JobContainers;
use proxy_runner_domain::ports::ContainerBackend;
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_emulator::runner::{JobRun, RunOptions, RunnerHost, ShellExecutor, SimRunner};
use proxy_runner_test_support::eventually;
use serde_json::{Value, json};
use sha2::Digest;

const ADMIN: &str = "admin-SECRET-proxy-path";
const PAT: &str = "ghp_proxy-path-SECRET";

/// The engine, or a skip outside CI (in CI a missing engine fails).
async fn docker() -> Option<DockerBackend> {
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

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_proxy-runner"))
}

fn digest() -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(binary()).unwrap()))[..16].to_string()
}

/// The job image (the local runner image) and a service image serving
/// `PONG` over HTTP on port 8080.
async fn images(docker: &DockerBackend) -> (String, String) {
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

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn containers_of(instance: &str) -> Vec<String> {
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

async fn inspect(id: &str) -> Value {
    let out = tokio::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .await
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

struct Rig {
    http: reqwest::Client,
    server: common::Server,
    emulator: proxy_runner_emulator::RunningEmulator,
    root: tempfile::TempDir,
    instance: String,
    repository: String,
}

impl Rig {
    async fn start(job_image: &str, service_image: &str) -> Rig {
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
        let server = common::serve(
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
    async fn token(&self, runner: &str) -> String {
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

    async fn queue(&self, job: Value) -> u64 {
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
    async fn proxy_runner(&self, name: &str) -> SimRunner {
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

    async fn jobs(&self) -> Vec<Value> {
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

    fn log_text(run: &JobRun) -> String {
        run.log
            .iter()
            .map(|e| format!("== {} (exit {:?})\n{}", e.name, e.exit_code, e.output))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test]
async fn a_container_job_with_a_service_runs_every_step_in_its_job_container() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let gate = rig.root.path().join("_work/_temp/gate");
    // Step 1 waits for the test to look at the job container from outside.
    let steps = json!([
        {"run": "echo \"step 1 on $(hostname) as uid $(id -u)\"; for i in $(seq 1 600); do [ -e /__w/_temp/gate ] && exit 0; sleep 0.1; done; exit 1"},
        {"run": "for i in $(seq 1 100); do timeout 5 wget -q -O - http://cache:8080/ && exit 0; sleep 0.2; done; exit 1"},
        {"run": "echo \"step 3 on $(hostname)\"; test ! -e /var/run/docker.sock && echo no-socket"},
    ]);
    let github_job = rig
        .queue(json!({
            "container": {"image": job_image},
            "services": {"cache": {"image": service_image}},
            "steps": steps,
        }))
        .await;
    let runner = rig.proxy_runner("proxy-1").await;
    let running = tokio::spawn({
        let runner = runner;
        async move {
            let options = RunOptions {
                job_wait: Some(Duration::from_secs(30)),
                poll_wait: Duration::from_millis(500),
                ..RunOptions::default()
            };
            runner.run(&ShellExecutor::default(), &options).await
        }
    });

    // While step 1 waits: the job container as the engine sees it.
    eventually(
        "the job container is recorded",
        Duration::from_secs(120),
        || async {
            rig.jobs()
                .await
                .iter()
                .any(|j| j["jobContainer"]["id"].is_string())
        },
    )
    .await;
    let record = rig.jobs().await.remove(0);
    let job_container = record["jobContainer"]["id"].as_str().unwrap().to_string();
    let service_id = record["jobContainer"]["services"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = inspect(&job_container).await;
    let host = &seen["HostConfig"];
    println!(
        "job container inspect: Privileged={} CapDrop={} CapAdd={} SecurityOpt={} PidsLimit={} Memory={} NanoCpus={} NetworkMode={} Binds={} Mounts={} Image={} Entrypoint={} PortBindings={}",
        host["Privileged"],
        host["CapDrop"],
        host["CapAdd"],
        host["SecurityOpt"],
        host["PidsLimit"],
        host["Memory"],
        host["NanoCpus"],
        host["NetworkMode"],
        host["Binds"],
        seen["Mounts"]
            .as_array()
            .map(|m| m
                .iter()
                .map(|m| format!(
                    "{}:{}",
                    m["Source"].as_str().unwrap_or(""),
                    m["Destination"].as_str().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        seen["Config"]["Image"],
        seen["Config"]["Entrypoint"],
        host["PortBindings"],
    );
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges"))
    );
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert!(host["Memory"].as_i64().unwrap() > 0);
    assert!(host["NanoCpus"].as_i64().unwrap() > 0);
    let network = record["jobContainer"]["network"].as_str().unwrap();
    assert_eq!(host["NetworkMode"], network);
    assert!(network.starts_with(&format!(
        "proxy-runner-{}",
        rig.repository.replace('/', "-")
    )));
    let mounts = seen["Mounts"].to_string();
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    let work = std::fs::canonicalize(rig.root.path().join("_work")).unwrap();
    let externals = std::fs::canonicalize(rig.root.path().join("externals")).unwrap();
    for m in seen["Mounts"].as_array().unwrap() {
        let source = m["Source"].as_str().unwrap();
        assert!(
            source.starts_with(work.to_str().unwrap())
                || source.starts_with(externals.to_str().unwrap()),
            "mount {source} is outside the runner's folders"
        );
    }
    assert_eq!(seen["Config"]["Image"], job_image.as_str());
    let service = inspect(&service_id).await;
    assert_eq!(service["HostConfig"]["NetworkMode"], network);
    assert!(
        service["NetworkSettings"]["Networks"][network]["Aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("cache"))
    );
    std::fs::write(&gate, "go").unwrap();

    let run = running.await.unwrap().unwrap();
    let run = run.job().cloned().expect("the runner took the job");
    let log = Rig::log_text(&run);
    println!("job log as the simulator recorded it:\n{log}");
    assert_eq!(run.conclusion, "success", "{log}");
    assert_eq!(run.job_id, github_job);
    // Every step ran in the job container: its hostname is the container's.
    let short = &job_container[..12];
    assert!(
        log.contains(&format!("step 1 on {short} as uid 1001")),
        "{log}"
    );
    assert!(log.contains("PONG"), "{log}");
    assert!(log.contains(&format!("step 3 on {short}")), "{log}");
    assert!(log.contains("no-socket"), "{log}");
    assert!(
        log.contains("the Docker socket is not mounted into job containers"),
        "{log}"
    );

    // The record: completed, three steps, last exit 0, containers removed.
    let jobs = rig.jobs().await;
    assert_eq!(jobs.len(), 1, "one record for the job: {jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["jobContainer"]["stepsRun"], 3, "{job}");
    assert_eq!(job["jobContainer"]["lastStepExitCode"], 0);
    assert_eq!(job["jobContainer"]["image"], job_image.as_str());
    assert_eq!(job["jobContainer"]["services"][0]["name"], "cache");
    assert!(job["jobContainer"]["removedAt"].is_string(), "{job}");
    // Nothing is left on the engine.
    assert!(containers_of(&rig.instance).await.is_empty());
    rig.emulator.shutdown().await;
}
