//! The HTTP transport under bollard.
//!
//! bollard logs every JSON request body at `debug` level (through the `log`
//! crate) before it sends it, and the container-create body carries the job's
//! environment, JIT runner config included. So secret values never enter a
//! body that bollard sees: the backend puts a random placeholder in their
//! place, and this transport swaps the real value in on the wire (container
//! and exec creation), after all of bollard's logging. It also owns the
//! connection, so a missing socket is an error of the request (and `ping`),
//! not of construction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bollard::BollardRequest;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Unix(PathBuf),
    /// `host:port`
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///path` or `tcp://host:port` (also `http://host:port`).
    pub(crate) fn parse(host: &str) -> Result<Endpoint, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("DOCKER_HOST {host:?} names no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(format!("DOCKER_HOST {host:?} is not host:port"));
            }
            let authority = if authority.contains(':') {
                authority.to_string()
            } else {
                format!("{authority}:2375")
            };
            return Ok(Endpoint::Tcp(authority));
        }
        Err(format!(
            "unsupported DOCKER_HOST {host:?}: use unix:///path or tcp://host:port"
        ))
    }

    fn host_header(&self) -> HeaderValue {
        match self {
            Endpoint::Unix(_) => HeaderValue::from_static("docker"),
            Endpoint::Tcp(authority) => HeaderValue::from_str(authority)
                .unwrap_or_else(|_| HeaderValue::from_static("docker")),
        }
    }
}

/// Secret values waiting to be put on the wire, by placeholder.
#[derive(Default, Clone)]
pub(crate) struct SecretVault {
    entries: Arc<Mutex<HashMap<String, SecretString>>>,
    counter: Arc<AtomicU64>,
}

impl SecretVault {
    /// Stores `value` and returns the placeholder that stands for it until the
    /// returned guard is dropped.
    pub(crate) fn stash(&self, value: SecretString) -> StashedSecret {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let placeholder = format!("proxy-runner-secret-{}-{n}", uuid::Uuid::now_v7().simple());
        self.lock().insert(placeholder.clone(), value);
        StashedSecret {
            vault: self.clone(),
            placeholder,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SecretString>> {
        // A panic while holding the lock leaves a plain map; keep using it.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces every known placeholder in a JSON body by its JSON-escaped value.
    fn reveal(&self, body: &[u8]) -> Option<Vec<u8>> {
        let entries = self.lock();
        let mut text = std::str::from_utf8(body).ok()?.to_string();
        let mut changed = false;
        for (placeholder, value) in entries.iter() {
            if text.contains(placeholder.as_str()) {
                let quoted = serde_json::to_string(value.expose_secret()).ok()?;
                let escaped = &quoted[1..quoted.len() - 1];
                text = text.replace(placeholder.as_str(), escaped);
                changed = true;
            }
        }
        changed.then(|| text.into_bytes())
    }
}

/// A placeholder standing for a secret; the secret leaves the vault on drop.
pub(crate) struct StashedSecret {
    vault: SecretVault,
    placeholder: String,
}

impl StashedSecret {
    pub(crate) fn placeholder(&self) -> &str {
        &self.placeholder
    }
}

impl Drop for StashedSecret {
    fn drop(&mut self) {
        self.vault.lock().remove(&self.placeholder);
    }
}

/// Sends one request on a fresh connection (bollard keeps no idle
/// connections either), putting stashed secrets into container-create bodies.
pub(crate) async fn send(
    endpoint: Arc<Endpoint>,
    vault: SecretVault,
    request: BollardRequest,
) -> Result<Response<Incoming>, bollard::errors::Error> {
    let (mut parts, body) = request.into_parts();
    // The engine wants origin-form request targets and a Host header.
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    parts.uri = target.parse()?;
    parts.headers.insert(HOST, endpoint.host_header());

    let rewrite = if parts.method != Method::POST {
        None
    } else if parts.uri.path().ends_with("/containers/create")
        // Exec creation (`/containers/{id}/exec`) carries a step's env too.
        || parts.uri.path().ends_with("/exec")
    {
        Some(Rewrite::RevealSecrets)
    } else if parts.uri.path().ends_with("/networks/create") {
        Some(Rewrite::CheckDuplicate)
    } else {
        None
    };
    let body = match (rewrite, body) {
        (Some(rewrite), http_body_util::Either::Left(full)) => {
            let bytes = full
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_else(|never| match never {});
            let rewritten = match rewrite {
                Rewrite::RevealSecrets => vault.reveal(&bytes),
                Rewrite::CheckDuplicate => with_check_duplicate(&bytes),
            };
            parts.headers.remove(CONTENT_LENGTH);
            http_body_util::Either::Left(Full::new(rewritten.map(Bytes::from).unwrap_or(bytes)))
        }
        (_, body) => body,
    };
    let request = Request::from_parts(parts, body);

    match endpoint.as_ref() {
        Endpoint::Unix(path) => exchange(UnixStream::connect(path).await?, request).await,
        Endpoint::Tcp(authority) => {
            exchange(TcpStream::connect(authority.as_str()).await?, request).await
        }
    }
}

enum Rewrite {
    RevealSecrets,
    CheckDuplicate,
}

/// Engines before API 1.44 create a second network of the same name unless
/// asked not to; bollard's model lacks the field, so it is added here.
fn with_check_duplicate(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .as_object_mut()?
        .insert("CheckDuplicate".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok()
}

async fn exchange<S>(
    stream: S,
    request: BollardRequest,
) -> Result<Response<Incoming>, bollard::errors::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends with the response body; an error here surfaces on the body too.
        let _ = connection.with_upgrades().await;
    });
    Ok(sender.send_request(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hosts() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock"),
            Ok(Endpoint::Unix(PathBuf::from("/var/run/docker.sock")))
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2376"),
            Ok(Endpoint::Tcp("127.0.0.1:2376".into()))
        );
        assert_eq!(
            Endpoint::parse("tcp://docker"),
            Ok(Endpoint::Tcp("docker:2375".into()))
        );
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("ssh://me@host").is_err());
        assert!(Endpoint::parse("tcp://host:1/path").is_err());
    }

    #[test]
    fn reveal_swaps_placeholders_for_json_escaped_values() {
        let vault = SecretVault::default();
        let stashed = vault.stash(SecretString::from("a\"b\\c"));
        let body = format!(r#"{{"Env":["TOKEN={}","X=1"]}}"#, stashed.placeholder());
        let revealed = vault.reveal(body.as_bytes()).expect("placeholder present");
        let parsed: serde_json::Value = serde_json::from_slice(&revealed).expect("valid JSON");
        assert_eq!(parsed["Env"][0], "TOKEN=a\"b\\c");
        assert_eq!(parsed["Env"][1], "X=1");
    }

    #[test]
    fn network_creation_asks_for_duplicate_checks() {
        let body = with_check_duplicate(br#"{"Name":"n","Driver":"bridge"}"#).expect("object");
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(parsed["CheckDuplicate"], true);
        assert_eq!(parsed["Name"], "n");
        assert_eq!(with_check_duplicate(b"[1]"), None);
    }

    #[test]
    fn dropped_placeholders_are_forgotten() {
        let vault = SecretVault::default();
        let stashed = vault.stash(SecretString::from("value"));
        let body = format!(r#"{{"Env":["TOKEN={}"]}}"#, stashed.placeholder());
        drop(stashed);
        assert_eq!(vault.reveal(body.as_bytes()), None);
        assert_eq!(vault.reveal(b"{}"), None);
    }
}
