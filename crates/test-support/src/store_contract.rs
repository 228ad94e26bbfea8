//! The contract of the domain's [`JobStore`] port: one suite, run unchanged
//! against every adapter (SQLite in memory and on file, PostgreSQL).
//!
//! Each property is a `pub async fn` that takes a fresh, empty store.
//! [`job_store_contract!`](crate::job_store_contract) turns the whole list
//! into one test per property for an adapter:
//!
//! ```text
//! async fn make() -> Option<Subject> { /* a fresh store, or None to skip */ }
//! proxy_runner_test_support::job_store_contract!(make);
//! ```
//!
//! The properties: idempotency keys (delegation key, case-insensitive in the
//! repository; GitHub job id; a finished job gives its key up),
//! compare-and-set writes (stale status or revision loses, revisions bump,
//! a GitHub job links to one job), every field round-trips, paging (filters,
//! `after`, the page cap), tokens (by hash; listed and paged), audit (newest first), webhook delivery
//! dedupe and forget, the finders, concurrent writers (racing CAS
//! updates, inserts and deliveries), and writes with their audit rows (stored
//! together or not at all, also when the caller goes away mid-write).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proxy_runner_domain::ports::{
    AuditEvent, JobFilter, JobStore, StoreError, TokenFilter, TokenRecord,
};
use proxy_runner_domain::{Job, JobSource, JobStatus, NewJob};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The largest page `list_jobs` returns, whatever the caller asks for (every
/// adapter caps at the same size).
pub const MAX_PAGE: usize = proxy_runner_store::MAX_PAGE;

/// Racing writers per round in the compare-and-set race.
pub const CAS_WRITERS: usize = 16;
/// Rounds of the compare-and-set race.
pub const CAS_ROUNDS: u64 = 8;
/// Concurrent inserts of one idempotency key.
pub const RACING_INSERTS: usize = 200;

/// A store under test and what must outlive it (a temporary directory, a
/// database that is dropped afterwards). Fields drop in order: the store
/// first, then what it lived in.
pub struct Subject {
    store: Arc<dyn JobStore>,
    _keep: Box<dyn Any + Send>,
}

impl Subject {
    pub fn new(store: Arc<dyn JobStore>, keep: impl Any + Send) -> Self {
        Subject {
            store,
            _keep: Box::new(keep),
        }
    }

    pub fn store(&self) -> Arc<dyn JobStore> {
        self.store.clone()
    }
}

/// One `#[tokio::test]` per property of the contract, each on a fresh store
/// from `$make` (an `async fn() -> Option<Subject>`; `None` skips, for a
/// server that is not configured outside CI). The calling crate needs
/// `tokio` (with the multi-threaded runtime) among its dependencies.
#[macro_export]
macro_rules! job_store_contract {
    ($make:path) => {
        $crate::job_store_contract!(@each $make;
            delegation_keys_are_idempotent,
            github_job_ids_are_idempotent,
            a_finished_job_gives_up_its_delegation_key,
            updates_are_compare_and_set,
            a_github_job_links_to_one_job_only,
            every_field_round_trips,
            listing_filters_and_pages_in_creation_order,
            pages_are_capped,
            tokens_are_found_by_hash_and_revoked_once,
            tokens_are_listed_in_creation_order_by_runner_and_paged,
            audit_is_appended_and_listed_newest_first,
            webhook_deliveries_are_deduplicated_and_forgotten,
            the_active_job_of_a_runner_is_found_by_key,
            the_active_hook_job_of_a_runner_is_its_newest_unfinished_one,
            a_job_is_deleted_only_at_the_revision_it_was_read,
            hook_jobs_are_found_for_linking_until_linked,
            running_webhook_records_of_a_runner_are_found_for_a_delegation,
            repositories_of_recent_writes_are_listed,
            the_job_that_ran_in_another_jobs_container_is_found,
            ping_answers,
            racing_compare_and_set_writers_one_wins_per_round,
            racing_inserts_of_one_delegation_key_make_one_job,
            racing_inserts_of_one_github_job_make_one_job,
            racing_deliveries_are_recorded_once,
            a_write_and_its_audit_rows_are_stored_together,
            a_write_that_does_not_take_effect_writes_no_audit_row,
            a_failing_write_leaves_the_writes_committed_with_it_standing,
            racing_writers_audit_exactly_the_writes_that_won,
            writes_whose_callers_went_away_are_whole_or_absent,
        );
    };
    (@each $make:path; $($property:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $property() {
                if let Some(subject) = $make().await {
                    $crate::store_contract::$property(subject.store()).await;
                }
            }
        )*
    };
}

// ---------------------------------------------------------------- fixtures

/// A fixed instant plus `s` seconds.
pub fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time in range")
}

/// A job a proxy runner's hook delegated (keyed by its delegation key).
pub fn hook_job(repo: &str, key: &str, runner: &str, run_id: u64) -> Job {
    NewJob {
        job_key: key.into(),
        run_id,
        run_attempt: 1,
        repository: repo.into(),
        workflow: "CI".into(),
        runner_name: Some(runner.into()),
        labels: vec!["self-hosted".into(), "linux".into()],
        environment: BTreeMap::from([("GITHUB_JOB".to_string(), key.to_string())]),
        matrix: Some(serde_json::json!({"os": "linux"})),
        needs: vec!["lint".into()],
        github_job_id: None,
        source: JobSource::Hook,
        dropped_secrets: 0,
    }
    .into_job(Uuid::now_v7(), t(0))
}

/// A job a `workflow_job` webhook announced (keyed by GitHub's job id).
pub fn webhook_job(repo: &str, github_job_id: u64) -> Job {
    let mut j = hook_job(repo, "build", "unused", 7);
    j.runner_name = None;
    j.source = JobSource::Webhook;
    j.github_job_id = Some(github_job_id);
    j
}

fn all(limit: usize) -> JobFilter {
    JobFilter {
        limit,
        ..Default::default()
    }
}

async fn stored(store: &Arc<dyn JobStore>, id: Uuid) -> Job {
    store
        .get_job(id)
        .await
        .expect("get_job")
        .expect("the job is stored")
}

// ---------------------------------------------------------------- idempotency

pub async fn delegation_keys_are_idempotent(store: Arc<dyn JobStore>) {
    let job = hook_job("octo/repo", "build", "proxy-1", 42);
    let first = store.insert_job(&job, &[]).await.unwrap();
    assert!(first.is_new());
    assert_eq!(first.job(), &job);

    // Same key, fresh id, the repository spelled in other case (a retried
    // hook call): the first job comes back unchanged.
    let mut again = hook_job("Octo/Repo", "build", "proxy-1", 42);
    again.workflow = "other".into();
    let second = store.insert_job(&again, &[]).await.unwrap();
    assert!(!second.is_new(), "same delegation key is Existing");
    assert_eq!(second.job(), &job);
    assert_eq!(store.get_job(again.id).await.unwrap(), None);

    // Any other part of the key makes another job.
    let mut attempt2 = hook_job("octo/repo", "build", "proxy-1", 42);
    attempt2.run_attempt = 2;
    let other_runner = hook_job("octo/repo", "build", "proxy-2", 42);
    let other_key = hook_job("octo/repo", "test", "proxy-1", 42);
    let other_run = hook_job("octo/repo", "build", "proxy-1", 43);
    let other_repo = hook_job("octo/other", "build", "proxy-1", 42);
    for j in [
        &attempt2,
        &other_runner,
        &other_key,
        &other_run,
        &other_repo,
    ] {
        assert!(store.insert_job(j, &[]).await.unwrap().is_new(), "{j:?}");
    }

    assert_eq!(store.get_job(job.id).await.unwrap(), Some(job.clone()));
    assert_eq!(store.get_job(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(store.list_jobs(&all(100)).await.unwrap().len(), 6);
}

pub async fn github_job_ids_are_idempotent(store: Arc<dyn JobStore>) {
    let a = webhook_job("o/r", 1001);
    assert!(store.insert_job(&a, &[]).await.unwrap().is_new());

    // The same GitHub job from another webhook delivery or the poller.
    let dup = webhook_job("o/r", 1001);
    let again = store.insert_job(&dup, &[]).await.unwrap();
    assert!(!again.is_new());
    assert_eq!(again.job(), &a);
    let mut polled = webhook_job("o/r", 1001);
    polled.source = JobSource::Poll;
    assert_eq!(store.insert_job(&polled, &[]).await.unwrap().into_job(), a);
    // A hook job with a new delegation key but a known GitHub job id.
    let mut hooked = hook_job("o/r", "build", "proxy-1", 5);
    hooked.github_job_id = Some(1001);
    assert_eq!(store.insert_job(&hooked, &[]).await.unwrap().into_job(), a);
    // The very same record twice.
    assert!(!store.insert_job(&a, &[]).await.unwrap().is_new());

    assert_eq!(store.find_by_github_job_id(1001).await.unwrap(), Some(a));
    assert!(store.find_by_github_job_id(1002).await.unwrap().is_none());
    assert_eq!(store.list_jobs(&all(100)).await.unwrap().len(), 1);
}

pub async fn a_finished_job_gives_up_its_delegation_key(store: Arc<dyn JobStore>) {
    let mut job = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&job, &[]).await.unwrap();
    job.transition(JobStatus::Running, t(1)).unwrap();
    assert!(
        store
            .update_job(&mut job, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    // Still running: the key still answers with this job.
    let retry = hook_job("o/r", "build", "proxy-1", 1);
    assert_eq!(
        store.insert_job(&retry, &[]).await.unwrap().into_job().id,
        job.id
    );

    job.transition(JobStatus::Completed, t(2)).unwrap();
    assert!(
        store
            .update_job(&mut job, JobStatus::Running, &[])
            .await
            .unwrap()
    );
    // The next leg of a matrix (same GITHUB_JOB, run, attempt and runner).
    let next_leg = hook_job("o/r", "build", "proxy-1", 1);
    let inserted = store.insert_job(&next_leg, &[]).await.unwrap();
    assert!(inserted.is_new(), "a finished job's key is free again");
    assert_eq!(
        store
            .insert_job(&hook_job("o/r", "build", "proxy-1", 1), &[])
            .await
            .unwrap()
            .into_job()
            .id,
        next_leg.id,
        "and belongs to the new job"
    );
    assert_eq!(stored(&store, job.id).await.status, JobStatus::Completed);
}

// ---------------------------------------------------------------- compare and set

pub async fn updates_are_compare_and_set(store: Arc<dyn JobStore>) {
    let mut job = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&job, &[]).await.unwrap();
    assert_eq!(stored(&store, job.id).await.revision, 0);

    job.start_provisioning(t(1)).unwrap();
    job.container_id = Some("abc".into());
    assert!(
        store
            .update_job(&mut job, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert_eq!(job.revision, 1, "the writer's copy follows its own write");

    // A writer that still thinks the job is queued loses.
    let mut stale = job.clone();
    stale.status = JobStatus::Cancelled;
    assert!(
        !store
            .update_job(&mut stale, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert_eq!(stale.revision, 1, "a lost write leaves the copy as it was");
    let now = stored(&store, job.id).await;
    assert_eq!(now.status, JobStatus::Provisioning);
    assert_eq!(now.container_id.as_deref(), Some("abc"));
    assert_eq!(now.revision, 1);

    // Two writers read the same revision; both keep the status. The second
    // must not overwrite what the first wrote.
    let mut first = stored(&store, job.id).await;
    let mut second = first.clone();
    first.runner_id = Some(7);
    assert!(
        store
            .update_job(&mut first, JobStatus::Provisioning, &[])
            .await
            .unwrap()
    );
    second.container_id = None;
    assert!(
        !store
            .update_job(&mut second, JobStatus::Provisioning, &[])
            .await
            .unwrap()
    );
    let now = stored(&store, job.id).await;
    assert_eq!(
        (now.runner_id, now.container_id.as_deref()),
        (Some(7), Some("abc"))
    );
    assert_eq!(now.revision, 2);

    // The same writer writes again with its updated copy; every write bumps.
    for n in 3..6 {
        first.exit_code = Some(n as i32);
        assert!(
            store
                .update_job(&mut first, JobStatus::Provisioning, &[])
                .await
                .unwrap()
        );
        assert_eq!(first.revision, n);
        assert_eq!(stored(&store, job.id).await, first);
    }

    // A revision from the future loses too, and so does an unknown job.
    let mut ahead = first.clone();
    ahead.revision += 1;
    assert!(
        !store
            .update_job(&mut ahead, JobStatus::Provisioning, &[])
            .await
            .unwrap()
    );
    let mut unknown = hook_job("o/r", "build", "proxy-9", 1);
    assert!(
        !store
            .update_job(&mut unknown, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert_eq!(store.get_job(unknown.id).await.unwrap(), None);
}

pub async fn a_github_job_links_to_one_job_only(store: Arc<dyn JobStore>) {
    let a = webhook_job("o/r", 5);
    store.insert_job(&a, &[]).await.unwrap();
    let mut b = hook_job("o/r", "build", "p", 9);
    store.insert_job(&b, &[]).await.unwrap();
    b.github_job_id = Some(5);
    let err = store
        .update_job(&mut b, JobStatus::Queued, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("already linked"), "{err}");
    assert_eq!(b.revision, 0);
    let now = stored(&store, b.id).await;
    assert_eq!(
        (now.github_job_id, now.revision),
        (None, 0),
        "nothing written"
    );
    assert_eq!(
        store.find_by_github_job_id(5).await.unwrap().map(|j| j.id),
        Some(a.id)
    );
}

/// Every field of a job, on insert and on update, comes back as written,
/// including text a client may send (quotes, any Unicode, control
/// characters, NUL) and ids beyond 32 bits.
pub async fn every_field_round_trips(store: Arc<dyn JobStore>) {
    let mut job = hook_job(
        "Org-Name/repo.name",
        "build_1",
        "proxy-runner-7",
        u64::from(u32::MAX) + 3,
    );
    job.environment.insert(
        "WEIRD".into(),
        "quotes \" ' back\\slash\nnew line, tab\t, unicode é 漢字 🚀, control \u{1}, nul \u{0}"
            .into(),
    );
    job.matrix = Some(serde_json::json!({"nested": {"list": [1, 2.5, null, true], "s": "x"}}));
    job.labels = vec!["self-hosted".into(), "GPU".into(), "x64".into()];
    job.dropped_secrets = 3;
    let inserted = store.insert_job(&job, &[]).await.unwrap();
    assert_eq!(inserted.job(), &job);
    assert_eq!(stored(&store, job.id).await, job);

    job.start_provisioning(t(3)).unwrap();
    job.runner_registered(77);
    job.container_started("c-123".into(), "proxy-runner-7".into(), t(4));
    job.transition(JobStatus::Running, t(5)).unwrap();
    job.runner_id = Some(78);
    job.github_job_id = Some(u64::from(u32::MAX) + 9);
    job.ran_in_container_id = Some("c-999".into());
    job.last_error = Some("first start failed: \"image missing\" \u{0}".into());
    job.not_before = Some(t(6));
    job.exit_code = Some(-1);
    job.conclusion = Some("success".into());
    job.updated_at = DateTime::from_timestamp(1_700_000_010, 123_456_789).unwrap();
    assert!(
        store
            .update_job(&mut job, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert_eq!(stored(&store, job.id).await, job);
    assert_eq!(
        store
            .find_by_github_job_id(u64::from(u32::MAX) + 9)
            .await
            .unwrap(),
        Some(job)
    );
}

// ---------------------------------------------------------------- paging

pub async fn listing_filters_and_pages_in_creation_order(store: Arc<dyn JobStore>) {
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let repo = if i % 2 == 0 { "a/one" } else { "b/two" };
        let mut j = hook_job(repo, "build", "p", i);
        if i == 3 || i == 4 {
            j.transition(JobStatus::Running, t(1)).unwrap();
        }
        store.insert_job(&j, &[]).await.unwrap();
        ids.push(j.id);
    }
    let listed = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();

    assert_eq!(
        listed(store.list_jobs(&all(100)).await.unwrap()),
        ids,
        "creation order"
    );

    // Walking pages with `after` sees every job once, in order.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_jobs(&JobFilter {
                limit: 3,
                after,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        walked.extend(listed(page));
    }
    assert_eq!(walked, ids);
    let tail = JobFilter {
        after: Some(ids[6]),
        limit: 10,
        ..Default::default()
    };
    assert!(store.list_jobs(&tail).await.unwrap().is_empty());

    let running = JobFilter {
        status: Some(JobStatus::Running),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        listed(store.list_jobs(&running).await.unwrap()),
        [ids[3], ids[4]]
    );
    let none = JobFilter {
        status: Some(JobStatus::Failed),
        limit: 100,
        ..Default::default()
    };
    assert!(store.list_jobs(&none).await.unwrap().is_empty());

    let b = JobFilter {
        repository: Some("B/Two".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        listed(store.list_jobs(&b).await.unwrap()),
        [ids[1], ids[3], ids[5]],
        "the repository filter ignores case"
    );
    let b_running = JobFilter {
        status: Some(JobStatus::Running),
        repository: Some("b/two".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(listed(store.list_jobs(&b_running).await.unwrap()), [ids[3]]);
    let b_after = JobFilter {
        repository: Some("b/two".into()),
        after: Some(ids[1]),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(listed(store.list_jobs(&b_after).await.unwrap()), [ids[3]]);
    let nobody = JobFilter {
        repository: Some("c/three".into()),
        limit: 100,
        ..Default::default()
    };
    assert!(store.list_jobs(&nobody).await.unwrap().is_empty());
}

pub async fn pages_are_capped(store: Arc<dyn JobStore>) {
    let mut tasks = JoinSet::new();
    for i in 0..(MAX_PAGE as u64 + 1) {
        let store = store.clone();
        tasks.spawn(async move {
            let j = webhook_job("o/r", 10_000 + i);
            store.insert_job(&j, &[]).await.map(|x| x.is_new())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(done.expect("task").expect("insert"), "all distinct");
    }
    assert_eq!(
        store.list_jobs(&all(usize::MAX)).await.unwrap().len(),
        MAX_PAGE
    );
    assert_eq!(
        store.list_jobs(&all(MAX_PAGE + 1)).await.unwrap().len(),
        MAX_PAGE
    );
    assert_eq!(
        store.list_jobs(&all(0)).await.unwrap().len(),
        1,
        "at least one"
    );
    let first = store.list_jobs(&all(MAX_PAGE)).await.unwrap();
    let rest = JobFilter {
        after: first.last().map(|j| j.id),
        limit: MAX_PAGE,
        ..Default::default()
    };
    assert_eq!(store.list_jobs(&rest).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------- tokens, audit, deliveries

pub async fn tokens_are_found_by_hash_and_revoked_once(store: Arc<dyn JobStore>) {
    let tok = TokenRecord {
        id: Uuid::now_v7(),
        runner: "proxy-1".into(),
        hash: "ab".repeat(32),
        created_at: t(0),
        revoked_at: None,
    };
    let other = TokenRecord {
        id: Uuid::now_v7(),
        runner: "proxy-2".into(),
        hash: "cd".repeat(32),
        created_at: t(1),
        revoked_at: Some(t(2)),
    };
    store.insert_token(&tok, &[]).await.unwrap();
    store.insert_token(&other, &[]).await.unwrap();
    assert_eq!(
        store.find_token_by_hash(&tok.hash).await.unwrap(),
        Some(tok.clone())
    );
    assert_eq!(
        store.find_token_by_hash(&other.hash).await.unwrap(),
        Some(other.clone())
    );
    assert!(store.find_token_by_hash("ef").await.unwrap().is_none());
    assert!(
        store
            .find_token_by_hash(&tok.hash.to_uppercase())
            .await
            .unwrap()
            .is_none(),
        "hashes are compared exactly"
    );

    assert!(store.revoke_token(tok.id, t(9), &[]).await.unwrap());
    assert!(
        !store.revoke_token(tok.id, t(10), &[]).await.unwrap(),
        "revoking twice"
    );
    assert!(
        !store.revoke_token(other.id, t(10), &[]).await.unwrap(),
        "already revoked"
    );
    assert!(
        !store
            .revoke_token(Uuid::now_v7(), t(10), &[])
            .await
            .unwrap(),
        "no such token"
    );
    assert_eq!(
        store
            .find_token_by_hash(&tok.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(t(9))
    );
    assert_eq!(
        store
            .find_token_by_hash(&other.hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(t(2))
    );
}

pub async fn tokens_are_listed_in_creation_order_by_runner_and_paged(store: Arc<dyn JobStore>) {
    let all = |limit| TokenFilter {
        limit,
        ..Default::default()
    };
    assert!(store.list_tokens(&all(10)).await.unwrap().is_empty());
    // Ids are UUIDv7: inserted out of order, listed in creation order.
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let records: Vec<TokenRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| TokenRecord {
            id: *id,
            runner: if i % 2 == 0 { "even" } else { "odd" }.into(),
            hash: format!("{i:064x}"),
            created_at: t(i as i64),
            revoked_at: (i == 3).then(|| t(30)),
        })
        .collect();
    for i in [4, 0, 2, 1, 3] {
        store.insert_token(&records[i], &[]).await.unwrap();
    }
    assert_eq!(store.list_tokens(&all(10)).await.unwrap(), records);

    let first = store.list_tokens(&all(2)).await.unwrap();
    assert_eq!(first, records[..2]);
    let rest = store
        .list_tokens(&TokenFilter {
            after: Some(first[1].id),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest, records[2..], "revoked tokens are listed too");

    let odd = store
        .list_tokens(&TokenFilter {
            runner: Some("odd".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(odd, [records[1].clone(), records[3].clone()]);
    let none = store
        .list_tokens(&TokenFilter {
            runner: Some("ODD".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "runner names are compared exactly");
    assert_eq!(
        store.list_tokens(&all(0)).await.unwrap().len(),
        1,
        "at least one"
    );
}

pub async fn audit_is_appended_and_listed_newest_first(store: Arc<dyn JobStore>) {
    assert!(store.list_audit(10).await.unwrap().is_empty());
    let job_id = Uuid::now_v7();
    let events: Vec<AuditEvent> = (0..4)
        .map(|i| AuditEvent {
            // Times deliberately out of order: the list is in append order.
            at: t(10 - i),
            actor: if i % 2 == 0 {
                "admin".into()
            } else {
                "runner:proxy-1".into()
            },
            action: format!("a{i}"),
            job_id: (i % 2 == 1).then_some(job_id),
            detail: serde_json::json!({"n": i, "nested": {"s": "x \" y \u{0}", "l": [1, null]}}),
        })
        .collect();
    for e in &events {
        store.append_audit(e).await.unwrap();
    }
    let newest_first: Vec<AuditEvent> = events.iter().rev().cloned().collect();
    assert_eq!(store.list_audit(100).await.unwrap(), newest_first);
    assert_eq!(store.list_audit(2).await.unwrap(), newest_first[..2]);
    assert_eq!(
        store.list_audit(0).await.unwrap(),
        newest_first[..1],
        "at least one"
    );
}

pub async fn webhook_deliveries_are_deduplicated_and_forgotten(store: Arc<dyn JobStore>) {
    assert!(
        store
            .record_delivery("d-1", "workflow_job", t(0))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_delivery("d-1", "workflow_job", t(1))
            .await
            .unwrap()
    );
    assert!(
        !store.record_delivery("d-1", "ping", t(1)).await.unwrap(),
        "the id alone counts"
    );
    assert!(
        store
            .record_delivery("d-2", "workflow_job", t(1))
            .await
            .unwrap()
    );
    store.forget_delivery("d-1").await.unwrap();
    assert!(
        store
            .record_delivery("d-1", "workflow_job", t(2))
            .await
            .unwrap(),
        "forgotten deliveries count as new"
    );
    assert!(
        !store
            .record_delivery("d-2", "workflow_job", t(2))
            .await
            .unwrap(),
        "others kept"
    );
    store.forget_delivery("never-seen").await.unwrap();
}

// ---------------------------------------------------------------- finders

pub async fn the_active_job_of_a_runner_is_found_by_key(store: Arc<dyn JobStore>) {
    let mut old = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&old, &[]).await.unwrap();
    old.transition(JobStatus::Completed, t(5)).unwrap();
    assert!(
        store
            .update_job(&mut old, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    let older = hook_job("o/r", "build", "proxy-1", 2);
    store.insert_job(&older, &[]).await.unwrap();
    let mut newest = hook_job("o/r", "build", "proxy-1", 3);
    newest.transition(JobStatus::Running, t(6)).unwrap();
    store.insert_job(&newest, &[]).await.unwrap();
    store
        .insert_job(&hook_job("o/r", "build", "proxy-2", 4), &[])
        .await
        .unwrap();

    let found = store
        .find_active_for_runner("proxy-1", "build")
        .await
        .unwrap();
    assert_eq!(
        found.map(|j| j.id),
        Some(newest.id),
        "the newest unfinished one"
    );
    assert!(
        store
            .find_active_for_runner("proxy-1", "test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_active_for_runner("proxy-3", "build")
            .await
            .unwrap()
            .is_none()
    );

    newest.transition(JobStatus::Failed, t(7)).unwrap();
    assert!(
        store
            .update_job(&mut newest, JobStatus::Running, &[])
            .await
            .unwrap()
    );
    let found = store
        .find_active_for_runner("proxy-1", "build")
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(older.id));
}

pub async fn the_active_hook_job_of_a_runner_is_its_newest_unfinished_one(
    store: Arc<dyn JobStore>,
) {
    assert!(
        store
            .find_active_hook_job("proxy-1")
            .await
            .unwrap()
            .is_none()
    );
    let mut first = hook_job("o/r", "build", "proxy-1", 1);
    first.transition(JobStatus::Running, t(1)).unwrap();
    store.insert_job(&first, &[]).await.unwrap();
    let mut second = hook_job("o/r", "test", "proxy-1", 1);
    second.transition(JobStatus::Running, t(2)).unwrap();
    store.insert_job(&second, &[]).await.unwrap();
    store
        .insert_job(&webhook_job("o/r", 99), &[])
        .await
        .unwrap();
    store
        .insert_job(&hook_job("o/r", "build", "proxy-2", 1), &[])
        .await
        .unwrap();
    let found = store.find_active_hook_job("proxy-1").await.unwrap();
    assert_eq!(found.map(|j| j.id), Some(second.id));
    second.transition(JobStatus::Completed, t(3)).unwrap();
    assert!(
        store
            .update_job(&mut second, JobStatus::Running, &[])
            .await
            .unwrap()
    );
    let found = store.find_active_hook_job("proxy-1").await.unwrap();
    assert_eq!(
        found.map(|j| j.id),
        Some(first.id),
        "a finished job is not active"
    );
}

pub async fn a_job_is_deleted_only_at_the_revision_it_was_read(store: Arc<dyn JobStore>) {
    let mut job = webhook_job("o/r", 7);
    store.insert_job(&job, &[]).await.unwrap();
    let read = stored(&store, job.id).await;
    job.transition(JobStatus::Running, t(1)).unwrap();
    assert!(
        store
            .update_job(&mut job, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert!(
        !store.delete_job(read.id, read.revision, &[]).await.unwrap(),
        "a stale read deletes nothing"
    );
    assert!(store.get_job(job.id).await.unwrap().is_some());
    let current = stored(&store, job.id).await;
    assert!(
        store
            .delete_job(current.id, current.revision, &[])
            .await
            .unwrap()
    );
    assert!(store.get_job(job.id).await.unwrap().is_none());
    assert!(
        store.find_by_github_job_id(7).await.unwrap().is_none(),
        "its GitHub job id is free again"
    );
    let again = webhook_job("o/r", 7);
    assert!(store.insert_job(&again, &[]).await.unwrap().is_new());
}

pub async fn hook_jobs_are_found_for_linking_until_linked(store: Arc<dyn JobStore>) {
    let mut job = hook_job("o/r", "build", "proxy-1", 42);
    store.insert_job(&job, &[]).await.unwrap();
    // A webhook job of the same run is not a hook job.
    let mut webhook = webhook_job("o/r", 77);
    webhook.runner_name = Some("proxy-1".into());
    webhook.run_id = 42;
    store.insert_job(&webhook, &[]).await.unwrap();

    let found = store
        .find_unlinked_hook_job("proxy-1", "O/R", 42, 1)
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(job.id), "repository ignores case");
    for (runner, repo, run, attempt) in [
        ("proxy-1", "o/r", 42, 2),
        ("proxy-2", "o/r", 42, 1),
        ("proxy-1", "o/r", 43, 1),
        ("proxy-1", "o/x", 42, 1),
    ] {
        let found = store
            .find_unlinked_hook_job(runner, repo, run, attempt)
            .await
            .unwrap();
        assert!(found.is_none(), "{runner} {repo} {run} {attempt}");
    }

    // The newest of two unlinked ones (two job keys of one run).
    let second = hook_job("o/r", "test", "proxy-1", 42);
    store.insert_job(&second, &[]).await.unwrap();
    let found = store
        .find_unlinked_hook_job("proxy-1", "o/r", 42, 1)
        .await
        .unwrap();
    assert_eq!(found.map(|j| j.id), Some(second.id));

    job.github_job_id = Some(555);
    assert!(
        store
            .update_job(&mut job, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    let mut second = stored(&store, second.id).await;
    second.github_job_id = Some(556);
    assert!(
        store
            .update_job(&mut second, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    assert!(
        store
            .find_unlinked_hook_job("proxy-1", "o/r", 42, 1)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .find_by_github_job_id(555)
            .await
            .unwrap()
            .map(|j| j.id),
        Some(job.id)
    );
}

pub async fn running_webhook_records_of_a_runner_are_found_for_a_delegation(
    store: Arc<dyn JobStore>,
) {
    let tracked = |github_job_id: u64, runner: &str, run_id: u64, status: JobStatus| {
        let mut j = webhook_job("o/r", github_job_id);
        j.runner_name = Some(runner.into());
        j.run_id = run_id;
        (j, status)
    };
    let mut ids = Vec::new();
    for (mut job, status) in [
        tracked(1, "proxy-1", 42, JobStatus::Running),
        tracked(2, "proxy-1", 42, JobStatus::Running),
        tracked(3, "proxy-1", 42, JobStatus::Queued),
        tracked(4, "proxy-2", 42, JobStatus::Running),
        tracked(5, "proxy-1", 43, JobStatus::Running),
    ] {
        store.insert_job(&job, &[]).await.unwrap();
        if status != JobStatus::Queued {
            job.status = status;
            assert!(
                store
                    .update_job(&mut job, JobStatus::Queued, &[])
                    .await
                    .unwrap()
            );
        }
        ids.push(job.id);
    }
    // A hook job of the same run and runner is not a tracking record.
    let mut hook = hook_job("o/r", "build", "proxy-1", 42);
    hook.github_job_id = Some(6);
    store.insert_job(&hook, &[]).await.unwrap();
    hook.status = JobStatus::Running;
    assert!(
        store
            .update_job(&mut hook, JobStatus::Queued, &[])
            .await
            .unwrap()
    );

    let found: Vec<Uuid> = store
        .find_tracking_records("proxy-1", "O/R", 42, 1)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        found,
        vec![ids[1], ids[0]],
        "newest first; repository ignores case"
    );
    for (runner, repo, run, attempt) in [
        ("proxy-1", "o/r", 42, 2),
        ("proxy-3", "o/r", 42, 1),
        ("proxy-1", "o/x", 42, 1),
        ("proxy-1", "o/r", 44, 1),
    ] {
        let found = store
            .find_tracking_records(runner, repo, run, attempt)
            .await
            .unwrap();
        assert!(found.is_empty(), "{runner} {repo} {run} {attempt}");
    }
}

pub async fn repositories_of_recent_writes_are_listed(store: Arc<dyn JobStore>) {
    let mut old = webhook_job("o/old", 1);
    old.updated_at = t(0);
    store.insert_job(&old, &[]).await.unwrap();
    for (repo, id) in [("o/new", 2), ("o/new", 3), ("o/also", 4)] {
        let mut j = webhook_job(repo, id);
        j.updated_at = t(100);
        store.insert_job(&j, &[]).await.unwrap();
    }
    // An update counts as a write at its time.
    let mut touched = webhook_job("o/touched", 5);
    store.insert_job(&touched, &[]).await.unwrap();
    touched.updated_at = t(200);
    touched.status = JobStatus::Cancelled;
    assert!(
        store
            .update_job(&mut touched, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    let mut since = store.repositories_updated_since(t(100)).await.unwrap();
    since.sort();
    assert_eq!(since, vec!["o/also", "o/new", "o/touched"]);
    assert_eq!(
        store.repositories_updated_since(t(150)).await.unwrap(),
        vec!["o/touched"]
    );
    assert!(
        store
            .repositories_updated_since(t(201))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn the_job_that_ran_in_another_jobs_container_is_found(store: Arc<dyn JobStore>) {
    let mut j = webhook_job("o/r", 9);
    j.ran_in_container_id = Some("c-1".into());
    store.insert_job(&j, &[]).await.unwrap();
    let mut later = webhook_job("o/r", 10);
    store.insert_job(&later, &[]).await.unwrap();
    let found = store.find_job_ran_in_container("c-1").await.unwrap();
    assert_eq!(found.map(|x| x.id), Some(j.id));
    assert!(
        store
            .find_job_ran_in_container("c-2")
            .await
            .unwrap()
            .is_none()
    );

    // Learned by an update; the newest job wins.
    later.ran_in_container_id = Some("c-1".into());
    assert!(
        store
            .update_job(&mut later, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    let found = store.find_job_ran_in_container("c-1").await.unwrap();
    assert_eq!(found.map(|x| x.id), Some(later.id));
    later.ran_in_container_id = Some("c-3".into());
    assert!(
        store
            .update_job(&mut later, JobStatus::Queued, &[])
            .await
            .unwrap()
    );
    let found = store.find_job_ran_in_container("c-3").await.unwrap();
    assert_eq!(found.map(|x| x.id), Some(later.id));
    let found = store.find_job_ran_in_container("c-1").await.unwrap();
    assert_eq!(found.map(|x| x.id), Some(j.id));
}

pub async fn ping_answers(store: Arc<dyn JobStore>) {
    store.ping().await.unwrap();
}

// ---------------------------------------------------------------- concurrent writers

pub async fn racing_compare_and_set_writers_one_wins_per_round(store: Arc<dyn JobStore>) {
    let job = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&job, &[]).await.unwrap();
    for round in 0..CAS_ROUNDS {
        // Every round starts from a queued job that all writers read.
        let base = stored(&store, job.id).await;
        assert_eq!((base.status, base.revision), (JobStatus::Queued, 2 * round));
        let barrier = Arc::new(Barrier::new(CAS_WRITERS));
        let mut tasks = JoinSet::new();
        for writer in 0..CAS_WRITERS {
            let (store, barrier) = (store.clone(), barrier.clone());
            let mut mine = base.clone();
            tasks.spawn(async move {
                mine.last_error = Some(format!("round {round} writer {writer}"));
                // Half the writers also move the status: the race is on
                // status and revision together.
                if writer % 2 == 1 {
                    mine.status = JobStatus::Provisioning;
                }
                barrier.wait().await;
                let won = store.update_job(&mut mine, JobStatus::Queued, &[]).await?;
                Ok::<_, StoreError>(won.then_some(mine))
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Some(w) = done.expect("task").expect("update") {
                winners.push(w);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins");
        let winner = winners.remove(0);
        assert_eq!(winner.revision, base.revision + 1);
        let mut now = stored(&store, job.id).await;
        assert_eq!(
            now, winner,
            "round {round}: the winner's write is stored whole"
        );
        // Back to queued for the next round (one more revision).
        let from = now.status;
        now.status = JobStatus::Queued;
        assert!(store.update_job(&mut now, from, &[]).await.unwrap());
    }
}

pub async fn racing_inserts_of_one_delegation_key_make_one_job(store: Arc<dyn JobStore>) {
    let barrier = Arc::new(Barrier::new(RACING_INSERTS));
    let mut tasks = JoinSet::new();
    for i in 0..RACING_INSERTS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            let repo = if i % 2 == 0 { "octo/repo" } else { "OCTO/Repo" };
            let job = hook_job(repo, "build", "proxy-1", 42);
            barrier.wait().await;
            let inserted = store.insert_job(&job, &[]).await?;
            Ok::<_, StoreError>((inserted.is_new(), job.id, inserted.into_job().id))
        });
    }
    assert_one_job(&store, tasks).await;
}

pub async fn racing_inserts_of_one_github_job_make_one_job(store: Arc<dyn JobStore>) {
    let barrier = Arc::new(Barrier::new(RACING_INSERTS));
    let mut tasks = JoinSet::new();
    for i in 0..RACING_INSERTS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            let mut job = webhook_job("o/r", 4242);
            if i % 3 == 0 {
                job.source = JobSource::Poll;
            }
            barrier.wait().await;
            let inserted = store.insert_job(&job, &[]).await?;
            Ok::<_, StoreError>((inserted.is_new(), job.id, inserted.into_job().id))
        });
    }
    assert_one_job(&store, tasks).await;
}

async fn assert_one_job(
    store: &Arc<dyn JobStore>,
    mut tasks: JoinSet<Result<(bool, Uuid, Uuid), StoreError>>,
) {
    let mut new = Vec::new();
    let mut answered = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let (is_new, offered, got) = done.expect("task").expect("insert");
        if is_new {
            assert_eq!(offered, got);
            new.push(offered);
        }
        answered.insert(got);
    }
    assert_eq!(new.len(), 1, "exactly one insert creates the job");
    assert_eq!(
        answered,
        BTreeSet::from([new[0]]),
        "every caller gets that job"
    );
    let jobs = store.list_jobs(&all(MAX_PAGE)).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), new);
}

pub async fn racing_deliveries_are_recorded_once(store: Arc<dyn JobStore>) {
    let barrier = Arc::new(Barrier::new(64));
    let mut tasks = JoinSet::new();
    for i in 0..64 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            store
                .record_delivery("same-delivery", "workflow_job", t(i))
                .await
        });
    }
    let mut firsts = 0;
    while let Some(done) = tasks.join_next().await {
        firsts += usize::from(done.expect("task").expect("record"));
    }
    assert_eq!(firsts, 1, "one replica handles a delivery");
}

// ---------------------------------------------------------------- writes with their audit rows

/// An audit event naming `job_id`, told apart by `action`.
pub fn event(action: &str, job_id: Option<Uuid>) -> AuditEvent {
    AuditEvent {
        at: t(0),
        actor: "runner:proxy-1".into(),
        action: action.into(),
        job_id,
        detail: serde_json::json!({"action": action}),
    }
}

async fn actions(store: &Arc<dyn JobStore>) -> Vec<String> {
    let mut all: Vec<String> = store
        .list_audit(10_000)
        .await
        .expect("list_audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    all.reverse();
    all
}

pub async fn a_write_and_its_audit_rows_are_stored_together(store: Arc<dyn JobStore>) {
    let job = hook_job("o/r", "build", "proxy-1", 1);
    let inserted = store
        .insert_job(&job, &[event("job.delegated", Some(job.id))])
        .await
        .unwrap();
    assert!(inserted.is_new());
    let mut job = stored(&store, job.id).await;
    job.transition(JobStatus::Running, t(1)).unwrap();
    let id = Some(job.id);
    assert!(
        store
            .update_job(
                &mut job,
                JobStatus::Queued,
                &[event("job.running", id), event("job.noted", id)]
            )
            .await
            .unwrap()
    );
    let gone = hook_job("o/r", "gone", "proxy-1", 2);
    store.insert_job(&gone, &[]).await.unwrap();
    assert!(
        store
            .delete_job(gone.id, 0, &[event("job.merged", Some(gone.id))])
            .await
            .unwrap()
    );
    let token = TokenRecord {
        id: Uuid::now_v7(),
        runner: "proxy-1".into(),
        hash: "ab".repeat(32),
        created_at: t(0),
        revoked_at: None,
    };
    store
        .insert_token(&token, &[event("token.created", None)])
        .await
        .unwrap();
    assert!(
        store
            .revoke_token(token.id, t(1), &[event("token.revoked", None)])
            .await
            .unwrap()
    );
    assert_eq!(
        actions(&store).await,
        [
            "job.delegated",
            "job.running",
            "job.noted",
            "job.merged",
            "token.created",
            "token.revoked"
        ]
    );
    let newest = store.list_audit(1).await.unwrap();
    assert_eq!(newest, [event("token.revoked", None)], "stored whole");
}

pub async fn a_write_that_does_not_take_effect_writes_no_audit_row(store: Arc<dyn JobStore>) {
    let job = hook_job("o/r", "build", "proxy-1", 1);
    store
        .insert_job(&job, &[event("job.delegated", Some(job.id))])
        .await
        .unwrap();
    // The same delegation again: the stored job comes back, no second line.
    let again = hook_job("o/r", "build", "proxy-1", 1);
    let existing = store
        .insert_job(&again, &[event("job.delegated.again", Some(again.id))])
        .await
        .unwrap();
    assert!(!existing.is_new());
    // A compare and set that loses (stale revision, then stale status).
    let mut stale = job.clone();
    stale.revision = 7;
    stale.transition(JobStatus::Running, t(1)).unwrap();
    assert!(
        !store
            .update_job(
                &mut stale,
                JobStatus::Queued,
                &[event("lost.revision", Some(job.id))]
            )
            .await
            .unwrap()
    );
    let mut wrong_status = job.clone();
    assert!(
        !store
            .update_job(
                &mut wrong_status,
                JobStatus::Running,
                &[event("lost.status", Some(job.id))]
            )
            .await
            .unwrap()
    );
    assert_eq!(
        wrong_status.revision, 0,
        "a lost write leaves the copy as it was"
    );
    // A delete at a revision the job no longer has, and of no job at all.
    assert!(
        !store
            .delete_job(job.id, 5, &[event("lost.delete", Some(job.id))])
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_job(Uuid::now_v7(), 0, &[event("lost.nothing", None)])
            .await
            .unwrap()
    );
    // Revoking a token that does not exist.
    assert!(
        !store
            .revoke_token(Uuid::now_v7(), t(1), &[event("lost.revoke", None)])
            .await
            .unwrap()
    );
    assert_eq!(actions(&store).await, ["job.delegated"]);
    assert_eq!(stored(&store, job.id).await, job, "the job is untouched");
}

pub async fn a_failing_write_leaves_the_writes_committed_with_it_standing(
    store: Arc<dyn JobStore>,
) {
    // Job `a` holds GitHub job 77; linking `b` to it too is refused.
    let a = webhook_job("o/r", 77);
    store.insert_job(&a, &[]).await.unwrap();
    let b = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&b, &[]).await.unwrap();
    // Many writes at once, so that the store may commit them together; the
    // failing link is among them.
    let barrier = Arc::new(Barrier::new(CAS_WRITERS + 1));
    let mut tasks = JoinSet::new();
    {
        let (store, barrier) = (store.clone(), barrier.clone());
        let mut linked = b.clone();
        tasks.spawn(async move {
            linked.link_github_job(77, None, t(1));
            barrier.wait().await;
            let line = event("job.linked", Some(linked.id));
            let refused = store
                .update_job(&mut linked, JobStatus::Queued, &[line])
                .await;
            assert!(
                matches!(refused, Err(StoreError::Invalid(_))),
                "a second link of GitHub job 77 is refused: {refused:?}"
            );
            None
        });
    }
    for i in 0..CAS_WRITERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.spawn(async move {
            let job = hook_job("o/r", &format!("job-{i}"), "proxy-2", 100 + i as u64);
            barrier.wait().await;
            let inserted = store
                .insert_job(&job, &[event(&format!("job.delegated.{i}"), Some(job.id))])
                .await
                .expect("an insert beside the failing write");
            assert!(inserted.is_new());
            Some(job.id)
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ids.extend(done.expect("task"));
    }
    assert_eq!(ids.len(), CAS_WRITERS);
    for id in &ids {
        stored(&store, *id).await;
    }
    let lines = store.list_audit(10_000).await.unwrap();
    assert_eq!(
        lines.len(),
        CAS_WRITERS,
        "one line per insert, none for the refused link"
    );
    assert!(lines.iter().all(|l| l.action.starts_with("job.delegated.")));
    assert_eq!(
        stored(&store, b.id).await,
        b,
        "the refused link left b as it was"
    );
}

pub async fn racing_writers_audit_exactly_the_writes_that_won(store: Arc<dyn JobStore>) {
    let job = hook_job("o/r", "build", "proxy-1", 1);
    store.insert_job(&job, &[]).await.unwrap();
    let mut won = 0;
    for round in 0..CAS_ROUNDS {
        let base = stored(&store, job.id).await;
        let barrier = Arc::new(Barrier::new(CAS_WRITERS));
        let mut tasks = JoinSet::new();
        for writer in 0..CAS_WRITERS {
            let (store, barrier) = (store.clone(), barrier.clone());
            let mut mine = base.clone();
            tasks.spawn(async move {
                mine.last_error = Some(format!("round {round} writer {writer}"));
                let line = event(&format!("r{round}.w{writer}"), Some(mine.id));
                barrier.wait().await;
                let status = mine.status;
                store.update_job(&mut mine, status, &[line]).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            if done.expect("task").expect("update") {
                won += 1;
            }
        }
        let now = stored(&store, job.id).await;
        let lines = actions(&store).await;
        let winner = now.last_error.expect("a winner wrote");
        let expected = winner.replace("round ", "r").replace(" writer ", ".w");
        assert_eq!(
            lines.last(),
            Some(&expected),
            "round {round}: the line is the winner's"
        );
    }
    assert_eq!(won as u64, CAS_ROUNDS, "one winner per round");
    assert_eq!(
        actions(&store).await.len() as u64,
        CAS_ROUNDS,
        "one line per won write"
    );
}

/// Delegations whose callers give up at once or after a moment: each job
/// is stored with its audit line or not at all, and each acknowledged one
/// is stored.
pub async fn writes_whose_callers_went_away_are_whole_or_absent(store: Arc<dyn JobStore>) {
    const WRITES: usize = 400;
    let mut offered = Vec::new();
    let mut acknowledged = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let job = hook_job("o/r", &format!("job-{i}"), "proxy-1", i as u64);
        offered.push(job.id);
        let store = store.clone();
        let write = async move {
            store
                .insert_job(&job, &[event("job.delegated", Some(job.id))])
                .await
                .map(|inserted| inserted.job().id)
        };
        match i % 4 {
            // Dropped before it is ever polled, or after its first poll.
            0 => drop(write),
            1 => {
                if let Ok(Ok(id)) =
                    tokio::time::timeout(std::time::Duration::from_nanos(1), write).await
                {
                    acknowledged.push(id);
                }
            }
            // Aborted while in flight, at whatever point it reached.
            _ => tasks.push(tokio::spawn(write)),
        }
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for (n, task) in tasks.into_iter().enumerate() {
        if n % 2 == 0 {
            task.abort();
        }
        if let Ok(Ok(id)) = task.await {
            acknowledged.push(id);
        }
    }
    // Writes handed over before their caller left still land: wait until a
    // write made now has committed (the writer takes them in order).
    let marker = hook_job("o/r", "marker", "proxy-9", 9_999);
    store.insert_job(&marker, &[]).await.unwrap();

    let lines = store.list_audit(10_000).await.unwrap();
    let audited: BTreeMap<Uuid, usize> = lines.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.job_id.expect("names its job")).or_default() += 1;
        m
    });
    let mut stored_jobs = 0;
    for id in &offered {
        let job = store.get_job(*id).await.unwrap();
        let lines = audited.get(id).copied().unwrap_or(0);
        match job {
            Some(_) => {
                stored_jobs += 1;
                assert_eq!(lines, 1, "job {id} is stored with exactly its audit line");
            }
            None => assert_eq!(lines, 0, "no audit line without its job {id}"),
        }
    }
    for id in &acknowledged {
        assert!(
            store.get_job(*id).await.unwrap().is_some(),
            "acknowledged {id} is stored"
        );
    }
    assert_eq!(
        lines.len(),
        stored_jobs,
        "no audit line names a job that was not offered"
    );
    assert!(
        acknowledged.len() <= stored_jobs && stored_jobs <= WRITES,
        "{} acknowledged, {stored_jobs} stored",
        acknowledged.len()
    );
}
