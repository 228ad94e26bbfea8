//! The autoscaling path as it runs for real, for fault tests: the GitHub
//! emulator and the orchestrator as child processes (the orchestrator can be
//! killed and restarted on the same database and port), the engine's event
//! log as a witness, and a fault-injecting proxy in front of the engine's
//! socket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;

use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_domain::ports::ContainerBackend;

use crate::common::proxy::binary;

pub const ADMIN: &str = "admin-SECRET-faults-engine";
const PAT: &str = "ghp_faults-engine-SECRET";
const WEBHOOK_SECRET: &str = "whsec-faults-engine-SECRET";
/// The labels every job asks for (served by the default pool).
pub const LABELS: [&str; 2] = ["self-hosted", "linux"];

/// Awaits `check` (polled every 250 ms) until it gives a value or `limit`
/// passes; the panic names `what`.
pub async fn await_some<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The engine and the local runner image (built from this binary, nothing
/// pulled), or a skip outside CI (in CI a missing engine fails).
pub async fn engine_and_image() -> Option<String> {
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
    let image = format!(
        "proxy-runner-local-runner:{}",
        crate::common::proxy::digest()
    );
    ensure_runner_image(&docker, &RunnerImageOptions::new(image.clone(), binary()))
        .await
        .unwrap();
    Some(image)
}

/// The orchestrator's settings for a fault test.
pub struct Setup {
    pub image: String,
    pub repos: usize,
    pub max_concurrent: usize,
    pub max_per_repository: usize,
    pub max_attempts: u32,
    /// The engine's socket as the orchestrator sees it (default: the real one).
    pub docker_host: Option<String>,
}

/// A child process killed with SIGKILL when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway of Docker's default bridge: containers reach the emulator
/// there as `host.docker.internal`. Engines that name no gateway give the
/// bridge the first address of its subnet.
fn bridge_gateway() -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}},{{.Subnet}} {{end}}",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for entry in text.split_whitespace() {
        let (gateway, subnet) = entry.split_once(',').unwrap_or((entry, ""));
        if gateway.parse::<std::net::Ipv4Addr>().is_ok() {
            return gateway.to_string();
        }
        if let Some(Ok(base)) = subnet
            .split_once('/')
            .map(|(b, _)| b.parse::<std::net::Ipv4Addr>())
        {
            return std::net::Ipv4Addr::from(u32::from(base) + 1).to_string();
        }
    }
    panic!("no IPv4 gateway on the default bridge: {text:?}")
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads the child's first stdout line, which must start with `prefix`, and
/// returns the rest (an address).
fn first_line_after(child: &mut Child, prefix: &str, log: &Path) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| {
            let logged = std::fs::read_to_string(log).unwrap_or_default();
            panic!("unexpected first line {line:?}: {logged}")
        })
        .to_string()
}

/// Emulator + orchestrator as processes, with a unique instance label.
pub struct World {
    pub http: reqwest::Client,
    pub instance: String,
    pub emulator_url: String,
    pub url: String,
    pub repos: Vec<String>,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    docker_host: Option<String>,
    orchestrator: Option<Process>,
    _emulator: Process,
}

impl World {
    pub async fn start(setup: Setup) -> World {
        let dir = tempfile::tempdir().unwrap();
        let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let instance = format!("faults-{suffix}");
        let repos: Vec<String> = (1..=setup.repos.max(1))
            .map(|i| format!("faults-{suffix}/repo-{i}"))
            .collect();

        let gateway = bridge_gateway();
        let emulator_port = free_port(&gateway);
        let log = dir.path().join("emulator.log");
        let child = Command::new(binary())
            .args([
                "emulator",
                "--listen",
                &format!("{gateway}:{emulator_port}"),
            ])
            .args(["--token", PAT])
            .args([
                "--public-url",
                &format!("http://host.docker.internal:{emulator_port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut emulator = Process { child };
        let emulator_url = first_line_after(&mut emulator.child, "emulator listening on ", &log);

        let port = free_port("127.0.0.1");
        let config = dir.path().join("orchestrator.toml");
        let repo_list = repos
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:{port}"
database = {db:?}
backend = "docker"
instance = "{instance}"

[github]
api_url = "{emulator_url}"
web_url = "http://host.docker.internal:{emulator_port}"

# Webhooks lost while the orchestrator is down are made up for by polling.
[github.poll]
repositories = [{repo_list}]
interval_secs = 5

[runners]
image = "{image}"
network_prefix = "pr-{instance}"
max_concurrent = {max_concurrent}
max_per_repository = {max_per_repository}
max_attempts = {max_attempts}
# A runner whose job another runner took (a hand-off) waits for a job until
# this; then the reconciler asks GitHub and stops it. The default (600 s)
# would outlast the checks that nothing is left.
idle_timeout_secs = 20
"#,
                db = dir.path().join("db.sqlite").display().to_string(),
                image = setup.image,
                max_concurrent = setup.max_concurrent,
                max_per_repository = setup.max_per_repository,
                max_attempts = setup.max_attempts,
            ),
        )
        .unwrap();
        let mut world = World {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            instance,
            emulator_url,
            url: format!("http://127.0.0.1:{port}"),
            repos,
            dir,
            config,
            docker_host: setup.docker_host,
            orchestrator: None,
            _emulator: emulator,
        };
        world.start_orchestrator();
        let resp = world
            .http
            .put(format!("{}/_emulator/webhook", world.emulator_url))
            .json(
                &json!({"url": format!("{}/webhooks/github", world.url), "secret": WEBHOOK_SECRET}),
            )
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        world
    }

    /// `proxy-runner serve` on the world's config, database and port.
    pub fn start_orchestrator(&mut self) {
        assert!(self.orchestrator.is_none(), "the orchestrator runs already");
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("PROXY_RUNNER_ADMIN_TOKEN", ADMIN)
            .env("PROXY_RUNNER_GITHUB_TOKEN", PAT)
            .env("PROXY_RUNNER_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(host) = &self.docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        // Owned at once: a failed check below must not leave it running.
        let mut process = Process {
            child: cmd.spawn().unwrap(),
        };
        let url = first_line_after(&mut process.child, "listening on ", &log_path);
        assert_eq!(url, self.url, "same port after a restart");
        self.orchestrator = Some(process);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill_orchestrator(&mut self) {
        drop(self.orchestrator.take());
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("orchestrator.log")
    }

    /// The orchestrator's peak resident memory so far (VmHWM, KiB).
    pub fn orchestrator_peak_rss_kib(&self) -> Option<u64> {
        let pid = self.orchestrator.as_ref()?.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Queues `n` jobs over the world's repositories; their GitHub ids.
    pub async fn queue(&self, n: usize, steps: &[&str]) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let repo = &self.repos[i % self.repos.len()];
            let created: Value = self
                .http
                .post(format!("{}/_emulator/jobs", self.emulator_url))
                .json(&json!({"repository": repo, "labels": LABELS, "steps": steps, "workflow": "faults", "name": format!("job-{}", i + 1)}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(
                created["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{created}")),
            );
        }
        ids
    }

    async fn get_json(&self, url: String, admin: bool) -> Option<Value> {
        let mut req = self.http.get(url);
        if admin {
            req = req.bearer_auth(ADMIN);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// The emulator's jobs by id.
    pub async fn emulator_jobs(&self) -> BTreeMap<u64, Value> {
        let jobs = self
            .get_json(format!("{}/_emulator/jobs", self.emulator_url), false)
            .await
            .expect("the emulator answers");
        jobs.as_array()
            .unwrap()
            .iter()
            .map(|j| (j["id"].as_u64().unwrap(), j.clone()))
            .collect()
    }

    /// Runners registered in the emulator now.
    pub async fn emulator_runners(&self) -> Vec<Value> {
        self.get_json(format!("{}/_emulator/runners", self.emulator_url), false)
            .await
            .expect("the emulator answers")
            .as_array()
            .cloned()
            .unwrap()
    }

    /// Every job in our store (through the API), or None while the
    /// orchestrator does not answer.
    pub async fn store_jobs(&self) -> Option<Vec<Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/api/jobs?limit=500", self.url);
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page = self.get_json(url, true).await?;
            all.extend(page["jobs"].as_array().cloned().unwrap_or_default());
            match page["nextAfter"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Some(all),
            }
        }
    }

    /// `/readyz`: the status code and body, or None while it does not answer.
    pub async fn readiness(&self) -> Option<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}/readyz", self.url))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Our containers and networks on the engine now.
    pub async fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = crate::common::proxy::containers_of(&self.instance)
            .await
            .into_iter()
            .map(|c| format!("container {c}"))
            .collect();
        let out = tokio::process::Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("label=proxy-runner.instance={}", self.instance),
            ])
            .output()
            .await
            .unwrap();
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|n| format!("network {n}")),
        );
        left
    }

    /// Awaits the end of the instance: no container or network of ours on
    /// the engine, no runner in the emulator. What is left after `limit` is
    /// returned (an orphan).
    pub async fn await_nothing_left(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let mut left = self.leftovers().await;
            left.extend(
                self.emulator_runners()
                    .await
                    .iter()
                    .map(|r| format!("runner {}", r["name"].as_str().unwrap_or("?"))),
            );
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes whatever a failed test left on the engine.
    pub async fn remove_leftovers(&self) {
        for c in crate::common::proxy::containers_of(&self.instance).await {
            let _ = tokio::process::Command::new("docker")
                .args(["rm", "-f", &c])
                .output()
                .await;
        }
        let _ = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker network ls -q --filter label=proxy-runner.instance={} | xargs -r docker network rm",
                self.instance
            ))
            .output()
            .await;
    }
}

/// A one-line count of the jobs by state, in the emulator and in our store.
pub async fn progress(world: &World) -> String {
    let mut at_github: BTreeMap<String, usize> = BTreeMap::new();
    for j in world.emulator_jobs().await.values() {
        *at_github
            .entry(j["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let mut ours: BTreeMap<String, usize> = BTreeMap::new();
    for j in world.store_jobs().await.unwrap_or_default() {
        *ours
            .entry(j["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    format!("GitHub {at_github:?}, ours {ours:?}")
}

/// Whether a job of ours is final.
pub fn is_final(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("completed" | "cancelled" | "failed")
    )
}

/// One container or network event of the instance.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    pub kind: String,
    pub action: String,
    pub id: String,
    pub job_id: Option<String>,
    pub at: Instant,
}

/// The engine's events for one instance, followed from before the first
/// container (`docker events` with the instance's label filter).
pub struct EngineEvents {
    pub events: Arc<Mutex<Vec<EngineEvent>>>,
    _child: tokio::process::Child,
}

impl EngineEvents {
    /// `image` is an image the engine has (for a probe container).
    pub async fn follow(instance: &str, image: &str) -> EngineEvents {
        let mut child = tokio::process::Command::new("docker")
            .args([
                "events",
                "--filter",
                &format!("label=proxy-runner.instance={instance}"),
                "--format",
                "{{json .}}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let attrs = &v["Actor"]["Attributes"];
                sink.lock().unwrap().push(EngineEvent {
                    kind: v["Type"].as_str().unwrap_or("").to_string(),
                    action: v["Action"].as_str().unwrap_or("").to_string(),
                    id: v["Actor"]["ID"].as_str().unwrap_or("").to_string(),
                    job_id: attrs["proxy-runner.job-id"].as_str().map(String::from),
                    at: Instant::now(),
                });
            }
        });
        // The stream is subscribed once the CLI has connected; an event of
        // our own proves it (network events carry no labels to filter on).
        let label = format!("proxy-runner.instance={instance}");
        let probe_events = events.clone();
        await_some("the engine's event stream", Duration::from_secs(60), || {
            let label = label.clone();
            let probe_events = probe_events.clone();
            async move {
                let out = tokio::process::Command::new("docker")
                    .args(["create", "--label", &label, image, "true"])
                    .output()
                    .await
                    .unwrap();
                let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let _ = tokio::process::Command::new("docker")
                    .args(["rm", "-f", &id])
                    .output()
                    .await;
                let seen = probe_events
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|e| e.kind == "container");
                seen.then_some(())
            }
        })
        .await;
        EngineEvents {
            events,
            _child: child,
        }
    }

    pub fn snapshot(&self) -> Vec<EngineEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Container creates per job.
    pub fn creates_per_job(&self) -> BTreeMap<String, usize> {
        let mut per_job = BTreeMap::new();
        for e in self.snapshot() {
            if e.kind == "container"
                && e.action == "create"
                && let Some(job) = e.job_id
            {
                *per_job.entry(job).or_insert(0) += 1;
            }
        }
        per_job
    }

    /// The first container start after `after`.
    pub fn first_start_after(&self, after: Instant) -> Option<Instant> {
        self.snapshot()
            .into_iter()
            .filter(|e| e.kind == "container" && e.action == "start" && e.at > after)
            .map(|e| e.at)
            .min()
    }
}

/// A container's life: its id, creation and end (None: still there).
type Life<'a> = (&'a str, Instant, Option<Instant>);

/// Containers of one job that ran at the same time while each was serving
/// that job: a duplicate. A container that ran another job (a hand-off,
/// `ranInContainerId` of that job) does not serve its own job; one that was
/// created and never started (a kill between create and start) served
/// nothing: a life begins at the container's start.
pub fn duplicate_containers(events: &[EngineEvent], store: &[Value]) -> Vec<String> {
    let serving_other: HashSet<&str> = store
        .iter()
        .filter_map(|j| j["ranInContainerId"].as_str())
        .collect();
    let mut lives: HashMap<&str, (Option<&str>, Instant, Option<Instant>)> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "container") {
        match e.action.as_str() {
            "start" => {
                lives
                    .entry(&e.id)
                    .or_insert((e.job_id.as_deref(), e.at, None));
            }
            "destroy" | "die" => {
                if let Some(life) = lives.get_mut(e.id.as_str())
                    && life.2.is_none()
                {
                    life.2 = Some(e.at);
                }
            }
            _ => {}
        }
    }
    let mut by_job: BTreeMap<&str, Vec<Life>> = BTreeMap::new();
    for (id, (job, from, to)) in &lives {
        if let Some(job) = job
            && !serving_other
                .iter()
                .any(|c| id.starts_with(c) || c.starts_with(id))
        {
            by_job.entry(job).or_default().push((id, *from, *to));
        }
    }
    let mut duplicates = Vec::new();
    for (job, mut lives) in by_job {
        lives.sort_by_key(|l| l.1);
        for pair in lives.windows(2) {
            let ended = pair[0].2.unwrap_or_else(Instant::now);
            if pair[1].1 < ended {
                duplicates.push(format!("job {job}: {} and {}", pair[0].0, pair[1].0));
            }
        }
    }
    duplicates
}

/// What the engine proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Answer `POST /containers/create` with 500, the rest is forwarded.
    FailCreates,
}

struct ProxyState {
    mode: Mutex<Mode>,
    /// Creates still to fail in `FailCreates` mode (`u32::MAX`: all).
    creates_to_fail: AtomicU32,
    failed_creates: AtomicU32,
    connections: Mutex<Vec<AbortHandle>>,
    upstream: PathBuf,
}

/// A Unix socket in front of the engine's socket that forwards requests,
/// fails container creates on demand, or is down (no socket: connections
/// are refused, open ones cut).
pub struct EngineProxy {
    pub socket: PathBuf,
    state: Arc<ProxyState>,
    accept: Mutex<Option<AbortHandle>>,
}

/// The message of an injected create failure.
pub const INJECTED_CREATE_FAILURE: &str = "injected fault: container create refused";

impl EngineProxy {
    pub fn start(dir: &Path) -> EngineProxy {
        let upstream = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
            _ => PathBuf::from("/var/run/docker.sock"),
        };
        let proxy = EngineProxy {
            socket: dir.join("engine.sock"),
            state: Arc::new(ProxyState {
                mode: Mutex::new(Mode::Pass),
                creates_to_fail: AtomicU32::new(0),
                failed_creates: AtomicU32::new(0),
                connections: Mutex::new(Vec::new()),
                upstream,
            }),
            accept: Mutex::new(None),
        };
        proxy.up();
        proxy
    }

    /// `DOCKER_HOST` for the orchestrator.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Fails the next `n` container creates (`u32::MAX`: every one).
    pub fn fail_creates(&self, n: u32) {
        self.state.creates_to_fail.store(n, Ordering::SeqCst);
        *self.state.mode.lock().unwrap() = Mode::FailCreates;
    }

    pub fn pass(&self) {
        *self.state.mode.lock().unwrap() = Mode::Pass;
    }

    pub fn failed_creates(&self) -> u32 {
        self.state.failed_creates.load(Ordering::SeqCst)
    }

    /// The daemon is unreachable: the socket is gone and open connections
    /// (the event stream among them) are cut.
    pub fn down(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// The daemon is back.
    pub fn up(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).unwrap();
        let state = self.state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state2 = state.clone();
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state2.clone();
                        async move { forward(&state, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                let mut conns = state.connections.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(accept.abort_handle());
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.down();
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, body: Value) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

async fn forward(
    state: &ProxyState,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let is_create =
        req.method() == hyper::Method::POST && req.uri().path().ends_with("/containers/create");
    if is_create && *state.mode.lock().unwrap() == Mode::FailCreates {
        let left = state.creates_to_fail.load(Ordering::SeqCst);
        if left > 0 {
            if left != u32::MAX {
                state.creates_to_fail.fetch_sub(1, Ordering::SeqCst);
            }
            state.failed_creates.fetch_add(1, Ordering::SeqCst);
            return Ok(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"message": INJECTED_CREATE_FAILURE}),
            ));
        }
    }
    let upstream = match UnixStream::connect(&state.upstream).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(full(
                StatusCode::BAD_GATEWAY,
                json!({"message": format!("engine proxy: {e}")}),
            ));
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    // An attach (the runner's credentials go over its stdin) switches the
    // connection to a raw stream: both sides are joined once switched.
    let client_side = req
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let mut resp = sender.send_request(req).await?;
    if let Some(client_side) = client_side
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let engine_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(client), Ok(engine)) = (client_side.await, engine_side.await) {
                let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
            }
        });
    }
    Ok(resp.map(|b| b.boxed()))
}
