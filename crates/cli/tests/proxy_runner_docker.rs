//! `proxy-runner runner` on the real engine: the supervisor (the real
//! binary) runs simulated listeners over a runner directory, with the
//! project's hooks; the orchestrator (the real binary) runs every step in
//! the job's container.
//!
//! - SIGTERM with a job running: idle listeners stop and their runners go at
//!   once, no new registration, the running job finishes, then nothing is
//!   left (runners, containers, work folders).
//! - A job without a container is refused by the runner before any hook.
//! - The orchestrator down: the started hook fails the job with its reason,
//!   nothing runs on the proxy host, nothing is left.

mod common;
mod supervisor;

use std::time::Duration;

use common::proxy::docker;
use proxy_runner_docker::{DockerBackend, RunnerImageOptions, ensure_runner_image};
use proxy_runner_test_support::eventually;
use serde_json::json;
use sha2::Digest;
use supervisor::*;

const LIMIT: Duration = Duration::from_secs(180);

/// The local job image, built from this binary when missing.
async fn job_image(docker: &DockerBackend) -> String {
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(binary()).unwrap()));
    let image = format!("proxy-runner-local-runner:{}", &digest[..16]);
    ensure_runner_image(docker, &RunnerImageOptions::new(image.clone(), binary()))
        .await
        .unwrap();
    image
}

fn instance() -> String {
    format!(
        "test-sup-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

async fn containers_of(instance: &str) -> Vec<String> {
    let out = tokio::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=proxy-runner.instance={instance}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

async fn networks_of(instance: &str) -> Vec<String> {
    let out = tokio::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=proxy-runner.instance={instance}"),
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_then_nothing_is_left() {
    let Some(docker) = docker().await else { return };
    let image = job_image(&docker).await;
    let dirs = Dirs::new();
    install_sim_runner(&dirs.runner_dir());
    let emulator = emulator().await;
    let instance = instance();
    let server = orchestrator(&dirs, &emulator.url(), "docker", &instance, &[&image]);
    let token = token(&server.url, "sup").await;
    let mut sup = Supervisor::start(
        &dirs,
        &server.url,
        &token,
        &["--slots", "2", "--grace", "300"],
        &[],
    );
    eventually("both slots listen", LIMIT, || async {
        let mut names = runners(&emulator.url()).await;
        names.sort();
        names == ["sup-0-1", "sup-1-1"]
    })
    .await;

    // Step 1 waits for the gate the test opens after SIGTERM.
    let github_job = queue(
        &emulator.url(),
        json!({
            "repository": "octo/app",
            "container": {"image": image},
            "steps": [
                "echo \"step 1 on $(hostname) as uid $(id -u)\"; for i in $(seq 1 1800); do [ -e /__w/_temp/gate ] && exit 0; sleep 0.1; done; exit 1",
                "echo \"step 2 on $(hostname)\"; test ! -e /var/run/docker.sock && echo no-socket",
            ],
        }),
    )
    .await;
    eventually("the job runs in its container", LIMIT, || async {
        jobs(&server.url)
            .await
            .iter()
            .any(|j| j["jobContainer"]["id"].is_string())
    })
    .await;
    let record = jobs(&server.url).await.remove(0);
    let busy_runner = record["runnerName"].as_str().unwrap().to_string();
    let container = record["jobContainer"]["id"].as_str().unwrap().to_string();
    eventually("a busy slot is reported", LIMIT, || async {
        metrics(&server.url)
            .await
            .contains("proxy_runner_proxy_busy_slots{runner=\"sup\"} 1")
    })
    .await;

    sup.sigterm();
    eventually(
        "the idle slot's runner is deleted at once",
        LIMIT,
        || async { runners(&emulator.url()).await == [busy_runner.clone()] },
    )
    .await;
    assert!(
        sup.log().contains("waiting for it to finish"),
        "{}",
        sup.log()
    );
    // The job goes on and ends well; then the supervisor exits.
    let slot = busy_runner.rsplit_once('-').unwrap().0.to_string();
    std::fs::write(dirs.work_root().join(slot).join("_temp/gate"), "go").unwrap();
    let status = sup.wait(LIMIT).await;
    assert!(status.success(), "{status}\n{}", sup.log());

    let job = emulator_job(&emulator.url(), github_job).await;
    let log = log_text(&job);
    println!("job log as the simulator recorded it:\n{log}");
    assert_eq!(job["conclusion"], "success", "{log}");
    assert_eq!(job["runnerName"], busy_runner.as_str());
    let short = &container[..12];
    assert!(
        log.contains(&format!("step 1 on {short} as uid 1001")),
        "{log}"
    );
    assert!(log.contains(&format!("step 2 on {short}")), "{log}");
    assert!(log.contains("no-socket"), "{log}");
    eventually(
        "the job is completed and its containers gone",
        LIMIT,
        || async {
            let j = jobs(&server.url).await;
            j.len() == 1
                && j[0]["status"] == "completed"
                && j[0]["jobContainer"]["removedAt"].is_string()
        },
    )
    .await;

    // Nothing is left: no runner, no new registration, no container, no
    // network, no work folder, no slot root.
    assert!(runners(&emulator.url()).await.is_empty());
    let log = sup.log();
    assert!(
        !log.contains("runner=sup-0-2") && !log.contains("runner=sup-1-2"),
        "{log}"
    );
    assert!(containers_of(&instance).await.is_empty());
    eventually("the repository network is removed", LIMIT, || async {
        networks_of(&instance).await.is_empty()
    })
    .await;
    assert!(
        entries(&dirs.work_root()).is_empty(),
        "{:?}",
        entries(&dirs.work_root())
    );
    let state: Vec<String> = entries(&dirs.state_dir())
        .into_iter()
        .filter(|e| !e.ends_with(".hook-report"))
        .collect();
    assert!(state.is_empty(), "{state:?}");
    assert!(
        !log.contains(&token),
        "the token is in the supervisor's log"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn nothing_runs_on_the_proxy_host_without_a_container_or_an_orchestrator() {
    let Some(docker) = docker().await else { return };
    let image = job_image(&docker).await;
    let dirs = Dirs::new();
    install_sim_runner(&dirs.runner_dir());
    let emulator = emulator().await;
    let instance = instance();
    let server = orchestrator(&dirs, &emulator.url(), "docker", &instance, &[&image]);
    let url = server.url.clone();
    let token = token(&url, "sup").await;
    let mut sup = Supervisor::start(&dirs, &url, &token, &["--slots", "1"], &[]);
    eventually("the slot listens", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-1"]
    })
    .await;
    let marker = dirs.path("ran-on-the-proxy-host");
    let touch = format!("touch {}", marker.display());

    // 1. No container: the runner refuses the job before any hook.
    let refused = queue(
        &emulator.url(),
        json!({"repository": "octo/app", "steps": [touch.clone()]}),
    )
    .await;
    eventually("the job without a container ends", LIMIT, || async {
        emulator_job(&emulator.url(), refused).await["status"] == "completed"
    })
    .await;
    let job = emulator_job(&emulator.url(), refused).await;
    let log = log_text(&job);
    assert_eq!(job["conclusion"], "failure", "{log}");
    assert!(
        log.contains("Jobs without a job container are forbidden on this runner"),
        "{log}"
    );
    assert!(!log.contains("Set up runner"), "no hook ran: {log}");
    assert!(jobs(&url).await.is_empty(), "nothing was delegated");
    assert!(!marker.exists(), "a step ran on the proxy host");

    // 2. The orchestrator is down when the next job comes.
    eventually("the slot listens again", LIMIT, || async {
        runners(&emulator.url()).await == ["sup-0-2"]
    })
    .await;
    drop(server);
    let failed = queue(
        &emulator.url(),
        json!({"repository": "octo/app", "container": {"image": image}, "steps": [touch.clone()]}),
    )
    .await;
    eventually("the job ends", LIMIT, || async {
        emulator_job(&emulator.url(), failed).await["status"] == "completed"
    })
    .await;
    let job = emulator_job(&emulator.url(), failed).await;
    let log = log_text(&job);
    println!("job log as the simulator recorded it:\n{log}");
    assert_eq!(job["conclusion"], "failure", "{log}");
    assert!(
        log.contains("== Set up runner (exit 1)") && log.contains("cannot reach the orchestrator"),
        "the started hook fails with its reason: {log}"
    );
    assert!(!log.contains("Initialize containers"), "{log}");
    assert!(
        job["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| s["exitCode"].is_null()),
        "no step ran: {job}"
    );
    assert!(!marker.exists(), "a step ran on the proxy host");
    assert!(containers_of(&instance).await.is_empty());
    // The hook calls that never reached the orchestrator are noted for it.
    let report = std::fs::read_to_string(dirs.state_dir().join("sup-0.hook-report")).unwrap();
    assert!(report.contains("job_started unreached"), "{report}");

    // SIGTERM: the supervisor stops although the orchestrator is away.
    sup.sigterm();
    let status = sup.wait(LIMIT).await;
    assert!(status.success(), "{status}\n{}", sup.log());
    assert!(runners(&emulator.url()).await.is_empty());
    assert!(containers_of(&instance).await.is_empty());
    assert!(networks_of(&instance).await.is_empty());
    assert!(
        entries(&dirs.work_root()).is_empty(),
        "{:?}",
        entries(&dirs.work_root())
    );
    emulator.shutdown().await;
}
