//! Warm runners on the real engine through the GitHub emulator: with
//! `warm = 1`, a runner waits in a started container before any job; a
//! queued job is run by it (no cold start), a new warm runner replaces it,
//! and an orchestrator restarted without warm runners finds the waiting one
//! and recycles it, leaving nothing behind.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::proxy::{binary, containers_of, digest};
use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_domain::ports::ContainerBackend;
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_test_support::eventually;
use serde_json::{Value, json};

const ADMIN: &str = "admin-SECRET-warm";
const PAT: &str = "ghp_warm-SECRET";
const WEBHOOK_SECRET: &str = "whsec_warm-SECRET";
const REPO: &str = "warm-org/app";

/// The engine, or a skip outside CI (in CI a missing engine fails). The
/// local image needs no busybox: without it, it takes this host's shell.
async fn docker() -> Option<DockerBackend> {
    let docker = DockerBackend::connect(DockerOptions::default())
        .await
        .unwrap();
    match docker.ping().await {
        Ok(()) => Some(docker),
        Err(e) if std::env::var_os("CI").is_some() => panic!("docker is required in CI: {e}"),
        Err(e) => {
            eprintln!("skipping: docker is not reachable ({e})");
            None
        }
    }
}

/// The address job containers reach this host at (`host.docker.internal`):
/// the default bridge's gateway.
async fn bridge_gateway() -> IpAddr {
    let out = tokio::process::Command::new("docker")
        .args(["network", "inspect", "bridge"])
        .output()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = &v[0]["IPAM"]["Config"][0];
    if let Some(gw) = config["Gateway"].as_str().and_then(|g| g.parse().ok()) {
        return gw;
    }
    let subnet = config["Subnet"].as_str().expect("bridge subnet");
    let base: Ipv4Addr = subnet.split_once('/').unwrap().0.parse().unwrap();
    IpAddr::V4(Ipv4Addr::from(u32::from(base) + 1))
}

async fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .unwrap();
    // `inspect` of a container already removed prints an empty line.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Names of the running warm containers of `instance`.
async fn warm_containers(instance: &str) -> Vec<String> {
    docker_lines(&[
        "ps",
        "--filter",
        &format!("label=proxy-runner.instance={instance}"),
        "--filter",
        "label=proxy-runner.warm",
        "--format",
        "{{.Names}}",
    ])
    .await
}

async fn networks_of(instance: &str) -> Vec<String> {
    docker_lines(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=proxy-runner.instance={instance}"),
    ])
    .await
}

fn config_file(
    dir: &Path,
    name: &str,
    instance: &str,
    image: &str,
    emulator: &str,
    public: &str,
    warm: usize,
) -> std::path::PathBuf {
    let warm_lines = if warm > 0 {
        format!("warm = {warm}\nwarm_repositories = [\"{REPO}\"]\n")
    } else {
        String::new()
    };
    let text = format!(
        r#"backend = "docker"
instance = "{instance}"

[github]
api_url = "{emulator}"
web_url = "{public}"
token = "{PAT}"
webhook_secret = "{WEBHOOK_SECRET}"

[runners]
image = "{image}"
network_prefix = "pr-{instance}"
max_concurrent = 4
max_per_repository = 2

[[runners.label_sets]]
labels = ["self-hosted", "linux"]
{warm_lines}"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_runs_in_the_warm_container_a_new_one_replaces_it_and_nothing_is_left() {
    let Some(docker) = docker().await else { return };
    let image = format!("proxy-runner-local-runner:{}", digest());
    ensure_runner_image(&docker, &RunnerImageOptions::new(image.clone(), binary()))
        .await
        .unwrap();
    let instance = format!(
        "test-warm-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );

    // The emulator where job containers reach it.
    let host = bridge_gateway().await;
    let port = std::net::TcpListener::bind(SocketAddr::new(host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://host.docker.internal:{port}");
    let emulator = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: vec![PAT.into()],
            public_url: Some(public.clone()),
            ..Default::default()
        },
        SocketAddr::new(host, port),
    )
    .await
    .unwrap();
    let emulator_url = emulator.url();
    let http = reqwest::Client::new();

    // The orchestrator (the real binary) with one warm runner for REPO; a
    // queued job waits for it as long as the test runs, so no cold start
    // can race it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let log = dir.path().join("orchestrator.log");
    let warm_config = config_file(
        dir.path(),
        "warm.toml",
        &instance,
        &image,
        &emulator_url,
        &public,
        1,
    );
    let env = [
        ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
        ("PROXY_RUNNER_WARM_WAIT_SECS", "600"),
    ];
    let mut server = common::serve(
        &db,
        Some(&log),
        &["--config", warm_config.to_str().unwrap()],
        &env,
    );
    let target =
        |url: &str| json!({"url": format!("{url}/webhooks/github"), "secret": WEBHOOK_SECRET});
    http.put(format!("{emulator_url}/_emulator/webhook"))
        .json(&target(&server.url))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let runners = || async {
        http.get(format!("{emulator_url}/_emulator/runners"))
            .send()
            .await
            .unwrap()
            .json::<Vec<Value>>()
            .await
            .unwrap()
    };

    // Before any job: one warm runner registered and online, in its container.
    eventually("a warm runner waits", Duration::from_secs(120), || async {
        let warm = warm_containers(&instance).await;
        let online = runners().await;
        warm.len() == 1
            && online
                .iter()
                .any(|r| r["name"] == warm[0].as_str() && r["status"] == "online")
    })
    .await;
    let first = warm_containers(&instance).await.remove(0);

    // A job is queued: the warm runner runs it.
    let queued: Value = http
        .post(format!("{emulator_url}/_emulator/jobs"))
        .json(&json!({"repository": REPO, "labels": ["self-hosted", "linux"], "steps": ["echo warm on $(hostname) as uid $(id -u)"], "workflow": "CI", "name": "build"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let github_job = queued["id"].as_u64().unwrap();
    let emulator_job = || async {
        http.get(format!("{emulator_url}/_emulator/jobs/{github_job}"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    eventually("the job completes", Duration::from_secs(120), || async {
        emulator_job().await["status"] == "completed"
    })
    .await;
    let done = emulator_job().await;
    assert_eq!(done["conclusion"], "success", "{done}");
    assert_eq!(done["runnerName"], first.as_str(), "run by the warm runner");
    assert!(
        done["steps"][0]["output"]
            .as_str()
            .unwrap_or_default()
            .contains("as uid 1001"),
        "{done}"
    );

    // Our record: it ran in the warm container, and no runner was
    // provisioned for it.
    let ours = || async {
        let jobs: Value = http
            .get(format!("{}/api/jobs", server.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs["jobs"][0].clone()
    };
    eventually("our record completes", Duration::from_secs(60), || async {
        ours().await["status"] == "completed"
    })
    .await;
    let job = ours().await;
    assert_eq!(job["attempts"], 0, "{job}");
    assert!(job["containerId"].is_null(), "no cold start: {job}");
    let warm_id = docker_lines(&["inspect", "-f", "{{.Id}}", &first]).await;
    if let Some(id) = warm_id.first() {
        assert_eq!(job["ranInContainerId"], id.as_str(), "{job}");
    } else {
        // Auto-removed after its job already: the name is the proof.
        assert!(job["ranInContainerId"].is_string(), "{job}");
    }

    // A new warm runner took its place; the used one is gone.
    eventually(
        "a new warm runner waits",
        Duration::from_secs(120),
        || async {
            let warm = warm_containers(&instance).await;
            warm.len() == 1 && warm[0] != first
        },
    )
    .await;

    // Restarted without warm runners: the waiting one is found and recycled.
    server.sigterm();
    assert!(server.wait().success());
    let cold_config = config_file(
        dir.path(),
        "cold.toml",
        &instance,
        &image,
        &emulator_url,
        &public,
        0,
    );
    let mut server = common::serve(
        &db,
        Some(&log),
        &["--config", cold_config.to_str().unwrap()],
        &env,
    );
    eventually("nothing is left", Duration::from_secs(120), || async {
        containers_of(&instance).await.is_empty()
            && networks_of(&instance).await.is_empty()
            && runners().await.is_empty()
    })
    .await;
    server.sigterm();
    assert!(server.wait().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    for secret in [PAT, WEBHOOK_SECRET, ADMIN] {
        assert!(!logged.contains(secret), "a secret reached the log");
    }
    emulator.shutdown().await;
}
