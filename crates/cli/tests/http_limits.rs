//! The server's limits against the real binary, as a client without
//! credentials would try them: a declared oversized body is refused before a
//! byte of it is read, an idle or slow connection is closed after the header
//! deadline, a body trickled in is cut off at the body deadline, and with
//! every connection slot held the service still answers valid clients once
//! the idle ones are cut off.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use proxy_runner_test_support::eventually;

fn server(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> common::Server {
    common::serve(
        &dir.path().join("db.sqlite"),
        None,
        &["--backend", "dry-run"],
        env,
    )
}

#[test]
fn a_declared_oversized_body_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir, &[]);
    let mut stream = TcpStream::connect(s.address()).unwrap();
    // 50 MiB announced, none sent, no credentials.
    write!(
        stream,
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = common::read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let mut stream = TcpStream::connect(s.address()).unwrap();
    write!(
        stream,
        "POST /api/jobs/delegate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = common::read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir, &[("PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS", "1")]);
    // Connected, nothing sent.
    let mut idle = TcpStream::connect(s.address()).unwrap();
    // Half a request line, then silence (slowloris).
    let mut slow = TcpStream::connect(s.address()).unwrap();
    slow.write_all(b"GET /healthz HT").unwrap();
    for stream in [&mut idle, &mut slow] {
        let answer = common::read_to_close(stream);
        assert!(!answer.contains("200 OK"), "{answer}");
    }
}

#[test]
fn a_body_trickled_in_is_cut_off_at_the_body_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        &dir,
        &[
            ("PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS", "2"),
            ("PROXY_RUNNER_ADMIN_TOKEN", "admin-trickle"),
        ],
    );
    let mut stream = TcpStream::connect(s.address()).unwrap();
    // Authenticated, so the body is read (an anonymous one never is).
    write!(
        stream,
        "POST /api/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-trickle\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    // A byte every 200 ms never stalls; it would take 200 s to finish.
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..1000 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let answer = common::read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(answer.contains("within 2 s"), "{answer}");
    drop(stream);
    trickle.join().unwrap();
}

#[test]
fn a_body_that_stalls_is_given_up_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        &dir,
        &[
            ("PROXY_RUNNER_HTTP_BODY_TIMEOUT_SECS", "1"),
            ("PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS", "600"),
            ("PROXY_RUNNER_ADMIN_TOKEN", "admin-stall"),
        ],
    );
    let mut stream = TcpStream::connect(s.address()).unwrap();
    write!(
        stream,
        "POST /api/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-stall\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"runner\""
    )
    .unwrap();
    // Ten bytes of a thousand, then nothing: only the stall limit can end
    // it (the whole-body deadline is ten minutes away).
    let answer = common::read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(
        !answer.contains("within 600 s"),
        "cut off by the deadline: {answer}"
    );
}

#[tokio::test]
async fn with_every_connection_slot_held_valid_clients_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        &dir,
        &[
            ("PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS", "1"),
            ("PROXY_RUNNER_HTTP_MAX_CONNECTIONS", "4"),
        ],
    );
    // More idle connections than slots.
    let hogs: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(s.address()).unwrap())
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually(
        "/healthz answers past the idle connections",
        Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = format!("{}/healthz", s.url);
            async move { matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) }
        },
    )
    .await;
    drop(hogs);
}
