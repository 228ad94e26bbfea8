//! Bearer authentication: one admin token (from config) and per-runner
//! tokens issued by the orchestrator and stored only as SHA-256 hashes.

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::service::ServiceError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Runner { name: String, token_id: Uuid },
}

impl Principal {
    /// The actor string of the audit trail.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Runner { name, .. } => format!("runner:{name}"),
        }
    }
    /// Whether this caller may act for `runner`: the admin for any runner,
    /// a runner token for its own runner and, when that runner is a proxy
    /// runner supervisor, for the runners it registers per slot
    /// (`{name}-{slot}-{n}`, domain `proxy_runner::token_acts_for`).
    pub fn acts_for(&self, runner: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Runner { name, .. } => {
                proxy_runner_domain::proxy_runner::token_acts_for(name, runner)
            }
        }
    }

    pub fn require_admin(&self) -> Result<(), ServiceError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Runner { .. } => Err(ServiceError::Forbidden(
                "this call needs the admin token".into(),
            )),
        }
    }
}

/// Prefix of orchestrator-issued runner tokens, so leaked ones are easy to spot.
pub const TOKEN_PREFIX: &str = "prt_";

/// A new random runner token (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two secrets in time independent of where they differ (and of
/// their lengths, by comparing digests).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let da = Sha256::digest(a.as_bytes());
    let db = Sha256::digest(b.as_bytes());
    da.ct_eq(&db).into()
}

/// The bearer token of a request, or why there is none.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(
            "Authorization scheme must be Bearer",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized("empty bearer token"));
    }
    if token.len() > 4096 {
        return Err(ApiError::unauthorized("bearer token too long"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a).len(), 64);
        assert!(!hash_token(&a).contains(&a[4..]));
    }

    #[test]
    fn constant_time_equality() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().status, 401);
        h.insert("authorization", "Bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "tok");
        h.insert("authorization", "bearer tok".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "tok");
        for bad in ["Basic abc", "Bearer", "Bearer    ", "token"] {
            h.insert("authorization", bad.parse().unwrap());
            assert!(bearer(&h).is_err(), "{bad}");
        }
    }
}
