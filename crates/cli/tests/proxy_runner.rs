//! `proxy-runner runner`, the real binary, with the real orchestrator and
//! the GitHub emulator (no container engine needed here).
//!
//! - Each listener exit code and a crash get the reaction of facts §2:
//!   a runner directory whose `bin/Runner.Listener` exits with the codes a
//!   test script names, slot by slot.
//! - Real codes from the simulator: a runner deleted on GitHub ends its
//!   listener with 1, and the slot registers afresh; GitHub out of reach
//!   ends it with 2, and the same registration is started again.

mod common;
mod supervisor;

use std::path::Path;
use std::time::Duration;

use proxy_runner_test_support::eventually;
use supervisor::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A `bin/Runner.Listener` that records each start (runner name, exit) in
/// `$SEQ_DIR/log` and exits with the next code of `$SEQ_DIR/slot-N`
/// (`crash`: killed by SIGKILL; none left: waits like an idle listener).
const SCRIPTED_LISTENER: &str = r#"#!/bin/sh
name=$(printf '%s' "$ACTIONS_RUNNER_INPUT_JITCONFIG" | base64 -d | sed -n 's/.*"runnerName":"\([^"]*\)".*/\1/p')
slot=$(printf '%s' "$name" | cut -d- -f2)
seq="$SEQ_DIR/slot-$slot"
code=$(head -n 1 "$seq" 2>/dev/null)
[ -n "$code" ] && sed -i 1d "$seq"
code=${code:-idle}
echo "$name $code" >> "$SEQ_DIR/log"
# The test looks for the config in every log afterwards.
printf '%s' "$ACTIONS_RUNNER_INPUT_JITCONFIG" > "$SEQ_DIR/jit-$name"
case "$code" in
  crash) kill -9 $$ ;;
  idle) echo "$(date -u '+%Y-%m-%d %H:%M:%SZ'): Listening for Jobs"; exec sleep 1000 ;;
  *) exit "$code" ;;
esac
"#;

fn scripted_runner_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("externals")).unwrap();
    let listener = dir.join("bin/Runner.Listener");
    std::fs::write(&listener, SCRIPTED_LISTENER).unwrap();
    std::fs::set_permissions(&listener, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn starts(seq_dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(seq_dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

fn starts_of(seq_dir: &Path, slot: u32) -> Vec<(String, String)> {
    let prefix = format!("sup-{slot}-");
    starts(seq_dir)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn every_listener_exit_code_and_a_crash_get_their_reaction() {
    let dirs = Dirs::new();
    scripted_runner_dir(&dirs.runner_dir());
    let seq = dirs.path("seq");
    std::fs::create_dir_all(&seq).unwrap();
    for (slot, codes) in [
        // 0: a fresh runner; 2 and a crash: the same runner again; 1 and 5:
        // a fresh runner after a backoff; 3: the slot stops.
        (0, "0\n2\n1\ncrash\n5\n3\n"),
        (1, "4\n"),
        (2, "7\n"),
        // 1 again and again: the slot stops after --max-terminations.
        (3, "1\n1\n1\n"),
        // 6 (never expected) restarts; 102 (a job's result) renews.
        (4, "0\n6\n102\n"),
    ] {
        std::fs::write(seq.join(format!("slot-{slot}")), codes).unwrap();
    }
    let emulator = emulator().await;
    let server = orchestrator(&dirs, &emulator.url(), "dry-run", "test-codes", &["img"]);
    let token = token(&server.url, "sup").await;
    let mut sup = Supervisor::start(
        &dirs,
        &server.url,
        &token,
        &[
            "--slots",
            "5",
            "--max-terminations",
            "3",
            "--pass-env",
            "SEQ_DIR",
        ],
        &[("SEQ_DIR", seq.to_str().unwrap())],
    );

    eventually("every slot went through its codes", LIMIT, || async {
        starts_of(&seq, 0).len() == 6
            && starts_of(&seq, 3).len() == 3
            && starts_of(&seq, 4).len() == 4
            && !starts_of(&seq, 1).is_empty()
            && !starts_of(&seq, 2).is_empty()
    })
    .await;
    eventually("slots 0 to 3 stopped, slot 4 listens", LIMIT, || async {
        let log = sup.log();
        (0..4).all(|s| log.contains(&format!("slot {s}: stopped")))
            && metrics(&server.url)
                .await
                .contains("proxy_runner_proxy_busy_slots{runner=\"sup\"} 0")
    })
    .await;
    assert_eq!(
        starts_of(&seq, 0),
        pairs(&[
            ("sup-0-1", "0"),
            ("sup-0-2", "2"),
            ("sup-0-2", "1"),
            ("sup-0-3", "crash"),
            ("sup-0-3", "5"),
            ("sup-0-4", "3"),
        ]),
        "0 renews, 2 and a crash restart the same runner, 1 and 5 register afresh, 3 stops"
    );
    assert_eq!(starts_of(&seq, 1), pairs(&[("sup-1-1", "4")]));
    assert_eq!(starts_of(&seq, 2), pairs(&[("sup-2-1", "7")]));
    assert_eq!(
        starts_of(&seq, 3),
        pairs(&[("sup-3-1", "1"), ("sup-3-2", "1"), ("sup-3-3", "1")])
    );
    assert_eq!(
        starts_of(&seq, 4),
        pairs(&[
            ("sup-4-1", "0"),
            ("sup-4-2", "6"),
            ("sup-4-2", "102"),
            ("sup-4-3", "idle"),
        ])
    );
    let log = sup.log();
    for message in [
        "slot 0: stopped: listener exit 3: the runner tried to update itself",
        "slot 1: stopped: listener exit 4: the runner tried to update itself",
        "slot 2: stopped: listener exit 7: GitHub no longer accepts this runner version",
        "slot 3: stopped: listener exit 1: the listener keeps terminating",
    ] {
        assert!(log.contains(message), "{message}:\n{log}");
    }
    // Heartbeats: five slots, the restarts, each slot's last exit code.
    eventually("heartbeats report the slots", LIMIT, || async {
        let m = metrics(&server.url).await;
        [
            "proxy_runner_proxy_slots{runner=\"sup\"} 5",
            "proxy_runner_proxy_listener_restarts{runner=\"sup\"} 7",
            "proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"0\"} 3",
            "proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"1\"} 4",
            "proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"2\"} 7",
            "proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"3\"} 1",
            "proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"4\"} 102",
        ]
        .iter()
        .all(|l| m.contains(l))
    })
    .await;
    // Only the listening slot's runner is still registered on GitHub.
    assert_eq!(runners(&emulator.url()).await, ["sup-4-3"]);

    // SIGTERM: the idle listener stops, its runner goes, nothing is left.
    sup.sigterm();
    let status = sup.wait(LIMIT).await;
    assert!(status.success(), "{status}:\n{}", sup.log());
    assert!(runners(&emulator.url()).await.is_empty());
    assert_eq!(starts_of(&seq, 4).len(), 4, "no registration after SIGTERM");
    assert!(
        entries(&dirs.work_root()).is_empty(),
        "{:?}",
        entries(&dirs.work_root())
    );
    let left: Vec<String> = entries(&dirs.state_dir())
        .into_iter()
        .filter(|e| !e.ends_with(".hook-report"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The token and the JIT configs were never written down.
    let logs = [
        sup.log(),
        std::fs::read_to_string(dirs.path("orchestrator.log")).unwrap(),
    ];
    let jits: Vec<String> = entries(&seq)
        .into_iter()
        .filter(|e| e.starts_with("jit-"))
        .map(|e| std::fs::read_to_string(seq.join(e)).unwrap())
        .collect();
    assert_eq!(jits.len(), 12, "one config per registration");
    for log in &logs {
        assert!(!log.contains(&token), "the token is in a log");
        for jit in &jits {
            assert!(
                jit.len() > 40 && !log.contains(jit.as_str()),
                "a JIT config is in a log"
            );
        }
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn real_exit_codes_from_the_simulator_a_deleted_runner_and_github_out_of_reach() {
    let dirs = Dirs::new();
    install_sim_runner(&dirs.runner_dir());
    let emulator = emulator().await;
    let server = orchestrator(
        &dirs,
        &emulator.url(),
        "dry-run",
        "test-sim-codes",
        &["img"],
    );
    let token = token(&server.url, "sup").await;
    let mut sup = Supervisor::start(&dirs, &server.url, &token, &["--slots", "1"], &[]);
    eventually("the slot's runner listens", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-1"] && sup.log().contains("Listening for Jobs")
    })
    .await;

    // Deleted on GitHub (an operator, or GitHub's own clean-up): the
    // listener ends with 1 and the slot registers a fresh runner.
    let listed = get(&format!("{}/_emulator/runners", emulator.url())).await;
    let id = listed[0]["id"].as_u64().unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/orgs/{ORG}/actions/runners/{id}",
            emulator.url()
        ))
        .bearer_auth(PAT)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    eventually("a fresh runner after exit code 1", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-2"]
    })
    .await;
    eventually("the exit code is reported", LIMIT, || async {
        metrics(&server.url)
            .await
            .contains("proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"0\"} 1")
    })
    .await;

    // GitHub out of reach: the listener gives up with 2 and the same
    // runner is started again, and again.
    emulator.shutdown().await;
    eventually(
        "exit code 2 and a restart",
        Duration::from_secs(180),
        || async {
            let log = sup.log();
            metrics(&server.url)
                .await
                .contains("proxy_runner_proxy_last_exit_code{runner=\"sup\",slot=\"0\"} 2")
                && log.contains("runner=sup-0-2 exit=Code(2)")
        },
    )
    .await;
    assert!(
        !sup.log().contains("runner=sup-0-3"),
        "no new registration for exit code 2"
    );
    sup.sigterm();
    assert!(sup.wait(LIMIT).await.success(), "{}", sup.log());
}

#[tokio::test]
async fn registration_token_mode_configures_each_runner_with_config_sh() {
    use std::os::unix::fs::PermissionsExt as _;
    let dirs = Dirs::new();
    install_sim_runner(&dirs.runner_dir());
    let emulator = emulator().await;
    let server = orchestrator(
        &dirs,
        &emulator.url(),
        "dry-run",
        "test-config-sh",
        &["img"],
    );
    let token = token(&server.url, "sup").await;
    let mut sup = Supervisor::start(
        &dirs,
        &server.url,
        &token,
        &["--slots", "1", "--registration", "registration-token"],
        &[],
    );
    eventually("config.sh registered the slot's runner", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-1"] && sup.log().contains("Listening for Jobs")
    })
    .await;
    // config.sh kept the registration in the slot's own root, the
    // credential readable by its owner only.
    let root = dirs.state_dir().join("sup-0");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(".runner")).unwrap()).unwrap();
    assert_eq!(kept["agentName"], "sup-0-1");
    assert_eq!(kept["ephemeral"], true);
    assert_eq!(
        kept["workFolder"],
        dirs.work_root().join("sup-0").display().to_string()
    );
    let mode = std::fs::metadata(root.join(".credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !dirs.runner_dir().join(".runner").exists(),
        "the runner directory stays clean"
    );
    let listed = get(&format!("{}/_emulator/runners", emulator.url())).await;
    let labels = listed[0]["labels"].to_string();
    assert!(
        labels.contains("proxy") && labels.contains("self-hosted"),
        "{labels}"
    );

    // The ephemeral runner takes one job (refused: no container) and the
    // slot configures the next one.
    let job = queue(
        &emulator.url(),
        serde_json::json!({"repository": "octo/app", "steps": ["true"]}),
    )
    .await;
    eventually("the next runner is configured", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-2"]
            && emulator_job(&emulator.url(), job).await["status"] == "completed"
    })
    .await;
    assert_eq!(
        emulator_job(&emulator.url(), job).await["runnerName"],
        "sup-0-1"
    );
    sup.sigterm();
    assert!(sup.wait(LIMIT).await.success(), "{}", sup.log());
    assert!(runners(&emulator.url()).await.is_empty());
    assert!(!root.exists());
    emulator.shutdown().await;
}
