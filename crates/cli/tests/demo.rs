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
