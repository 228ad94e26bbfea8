//! The delegation part of `proxy-runner bench`: `proxy-runner serve` as a
//! child process, on a SQLite file and then on `:memory:`, loaded by a
//! separate `proxy-runner bench-load` process at each client count, plus
//! `GET /healthz` on the file-backed server. Prints a table and the ratio of
//! durable to in-memory delegations; asserts nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct DelegationArgs {
    /// Client counts to measure delegations at.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
    pub clients: Vec<usize>,
    /// Delegations per case with more than one client.
    #[arg(long, default_value_t = 20_000)]
    pub delegations: usize,
    /// Delegations of the one-client case (each waits for the previous one).
    #[arg(long, default_value_t = 2_000)]
    pub serial_delegations: usize,
    /// `GET /healthz` requests (at 64 clients, or the largest count asked for
    /// when that is smaller).
    #[arg(long, default_value_t = 50_000)]
    pub healthz_requests: usize,
    /// The `proxy-runner` whose `serve` is measured (default: this one), to
    /// compare builds with the same load generator.
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
    /// Directory for the SQLite file (default: a fresh temporary directory).
    #[arg(long)]
    pub db_dir: Option<PathBuf>,
}

/// A `proxy-runner serve` child; killed when dropped.
pub(super) struct Server {
    child: Child,
    pub(super) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_server(binary: &Path, db: &str, admin: &str) -> anyhow::Result<Server> {
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "dry-run",
            "--db",
            db,
        ])
        .env("PROXY_RUNNER_ADMIN_TOKEN", admin)
        .env("PROXY_RUNNER_LOG", "warn")
        // Room for every client's connection.
        .env("PROXY_RUNNER_HTTP_MAX_CONNECTIONS", "4096")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok(Server {
            child,
            url: url.to_string(),
        }),
        None => {
            let _ = child.kill();
            bail!("the server did not start: {line:?}")
        }
    }
}

pub(super) async fn runner_token(url: &str, admin: &str, runner: &str) -> anyhow::Result<String> {
    let v: Value = reqwest::Client::new()
        .post(format!("{url}/api/tokens"))
        .bearer_auth(admin)
        .json(&json!({"runner": runner}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .context("no token in the answer")
}

/// One `proxy-runner bench-load` run; its JSON figures.
async fn load(
    url: &str,
    token: &str,
    kind: &str,
    clients: usize,
    requests: usize,
    tag: &str,
) -> anyhow::Result<Value> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench-load", "--url", url, "--kind", kind, "--tag", tag])
        .args(["--clients", &clients.to_string()])
        .args(["--requests", &requests.to_string()])
        .env("PROXY_RUNNER_TOKEN", token)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("cannot run the load generator")?;
    if !out.status.success() {
        bail!("the load generator failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("unreadable figures {last:?}"))
}

fn row(case: &str, store: &str, clients: usize, f: &Value) {
    println!(
        "{case:<12} {store:<12} {clients:>7} {:>9} {:>6} {:>10.0} {:>9.2} {:>9.2}",
        f["requests"],
        f["errors"],
        f["rate"].as_f64().unwrap_or(f64::NAN),
        f["p50Ms"].as_f64().unwrap_or(f64::NAN),
        f["p99Ms"].as_f64().unwrap_or(f64::NAN),
    );
}

pub async fn run(args: &DelegationArgs) -> anyhow::Result<Value> {
    let binary = match &args.server_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let temp = tempfile::tempdir()?;
    let dir = args
        .db_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let db_file = dir.join(format!("bench-{}.db", uuid::Uuid::now_v7().simple()));
    let admin = format!("{:032x}", rand::random::<u128>());
    let healthz_clients = args
        .clients
        .iter()
        .copied()
        .filter(|&c| c <= 64)
        .max()
        .unwrap_or(64);

    println!(
        "{:<12} {:<12} {:>7} {:>9} {:>6} {:>10} {:>9} {:>9}",
        "case", "store", "clients", "requests", "errors", "rate/s", "p50 ms", "p99 ms"
    );
    let mut cases = Vec::new();
    let stores = [
        ("sqlite-file", db_file.to_string_lossy().to_string()),
        ("memory", ":memory:".to_string()),
    ];
    for (store, db) in &stores {
        let server = start_server(&binary, db, &admin)?;
        let token = runner_token(&server.url, &admin, "bench").await?;
        for &clients in &args.clients {
            let requests = if clients == 1 {
                args.serial_delegations
            } else {
                args.delegations
            };
            let tag = format!("{store}-{clients}");
            let f = load(&server.url, &token, "delegate", clients, requests, &tag).await?;
            row("delegate", store, clients, &f);
            cases.push(
                json!({"case": "delegate", "store": store, "clients": clients, "figures": f}),
            );
        }
        if *store == "sqlite-file" {
            let f = load(
                &server.url,
                &token,
                "healthz",
                healthz_clients,
                args.healthz_requests,
                "healthz",
            )
            .await?;
            row("GET /healthz", store, healthz_clients, &f);
            cases.push(json!({"case": "healthz", "store": store, "clients": healthz_clients, "figures": f}));
        }
        drop(server);
    }
    let _ = std::fs::remove_file(&db_file);
    for suffix in ["-wal", "-shm"] {
        let mut p = db_file.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }

    let rate = |store: &str, clients: usize| {
        cases
            .iter()
            .find(|c| c["case"] == "delegate" && c["store"] == store && c["clients"] == clients)
            .and_then(|c| c["figures"]["rate"].as_f64())
    };
    let mut ratios = serde_json::Map::new();
    println!();
    for &clients in &args.clients {
        if let (Some(durable), Some(memory)) =
            (rate("sqlite-file", clients), rate("memory", clients))
        {
            let ratio = durable / memory;
            println!("durable / in-memory delegations at {clients} clients: {ratio:.2}");
            ratios.insert(clients.to_string(), json!(ratio));
        }
    }
    Ok(json!({
        "serverBinary": binary.file_name().map(|n| n.to_string_lossy().to_string()),
        "cases": cases,
        "durableToMemory": ratios,
    }))
}
