//! The hooks part of `proxy-runner bench`: the wall time of one run of the
//! job-started hook as the runner runs it (`bash -e <script>`), against one
//! `proxy-runner serve` (dry-run engine, SQLite file), with the same job
//! context each time: ours exec'ing this binary, ours with no binary to
//! find (its curl and jq fallback), and the design's own bash+jq+curl hook.
//! Runs are interleaved, after one warm-up of each. Asserts nothing.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::delegations::{runner_token, start_server};
use super::percentile;

/// The scripts as this binary was built with them: the bench runs from
/// anywhere.
const OUR_HOOK: &str = include_str!("../../../../hooks/job-started.sh");
const DESIGN_HOOK: &str = include_str!("../../tests/design-hooks/job-started.sh");

#[derive(Args)]
pub struct HookArgs {
    /// Runs of each hook.
    #[arg(long, default_value_t = 50)]
    pub hook_runs: usize,
}

#[derive(Clone, Copy)]
enum Hook {
    Native,
    Fallback,
    Design,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Native => "ours (proxy-runner hook)",
            Hook::Fallback => "ours without the binary (curl+jq)",
            Hook::Design => "the design's hook (bash+jq+curl)",
        }
    }
}

/// One run; seconds. The design's hook ends with exit 78 (its "skip"),
/// which counts as done.
async fn run_once(hook: Hook, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<f64> {
    let script = match hook {
        Hook::Native | Hook::Fallback => dir.join("job-started.sh"),
        Hook::Design => dir.join("design-job-started.sh"),
    };
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-e").arg(&script).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    match hook {
        Hook::Native => {
            cmd.env("PATH", "/usr/bin:/bin")
                .env("PROXY_RUNNER_BIN", std::env::current_exe()?);
        }
        Hook::Fallback | Hook::Design => {
            cmd.env("PATH", "/usr/bin:/bin");
        }
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().await.context("cannot run bash")?;
    let took = t.elapsed().as_secs_f64();
    let code = out.status.code();
    let done = code == Some(0) || (matches!(hook, Hook::Design) && code == Some(78));
    if !done {
        bail!(
            "{} failed ({:?}): {}",
            hook.name(),
            code,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// Runs the hooks part; its figures (seconds) as JSON.
pub async fn run(args: &HookArgs) -> anyhow::Result<Value> {
    if args.hook_runs == 0 {
        bail!("--hook-runs must be at least 1");
    }
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("the hooks part needs {tool}");
        }
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("job-started.sh"), OUR_HOOK)?;
    std::fs::write(dir.path().join("design-job-started.sh"), DESIGN_HOOK)?;
    let admin = crate::demo::random_secret("bench-admin-");
    let db = dir.path().join("jobs.db");
    let server = start_server(
        &std::env::current_exe()?,
        db.to_str().context("a temporary path that is not UTF-8")?,
        &admin,
    )?;
    let token = runner_token(&server.url, &admin, "proxy-1").await?;
    let env: Vec<(&str, String)> = vec![
        ("ORCHESTRATOR_URL", server.url.clone()),
        ("PROXY_RUNNER_TOKEN", token.clone()),
        ("RUNNER_TOKEN", token),
        ("GITHUB_JOB", "build".into()),
        ("GITHUB_RUN_ID", "4242".into()),
        ("GITHUB_RUN_ATTEMPT", "1".into()),
        ("GITHUB_REPOSITORY", "octo/app".into()),
        ("GITHUB_WORKFLOW", "CI".into()),
        ("RUNNER_NAME", "proxy-1".into()),
        ("RUNNER_LABELS", "self-hosted,linux".into()),
        ("HOME", dir.path().display().to_string()),
    ];
    let hooks = [Hook::Native, Hook::Fallback, Hook::Design];
    for hook in hooks {
        run_once(hook, dir.path(), &env).await?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); hooks.len()];
    for _ in 0..args.hook_runs {
        for (i, hook) in hooks.iter().enumerate() {
            times[i].push(run_once(*hook, dir.path(), &env).await?);
        }
    }
    drop(server);

    println!();
    let mut p50s = Vec::new();
    for (hook, mut t) in hooks.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let p50 = percentile(&t, 50.0);
        println!(
            "{:<36} n={:<4} p50={:>7.1} ms  min={:>7.1} ms  max={:>7.1} ms",
            hook.name(),
            t.len(),
            p50 * 1e3,
            t[0] * 1e3,
            t[t.len() - 1] * 1e3
        );
        p50s.push(p50);
    }
    println!(
        "ours / the design's hook at the median: {:.2}x (without the binary {:.2}x)",
        p50s[0] / p50s[2],
        p50s[1] / p50s[2]
    );
    Ok(json!({
        "runs": args.hook_runs,
        "nativeP50": p50s[0], "fallbackP50": p50s[1], "designP50": p50s[2],
        "ratio": p50s[0] / p50s[2],
    }))
}
