//! Runs one process the way the simulated runner runs steps and hooks: its
//! own process group, a clean environment, stdout and stderr captured
//! together (in the order they were written), bounded output, a timeout.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::StepResult;
use crate::state::truncate_utf8;

/// Exit code of a step that timed out (as `timeout(1)` uses).
pub const EXIT_STEP_TIMEOUT: i32 = 124;
/// Exit code of a step that could not be started (as shells use).
pub const EXIT_STEP_NOT_STARTED: i32 = 127;
/// How long output is still read after the process exited (background
/// processes may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

pub(crate) struct ProcessSpec<'a> {
    pub program: &'a OsStr,
    pub args: &'a [String],
    /// The whole environment of the process.
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
    /// Written to stdin, which is then closed; `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_output: usize,
    /// What the timeout note calls the process ("step", "hook").
    pub what: &'a str,
}

pub(crate) async fn run(spec: ProcessSpec<'_>) -> std::io::Result<StepResult> {
    let (reader, writer) = std::io::pipe()?;
    let writer_err = writer.try_clone()?;
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        .kill_on_drop(true)
        .process_group(0);
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn()?;
    // Our copies of the pipe's write end must go, or reading never ends.
    drop(cmd);
    let pgid = child.id();
    if let (Some(input), Some(mut stdin)) = (spec.stdin, child.stdin.take()) {
        // A separate task: a process that does not read its input must not
        // block us reading its output. It may exit without reading (EPIPE).
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

    let mut output: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    let mut status = None;
    let mut eof = false;
    let timeout_at = tokio::time::Instant::now() + spec.timeout;
    let mut stop_reading_at = timeout_at;
    let mut timed_out = false;
    while !(eof && status.is_some()) {
        tokio::select! {
            read = pipe.read(&mut buf), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let room = spec.max_output.saturating_sub(output.len());
                    if n > room {
                        truncated = true;
                    }
                    output.extend_from_slice(&buf[..n.min(room)]);
                }
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited?);
                stop_reading_at = stop_reading_at.min(tokio::time::Instant::now() + OUTPUT_DRAIN);
            },
            _ = tokio::time::sleep_until(stop_reading_at) => {
                if status.is_none() {
                    timed_out = true;
                }
                break;
            }
        }
    }
    if timed_out {
        kill_process_group(pgid).await;
        let _ = child.kill().await;
    } else if !eof {
        // The process is done; stragglers holding the pipe are stopped too.
        kill_process_group(pgid).await;
    }
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if truncated {
        truncate_utf8(&mut text, spec.max_output);
    }
    let exit_code = if timed_out {
        text.push_str(&format!(
            "\n[{} timed out after {}s and was killed]",
            spec.what,
            spec.timeout.as_secs()
        ));
        EXIT_STEP_TIMEOUT
    } else {
        status.map(exit_code_of).unwrap_or(EXIT_STEP_NOT_STARTED)
    };
    Ok(StepResult {
        output: text,
        exit_code,
    })
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Kills every process of the group (best effort).
async fn kill_process_group(pgid: Option<u32>) {
    let Some(pgid) = pgid else {
        return;
    };
    let _ = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -KILL -- -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// The first `name` in the directories of `path` (a PATH value) that is an
/// executable file.
pub(crate) fn which(name: &str, path: Option<&str>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    path?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
