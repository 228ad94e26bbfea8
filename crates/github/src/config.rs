//! Settings of the GitHub client. The binary fills these from its own
//! configuration; nothing here reads files or the environment except
//! [`load_private_key`].

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// How the client authenticates.
///
/// `Debug` is derived but safe: [`SecretString`] prints as redacted.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A personal access token (classic: `repo` / `admin:org` scope).
    Pat(SecretString),
    /// A GitHub App: the client signs short-lived JWTs with the key and trades
    /// them for installation tokens per repository or organization.
    App {
        app_id: u64,
        private_key_pem: SecretString,
    },
}

/// Retry and back-off settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// First back-off delay after a 5xx, timeout or connection error.
    pub min_delay: Duration,
    /// Back-off delays never grow beyond this.
    pub max_delay: Duration,
    /// Retries after the first attempt (not counting rate-limit waits).
    pub max_retries: usize,
    /// Wait after a secondary rate limit that carries no `retry-after`
    /// (GitHub asks for at least a minute); doubled on each repeat.
    pub secondary_limit_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retries: 4,
            secondary_limit_wait: Duration::from_secs(60),
        }
    }
}

/// Circuit breaker settings (one breaker per GitHub host).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures (5xx, timeouts, transport errors) that open it.
    pub failure_threshold: u32,
    /// How long it stays open before letting one probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// Everything [`crate::GitHubClient::new`] needs.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// REST base URL: `https://api.github.com`, `https://HOST/api/v3` for
    /// Enterprise Server, or an emulator serving the API at its root.
    pub api_url: String,
    pub auth: Auth,
    pub user_agent: String,
    /// Budget of one request including its retries and rate-limit waits.
    /// A wait that would overrun it is not started: the call fails with
    /// `RateLimited` / the last error instead.
    pub request_deadline: Duration,
    /// Limit of a single HTTP attempt (connect, send, read the body).
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    /// Installation tokens are renewed this long before they expire.
    pub token_renew_margin: Duration,
    /// Response bodies larger than this are refused (protects memory).
    pub max_response_bytes: usize,
    /// Page size for list calls (GitHub allows at most 100).
    pub per_page: u8,
}

impl GitHubConfig {
    /// Defaults for everything but where to go and how to authenticate.
    pub fn new(api_url: impl Into<String>, auth: Auth) -> Self {
        GitHubConfig {
            api_url: api_url.into(),
            auth,
            user_agent: concat!("proxy-runner/", env!("CARGO_PKG_VERSION")).to_string(),
            request_deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            token_renew_margin: Duration::from_secs(5 * 60),
            max_response_bytes: 8 * 1024 * 1024,
            per_page: 100,
        }
    }
}

/// Why an App private key could not be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the GitHub App private key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the GitHub App private key is not a usable RSA PEM key: {0}")]
    Invalid(String),
}

/// Reads a GitHub App private key (PKCS#1 or PKCS#8 PEM) and checks that it
/// can sign an RS256 JWT, so a bad key fails at start-up, not at first use.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<SecretString, KeyError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })?;
    let key = SecretString::from(text);
    validate_private_key(&key)?;
    Ok(key)
}

/// Checks that `pem` is an RSA private key that can sign an RS256 JWT.
pub fn validate_private_key(pem: &SecretString) -> Result<(), KeyError> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes())
        .map_err(|e| KeyError::Invalid(key_error_kind(&e)))?;
    let probe = serde_json::json!({"iss": "probe", "iat": 0, "exp": 1});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &probe,
        &key,
    )
    .map_err(|e| KeyError::Invalid(key_error_kind(&e)))?;
    Ok(())
}

/// Only the error kind: the library's messages could quote input.
fn key_error_kind(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidRsaKey(_) => "invalid RSA key".into(),
        ErrorKind::InvalidKeyFormat => "invalid key format".into(),
        ErrorKind::InvalidAlgorithm => "not an RSA key".into(),
        _ => "cannot parse or sign with the key".into(),
    }
}
