//! The runner credential on the real engine: the JIT config reaches the
//! runner container on its standard input, so neither `docker inspect` nor a
//! step of the job it runs can find it, and the runner still takes its job.
//!
//! GitHub is the emulator; a registry wrapping the real GitHub client plants
//! a marker at the start of every JIT config it mints (the emulator ignores
//! the extra field), so the test knows in advance what to look for.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use proxy_runner_docker::{DockerBackend, DockerOptions, RunnerImageOptions, ensure_runner_image};
use proxy_runner_domain::JobSource;
use proxy_runner_domain::ports::{
    ContainerBackend, GitHubError, JitConfig, JitRequest, RegistrationToken, RunnerInfo,
    RunnerRegistry, Scope, WorkflowJobInfo,
};
use proxy_runner_emulator::EmulatorConfig;
use proxy_runner_github::{Auth, GitHubClient, GitHubConfig};
use proxy_runner_orchestrator::autoscaler::{AutoscaleConfig, JobAction};
use proxy_runner_orchestrator::config::Config;
use proxy_runner_orchestrator::sources::Sources;
use proxy_runner_orchestrator::{Ports, System};
use proxy_runner_store::SqliteStore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

const PAT: &str = "ghp_runner-secrets-SECRET";

/// The real GitHub client, with `{"planted": marker, ...}` put first into
/// every JIT config document it mints.
struct PlantingRegistry {
    inner: GitHubClient,
    marker: String,
    minted: Mutex<Vec<String>>,
}

#[async_trait]
impl RunnerRegistry for PlantingRegistry {
    async fn generate_jit_config(
        &self,
        scope: &Scope,
        request: &JitRequest,
    ) -> Result<JitConfig, GitHubError> {
        let mut config = self.inner.generate_jit_config(scope, request).await?;
        let engine = base64::engine::general_purpose::STANDARD;
        let document = engine
            .decode(config.encoded_jit_config.expose_secret())
            .expect("the emulator's JIT config is base64");
        assert_eq!(document.first(), Some(&b'{'), "a JSON object");
        let mut planted = format!(r#"{{"planted":"{}","#, self.marker).into_bytes();
        planted.extend_from_slice(&document[1..]);
        let encoded = engine.encode(&planted);
        self.minted.lock().unwrap().push(encoded.clone());
        config.encoded_jit_config = SecretString::from(encoded);
        Ok(config)
    }
    async fn create_registration_token(
        &self,
        scope: &Scope,
    ) -> Result<RegistrationToken, GitHubError> {
        self.inner.create_registration_token(scope).await
    }
    async fn delete_runner(&self, scope: &Scope, id: u64) -> Result<(), GitHubError> {
        self.inner.delete_runner(scope, id).await
    }
    async fn list_runners(&self, scope: &Scope) -> Result<Vec<RunnerInfo>, GitHubError> {
        self.inner.list_runners(scope).await
    }
    async fn get_workflow_job(
        &self,
        owner: &str,
        repo: &str,
        id: u64,
    ) -> Result<WorkflowJobInfo, GitHubError> {
        self.inner.get_workflow_job(owner, repo, id).await
    }
    async fn list_queued_jobs(
        &self,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<WorkflowJobInfo>, GitHubError> {
        self.inner.list_queued_jobs(owner, repo).await
    }
}

/// Polls `probe` until it yields a value; the limit only bounds a broken run.
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address containers reach this host at (the default bridge's gateway).
async fn bridge_gateway(docker: &DockerBackend) -> IpAddr {
    let client = docker.client().await.unwrap();
    let net = client
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap();
    for c in net.ipam.and_then(|i| i.config).unwrap_or_default() {
        if let Some(gw) = c.gateway.as_deref().and_then(|g| g.parse().ok()) {
            return gw;
        }
        if let Some((base, _)) = c.subnet.as_deref().and_then(|s| s.split_once('/'))
            && let Ok(v4) = base.parse::<Ipv4Addr>()
        {
            return IpAddr::V4(Ipv4Addr::from(u32::from(v4) + 1));
        }
    }
    panic!("no gateway on Docker's default bridge")
}

/// A step that looks for two needles (given in halves, so that the step's
/// own text never holds one whole) in its environment, in every
/// `/proc/*/environ` and `/proc/*/cmdline` it can read, and in every file
/// under `/` (`/proc`, `/sys`, `/dev` aside: the work folder, `/tmp` and home
/// included). It first proves that each probe finds a planted decoy, then
/// waits for `/tmp/release` so the test can inspect the running container.
fn probe_step(needles: [(&str, &str); 2]) -> String {
    let [(a1, a2), (b1, b2)] = needles;
    format!(
        r#"a1='{a1}'; a2='{a2}'; b1='{b1}'; b2='{b2}'
N1="$a1$a2"; N2="$b1$b2"
hits=0
check() {{ case "$2" in *"$N1"*|*"$N2"*) echo "HIT $1"; hits=$((hits+1));; esac; }}
{{ check decoy "x${{N1}}x"; check decoy "y${{N2}}y"; }} > /dev/null
[ "$hits" = 2 ] && echo "DETECTOR OK"; hits=0
check env "$(env)"
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
  c=$(tr '\0' '\n' < "$f" 2>/dev/null) || continue
  echo "$f" >> /tmp/read-proc
  check "$f" "$c"
done
grep -q '^/proc/1/environ$' /tmp/read-proc && echo "READ /proc/1/environ"
echo "work dir $(pwd)"
: > ./.probe-mark 2>/dev/null || echo "WORK DIR NOT WRITABLE"
printf 'z%sz\n' "$N1" > /tmp/decoy-file
find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print > /tmp/files
grep -q "/.probe-mark$" /tmp/files || echo "WORK DIR NOT SCANNED"
echo "files $(wc -l < /tmp/files)"
find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -exec grep -lsF -e "$N1" -e "$N2" {{}} + > /tmp/found
grep -qx /tmp/decoy-file /tmp/found && echo "FILE DETECTOR OK"
grep -vx /tmp/decoy-file /tmp/found | sed 's/^/HIT file /'
rm -f /tmp/decoy-file
echo "hits $hits"
: > /tmp/searched
n=0; while [ ! -e /tmp/release ]; do sleep 0.1; n=$((n+1)); [ "$n" -lt 3000 ] || exit 9; done
echo released"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jit_config_is_in_no_inspect_and_nowhere_a_job_step_looks() {
    let Some(probe) = common::proxy::docker().await else {
        return;
    };
    drop(probe);
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let instance = format!("test-secrets-{suffix}");
    let docker = DockerBackend::connect(DockerOptions {
        instance: Some(instance.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let image = format!("proxy-runner-local-runner:{}", common::proxy::digest());
    ensure_runner_image(
        &docker,
        &RunnerImageOptions::new(image.clone(), common::proxy::binary()),
    )
    .await
    .unwrap();

    // The emulator, where containers reach it.
    let host_ip = bridge_gateway(&docker).await;
    let port = std::net::TcpListener::bind(SocketAddr::new(host_ip, 0))
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
        SocketAddr::new(host_ip, port),
    )
    .await
    .unwrap();

    // What to look for: the marker as planted, and the start of the encoded
    // config (whole base64 groups of the planted prefix).
    let marker = format!("planted-{}", uuid::Uuid::now_v7().simple());
    let prefix = format!(r#"{{"planted":"{marker}","#);
    let whole = prefix.len() - prefix.len() % 3;
    let encoded_needle =
        base64::engine::general_purpose::STANDARD.encode(&prefix.as_bytes()[..whole]);
    let (e1, e2) = encoded_needle.split_at(encoded_needle.len() / 2);
    let (m1, m2) = marker.split_at(marker.len() / 2);

    let registry = Arc::new(PlantingRegistry {
        inner: GitHubClient::new(GitHubConfig::new(
            emulator.url(),
            Auth::Pat(SecretString::from(PAT)),
        ))
        .unwrap(),
        marker: marker.clone(),
        minted: Mutex::new(Vec::new()),
    });
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let system = System::build_with(
        &Config::default(),
        AutoscaleConfig {
            instance: instance.clone(),
            image,
            network_prefix: format!("pr-{instance}"),
            web_url: public_url.clone(),
            tick: Duration::from_millis(50),
            ..AutoscaleConfig::default()
        },
        Ports {
            store,
            backend: Arc::new(docker.clone()),
            registry: Some(registry.clone()),
            feed: None,
            job_containers: None,
            sources: Sources::system(),
        },
    );
    let scaler = system.autoscaler.expect("GitHub is configured");
    let stop = tokio_util::sync::CancellationToken::new();
    let loops = scaler.spawn(stop.clone());

    // A job whose one step searches for the credential.
    let repository = format!("octo/secrets-{suffix}");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/_emulator/jobs", emulator.url()))
        .json(&json!({
            "repository": repository, "labels": ["self-hosted"], "workflow": "CI",
            "name": "probe", "steps": [probe_step([(e1, e2), (m1, m2)])],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let github_id = created["id"].as_u64().expect("job id");
    let (owner, repo) = repository.split_once('/').unwrap();
    let info = registry
        .get_workflow_job(owner, repo, github_id)
        .await
        .unwrap();
    scaler
        .ingest(JobAction::Queued, &info, JobSource::Webhook)
        .await
        .unwrap();

    // The runner container, while its step waits: nothing of the config
    // anywhere in what the engine shows about it.
    let container = until("a runner container", || async {
        docker
            .list(&instance)
            .await
            .ok()
            .and_then(|live| live.into_iter().find(|c| c.running))
    })
    .await;
    let minted = registry.minted.lock().unwrap().clone();
    assert_eq!(minted.len(), 1, "one JIT config");
    let config = &minted[0];
    assert!(
        config.starts_with(&encoded_needle),
        "the needle is the config's start"
    );
    let inspected = common::proxy::inspect(&container.id).await;
    let text = inspected.to_string();
    for needle in [config.as_str(), encoded_needle.as_str(), marker.as_str()] {
        assert!(
            !text.contains(needle),
            "the JIT config is in docker inspect"
        );
    }
    let env = inspected["Config"]["Env"].as_array().unwrap();
    assert!(
        env.iter()
            .all(|e| !e.as_str().unwrap().contains("JITCONFIG")),
        "{env:?}"
    );
    assert!(
        env.iter()
            .any(|e| e.as_str().unwrap().starts_with("RUNNER_NAME="))
    );
    assert_eq!(inspected["Config"]["OpenStdin"], true);
    assert_eq!(inspected["Config"]["StdinOnce"], true);
    assert!(inspected["Mounts"].as_array().is_none_or(|m| m.is_empty()));

    // Its step has searched by now once the runner has taken the job; let it end.
    until("the step's search", || async {
        let out = tokio::process::Command::new("docker")
            .args([
                "exec",
                &container.id,
                "sh",
                "-c",
                "[ -e /tmp/searched ] && touch /tmp/release",
            ])
            .output()
            .await
            .ok()?;
        out.status.success().then_some(())
    })
    .await;

    // The runner ran its job: the step's report is in GitHub's log.
    let job = until("the job's completion", || async {
        let job: Value = http
            .get(format!("{}/_emulator/jobs/{github_id}", emulator.url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (job["status"] == "completed").then_some(job)
    })
    .await;
    let output = job["steps"][0]["output"].as_str().unwrap_or_default();
    assert_eq!(job["conclusion"], "success", "{job}");
    for line in [
        "DETECTOR OK",
        "READ /proc/1/environ",
        "FILE DETECTOR OK",
        "hits 0",
        "released",
    ] {
        assert!(
            output.lines().any(|l| l == line),
            "{line:?} missing:\n{output}"
        );
    }
    assert!(!output.contains("HIT "), "{output}");
    assert!(!output.contains("NOT SCANNED"), "{output}");
    assert!(!output.contains("NOT WRITABLE"), "{output}");
    let files: usize = output
        .lines()
        .find_map(|l| l.strip_prefix("files "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(files > 10, "{output}");

    stop.cancel();
    for handle in loops {
        let _ = handle.await;
    }
    let _ = tokio::process::Command::new("docker")
        .args(["rm", "-f", &container.id])
        .output()
        .await;
    for network in docker.list_networks(&instance).await.unwrap_or_default() {
        let _ = docker.remove_network_if_unused(&network.name).await;
    }
}
