//! The GitHub fault cases' rig: the GitHub emulator (in this process, where
//! job containers reach it), `proxy-runner serve` with the Docker backend
//! and the runner image built from this binary, and what the cases read:
//! the emulator's jobs, request log and deliveries, our jobs, `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_emulator::{EmulatorConfig, RunningEmulator};
use proxy_runner_test_support::eventually;
use serde_json::{Value, json};
use sha2::Digest;

use crate::common;

pub const ADMIN: &str = "faults-admin-token";
const PAT: &str = "ghp_faults_rig_token";
const WEBHOOK_SECRET: &str = "whsec_faults_rig_secret";
pub const LABELS: &[&str] = &["self-hosted", "linux"];

/// Whether the engine answers; in CI its absence fails the test.
pub fn engine_or_skip() -> bool {
    let up = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(std::env::var_os("CI").is_none(), "Docker is required in CI");
        eprintln!("skipping: docker not reachable");
    }
    up
}

pub struct Rig {
    _emulator: RunningEmulator,
    pub api: String,
    pub server: common::Server,
    pub http: reqwest::Client,
    instance: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The gateway of Docker's default bridge: job containers reach the host
/// there (`host.docker.internal`). Docker gives the bridge the first address
/// of its subnet when the gateway is not listed.
fn bridge_gateway() -> IpAddr {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}};{{.Subnet}} {{end}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|entry| {
            let (gateway, subnet) = entry.split_once(';')?;
            gateway.parse().ok().or_else(|| {
                let base: std::net::Ipv4Addr = subnet.split_once('/')?.0.parse().ok()?;
                Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from(base) + 1)))
            })
        })
        .expect("the default bridge has a gateway")
}

async fn runner_image() -> String {
    let docker = DockerBackend::connect(DockerOptions::default())
        .await
        .unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_proxy-runner"));
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&binary).unwrap()));
    let tag = format!("proxy-runner-local-runner:{}", &digest[..16]);
    ensure_runner_image(&docker, &RunnerImageOptions::new(tag.clone(), binary))
        .await
        .unwrap();
    tag
}

impl Rig {
    /// Emulator and orchestrator; the orchestrator polls `polled` every
    /// `poll_secs` and gets the emulator's webhooks.
    pub async fn start(name: &str, polled: &[String], poll_secs: u64) -> Rig {
        let image = runner_image().await;
        let host = bridge_gateway();
        let port = std::net::TcpListener::bind(SocketAddr::new(host, 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let public_url = format!("http://host.docker.internal:{port}");
        let emulator = proxy_runner_emulator::spawn(
            EmulatorConfig {
                pats: vec![PAT.into()],
                public_url: Some(public_url.clone()),
                ..Default::default()
            },
            SocketAddr::new(host, port),
        )
        .await
        .unwrap();
        let api = emulator.url();
        let instance = format!("faults-{name}-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let repositories: Vec<String> = polled.iter().map(|r| format!("{r:?}")).collect();
        // A runner whose job another runner took while the webhook saying
        // so was lost idles until `idle_timeout_secs`; then the reconciler
        // asks GitHub about its job. The default (600 s) outlasts the test.
        std::fs::write(
            &config,
            format!(
                "instance = {instance:?}\n\
                 [github]\napi_url = {api:?}\nweb_url = {public_url:?}\n\
                 [github.poll]\nrepositories = [{}]\ninterval_secs = {poll_secs}\n\
                 [runners]\nimage = {image:?}\nnetwork_prefix = \"proxy-runner-{instance}\"\n\
                 max_concurrent = 4\nmax_per_repository = 4\n\
                 idle_timeout_secs = 30\n",
                repositories.join(", ")
            ),
        )
        .unwrap();
        let log = dir.path().join("serve.log");
        let server = common::serve(
            &dir.path().join("jobs.db"),
            Some(&log),
            &["--backend", "docker", "--config", config.to_str().unwrap()],
            &[
                ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
                ("PROXY_RUNNER_GITHUB_TOKEN", PAT),
                ("PROXY_RUNNER_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ],
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let resp = http
            .put(format!("{api}/_emulator/webhook"))
            .json(&json!({"url": format!("{}/webhooks/github", server.url), "secret": WEBHOOK_SECRET}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        Rig {
            _emulator: emulator,
            api,
            server,
            http,
            instance,
            log,
            _dir: dir,
        }
    }

    async fn get(&self, url: String) -> Value {
        self.http
            .get(url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Queues a job at the emulator; its GitHub id.
    pub async fn queue(&self, repository: &str, name: &str) -> u64 {
        let v: Value = self
            .http
            .post(format!("{}/_emulator/jobs", self.api))
            .json(&json!({"repository": repository, "labels": LABELS, "steps": ["echo served"], "workflow": "faults", "name": name}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        v["id"].as_u64().unwrap()
    }

    /// Replaces the emulator's fault knobs (`{}` clears them).
    pub async fn faults(&self, knobs: Value) {
        let resp = self
            .http
            .post(format!("{}/_emulator/faults", self.api))
            .json(&knobs)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{knobs}");
    }

    pub async fn emulator_jobs(&self) -> Vec<Value> {
        array(self.get(format!("{}/_emulator/jobs", self.api)).await)
    }

    pub async fn requests(&self) -> Vec<Value> {
        array(self.get(format!("{}/_emulator/requests", self.api)).await)
    }

    pub async fn deliveries(&self) -> Vec<Value> {
        array(self.get(format!("{}/_emulator/deliveries", self.api)).await)
    }

    /// Every job the orchestrator recorded.
    pub async fn our_jobs(&self) -> Vec<Value> {
        let v = self
            .get(format!("{}/api/jobs?limit=500", self.server.url))
            .await;
        array(v["jobs"].clone())
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `github_circuit_state` of the emulator's host (0 closed, 1 half-open,
    /// 2 open), if published yet.
    pub async fn circuit_state(&self) -> Option<f64> {
        let host = self.api.trim_start_matches("http://").to_string();
        samples(&self.metrics().await, "github_circuit_state")
            .into_iter()
            .find(|(labels, _)| labels.get("host") == Some(&host))
            .map(|(_, v)| v)
    }

    /// Waits until each of `ids` completed at GitHub and in our records;
    /// returns how long that took, and for each job when (from the start of
    /// the wait) its record was first seen completed.
    pub async fn await_served(
        &self,
        ids: &[u64],
        limit: Duration,
    ) -> (Duration, HashMap<u64, Duration>) {
        let started = Instant::now();
        let seen: std::sync::Mutex<HashMap<u64, Duration>> = Default::default();
        let what = format!("jobs {ids:?} completed at GitHub and recorded completed");
        eventually(&what, limit, || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let github = self.emulator_jobs().await;
            let ours = self.our_jobs().await;
            let mut seen = seen.lock().unwrap();
            for j in &ours {
                if let Some(id) = j["githubJobId"].as_u64()
                    && j["status"] == "completed"
                {
                    seen.entry(id).or_insert_with(|| started.elapsed());
                }
            }
            ids.iter().all(|id| {
                seen.contains_key(id)
                    && github
                        .iter()
                        .any(|j| j["id"] == *id && j["status"] == "completed")
            })
        })
        .await;
        (started.elapsed(), seen.into_inner().unwrap())
    }

    /// Every GitHub job succeeded exactly once and we hold exactly one
    /// completed record of it, and nothing else.
    pub async fn assert_each_served_once(&self, ids: &[u64]) {
        let github = self.emulator_jobs().await;
        let ours = self.our_jobs().await;
        assert_eq!(github.len(), ids.len(), "GitHub has other jobs: {github:?}");
        for id in ids {
            let at_github: Vec<&Value> = github.iter().filter(|j| j["id"] == *id).collect();
            assert_eq!(at_github.len(), 1);
            assert_eq!(at_github[0]["conclusion"], "success", "{:?}", at_github[0]);
            // A runner takes one job: the run's steps ran once.
            assert_eq!(at_github[0]["steps"].as_array().map(Vec::len), Some(1));
            let here: Vec<&Value> = ours.iter().filter(|j| j["githubJobId"] == *id).collect();
            assert_eq!(here.len(), 1, "records of job {id}: {here:?}");
            assert_eq!(here[0]["status"], "completed", "{:?}", here[0]);
            assert_eq!(here[0]["conclusion"], "success", "{:?}", here[0]);
        }
        assert_eq!(ours.len(), ids.len(), "records of unknown jobs: {ours:?}");
    }

    /// Waits until nothing of this rig is left on the engine.
    pub async fn await_engine_clean(&self) {
        eventually(
            "no container or network of the instance is left",
            Duration::from_secs(120),
            || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                engine_objects(&self.instance).is_empty()
            },
        )
        .await;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("orchestrator log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // A failed run leaves what it started: remove it by the instance label.
        for (kind, id) in engine_objects(&self.instance) {
            let _ = Command::new("docker")
                .args([kind, "rm", "-f", &id])
                .output();
        }
    }
}

/// Containers and networks labelled with `instance`: (kind, id).
fn engine_objects(instance: &str) -> Vec<(&'static str, String)> {
    let filter = format!("label=proxy-runner.instance={instance}");
    let mut found = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-aq", "--filter", &filter]),
        ("network", vec!["network", "ls", "-q", "--filter", &filter]),
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            found.push((kind, id.to_string()));
        }
    }
    found
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected an array: {other}"),
    }
}

/// The samples of metric `name` in Prometheus text: (labels, value).
pub fn samples(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match head.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of metric `name` over the samples whose labels pass `keep`.
pub fn sum(text: &str, name: &str, keep: impl Fn(&HashMap<String, String>) -> bool) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| keep(l))
        .map(|(_, v)| v)
        .sum()
}
