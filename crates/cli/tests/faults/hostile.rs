//! Hostile clients against the real binary, as a regression: while a valid
//! proxy runner delegates and completes in a loop (every call must succeed),
//! each attack runs in turn; afterwards nothing hostile is in the API or in
//! the SQLite file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_runner_test_support::eventually;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use crate::full_size;

const ADMIN: &str = "hostile-admin-token";
const WEBHOOK_SECRET: &str = "whsec_hostile_test_secret";
/// The open-file limit the original failure was seen with.
const OPEN_FILES: u64 = 1024;
/// A valid call may wait this long behind the attack, no longer.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Written into every hostile body; must never be stored.
const MARK: &str = "HOSTILE-MARK-7d1c";

/// The valid proxy runner: delegations and completions in a loop, each
/// call within [`CALL_DEADLINE`].
struct ValidClient {
    rounds: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ValidClient {
    fn start(url: String, token: String) -> ValidClient {
        let rounds = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f, s) = (rounds.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(CALL_DEADLINE)
                .build()
                .unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                match round(&http, &url, &token, n).await {
                    Ok(()) => {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => f.lock().unwrap().push(format!("round {n}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ValidClient {
            rounds,
            failures,
            stop,
            task,
        }
    }

    /// Waits for two whole rounds begun after now: the service answers a
    /// valid client while the attack is on.
    async fn served_during(&self, attack: &str) {
        let from = self.rounds.load(Ordering::SeqCst);
        eventually(
            &format!("a valid client is served during {attack}"),
            Duration::from_secs(180),
            || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.rounds.load(Ordering::SeqCst) >= from + 2
            },
        )
        .await;
        self.assert_no_failure();
    }

    fn assert_no_failure(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "valid calls failed: {failures:?}");
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let ValidClient {
            rounds,
            failures,
            task,
            ..
        } = self;
        task.await.unwrap();
        let failures = failures.lock().unwrap();
        assert!(failures.is_empty(), "valid calls failed: {failures:?}");
        rounds.load(Ordering::SeqCst)
    }
}

async fn round(http: &reqwest::Client, url: &str, token: &str, n: u64) -> Result<(), String> {
    let body = json!({
        "jobId": format!("valid-{n}"), "runId": n.to_string(), "repository": "valid-org/app",
        "workflow": "CI", "runnerName": "proxy-valid", "labels": "self-hosted,linux",
        "environment": {"GITHUB_JOB": format!("valid-{n}")}
    });
    let resp = http
        .post(format!("{url}/api/jobs/delegate"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("delegate: {e}"))?;
    if resp.status() != 201 {
        return Err(format!("delegate answered {}", resp.status()));
    }
    let job: Value = resp.json().await.map_err(|e| e.to_string())?;
    let id = job["id"].as_str().ok_or("no id")?;
    let resp = http
        .post(format!("{url}/api/jobs/{id}/complete"))
        .bearer_auth(token)
        .json(&json!({"exitCode": 0, "conclusion": "success"}))
        .send()
        .await
        .map_err(|e| format!("complete: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("complete answered {}", resp.status()));
    }
    Ok(())
}

/// The test process opens more sockets than the server may: its own soft
/// limit goes up to its hard limit.
fn raise_own_open_file_limit(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < needed) {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).unwrap();
    }
}

/// Writes `head` and then `trickle` one byte a second until the server
/// closes the connection; the seconds that took. More than `max_secs`
/// fails: the server kept a stalling client.
async fn trickle_until_closed(address: String, head: String, trickle: u8, max_secs: u64) -> u64 {
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    for sec in 0..=max_secs {
        if stream.write_all(&[trickle]).await.is_err() {
            return sec;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sec,
            // An answer (a 408 or 4xx) before the close is fine.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    panic!("the server kept a client sending one byte a second for {max_secs} s");
}

/// Sends a whole request and returns the status line of the answer.
async fn raw_request(address: &str, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the body is all written.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CALL_DEADLINE, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_never_stop_a_valid_client_and_leave_nothing_stored() {
    let idle_connections = 1100;
    let slow_clients = if full_size() { 50 } else { 8 };
    raise_own_open_file_limit(idle_connections as u64 + 200);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let server = common::serve_with_open_files(
        &db,
        Some(&dir.path().join("serve.log")),
        &["--backend", "dry-run"],
        &[
            ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
            ("PROXY_RUNNER_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("PROXY_RUNNER_LOG", "warn"),
        ],
        Some(OPEN_FILES),
    );
    let address = server.address();
    let http = reqwest::Client::builder()
        .timeout(CALL_DEADLINE)
        .build()
        .unwrap();
    let token_for = |runner: &'static str| {
        let (http, url) = (http.clone(), server.url.clone());
        async move {
            let v: Value = http
                .post(format!("{url}/api/tokens"))
                .bearer_auth(ADMIN)
                .json(&json!({"runner": runner}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["token"].as_str().unwrap().to_string()
        }
    };
    let valid_token = token_for("proxy-valid").await;
    let hostile_token = token_for("proxy-1").await;
    let valid = ValidClient::start(server.url.clone(), valid_token.clone());
    valid.served_during("start-up").await;
    let started = Instant::now();

    // 1. More idle connections than the server has files.
    let mut idle = Vec::with_capacity(idle_connections);
    for _ in 0..idle_connections {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    valid.served_during("1,100 idle connections").await;
    drop(idle);

    // 2. Slow headers and 3. slow bodies, one byte a second.
    let mut slow = Vec::new();
    for i in 0..slow_clients {
        slow.push(tokio::spawn(trickle_until_closed(
            address.clone(),
            "POST /api/jobs/delegate HTTP/1.1\r\nHost: x\r\nX-Slow".to_string(),
            b'a',
            120,
        )));
        let head = if i % 2 == 0 {
            format!(
                "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: workflow_job\r\nContent-Length: 100000\r\n\r\n{{\"mark\": \"{MARK}"
            )
        } else {
            format!(
                "POST /api/jobs/delegate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"repository\": \"{MARK}"
            )
        };
        slow.push(tokio::spawn(trickle_until_closed(
            address.clone(),
            head,
            b' ',
            120,
        )));
    }
    valid.served_during("slow headers and bodies").await;
    let mut slow_closed_after = 0;
    for s in slow {
        slow_closed_after = slow_closed_after.max(s.await.unwrap());
    }

    // 4. Oversized declared bodies, none sent: 413 at once.
    for (path, length) in [
        ("/webhooks/github", 52_428_800u64),
        ("/api/jobs/delegate", 2_000_000),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        let status = raw_request(&address, &head, b"").await;
        assert!(status.starts_with("HTTP/1.1 413"), "{path}: {status}");
    }

    // 5. Unauthenticated bodies within the limits, many at once: 401.
    let big_json = |n: usize| {
        format!(
            "{{\"repository\": \"{MARK}\", \"pad\": \"{}\"}}",
            "x".repeat(n)
        )
    };
    let mut unauthenticated = Vec::new();
    for i in 0..16 {
        // Just under each route's limit (1 MiB for both by default).
        let (path, size) = if i % 2 == 0 {
            ("/webhooks/github", 1000 * 1024)
        } else {
            ("/api/jobs/delegate", 1000 * 1024)
        };
        let (address, body) = (address.clone(), big_json(size));
        unauthenticated.push(tokio::spawn(async move {
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: {i}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            (path, raw_request(&address, &head, body.as_bytes()).await)
        }));
    }
    valid.served_during("unauthenticated bodies").await;
    for u in unauthenticated {
        let (path, status) = u.await.unwrap();
        assert!(status.starts_with("HTTP/1.1 401"), "{path}: {status}");
    }

    // 6. Wrong content types: 415, nothing read as JSON.
    let delegation = json!({"jobId": "ct", "runId": "1", "repository": format!("ct-org/{MARK}"),
        "workflow": "CI", "runnerName": "proxy-1", "labels": "self-hosted", "environment": {}});
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json-patch+json",
    ] {
        let resp = http
            .post(format!("{}/api/jobs/delegate", server.url))
            .bearer_auth(&hostile_token)
            .header("content-type", content_type)
            .body(delegation.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415, "{content_type}");
        let error: Value = resp.json().await.unwrap();
        assert!(error["error"]["code"].is_string(), "{error}");
    }

    // 7. The design's hook with a workflow name that splices a second
    //    repository into its JSON: refused, stored under neither.
    let injected = common::run_design_hook(
        "job-started.sh",
        &server.url,
        &hostile_token,
        &[(
            "GITHUB_WORKFLOW",
            "CI\", \"repository\": \"evil/injected\", \"zz\": \"",
        )],
    );
    let answer = String::from_utf8_lossy(&injected.stdout);
    assert!(answer.contains("duplicate"), "{answer}");

    // 8. Credentials under innocent names, in free text and in the matrix.
    let pat = format!("ghp_{}", "H".repeat(36));
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJob3N0aWxlIn0.aG9zdGlsZS1zaWduYXR1cmUtdmFsdWU";
    let slack = "https://hooks.slack.com/services/T0HOSTILE/B0HOSTILE/hostilehostile";
    let free_text = format!("deploy with {pat} tonight");
    let planted = json!({
        "jobId": "planted", "runId": "2", "repository": "planted-org/app", "workflow": "CI",
        "runnerName": "proxy-1", "labels": "self-hosted",
        "environment": {"BUILD_LABEL": pat, "GH_PAT": pat, "OIDC_ASSERTION": jwt,
            "NOTIFY": slack, "NOTES": free_text, "PLAIN": "kept"},
        "matrix": {"os": "linux", "api_token": "matrix-token-hostile", "target": pat},
    });
    let resp = http
        .post(format!("{}/api/jobs/delegate", server.url))
        .bearer_auth(&hostile_token)
        .json(&planted)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let answer = resp.text().await.unwrap();
    assert!(answer.contains("\"PLAIN\":\"kept\""), "{answer}");

    let rounds = valid.finish().await;
    let attacks_took = started.elapsed();
    let peak_kib = vm_kib(server.pid(), "VmHWM:");

    // Nothing hostile in the API: only the valid and the planted
    // repositories have jobs, and the planted one's secrets are gone.
    let jobs_of = |repository: &str| {
        let (http, url) = (http.clone(), server.url.clone());
        let repository = repository.to_string();
        async move {
            let list: Value = http
                .get(format!("{url}/api/jobs?repository={repository}&limit=500"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list["jobs"].as_array().unwrap().clone()
        }
    };
    for hostile in [
        "evil/injected".to_string(),
        "octo-org/octo-repo".to_string(),
        format!("ct-org/{MARK}"),
    ] {
        assert!(
            jobs_of(&hostile).await.is_empty(),
            "a job of {hostile} was stored"
        );
    }
    let planted_jobs = jobs_of("planted-org/app").await;
    assert_eq!(planted_jobs.len(), 1);
    assert_eq!(jobs_of("valid-org/app").await.len().min(1), 1);
    let shown = planted_jobs[0].to_string();
    // ...nor in the database files (the WAL too).
    let secrets: Vec<&str> = vec![
        &pat,
        jwt,
        "hooks.slack.com",
        "matrix-token-hostile",
        MARK,
        "evil/injected",
        &valid_token,
        &hostile_token,
        ADMIN,
    ];
    for s in &secrets {
        assert!(!shown.contains(s), "{s} is in the API's answer: {shown}");
    }
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("jobs.db") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} is in {name}"
            );
        }
    }
    assert!(files >= 1, "no database file");
    println!(
        "FIGURES hostile: valid rounds {rounds} (0 failed) during {:.1}s of attacks; idle connections {idle_connections} \
         (server open-file limit {OPEN_FILES}); slow clients {} closed within {slow_closed_after}s; peak RSS {} MiB",
        attacks_took.as_secs_f64(),
        slow_clients * 2,
        peak_kib / 1024,
    );
}

/// Sixteen unsigned 24 MiB webhooks at once: refused before they are read
/// (their length is declared) or cut off at the limit (chunked), while a
/// valid client is served; the server's memory grows by tens of MB at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_unsigned_24_mib_webhooks_are_refused_with_bounded_memory() {
    const BODY: usize = 24 * 1024 * 1024;
    const GROWTH_LIMIT_KIB: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = common::serve(
        &dir.path().join("jobs.db"),
        None,
        &["--backend", "dry-run"],
        &[
            ("PROXY_RUNNER_ADMIN_TOKEN", ADMIN),
            ("PROXY_RUNNER_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("PROXY_RUNNER_LOG", "warn"),
        ],
    );
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/api/tokens", server.url))
        .bearer_auth(ADMIN)
        .json(&json!({"runner": "proxy-valid"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let valid = ValidClient::start(
        server.url.clone(),
        token["token"].as_str().unwrap().to_string(),
    );
    valid.served_during("start-up").await;
    let baseline = vm_kib(server.pid(), "VmRSS:");
    let body: Arc<Vec<u8>> = Arc::new(
        format!(
            "{{\"mark\": \"{MARK}\", \"pad\": \"{}\"}}",
            "x".repeat(BODY - 64)
        )
        .into_bytes(),
    );
    let address = server.address();
    let mut webhooks = Vec::new();
    for i in 0..16 {
        let (address, body) = (address.clone(), body.clone());
        webhooks.push(tokio::spawn(async move {
            // Half declare their length; half are chunked, so that only
            // reading tells how long they are.
            let (head, payload) = if i % 2 == 0 {
                (
                    format!("POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: big-{i}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                    body.to_vec(),
                )
            } else {
                let mut chunked = Vec::with_capacity(body.len() + 4096);
                for chunk in body.chunks(64 * 1024) {
                    chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    chunked.extend_from_slice(chunk);
                    chunked.extend_from_slice(b"\r\n");
                }
                chunked.extend_from_slice(b"0\r\n\r\n");
                (
                    format!("POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: big-{i}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
                    chunked,
                )
            };
            raw_request(&address, &head, &payload).await
        }));
    }
    valid.served_during("sixteen 24 MiB webhooks").await;
    for w in webhooks {
        let status = w.await.unwrap();
        // A server that stops reading at its limit may close before the
        // answer is read; any answer given is a refusal.
        assert!(
            status.is_empty()
                || status.starts_with("HTTP/1.1 413")
                || status.starts_with("HTTP/1.1 401"),
            "{status}"
        );
    }
    valid.finish().await;
    let peak = vm_kib(server.pid(), "VmHWM:");
    println!(
        "FIGURES webhook memory: RSS before {} MiB, peak {} MiB, growth {} MiB under 16 concurrent 24 MiB unsigned webhooks",
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024
    );
    assert!(
        peak.saturating_sub(baseline) < GROWTH_LIMIT_KIB,
        "RSS grew from {baseline} KiB to a peak of {peak} KiB"
    );
}
