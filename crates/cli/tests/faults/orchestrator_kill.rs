//! `kill -9` of the orchestrator at random points of a burst on the real
//! engine, restarting it on the same database each time. The emulator (jobs,
//! runners), the engine (its event log, what is left) and our store witness
//! that nothing is lost, duplicated or orphaned.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::engine_support::{
    EngineEvents, Setup, World, await_some, duplicate_containers, engine_and_image, is_final,
    progress,
};

/// Statuses of our jobs by id, or None while the orchestrator is down.
async fn statuses(world: &World) -> Option<BTreeMap<String, String>> {
    Some(
        world
            .store_jobs()
            .await?
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap_or("").to_string(),
                    j["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_orchestrator_mid_burst_loses_duplicates_and_orphans_nothing() {
    let Some(image) = engine_and_image().await else {
        return;
    };
    let (jobs, kills) = if crate::full_size() {
        (200, 5)
    } else {
        (40, 2)
    };
    let seed: u64 = std::env::var("PROXY_RUNNER_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (PROXY_RUNNER_FAULTS_SEED={seed} repeats the kill points)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let started = Instant::now();
    let mut world = World::start(Setup {
        image: image.clone(),
        repos: 4,
        max_concurrent: 8,
        max_per_repository: 4,
        max_attempts: 5,
        docker_host: None,
    })
    .await;
    let events = EngineEvents::follow(&world.instance, &image).await;
    let ids = world.queue(jobs, &["echo step one", "true"]).await;
    println!("queued {jobs} jobs at {:?}", started.elapsed());

    let mut recoveries: Vec<Duration> = Vec::new();
    let mut peak_rss_kib = 0;
    for k in 1..=kills {
        // A random point of the burst: between 0.5 and 6 s after the
        // (re)start, once the orchestrator has its hands on some job.
        let pause = Duration::from_millis(rng.random_range(500..6000));
        tokio::time::sleep(pause).await;
        let before = await_some("the orchestrator's jobs", Duration::from_secs(60), || {
            statuses(&world)
        })
        .await;
        peak_rss_kib = peak_rss_kib.max(world.orchestrator_peak_rss_kib().unwrap_or(0));
        let final_now = before
            .values()
            .filter(|s| matches!(s.as_str(), "completed" | "cancelled" | "failed"))
            .count();
        world.kill_orchestrator();
        let killed = Instant::now();
        println!(
            "kill {k} at {:?} ({final_now} of {jobs} jobs final)",
            started.elapsed()
        );
        world.start_orchestrator();
        // Recovered: the engine starts a container, or a job moves on.
        let recovered = await_some(
            "the restarted orchestrator to make progress",
            Duration::from_secs(300),
            || {
                let world = &world;
                let before = &before;
                let events = &events;
                async move {
                    if let Some(t) = events.first_start_after(killed) {
                        return Some(t);
                    }
                    let now = statuses(world).await?;
                    let all_final = now
                        .values()
                        .all(|s| matches!(s.as_str(), "completed" | "cancelled" | "failed"))
                        && now.len() >= jobs;
                    (now != *before || all_final).then(Instant::now)
                }
            },
        )
        .await;
        let recovery = recovered.saturating_duration_since(killed);
        println!("recovered {recovery:?} after kill {k}");
        recoveries.push(recovery);
    }

    // Every job final, in the emulator and in our store.
    let limit = Duration::from_secs(if crate::full_size() { 1500 } else { 600 });
    let mut last_report = Instant::now();
    let store = await_some("every job to be final", limit, || {
        let world = &world;
        let ids = &ids;
        let report = last_report.elapsed() > Duration::from_secs(15);
        if report {
            last_report = Instant::now();
        }
        async move {
            if report {
                println!("{:?}: {}", started.elapsed(), progress(world).await);
            }
            let emulator = world.emulator_jobs().await;
            let store = world.store_jobs().await?;
            let done = ids.iter().all(|id| {
                emulator.get(id).is_some_and(|j| j["status"] == "completed")
                    && store
                        .iter()
                        .any(|j| j["githubJobId"].as_u64() == Some(*id) && is_final(j))
            });
            done.then_some(store)
        }
    })
    .await;
    let burst = started.elapsed();
    peak_rss_kib = peak_rss_kib.max(world.orchestrator_peak_rss_kib().unwrap_or(0));
    let orphans = world.await_nothing_left(Duration::from_secs(120)).await;
    let emulator = world.emulator_jobs().await;

    // Lost: a queued job that is not final in both places, or not ours at all.
    let lost: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| {
            emulator.get(id).is_none_or(|j| j["status"] != "completed")
                || !store
                    .iter()
                    .any(|j| j["githubJobId"].as_u64() == Some(*id) && is_final(j))
        })
        .collect();
    // Duplicated: two records of one GitHub job; a runner that ran two jobs;
    // two containers serving one job at once.
    let mut records: BTreeMap<u64, usize> = BTreeMap::new();
    for j in &store {
        if let Some(id) = j["githubJobId"].as_u64() {
            *records.entry(id).or_insert(0) += 1;
        }
    }
    let duplicate_records: Vec<u64> = records
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let mut runners_seen = HashSet::new();
    let mut runners_twice = Vec::new();
    for id in &ids {
        let runner = emulator[id]["runnerName"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(!runner.is_empty(), "job {id} ran on no runner");
        if !runners_seen.insert(runner.clone()) {
            runners_twice.push(runner);
        }
    }
    let duplicate_containers = duplicate_containers(&events.snapshot(), &store);
    let creates = events.creates_per_job();
    let containers: usize = creates.values().sum();
    let failed: Vec<&Value> = store
        .iter()
        .filter(|j| j["conclusion"] != "success")
        .collect();

    let secs = |d: &Duration| format!("{:.1}", d.as_secs_f64());
    let figures = format!(
        "jobs {jobs}, kills {kills} (restarts {kills}), seed {seed}; lost {}, duplicated {} \
         (records {}, runners {}, containers {}), orphaned {}; containers created {containers} \
         (most for one job: {}); not successful {}; time to recover after each kill (s): [{}]; \
         peak RSS of the orchestrator {} MiB; burst done in {:.0} s",
        lost.len(),
        duplicate_records.len() + runners_twice.len() + duplicate_containers.len(),
        duplicate_records.len(),
        runners_twice.len(),
        duplicate_containers.len(),
        orphans.len(),
        creates.values().max().unwrap_or(&0),
        failed.len(),
        recoveries.iter().map(secs).collect::<Vec<_>>().join(", "),
        peak_rss_kib / 1024,
        burst.as_secs_f64(),
    );
    println!("FIGURES orchestrator kill: {figures}");
    // What the orchestrator said about each job a finding names.
    let log = std::fs::read_to_string(world.log_path()).unwrap_or_default();
    for finding in duplicate_containers.iter().chain(&orphans) {
        let job = finding.split_whitespace().find_map(|w| {
            let w = w
                .trim_start_matches("ephemeral-")
                .trim_start_matches("runner-");
            w.get(..36)?.parse::<uuid::Uuid>().ok()
        });
        if let Some(job) = job.map(|j| j.to_string()) {
            println!("log of {job}:");
            for line in log.lines().filter(|l| l.contains(&job)) {
                println!("  {line}");
            }
        }
    }
    if !orphans.is_empty() {
        world.remove_leftovers().await;
    }

    assert!(lost.is_empty(), "lost jobs {lost:?}: {figures}");
    assert!(
        duplicate_records.is_empty(),
        "GitHub jobs recorded twice {duplicate_records:?}"
    );
    assert!(
        runners_twice.is_empty(),
        "runners that ran two jobs {runners_twice:?}"
    );
    assert!(
        duplicate_containers.is_empty(),
        "containers serving one job at once: {duplicate_containers:?}"
    );
    assert!(orphans.is_empty(), "left behind: {orphans:?}");
    assert!(
        failed.is_empty(),
        "jobs that did not succeed: {}",
        failed
            .iter()
            .map(|j| format!("{} {} {}", j["githubJobId"], j["status"], j["lastError"]))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert_eq!(recoveries.len(), kills);
    assert!(containers >= jobs, "every job ran in a container of ours");
}
