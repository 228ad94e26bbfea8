//! `proxy-runner demo` end to end on the real Docker Engine: webhook → JIT
//! config → hardened container → steps run inside → completed → nothing left.

use std::process::Command;

fn docker_reachable() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_demo_runs_every_job_in_its_own_container_and_leaves_nothing_behind() {
    if !docker_reachable() {
        assert!(std::env::var_os("CI").is_none(), "Docker is required in CI");
        eprintln!("skipping: docker not reachable");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "demo",
            "--jobs",
            "4",
            "--repos",
            "2",
            "--timeout-secs",
            "240",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("PASS: 4 of 4 jobs succeeded"), "{stdout}");
    assert!(stdout.contains("nothing left behind"), "{stdout}");
    // Steps ran inside hardened containers, not on this host.
    assert!(stdout.contains("as uid 1001"), "{stdout}");
    assert!(stdout.contains("root filesystem is read-only"), "{stdout}");
    for repo in ["demo-org/repo-1", "demo-org/repo-2"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("job-")
                && l.contains(repo)
                && l.trim_end().ends_with("success")),
            "{repo}: {stdout}"
        );
    }

    // A step that fails makes the demo fail.
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "demo",
            "--jobs",
            "1",
            "--repos",
            "1",
            "--step",
            "exit 3",
            "--timeout-secs",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL: 0 of 1"), "{stdout}");
    assert!(stdout.contains("failure"), "{stdout}");
}

/// Counts live job containers per instance and per (instance, repository).
fn sample_live() -> (
    std::collections::HashMap<String, usize>,
    std::collections::HashMap<String, usize>,
) {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            "label=proxy-runner.instance",
            "--format",
            "{{.Label \"proxy-runner.instance\"}} {{.Label \"proxy-runner.repository\"}}",
        ])
        .output()
        .unwrap();
    let mut per_instance = std::collections::HashMap::new();
    let mut per_repo = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((instance, repo)) = line.split_once(' ') else {
            continue;
        };
        if !instance.starts_with("demo-") {
            continue;
        }
        *per_instance.entry(instance.to_string()).or_insert(0) += 1;
        *per_repo.entry(format!("{instance} {repo}")).or_insert(0) += 1;
    }
    (per_instance, per_repo)
}

#[test]
fn caps_hold_on_the_real_engine_under_a_burst_of_fifty_jobs() {
    if !docker_reachable() {
        assert!(std::env::var_os("CI").is_none(), "Docker is required in CI");
        eprintln!("skipping: docker not reachable");
        return;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "demo",
            "--jobs",
            "50",
            "--repos",
            "5",
            "--max-concurrent",
            "6",
            "--max-per-repository",
            "2",
            "--step",
            "sleep 1",
            "--timeout-secs",
            "400",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut max_instance, mut max_repo, mut samples) = (0, 0, 0);
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    loop {
        if child.lock().unwrap().try_wait().unwrap().is_some() {
            break;
        }
        let (i, r) = sample_live();
        max_instance = max_instance.max(i.values().copied().max().unwrap_or(0));
        max_repo = max_repo.max(r.values().copied().max().unwrap_or(0));
        samples += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let child = std::sync::Arc::try_unwrap(child)
        .unwrap()
        .into_inner()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASS: 50 of 50 jobs succeeded"), "{stdout}");
    assert!(samples > 10, "too few samples ({samples}) to say anything");
    assert!(
        max_instance <= 6,
        "global cap broken: {max_instance} live containers"
    );
    assert!(
        max_repo <= 2,
        "per-repository cap broken: {max_repo} live containers"
    );
    assert!(
        max_instance >= 3,
        "the burst never ran in parallel (max {max_instance}): the sampling saw nothing"
    );
}

/// `proxy-runner demo --mode proxy` at a small size: one supervisor with
/// two simulated slots, every job's steps in its own container.
#[test]
fn the_proxy_demo_runs_every_step_in_a_per_job_container_and_leaves_nothing_behind() {
    if !docker_reachable() {
        assert!(std::env::var_os("CI").is_none(), "Docker is required in CI");
        eprintln!("skipping: docker not reachable");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "demo",
            "--mode",
            "proxy",
            "--jobs",
            "3",
            "--repos",
            "2",
            "--slots",
            "2",
            "--timeout-secs",
            "240",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASS: 3 of 3 jobs succeeded")
            && stdout.contains("each in its own container"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing left behind"), "{stdout}");
    assert!(
        stdout.contains("PROXY RUNNER") && stdout.contains("JOB CONTAINER"),
        "{stdout}"
    );
    assert!(stdout.contains("== Set up runner (exit 0)"), "{stdout}");
    assert!(stdout.contains("as uid 1001"), "{stdout}");
    for repo in ["demo-org/repo-1", "demo-org/repo-2"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("job-")
                && l.contains(repo)
                && l.contains("demo-proxy-")
                && l.trim_end().ends_with("success")),
            "{repo}: {stdout}"
        );
    }

    // A failing step makes it fail.
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args([
            "demo",
            "--mode",
            "proxy",
            "--jobs",
            "1",
            "--repos",
            "1",
            "--slots",
            "1",
            "--step",
            "exit 3",
            "--timeout-secs",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL: 0 of 1"), "{stdout}");
    assert!(stdout.contains("nothing left behind"), "{stdout}");
}
