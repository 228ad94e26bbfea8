//! One call to the REST API as it travels down the layers (see `layers`):
//! what to send, what came back, how an attempt failed; and the helpers that
//! turn an answer into the port's error without the credential it carried.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, StatusCode};
use proxy_runner_domain::ports::{GitHubError, Scope};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tower::Service;

use crate::model::ApiErrorBody;

/// Error texts from the server are cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// What every layer's and the base service's `call` returns.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

/// A service that takes a [`Call`]: the base service and every layer around
/// it. Cloned per call, so it must be cheap to clone.
pub(crate) trait CallService:
    Service<Call, Response = Reply, Error = CallError, Future: Send> + Clone + Send + Sync + 'static
{
}

impl<S> CallService for S where
    S: Service<Call, Response = Reply, Error = CallError, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Whose credential a call carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallAuth {
    /// The PAT, or the App's installation token for this scope.
    Scope(Scope),
    /// The App's own JWT (installation lookup and token minting).
    AppJwt,
}

/// May a call be sent again after an answer that leaves open whether
/// GitHub applied it (5xx, timeout, connection lost after sending)?
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Repeat {
    /// Reads and deletes: repeating is harmless.
    Idempotent,
    /// Creates something, but repeating is safe: tokens (another token is
    /// minted) and JIT configs (fixed name; see `generate_jit_config`).
    Safe,
    /// Only resent when it surely never reached GitHub (connection refused,
    /// rate-limit refusal).
    Once,
}

/// One call: cloned for every attempt.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub method: Method,
    pub url: Url,
    /// Metric label and error prefix; a fixed name, never a path.
    pub endpoint: &'static str,
    pub auth: CallAuth,
    pub body: Option<serde_json::Value>,
    pub repeat: Repeat,
    /// No attempt starts, and no wait is begun that would end, after this.
    pub deadline: Instant,
    /// Filled in by the auth layer; sent as `Authorization: Bearer`.
    pub bearer: Option<SecretString>,
    /// Counted by the retry layer, for logs (1 for the first attempt).
    pub attempt: u32,
}

impl Call {
    /// A call without a body that repeats harmlessly.
    pub(crate) fn new(
        method: Method,
        url: Url,
        endpoint: &'static str,
        auth: CallAuth,
        deadline: Instant,
    ) -> Call {
        Call {
            method,
            url,
            endpoint,
            auth,
            body: None,
            repeat: Repeat::Idempotent,
            deadline,
            bearer: None,
            attempt: 1,
        }
    }

    pub(crate) fn get(url: Url, endpoint: &'static str, auth: CallAuth, deadline: Instant) -> Call {
        Call::new(Method::GET, url, endpoint, auth, deadline)
    }

    pub(crate) fn with_body(mut self, body: serde_json::Value) -> Call {
        self.body = Some(body);
        self
    }

    pub(crate) fn with_repeat(mut self, repeat: Repeat) -> Call {
        self.repeat = repeat;
        self
    }
}

/// An answer from GitHub, any status.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// An earlier attempt of this call may have been applied by GitHub.
    pub after_ambiguous_attempt: bool,
    /// The credential this answer was obtained with, to scrub it from texts.
    pub credential: SecretString,
}

/// Why a call came back without an answer. Each kind tells the layers
/// above what to do: resend, count against the host, or stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// Never reached GitHub (connection refused): always safe to resend;
    /// counts against the host.
    #[error(transparent)]
    Unreachable(GitHubError),
    /// GitHub may have applied it (timed out, connection lost after
    /// sending): resent only if the call may repeat; counts against the host.
    #[error(transparent)]
    Ambiguous(GitHubError),
    /// GitHub answered, but the answer cannot be used (too large): the host
    /// is up; resending would not help.
    #[error(transparent)]
    Unusable(GitHubError),
    /// Not sent by choice (deadline, open circuit, a rate limit past the
    /// deadline, no credential): the host was not asked.
    #[error(transparent)]
    Stopped(GitHubError),
}

impl From<CallError> for GitHubError {
    fn from(e: CallError) -> GitHubError {
        match e {
            CallError::Unreachable(e)
            | CallError::Ambiguous(e)
            | CallError::Unusable(e)
            | CallError::Stopped(e) => e,
        }
    }
}

/// `base` + path segments (each percent-encoded) + query.
pub(crate) fn api_url(
    base: &Url,
    segments: &[&str],
    query: &[(&str, String)],
) -> Result<Url, GitHubError> {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|_| GitHubError::Validation("GitHub API URL cannot be a base".into()))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    Ok(url)
}

/// `repos/{owner}/{repo}/...` or `orgs/{org}/...` as separate segments.
pub(crate) fn scope_path<'a>(scope: &'a Scope, rest: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = match scope {
        Scope::Repository { owner, repo } => vec!["repos", owner, repo],
        Scope::Organization { org } => vec!["orgs", org],
    };
    out.extend_from_slice(rest);
    out
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], endpoint: &str) -> Result<T, GitHubError> {
    // serde's message may quote the input (which can hold a token): report
    // only where decoding failed.
    serde_json::from_slice(body).map_err(|e| GitHubError::Http {
        status: 200,
        message: format!(
            "{endpoint}: unexpected response body ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

/// Maps a non-2xx answer to the port's error, with GitHub's message and
/// `errors[]` (cut short, credential scrubbed).
pub(crate) fn status_error(endpoint: &str, reply: &Reply) -> GitHubError {
    let described = ApiErrorBody::parse(&reply.body).describe();
    let described = if described.is_empty() {
        reply
            .status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        described
    };
    let text: String = described.chars().take(MAX_MESSAGE_CHARS).collect();
    let message = redact(&format!("{endpoint}: {text}"), &reply.credential);
    match reply.status {
        StatusCode::NOT_FOUND => GitHubError::NotFound(message),
        StatusCode::CONFLICT => GitHubError::Conflict(message),
        StatusCode::UNPROCESSABLE_ENTITY => GitHubError::Validation(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => GitHubError::Unauthorized(message),
        status => GitHubError::Http {
            status: status.as_u16(),
            message,
        },
    }
}

/// Removes the credential from a text that is about to leave the client.
pub(crate) fn redact(text: &str, credential: &SecretString) -> String {
    let secret = credential.expose_secret();
    if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "[redacted]")
    } else {
        text.to_string()
    }
}

/// Cuts a text to the length error messages may have.
pub(crate) fn clip(text: &str) -> String {
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let s = SecretString::from("ghp_supersecret");
        assert_eq!(
            redact("bad ghp_supersecret here", &s),
            "bad [redacted] here"
        );
        assert_eq!(redact("nothing", &s), "nothing");
    }
}
