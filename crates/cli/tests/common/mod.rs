//! Starting the real `proxy-runner serve` for process-level tests.

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running orchestrator process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Sends SIGTERM (the process keeps running until it has stopped).
    pub fn sigterm(&self) {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, Signal::TERM).unwrap();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The process id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the listening address.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }
}

/// `proxy-runner serve` on a free loopback port with the database at `db`,
/// stderr appended to `log` (or dropped), extra flags and environment.
pub fn serve(db: &Path, log: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
    serve_with_open_files(db, log, args, env, None)
}

/// As [`serve`], with the process's open-file limit (`RLIMIT_NOFILE`, soft
/// and hard) set to `open_files` when given.
pub fn serve_with_open_files(
    db: &Path,
    log: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
    open_files: Option<u64>,
) -> Server {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy-runner"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(n) = open_files {
        use std::os::unix::process::CommandExt;
        let limit = rustix::process::Rlimit {
            current: Some(n),
            maximum: Some(n),
        };
        // SAFETY: between fork and exec only setrlimit runs, which is
        // async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let logged = log
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!("unexpected first line {line:?}: {logged}")
        })
        .to_string();
    Server { child, url }
}

/// Reads until the server closes the connection, returning what came. The
/// read limit only bounds a broken run: reaching it fails the test, since
/// the server never closed the connection.
pub fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut out = Vec::new();
    if let Err(e) = stream.read_to_end(&mut out) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept the connection open: {e}"
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs one of the design's hook scripts with bash as the runner would
/// (`bash -e`), in an environment like the runner's at hook time; `env`
/// adds or replaces variables.
pub fn run_design_hook(
    script: &str,
    url: &str,
    token: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/design-hooks")
        .join(script);
    Command::new("bash")
        .arg("-e")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", "/tmp")
        .env("GITHUB_JOB", "build")
        .env("GITHUB_RUN_ID", "123456789")
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_REPOSITORY", "octo-org/octo-repo")
        .env("GITHUB_WORKFLOW", "CI")
        .env("GITHUB_ACTIONS", "true")
        .env("CI", "true")
        .env("RUNNER_NAME", "proxy-1")
        .env("RUNNER_LABELS", "self-hosted,linux,proxy")
        .env("ORCHESTRATOR_URL", url)
        .env("RUNNER_TOKEN", token)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
