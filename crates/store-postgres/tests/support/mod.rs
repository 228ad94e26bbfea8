//! PostgreSQL for the tests: the shared server named by
//! `PROXY_RUNNER_TEST_POSTGRES` (one fresh database per test, dropped
//! afterwards), and a private throw-away server a test can stop and start.
//!
//! Without the variable a test skips with a message, except under CI where
//! it fails naming the variable (`.ci/postgres.sh` starts a server and
//! prints the line to export).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proxy_runner_store_postgres::{PostgresSettings, PostgresStore};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

pub const VAR: &str = "PROXY_RUNNER_TEST_POSTGRES";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Settings for tests: a wait for a connection long enough that a loaded
/// machine never turns a slow answer into a failure (it only bounds a
/// broken run).
pub fn patient() -> PostgresSettings {
    PostgresSettings {
        max_connections: 8,
        acquire_timeout: Duration::from_secs(60),
    }
}

/// The URL of the shared test server; `None` (after saying so) when it is
/// not configured outside CI.
pub fn server_url() -> Option<String> {
    match std::env::var(VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if in_ci() => panic!(
            "{VAR} is not set, and CI must run the PostgreSQL tests: start a server with \
             .ci/postgres.sh and export the line it prints"
        ),
        _ => {
            eprintln!(
                "skipped: {VAR} is not set (e.g. postgres://postgres@127.0.0.1:54329/postgres); \
                 .ci/postgres.sh starts a throw-away server"
            );
            None
        }
    }
}

/// `url` with its database (the path) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
    let before_query = &rest[..rest.len() - query.len()];
    let authority = before_query.split('/').next().unwrap_or("");
    format!("{scheme}://{authority}/{database}{query}")
}

/// A database of its own for one test on the shared server, dropped when
/// this value is (also when the test fails).
pub struct TestDb {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Option<TestDb> {
        let admin_url = server_url()?;
        let name = format!("proxy_runner_test_{}", Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the server {VAR} names: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Some(TestDb {
            admin_url,
            name,
            url,
        })
    }

    /// A store on this database, as a replica would open it.
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect_with(&self.url, patient())
            .await
            .unwrap_or_else(|e| panic!("cannot open the store on {}: {e}", self.name))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: drop the database from a
        // thread with a runtime of its own.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                // FORCE ends the connections the store's pool still holds.
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------- a private server

/// A PostgreSQL server of one test, from `initdb` and `pg_ctl` (on `PATH` or
/// under `/usr/lib/postgresql/*/bin`), on a free loopback port, run as a
/// user other than root (PostgreSQL refuses root). Stopped and deleted on
/// drop.
pub struct ThrowAwayServer {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// `(uid, gid)` to run as when this process is root.
    run_as: Option<(u32, u32)>,
    _dir: tempfile::TempDir,
}

impl ThrowAwayServer {
    /// Starts a server, or says why not and returns `None` outside CI; under
    /// CI a server that cannot start fails the test.
    pub fn start() -> Option<ThrowAwayServer> {
        match Self::try_start() {
            Ok(server) => Some(server),
            Err(why) if in_ci() => panic!("cannot start a throw-away PostgreSQL server: {why}"),
            Err(why) => {
                eprintln!("skipped: cannot start a throw-away PostgreSQL server: {why}");
                None
            }
        }
    }

    fn try_start() -> Result<ThrowAwayServer, String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};

        let bin = find_bin_dir()
            .ok_or("initdb and pg_ctl are neither on PATH nor under /usr/lib/postgresql/*/bin")?;
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .map_err(|e| format!("cannot tell who this process runs as: {e}"))?;
        let run_as = if root {
            Some(
                ["postgres", "nobody"]
                    .into_iter()
                    .find_map(user_ids)
                    .ok_or(
                        "running as root and no user 'postgres' or 'nobody' to run the server as",
                    )?,
            )
        } else {
            None
        };

        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        std::fs::write(&log, "").map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = run_as {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            for p in [&data, &log] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let port = free_port()?;
        let server = ThrowAwayServer {
            bin,
            data,
            log,
            port,
            run_as,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
        );
        let conf_path = server.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|e| e.to_string())?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| e.to_string())?;
        server.start_again()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: open sessions are ended) and waits until it is down.
    pub fn stop(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts the (stopped) server on the same port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-l".as_ref(),
                self.log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "start".as_ref(),
            ],
        )
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        use std::os::unix::process::CommandExt;

        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).current_dir(&self.data);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            Err(format!(
                "{tool} failed ({}): {}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for ThrowAwayServer {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH` first, else the
/// newest `/usr/lib/postgresql/{version}/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                // Resolve a symbolic link so the server binary is found beside it.
                return std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_tools(d))
                    .or(Some(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `(uid, gid)` of a local user, from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
