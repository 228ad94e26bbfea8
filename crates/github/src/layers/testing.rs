//! Test doubles for the layers: a scripted inner service that records what
//! reached it, answers and calls to feed it. No IO, so tests can pause time.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use proxy_runner_domain::ports::Scope;
use reqwest::Url;
use secrecy::SecretString;
use tokio::time::Instant;
use tower::Service;

use crate::call::{Call, CallAuth, CallError, CallFuture, Reply};

type Handler = dyn Fn(&Call, usize) -> Result<Reply, CallError> + Send + Sync;

/// Answers each call from `handler(call, index)`; index counts from 0.
#[derive(Clone)]
pub(crate) struct Script {
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Call>>>,
}

impl Script {
    pub(crate) fn new(
        handler: impl Fn(&Call, usize) -> Result<Reply, CallError> + Send + Sync + 'static,
    ) -> Script {
        Script {
            handler: Arc::new(handler),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub(crate) fn service(&self) -> Script {
        self.clone()
    }

    pub(crate) fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub(crate) fn seen(&self) -> Vec<Call> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service<Call> for Script {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> CallFuture {
        let index = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(call.clone());
            seen.len() - 1
        };
        let answer = (self.handler)(&call, index);
        Box::pin(async move {
            // Let concurrent callers interleave, as over a network.
            tokio::task::yield_now().await;
            answer
        })
    }
}

pub(crate) fn reply(status: StatusCode) -> Reply {
    Reply {
        status,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        after_ambiguous_attempt: false,
        credential: SecretString::from(""),
    }
}

pub(crate) fn json_reply(status: StatusCode, body: serde_json::Value) -> Reply {
    Reply {
        body: Bytes::from(body.to_string()),
        ..reply(status)
    }
}

pub(crate) fn with_header(mut reply: Reply, name: &'static str, value: impl ToString) -> Reply {
    let value = HeaderValue::from_str(&value.to_string()).unwrap();
    reply.headers.insert(name, value);
    reply
}

/// The private key of the test App (its public half is in the fixtures too).
pub(crate) fn app_key() -> SecretString {
    let path = format!(
        "{}/../../fixtures/test-keys/github-app-test.private.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    SecretString::from(std::fs::read_to_string(&path).unwrap())
}

pub(crate) fn repo() -> Scope {
    Scope::Repository {
        owner: "octo".into(),
        repo: "hello".into(),
    }
}

/// A GET for the repository scope with a 30 s deadline.
pub(crate) fn call_to(url: &str) -> Call {
    Call::get(
        Url::parse(url).unwrap(),
        "test_endpoint",
        CallAuth::Scope(repo()),
        Instant::now() + Duration::from_secs(30),
    )
}

pub(crate) fn call_with(method: Method, deadline: Duration) -> Call {
    Call::new(
        method,
        Url::parse("https://api.example.test/repos/octo/hello/actions/runners").unwrap(),
        "test_endpoint",
        CallAuth::Scope(repo()),
        Instant::now() + deadline,
    )
}

/// Paused time lands on a timer's deadline, give or take the timer wheel's
/// millisecond.
pub(crate) fn assert_waited(started: Instant, expected: Duration) {
    let waited = started.elapsed();
    assert!(
        waited >= expected && waited <= expected + Duration::from_millis(5),
        "waited {waited:?}, expected {expected:?}"
    );
}
