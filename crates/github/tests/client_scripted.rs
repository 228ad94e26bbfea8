//! The client against tiny scripted servers on 127.0.0.1: headers, status
//! mapping, retries, rate limits, circuit breaker, paging, JIT recovery,
//! App auth and metrics. Waits run on paused tokio time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use common::{PAT, Scripted, pat_client, rate_headers, runner_json, serve};
use proxy_runner_domain::ports::{GitHubError, JitRequest, RunnerRegistry, Scope};
use proxy_runner_github::{Auth, CircuitState, GitHubClient, GitHubConfig};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::time::Instant;

fn repo() -> Scope {
    Scope::Repository {
        owner: "octo".into(),
        repo: "hello".into(),
    }
}

fn org() -> Scope {
    Scope::Organization {
        org: "octo-org".into(),
    }
}

fn jit_request() -> JitRequest {
    JitRequest {
        name: "ephemeral-1".into(),
        labels: vec!["self-hosted".into(), "linux".into()],
        runner_group_id: 1,
        work_folder: "_work".into(),
    }
}

fn jit_created(id: u64) -> Scripted {
    Scripted::json(
        201,
        json!({"runner": runner_json(id, "ephemeral-1"), "encoded_jit_config": "ZW5jb2RlZA=="}),
    )
}

#[tokio::test]
async fn sends_githubs_headers_and_the_pat() {
    let server = serve(|_, _| Scripted::json(200, runner_json(7, "r7"))).await;
    let client = pat_client(&server.url, |_| {});
    let runner = client.get_runner(&repo(), 7).await.unwrap();
    assert_eq!(runner.id, 7);
    assert_eq!(runner.labels, vec!["self-hosted"]);
    let req = &server.requests()[0];
    assert_eq!(req.line(), "GET /repos/octo/hello/actions/runners/7");
    assert_eq!(req.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(req.header("x-github-api-version"), Some("2022-11-28"));
    assert!(
        req.header("user-agent")
            .unwrap()
            .starts_with("proxy-runner/")
    );
    assert_eq!(
        req.header("authorization").map(str::to_string),
        Some(format!("Bearer {PAT}"))
    );
}

#[tokio::test]
async fn org_scope_paths_and_request_bodies() {
    let server = serve(|req, _| match req.path.as_str() {
        "/orgs/octo-org/actions/runners/generate-jitconfig" => jit_created(9),
        "/orgs/octo-org/actions/runners/registration-token"
        | "/orgs/octo-org/actions/runners/remove-token" => Scripted::json(
            201,
            json!({"token": "AABF3JGZDX3P5PMEXLND6TS6FCWO6", "expires_at": "2020-01-29T12:13:35.123-08:00"}),
        ),
        "/orgs/octo-org/actions/runners/9" => Scripted::empty(204),
        _ => Scripted::json(404, json!({"message": "Not Found"})),
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let jit = client
        .generate_jit_config(&org(), &jit_request())
        .await
        .unwrap();
    assert_eq!(jit.runner_id, 9);
    assert_eq!(jit.runner_name, "ephemeral-1");
    assert_eq!(jit.encoded_jit_config.expose_secret(), "ZW5jb2RlZA==");
    let reg = client.create_registration_token(&org()).await.unwrap();
    assert_eq!(reg.token.expose_secret(), "AABF3JGZDX3P5PMEXLND6TS6FCWO6");
    assert_eq!(reg.expires_at.to_rfc3339(), "2020-01-29T20:13:35.123+00:00");
    client.create_remove_token(&org()).await.unwrap();
    client.delete_runner(&org(), 9).await.unwrap();

    let reqs = server.requests();
    assert_eq!(
        reqs[0].json(),
        json!({"name": "ephemeral-1", "runner_group_id": 1, "labels": ["self-hosted", "linux"], "work_folder": "_work"})
    );
    assert_eq!(
        server.lines(),
        vec![
            "POST /orgs/octo-org/actions/runners/generate-jitconfig",
            "POST /orgs/octo-org/actions/runners/registration-token",
            "POST /orgs/octo-org/actions/runners/remove-token",
            "DELETE /orgs/octo-org/actions/runners/9",
        ]
    );
}

#[tokio::test]
async fn statuses_map_to_port_errors() {
    let server = serve(|req, _| match req.path.as_str() {
        "/repos/octo/hello/actions/runners/404" => {
            Scripted::json(404, json!({"message": "Not Found", "documentation_url": "https://docs"}))
        }
        "/repos/octo/hello/actions/runners/409" => {
            Scripted::json(409, json!({"message": "Already exists"}))
        }
        "/repos/octo/hello/actions/runners/422" => Scripted::json(
            422,
            json!({"message": "Validation Failed", "documentation_url": "x",
                   "errors": ["Runner is busy", {"resource": "Runner", "field": "id", "code": "invalid"}]}),
        ),
        "/repos/octo/hello/actions/runners/401" => {
            Scripted::json(401, json!({"message": "Bad credentials"}))
        }
        "/repos/octo/hello/actions/runners/403" => rate_headers(
            Scripted::json(403, json!({"message": "Must have admin rights to Repository."})),
            5000,
            4000,
            Utc::now().timestamp() + 600,
        ),
        "/repos/octo/hello/actions/runners/400" => Scripted::empty(400),
        _ => Scripted::empty(500),
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let get = |id: u64| {
        let client = client.clone();
        async move { client.get_runner(&repo(), id).await.unwrap_err() }
    };
    assert!(matches!(get(404).await, GitHubError::NotFound(m) if m.contains("Not Found")));
    assert!(matches!(get(409).await, GitHubError::Conflict(m) if m.contains("Already exists")));
    let validation = get(422).await;
    let GitHubError::Validation(m) = &validation else {
        panic!("{validation:?}")
    };
    assert!(m.contains("Validation Failed"), "{m}");
    assert!(m.contains("Runner is busy"), "{m}");
    assert!(m.contains("Runner id invalid"), "{m}");
    assert!(
        matches!(get(401).await, GitHubError::Unauthorized(m) if m.contains("Bad credentials"))
    );
    assert!(matches!(get(403).await, GitHubError::Unauthorized(m) if m.contains("admin rights")));
    assert!(matches!(
        get(400).await,
        GitHubError::Http { status: 400, .. }
    ));
    // 4xx answers are never retried.
    assert_eq!(server.count(), 6);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_backoff() {
    let server = serve(|_, i| {
        if i < 2 {
            Scripted::json(503, json!({"message": "Service Unavailable"}))
        } else {
            Scripted::json(
                200,
                json!({"total_count": 1, "runners": [runner_json(1, "a")]}),
            )
        }
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let runners = client.list_runners(&repo()).await.unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(server.count(), 3);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_configured_count() {
    let server = serve(|_, _| Scripted::json(500, json!({"message": "boom"}))).await;
    let client = pat_client(&server.url, |c| {
        c.retry.max_retries = 2;
        c.breaker.failure_threshold = 100;
    });
    let err = client.get_runner(&repo(), 1).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::Http { status: 500, message } if message.contains("boom")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn rerun_is_not_resent_after_an_ambiguous_failure() {
    let server = serve(|_, _| Scripted::json(502, json!({"message": "Bad Gateway"}))).await;
    let client = pat_client(&server.url, |_| {});
    let err = client.rerun_job("octo", "hello", 55).await.unwrap_err();
    assert!(
        matches!(err, GitHubError::Http { status: 502, .. }),
        "{err:?}"
    );
    assert_eq!(
        server.lines(),
        vec!["POST /repos/octo/hello/actions/jobs/55/rerun"]
    );

    let ok = serve(|_, _| Scripted::json(201, json!({}))).await;
    pat_client(&ok.url, |_| {})
        .rerun_job("octo", "hello", 55)
        .await
        .unwrap();
    assert_eq!(ok.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn slow_answers_time_out_and_are_retried() {
    let server = serve(|_, i| {
        let s = Scripted::json(200, runner_json(3, "slow"));
        if i == 0 {
            s.delayed(Duration::from_secs(60))
        } else {
            s
        }
    })
    .await;
    let client = pat_client(&server.url, |c| c.attempt_timeout = Duration::from_secs(5));
    let started = Instant::now();
    let runner = client.get_runner(&repo(), 3).await.unwrap();
    assert_eq!(runner.name, "slow");
    assert_eq!(server.count(), 2);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn overall_deadline_bounds_all_attempts() {
    let server =
        serve(|_, _| Scripted::json(200, json!({})).delayed(Duration::from_secs(600))).await;
    let client = pat_client(&server.url, |c| {
        c.attempt_timeout = Duration::from_secs(10);
        c.request_deadline = Duration::from_secs(25);
        c.breaker.failure_threshold = 100;
    });
    let started = Instant::now();
    let err = client.get_runner(&repo(), 3).await.unwrap_err();
    assert!(matches!(err, GitHubError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(server.count() >= 2);
}

#[tokio::test(start_paused = true)]
async fn connection_refused_is_a_retryable_transport_error() {
    // Bind and drop to get a port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = pat_client(&format!("http://{addr}"), |c| c.retry.max_retries = 1);
    let err = client.get_runner(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, GitHubError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn primary_rate_limit_waits_until_reset() {
    let reset = Utc::now().timestamp() + 42;
    let server = serve(move |_, i| {
        if i == 0 {
            rate_headers(
                Scripted::json(
                    403,
                    json!({"message": "API rate limit exceeded for user ID 1."}),
                ),
                5000,
                0,
                reset,
            )
        } else {
            rate_headers(
                Scripted::json(200, runner_json(1, "a")),
                5000,
                4999,
                reset + 3600,
            )
        }
    })
    .await;
    let client = pat_client(&server.url, |c| {
        c.request_deadline = Duration::from_secs(120)
    });
    let started = Instant::now();
    client.get_runner(&repo(), 1).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(41) && waited <= Duration::from_secs(44),
        "{waited:?}"
    );
    assert_eq!(server.count(), 2);
    let rl = client.rate_limit("core").unwrap();
    assert_eq!(rl.remaining, 4999);
    assert_eq!(client.last_rate_limit(), Some(rl));
}

#[tokio::test(start_paused = true)]
async fn primary_rate_limit_beyond_the_deadline_is_reported() {
    let reset = Utc::now().timestamp() + 3600;
    let server = serve(move |_, _| {
        rate_headers(
            Scripted::json(429, json!({"message": "rate limited"})),
            60,
            0,
            reset,
        )
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let started = Instant::now();
    let err = client.get_runner(&repo(), 1).await.unwrap_err();
    assert_eq!(
        err,
        GitHubError::RateLimited {
            until: chrono::DateTime::from_timestamp(reset, 0).unwrap()
        }
    );
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(1), "no waiting");
    assert_eq!(server.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn secondary_limit_honours_retry_after() {
    let server = serve(|_, i| {
        if i == 0 {
            Scripted::json(
                403,
                json!({"message": "You have exceeded a secondary rate limit."}),
            )
            .header("retry-after", 7)
        } else {
            Scripted::json(200, runner_json(1, "a"))
        }
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let started = Instant::now();
    client.get_runner(&repo(), 1).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn secondary_limit_without_retry_after_waits_a_minute_then_longer() {
    let server = serve(|_, i| {
        if i < 2 {
            Scripted::json(
                403,
                json!({"message": "You have exceeded a secondary rate limit. Please wait."}),
            )
        } else {
            Scripted::json(200, runner_json(1, "a"))
        }
    })
    .await;
    let client = pat_client(&server.url, |c| {
        c.request_deadline = Duration::from_secs(600)
    });
    let started = Instant::now();
    client.get_runner(&repo(), 1).await.unwrap();
    let waited = started.elapsed();
    // 60 s, then doubled: 120 s.
    assert!(
        waited >= Duration::from_secs(180) && waited < Duration::from_secs(182),
        "{waited:?}"
    );
    assert_eq!(server.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn secondary_limit_longer_than_the_deadline_is_reported() {
    let server = serve(|_, _| {
        Scripted::json(429, json!({"message": "slow down"})).header("retry-after", 300)
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let before = Utc::now();
    let err = client.get_runner(&repo(), 1).await.unwrap_err();
    let GitHubError::RateLimited { until } = err else {
        panic!("{err:?}")
    };
    assert!(until >= before + chrono::TimeDelta::seconds(299), "{until}");
    assert_eq!(server.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_fails_fast_and_recovers_through_a_probe() {
    let healthy = Arc::new(AtomicUsize::new(0));
    let flag = healthy.clone();
    let server = serve(move |_, _| {
        if flag.load(Ordering::SeqCst) == 1 {
            Scripted::json(200, runner_json(1, "a"))
        } else {
            Scripted::json(503, json!({"message": "down"}))
        }
    })
    .await;
    let client = pat_client(&server.url, |c| {
        c.retry.max_retries = 0;
        c.breaker.failure_threshold = 3;
        c.breaker.cool_down = Duration::from_secs(30);
    });
    for _ in 0..3 {
        let err = client.get_runner(&repo(), 1).await.unwrap_err();
        assert!(
            matches!(err, GitHubError::Http { status: 503, .. }),
            "{err:?}"
        );
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    let err = client.get_runner(&repo(), 1).await.unwrap_err();
    assert!(matches!(err, GitHubError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(server.count(), 3, "open circuit sends nothing");

    // A failed probe re-opens.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(client.circuit_state(), CircuitState::HalfOpen);
    assert!(client.get_runner(&repo(), 1).await.is_err());
    assert_eq!(client.circuit_state(), CircuitState::Open);
    assert_eq!(server.count(), 4);

    // A successful probe closes.
    healthy.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    client.get_runner(&repo(), 1).await.unwrap();
    assert_eq!(client.circuit_state(), CircuitState::Closed);
    client.get_runner(&repo(), 1).await.unwrap();
    assert_eq!(server.count(), 6);
}

#[tokio::test]
async fn client_errors_do_not_trip_the_breaker() {
    let server = serve(|_, _| Scripted::json(404, json!({"message": "Not Found"}))).await;
    let client = pat_client(&server.url, |c| c.breaker.failure_threshold = 2);
    for _ in 0..5 {
        assert!(matches!(
            client.get_runner(&repo(), 1).await,
            Err(GitHubError::NotFound(_))
        ));
    }
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn list_runners_follows_link_next_across_pages() {
    const TOTAL: u64 = 250;
    let server = serve(|req, _| {
        let page: u64 = req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("page="))
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        let per_page: u64 = req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("per_page="))
            .and_then(|p| p.parse().ok())
            .unwrap_or(30);
        let first = (page - 1) * per_page + 1;
        let last = (page * per_page).min(TOTAL);
        let runners: Vec<_> = (first..=last).map(|i| runner_json(i, &format!("r{i}"))).collect();
        let host = req.header("host").unwrap().to_string();
        let pages = TOTAL.div_ceil(per_page);
        let mut links = vec![];
        if page < pages {
            links.push(format!(
                "<http://{host}/repos/octo/hello/actions/runners?per_page={per_page}&page={}>; rel=\"next\"",
                page + 1
            ));
        }
        links.push(format!(
            "<http://{host}/repos/octo/hello/actions/runners?per_page={per_page}&page={pages}>; rel=\"last\""
        ));
        Scripted::json(200, json!({"total_count": TOTAL, "runners": runners}))
            .header("link", links.join(", "))
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let runners = RunnerRegistry::list_runners(&client, &repo())
        .await
        .unwrap();
    assert_eq!(runners.len() as u64, TOTAL);
    let ids: Vec<u64> = runners.iter().map(|r| r.id).collect();
    assert_eq!(ids, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(
        server.lines(),
        vec![
            "GET /repos/octo/hello/actions/runners?per_page=100",
            "GET /repos/octo/hello/actions/runners?per_page=100&page=2",
            "GET /repos/octo/hello/actions/runners?per_page=100&page=3",
        ]
    );
    // Every page carried the credential (same origin).
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_some())
    );
}

#[tokio::test]
async fn link_to_another_origin_is_not_followed() {
    let server = serve(|_, _| {
        Scripted::json(
            200,
            json!({"total_count": 2, "runners": [runner_json(1, "a")]}),
        )
        .header("link", "<http://evil.example/steal?page=2>; rel=\"next\"")
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let err = client.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::Http { message, .. } if message.contains("another origin")),
        "{err:?}"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn find_runner_by_name_uses_the_name_filter() {
    let server = serve(|req, _| {
        if req.query.contains("name=ephemeral-1") {
            Scripted::json(
                200,
                json!({"total_count": 1, "runners": [runner_json(77, "ephemeral-1")]}),
            )
        } else {
            Scripted::json(200, json!({"total_count": 0, "runners": []}))
        }
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let found = client
        .find_runner_by_name(&repo(), "ephemeral-1")
        .await
        .unwrap();
    assert_eq!(found.map(|r| r.id), Some(77));
    assert_eq!(
        client.find_runner_by_name(&repo(), "other").await.unwrap(),
        None
    );
    assert_eq!(
        server.lines(),
        vec![
            "GET /repos/octo/hello/actions/runners?per_page=100&name=ephemeral-1",
            "GET /repos/octo/hello/actions/runners?per_page=100&name=other",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn jit_conflict_after_an_unanswered_attempt_removes_our_orphan() {
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let server = serve(move |req, _| match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/repos/octo/hello/actions/runners/generate-jitconfig") => {
            match counter.fetch_add(1, Ordering::SeqCst) {
                // The first attempt created the runner, but the answer was lost.
                0 => Scripted::json(502, json!({"message": "Bad Gateway"})),
                1 => Scripted::json(409, json!({"message": "Already exists - A runner with the name ephemeral-1 already exists."})),
                _ => jit_created(78),
            }
        }
        ("GET", "/repos/octo/hello/actions/runners") => Scripted::json(
            200,
            json!({"total_count": 1, "runners": [runner_json(77, "ephemeral-1")]}),
        ),
        ("DELETE", "/repos/octo/hello/actions/runners/77") => Scripted::empty(204),
        _ => Scripted::json(404, json!({"message": "Not Found"})),
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let jit = client
        .generate_jit_config(&repo(), &jit_request())
        .await
        .unwrap();
    assert_eq!(jit.runner_id, 78);
    assert_eq!(
        server.lines(),
        vec![
            "POST /repos/octo/hello/actions/runners/generate-jitconfig",
            "POST /repos/octo/hello/actions/runners/generate-jitconfig",
            "GET /repos/octo/hello/actions/runners?per_page=100&name=ephemeral-1",
            "DELETE /repos/octo/hello/actions/runners/77",
            "POST /repos/octo/hello/actions/runners/generate-jitconfig",
        ]
    );
}

#[tokio::test]
async fn jit_conflict_on_a_clean_attempt_is_reported_and_nothing_deleted() {
    let server = serve(|_, _| Scripted::json(409, json!({"message": "Already exists"}))).await;
    let client = pat_client(&server.url, |_| {});
    let err = client
        .generate_jit_config(&repo(), &jit_request())
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::Conflict(_)), "{err:?}");
    assert_eq!(
        server.lines(),
        vec!["POST /repos/octo/hello/actions/runners/generate-jitconfig"]
    );
}

#[tokio::test]
async fn queued_jobs_come_from_queued_runs() {
    let job = |id: u64, status: &str| {
        json!({"id": id, "run_id": 500, "run_attempt": 2, "name": format!("job{id}"), "workflow_name": "CI",
               "status": status, "conclusion": null, "labels": ["self-hosted", "linux"],
               "runner_id": null, "runner_name": null, "head_branch": "main", "node_id": "x"})
    };
    let server = serve(move |req, _| match req.path.as_str() {
        "/repos/octo/hello/actions/runs" => {
            assert!(req.query.contains("status=queued"), "{}", req.query);
            Scripted::json(200, json!({"total_count": 1, "workflow_runs": [{"id": 500, "run_attempt": 2, "status": "queued"}]}))
        }
        "/repos/octo/hello/actions/runs/500/jobs" => Scripted::json(
            200,
            json!({"total_count": 3, "jobs": [job(1, "queued"), job(2, "in_progress"), job(3, "queued")]}),
        ),
        "/repos/octo/hello/actions/jobs/1" => Scripted::json(200, job(1, "queued")),
        _ => Scripted::json(404, json!({"message": "Not Found"})),
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    let jobs = RunnerRegistry::list_queued_jobs(&client, "octo", "hello")
        .await
        .unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(jobs[0].repository, "octo/hello");
    assert_eq!(jobs[0].run_attempt, 2);
    assert_eq!(jobs[0].labels, vec!["self-hosted", "linux"]);
    assert_eq!(jobs[0].workflow_name, "CI");
    let one = client.get_workflow_job("octo", "hello", 1).await.unwrap();
    assert_eq!(one, jobs[0]);

    let polled = proxy_runner_github::poll_queued(&client, &["octo/hello".to_string()])
        .await
        .unwrap();
    assert_eq!(polled, jobs);
    let bad = proxy_runner_github::poll_queued(&client, &["not-a-repo".to_string()]).await;
    assert!(matches!(
        bad,
        Err(proxy_runner_github::PollError::InvalidRepository(_))
    ));
}

// ------------------------------------------------------------ App auth

const APP_ID: u64 = 12345;

fn app_config(url: &str) -> GitHubConfig {
    common::config(
        url,
        Auth::App {
            app_id: APP_ID,
            private_key_pem: SecretString::from(common::fixture(
                "test-keys/github-app-test.private.pem",
            )),
        },
    )
}

/// Verifies an App JWT the way GitHub does; returns the `iss` claim.
fn verify_jwt(authorization: Option<&str>) -> Option<String> {
    let jwt = authorization?.strip_prefix("Bearer ")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(
        common::fixture("test-keys/github-app-test.public.pem").as_bytes(),
    )
    .ok()?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation).ok()?;
    let iat = data.claims["iat"].as_i64()?;
    let exp = data.claims["exp"].as_i64()?;
    let now = Utc::now().timestamp();
    (iat <= now - 30 && exp - iat <= 600 && exp > now)
        .then(|| data.claims["iss"].as_str().map(str::to_string))?
}

/// An App server: installation 42 for every scope; tokens `ghs_N`; the API
/// refuses tokens listed as revoked.
async fn app_server(
    token_ttl_secs: i64,
    revoked: Arc<std::sync::Mutex<Vec<String>>>,
) -> common::ScriptedServer {
    let minted = Arc::new(AtomicUsize::new(0));
    serve(move |req, _| {
        let auth = req.header("authorization");
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/repos/octo/hello/installation") | ("GET", "/orgs/octo-org/installation") => {
                match verify_jwt(auth) {
                    Some(iss) if iss == APP_ID.to_string() => {
                        Scripted::json(200, json!({"id": 42, "app_id": APP_ID}))
                    }
                    _ => Scripted::json(
                        401,
                        json!({"message": "A JSON web token could not be decoded"}),
                    ),
                }
            }
            ("POST", "/app/installations/42/access_tokens") => match verify_jwt(auth) {
                Some(_) => {
                    let n = minted.fetch_add(1, Ordering::SeqCst) + 1;
                    let expires = Utc::now() + chrono::TimeDelta::seconds(token_ttl_secs);
                    Scripted::json(
                        201,
                        json!({"token": format!("ghs_{n}"), "expires_at": expires.to_rfc3339()}),
                    )
                }
                None => Scripted::json(401, json!({"message": "bad jwt"})),
            },
            (_, path)
                if path.starts_with("/repos/octo/hello/actions/")
                    || path.starts_with("/orgs/octo-org/actions/") =>
            {
                let token = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
                if !token.starts_with("ghs_") || revoked.lock().unwrap().iter().any(|t| t == token)
                {
                    Scripted::json(401, json!({"message": "Bad credentials"}))
                } else {
                    Scripted::json(200, json!({"total_count": 0, "runners": []}))
                }
            }
            _ => Scripted::json(404, json!({"message": "Not Found"})),
        }
    })
    .await
}

#[tokio::test]
async fn app_auth_finds_the_installation_and_caches_its_token() {
    let server = app_server(3600, Default::default()).await;
    let client = GitHubClient::new(app_config(&server.url)).unwrap();
    client.list_runners(&repo()).await.unwrap();
    client.list_runners(&repo()).await.unwrap();
    client.list_runners(&org()).await.unwrap();
    assert_eq!(
        server.lines(),
        vec![
            "GET /repos/octo/hello/installation",
            "POST /app/installations/42/access_tokens",
            "GET /repos/octo/hello/actions/runners?per_page=100",
            "GET /repos/octo/hello/actions/runners?per_page=100",
            // Another scope: its installation is looked up, the token reused.
            "GET /orgs/octo-org/installation",
            "GET /orgs/octo-org/actions/runners?per_page=100",
        ]
    );
    let api_calls: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/actions/"))
        .collect();
    assert!(
        api_calls
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer ghs_1"))
    );
}

#[tokio::test]
async fn app_token_is_renewed_before_it_expires() {
    // The renewal margin (5 min) is capped at half the token's lifetime, so
    // a 2 s token is renewed after 1 s. Token expiry is wall-clock time.
    let server = app_server(2, Default::default()).await;
    let client = GitHubClient::new(app_config(&server.url)).unwrap();
    client.list_runners(&repo()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.list_runners(&repo()).await.unwrap();
    let mints = server
        .lines()
        .iter()
        .filter(|l| l.ends_with("/access_tokens"))
        .count();
    assert_eq!(mints, 2);
    let last = server.requests().last().unwrap().clone();
    assert_eq!(last.header("authorization"), Some("Bearer ghs_2"));
}

#[tokio::test]
async fn app_token_is_renewed_once_on_401() {
    let revoked = Arc::new(std::sync::Mutex::new(vec!["ghs_1".to_string()]));
    let server = app_server(3600, revoked.clone()).await;
    let client = GitHubClient::new(app_config(&server.url)).unwrap();
    client.list_runners(&repo()).await.unwrap();
    assert_eq!(
        server.lines(),
        vec![
            "GET /repos/octo/hello/installation",
            "POST /app/installations/42/access_tokens",
            "GET /repos/octo/hello/actions/runners?per_page=100",
            "GET /repos/octo/hello/installation",
            "POST /app/installations/42/access_tokens",
            "GET /repos/octo/hello/actions/runners?per_page=100",
        ]
    );
    // Every token refused: one renewal, then Unauthorized (no loop).
    revoked
        .lock()
        .unwrap()
        .extend(["ghs_2", "ghs_3", "ghs_4"].map(String::from));
    let before = server.count();
    let err = client.list_runners(&repo()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Unauthorized(_)), "{err:?}");
    assert_eq!(
        server.count() - before,
        4,
        "{:?}",
        &server.lines()[before..]
    );
}

#[tokio::test]
async fn a_burst_of_app_calls_mints_one_token() {
    let server = app_server(3600, Default::default()).await;
    let client = GitHubClient::new(app_config(&server.url)).unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.list_runners(&repo()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let lines = server.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("/installation"))
            .count(),
        1
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.ends_with("/access_tokens"))
            .count(),
        1
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("/actions/runners"))
            .count(),
        20
    );
}

#[tokio::test]
async fn app_not_installed_is_not_found() {
    let server = serve(|_, _| Scripted::json(404, json!({"message": "Not Found"}))).await;
    let client = GitHubClient::new(app_config(&server.url)).unwrap();
    let err = client.list_runners(&repo()).await.unwrap_err();
    assert!(
        matches!(&err, GitHubError::NotFound(m) if m.contains("get_installation")),
        "{err:?}"
    );
}

#[test]
fn load_private_key_validates_the_pem() {
    let path = proxy_runner_test_support::fixture_path("test-keys/github-app-test.private.pem");
    let key = proxy_runner_github::load_private_key(&path).unwrap();
    assert!(key.expose_secret().contains("PRIVATE KEY"));
    let public = proxy_runner_test_support::fixture_path("test-keys/github-app-test.public.pem");
    assert!(matches!(
        proxy_runner_github::load_private_key(&public),
        Err(proxy_runner_github::KeyError::Invalid(_))
    ));
    assert!(matches!(
        proxy_runner_github::load_private_key("/nonexistent/key.pem"),
        Err(proxy_runner_github::KeyError::Read { .. })
    ));
}

// ------------------------------------------------------------ metrics

#[tokio::test(start_paused = true)]
async fn metrics_are_recorded() {
    let recorder = common::CapturedMetrics::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let reset = Utc::now().timestamp() + 3600;
    let server = serve(move |_, i| {
        if i == 0 {
            Scripted::json(503, json!({"message": "down"}))
        } else {
            rate_headers(Scripted::json(200, runner_json(1, "a")), 5000, 4321, reset)
        }
    })
    .await;
    let client = pat_client(&server.url, |_| {});
    client.get_runner(&repo(), 1).await.unwrap();
    let host = server.url.trim_start_matches("http://").to_string();
    assert_eq!(
        recorder.get("github_requests_total{endpoint=get_runner,status=503}"),
        Some(1.0),
        "{:?}",
        recorder.keys()
    );
    assert_eq!(
        recorder.get("github_requests_total{endpoint=get_runner,status=200}"),
        Some(1.0)
    );
    assert_eq!(
        recorder.get("github_request_duration_seconds{endpoint=get_runner}"),
        Some(2.0),
        "two samples"
    );
    assert_eq!(
        recorder.get("github_rate_limit_remaining{resource=core}"),
        Some(4321.0)
    );
    assert_eq!(
        recorder.get(&format!("github_circuit_state{{host={host}}}")),
        Some(0.0),
        "{:?}",
        recorder.keys()
    );
}
