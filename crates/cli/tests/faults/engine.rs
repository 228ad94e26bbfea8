//! Engine faults under the real binary, through a proxy in front of the
//! engine's socket: an image the engine does not have, container creates
//! that fail, the daemon out of reach in the middle of a burst.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine_support::{
    EngineEvents, EngineProxy, INJECTED_CREATE_FAILURE, Setup, World, await_some,
    duplicate_containers, engine_and_image, is_final,
};

const STEPS: &[&str] = &["echo step one", "true"];

/// Our record of each GitHub job once every one is final.
async fn await_final(world: &World, ids: &[u64], limit: Duration) -> Vec<Value> {
    await_some("every job to be final in our store", limit, || async {
        let store = world.store_jobs().await?;
        let mine: Vec<Value> = ids
            .iter()
            .filter_map(|id| {
                store
                    .iter()
                    .find(|j| j["githubJobId"].as_u64() == Some(*id) && is_final(j))
                    .cloned()
            })
            .collect();
        (mine.len() == ids.len()).then_some(mine)
    })
    .await
}

async fn await_completed_at_github(world: &World, ids: &[u64], limit: Duration) {
    await_some("every job to be completed at GitHub", limit, || async {
        let emulator = world.emulator_jobs().await;
        ids.iter()
            .all(|id| emulator.get(id).is_some_and(|j| j["status"] == "completed"))
            .then_some(())
    })
    .await
}

fn setup(image: String, proxy: &EngineProxy, max_attempts: u32) -> Setup {
    Setup {
        image,
        repos: 2,
        max_concurrent: 8,
        max_per_repository: 4,
        max_attempts,
        docker_host: Some(proxy.docker_host()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_image_fails_the_jobs_with_the_reason_and_leaves_nothing() {
    let Some(image) = engine_and_image().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = EngineProxy::start(dir.path());
    let missing = "proxy-runner-no-such-image:faults";
    let world = World::start(setup(missing.into(), &proxy, 5)).await;
    let events = EngineEvents::follow(&world.instance, &image).await;
    let ids = world.queue(3, STEPS).await;

    let jobs = await_final(&world, &ids, Duration::from_secs(120)).await;
    for j in &jobs {
        assert_eq!(j["status"], "failed", "{j}");
        assert_eq!(j["attempts"], 1, "a missing image is not retried: {j}");
        let reason = j["lastError"].as_str().unwrap_or("");
        assert!(
            reason.contains(missing) && reason.contains("will not be pulled"),
            "the reason is on the job: {reason}"
        );
    }
    let left = world.await_nothing_left(Duration::from_secs(60)).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(
        events.creates_per_job().values().sum::<usize>(),
        0,
        "no container was created"
    );
    // GitHub still has the jobs queued: another runner may take them.
    let emulator = world.emulator_jobs().await;
    for id in &ids {
        assert_eq!(emulator[id]["status"], "queued");
    }
    println!(
        "FIGURES image missing: jobs {}, failed {} with the reason, containers 0, left behind 0",
        ids.len(),
        jobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_creates_are_retried_within_the_budget_and_fail_with_the_reason_after_it() {
    let Some(image) = engine_and_image().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = EngineProxy::start(dir.path());
    let max_attempts = 3;
    let world = World::start(setup(image.clone(), &proxy, max_attempts)).await;
    let events = EngineEvents::follow(&world.instance, &image).await;

    // Part 1: the next creates fail, fewer than the jobs' budget: every job
    // is retried (each failure uses an attempt) and completes.
    let (jobs, failures) = if crate::full_size() { (20, 10) } else { (6, 4) };
    proxy.fail_creates(failures);
    let started = Instant::now();
    let ids = world.queue(jobs, STEPS).await;
    let done = await_final(&world, &ids, Duration::from_secs(300)).await;
    let recovered_in = started.elapsed();
    await_completed_at_github(&world, &ids, Duration::from_secs(60)).await;
    assert_eq!(proxy.failed_creates(), failures);
    for j in &done {
        assert_eq!(j["conclusion"], "success", "{j}");
    }
    let attempts: u64 = done.iter().map(|j| j["attempts"].as_u64().unwrap()).sum();
    // Each failed create used an attempt; a job whose create failed may
    // still have run in another job's runner (GitHub's hand-off) before its
    // retry, so the total is not exact.
    assert!(
        attempts >= u64::from(failures),
        "each failed create used an attempt: {attempts}"
    );
    assert!(
        done.iter()
            .all(|j| j["attempts"].as_u64() <= Some(u64::from(max_attempts))),
        "no job past its budget"
    );
    let store = world.store_jobs().await.unwrap();
    let duplicates = duplicate_containers(&events.snapshot(), &store);
    assert!(duplicates.is_empty(), "{duplicates:?}");

    // Part 2: every create fails: the job fails after its budget with the
    // engine's reason, and what each attempt registered is gone. No runner
    // of part 1 may be left waiting, or it would take the job.
    let left = world.await_nothing_left(Duration::from_secs(180)).await;
    assert!(left.is_empty(), "left behind by part 1: {left:?}");
    proxy.fail_creates(u32::MAX);
    let before = proxy.failed_creates();
    let doomed = world.queue(1, STEPS).await;
    let failed = await_final(&world, &doomed, Duration::from_secs(300)).await;
    let job = &failed[0];
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], max_attempts, "{job}");
    assert_eq!(proxy.failed_creates() - before, max_attempts);
    let reason = job["lastError"].as_str().unwrap_or("");
    assert!(
        reason.contains("500") && reason.contains(INJECTED_CREATE_FAILURE),
        "the engine's reason is on the job: {reason}"
    );
    proxy.pass();
    let left = world.await_nothing_left(Duration::from_secs(60)).await;
    if !left.is_empty() {
        world.remove_leftovers().await;
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    println!(
        "FIGURES create failing: jobs {jobs}, injected create failures {failures}, all completed \
         in {:.1} s, attempts {attempts}; always failing: failed after {max_attempts} attempts \
         with the reason; left behind 0",
        recovered_in.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_engine_makes_jobs_wait_and_all_complete_after_it_returns() {
    let Some(image) = engine_and_image().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let proxy = EngineProxy::start(dir.path());
    let world = World::start(setup(image.clone(), &proxy, 5)).await;
    let events = EngineEvents::follow(&world.instance, &image).await;
    let (jobs, outage) = if crate::full_size() {
        (40, Duration::from_secs(10))
    } else {
        (12, Duration::from_secs(4))
    };
    let started = Instant::now();
    let ids = world.queue(jobs, STEPS).await;

    // Mid-burst: once the first containers run.
    await_some("the first containers", Duration::from_secs(120), || async {
        let starts = events
            .snapshot()
            .iter()
            .filter(|e| e.kind == "container" && e.action == "start")
            .count();
        (starts >= 2).then_some(())
    })
    .await;
    proxy.down();
    let down_at = Instant::now();
    println!("engine down at {:?}", started.elapsed());
    let (status, body) = await_some(
        "readiness to report the engine",
        Duration::from_secs(60),
        || async { world.readiness().await.filter(|(status, _)| *status == 503) },
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false, "{body}");
    // The outage lasts its length; meanwhile no job fails for it.
    while down_at.elapsed() < outage {
        if let Some(store) = world.store_jobs().await {
            let failed: Vec<&Value> = store.iter().filter(|j| j["status"] == "failed").collect();
            assert!(
                failed.is_empty(),
                "jobs failed while the engine was away: {failed:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.up();
    let up_at = Instant::now();
    println!("engine back at {:?}", started.elapsed());
    await_some(
        "readiness after the engine returns",
        Duration::from_secs(60),
        || async { world.readiness().await.filter(|(status, _)| *status == 200) },
    )
    .await;

    let done = await_final(&world, &ids, Duration::from_secs(600)).await;
    await_completed_at_github(&world, &ids, Duration::from_secs(60)).await;
    let burst = started.elapsed();
    let first_start = events.first_start_after(up_at);
    for j in &done {
        assert_eq!(j["conclusion"], "success", "{j}");
    }
    let store = world.store_jobs().await.unwrap();
    let duplicates = duplicate_containers(&events.snapshot(), &store);
    let left = world.await_nothing_left(Duration::from_secs(120)).await;
    if !left.is_empty() {
        world.remove_leftovers().await;
    }
    assert!(duplicates.is_empty(), "{duplicates:?}");
    assert!(left.is_empty(), "left behind: {left:?}");
    println!(
        "FIGURES engine unreachable: jobs {jobs}, outage {:.0} s, all completed, duplicated 0, \
         left behind 0; first container start {} after the engine returned; burst done in {:.0} s",
        outage.as_secs_f64(),
        first_start
            .map(|t| format!("{:.1} s", (t - up_at).as_secs_f64()))
            .unwrap_or_else(|| "none (the jobs had their containers)".into()),
        burst.as_secs_f64()
    );
}
