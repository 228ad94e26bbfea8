//! The server's limits against the real binary, as a client without
//! credentials would try them: a declared oversized body is refused before a
//! byte of it is read, an idle or slow connection is closed after the header
//! deadline, and with every connection slot held the service still answers
//! valid clients once the idle ones are cut off.

mod common;

use std::io::{Read, Write};
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

fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection, returning what came. The
/// read limit only bounds a broken run: reaching it fails the test, since
/// the server never closed the connection.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut out = Vec::new();
    if let Err(e) = stream.read_to_end(&mut out) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept the connection open: {e}"
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_declared_oversized_body_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir, &[]);
    let mut stream = TcpStream::connect(address(&s.url)).unwrap();
    // 50 MiB announced, none sent, no credentials.
    write!(
        stream,
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let mut stream = TcpStream::connect(address(&s.url)).unwrap();
    write!(
        stream,
        "POST /api/jobs/delegate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir, &[("PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS", "1")]);
    // Connected, nothing sent.
    let mut idle = TcpStream::connect(address(&s.url)).unwrap();
    // Half a request line, then silence (slowloris).
    let mut slow = TcpStream::connect(address(&s.url)).unwrap();
    slow.write_all(b"GET /healthz HT").unwrap();
    for stream in [&mut idle, &mut slow] {
        let answer = read_to_close(stream);
        assert!(!answer.contains("200 OK"), "{answer}");
    }
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
        .map(|_| TcpStream::connect(address(&s.url)).unwrap())
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
