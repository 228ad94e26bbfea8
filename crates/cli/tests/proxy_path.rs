//! The proxy path end to end on the real engine: the emulator hands a
//! container job with a service to a simulated proxy runner; its job hooks
//! delegate and report through the real binary's API, and its container hook
//! (`hooks/container-hook.sh` → `proxy-runner hook container`) has every step
//! run in the job container the orchestrator created, next to the service,
//! on the repository's network.

mod common;

use std::time::Duration;

use common::proxy::{Rig, containers_of, docker, images, inspect};
use proxy_runner_emulator::runner::{RunOptions, ShellExecutor};
use proxy_runner_test_support::eventually;
use serde_json::json;

#[tokio::test]
async fn a_container_job_with_a_service_runs_every_step_in_its_job_container() {
    let Some(docker) = docker().await else { return };
    let (job_image, service_image) = images(&docker).await;
    let rig = Rig::start(&job_image, &service_image).await;
    let gate = rig.root.path().join("_work/_temp/gate");
    // Step 1 waits for the test to look at the job container from outside.
    let steps = json!([
        {"run": "echo \"step 1 on $(hostname) as uid $(id -u)\"; for i in $(seq 1 600); do [ -e /__w/_temp/gate ] && exit 0; sleep 0.1; done; exit 1"},
        {"run": "for i in $(seq 1 100); do timeout 5 wget -q -O - http://cache:8080/ && exit 0; sleep 0.2; done; exit 1"},
        {"run": "echo \"step 3 on $(hostname)\"; test ! -e /var/run/docker.sock && echo no-socket"},
    ]);
    let github_job = rig
        .queue(json!({
            "container": {"image": job_image},
            "services": {"cache": {"image": service_image}},
            "steps": steps,
        }))
        .await;
    let runner = rig.proxy_runner("proxy-1").await;
    let running = tokio::spawn({
        let runner = runner;
        async move {
            let options = RunOptions {
                job_wait: Some(Duration::from_secs(30)),
                poll_wait: Duration::from_millis(500),
                ..RunOptions::default()
            };
            runner.run(&ShellExecutor::default(), &options).await
        }
    });

    // While step 1 waits: the job container as the engine sees it.
    eventually(
        "the job container is recorded",
        Duration::from_secs(120),
        || async {
            rig.jobs()
                .await
                .iter()
                .any(|j| j["jobContainer"]["id"].is_string())
        },
    )
    .await;
    let record = rig.jobs().await.remove(0);
    let job_container = record["jobContainer"]["id"].as_str().unwrap().to_string();
    let service_id = record["jobContainer"]["services"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = inspect(&job_container).await;
    let host = &seen["HostConfig"];
    println!(
        "job container inspect: Privileged={} CapDrop={} CapAdd={} SecurityOpt={} PidsLimit={} Memory={} NanoCpus={} NetworkMode={} Binds={} Mounts={} Image={} Entrypoint={} PortBindings={}",
        host["Privileged"],
        host["CapDrop"],
        host["CapAdd"],
        host["SecurityOpt"],
        host["PidsLimit"],
        host["Memory"],
        host["NanoCpus"],
        host["NetworkMode"],
        host["Binds"],
        seen["Mounts"]
            .as_array()
            .map(|m| m
                .iter()
                .map(|m| format!(
                    "{}:{}",
                    m["Source"].as_str().unwrap_or(""),
                    m["Destination"].as_str().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        seen["Config"]["Image"],
        seen["Config"]["Entrypoint"],
        host["PortBindings"],
    );
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges"))
    );
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert!(host["Memory"].as_i64().unwrap() > 0);
    assert!(host["NanoCpus"].as_i64().unwrap() > 0);
    let network = record["jobContainer"]["network"].as_str().unwrap();
    assert_eq!(host["NetworkMode"], network);
    assert!(network.starts_with(&format!(
        "proxy-runner-{}",
        rig.repository.replace('/', "-")
    )));
    let mounts = seen["Mounts"].to_string();
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    let work = std::fs::canonicalize(rig.root.path().join("_work")).unwrap();
    let externals = std::fs::canonicalize(rig.root.path().join("externals")).unwrap();
    for m in seen["Mounts"].as_array().unwrap() {
        let source = m["Source"].as_str().unwrap();
        assert!(
            source.starts_with(work.to_str().unwrap())
                || source.starts_with(externals.to_str().unwrap()),
            "mount {source} is outside the runner's folders"
        );
    }
    assert_eq!(seen["Config"]["Image"], job_image.as_str());
    let service = inspect(&service_id).await;
    assert_eq!(service["HostConfig"]["NetworkMode"], network);
    assert!(
        service["NetworkSettings"]["Networks"][network]["Aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("cache"))
    );
    std::fs::write(&gate, "go").unwrap();

    let run = running.await.unwrap().unwrap();
    let run = run.job().cloned().expect("the runner took the job");
    let log = Rig::log_text(&run);
    println!("job log as the simulator recorded it:\n{log}");
    assert_eq!(run.conclusion, "success", "{log}");
    assert_eq!(run.job_id, github_job);
    // Every step ran in the job container: its hostname is the container's.
    let short = &job_container[..12];
    assert!(
        log.contains(&format!("step 1 on {short} as uid 1001")),
        "{log}"
    );
    assert!(log.contains("PONG"), "{log}");
    assert!(log.contains(&format!("step 3 on {short}")), "{log}");
    assert!(log.contains("no-socket"), "{log}");
    assert!(
        log.contains("the Docker socket is not mounted into job containers"),
        "{log}"
    );

    // The record: completed, three steps, last exit 0, containers removed.
    let jobs = rig.jobs().await;
    assert_eq!(jobs.len(), 1, "one record for the job: {jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["jobContainer"]["stepsRun"], 3, "{job}");
    assert_eq!(job["jobContainer"]["lastStepExitCode"], 0);
    assert_eq!(job["jobContainer"]["image"], job_image.as_str());
    assert_eq!(job["jobContainer"]["services"][0]["name"], "cache");
    assert!(job["jobContainer"]["removedAt"].is_string(), "{job}");
    // Nothing is left on the engine.
    assert!(containers_of(&rig.instance).await.is_empty());
    rig.emulator.shutdown().await;
}
