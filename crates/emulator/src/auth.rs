//! Who is calling the REST API: a personal access token, an installation
//! token, a GitHub App JWT, or nobody; and GitHub's answers when that caller
//! may not do what it asks.

use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::http_util::ApiError;
use crate::state::{RATE_LIMIT_ANONYMOUS, RATE_LIMIT_AUTHENTICATED, Settings, World, sha256};

/// GitHub accepts App JWTs that live at most ten minutes.
const JWT_MAX_LIFETIME_SECS: i64 = 600;
/// Clock drift tolerated on `iat`.
const JWT_DRIFT_SECS: i64 = 60;

const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
const JWT_EXPIRED: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
const JWT_TOO_LONG: &str = "'Expiration time' claim ('exp') is too far in the future";
const JWT_IAT: &str = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Anonymous,
    /// A personal access token; `fingerprint` names its rate-limit bucket.
    Pat {
        fingerprint: String,
    },
    Installation {
        installation_id: u64,
        account: String,
    },
    App {
        app_id: u64,
    },
    /// An unknown or expired token.
    BadToken,
    /// Something shaped like a JWT that GitHub would refuse.
    BadJwt(&'static str),
}

impl Caller {
    /// The rate-limit bucket and its hourly limit. Callers without valid
    /// credentials share one bucket per address, as on GitHub.
    pub fn bucket(&self, peer: &str) -> (String, u64) {
        match self {
            Caller::Pat { fingerprint } => (format!("pat:{fingerprint}"), RATE_LIMIT_AUTHENTICATED),
            Caller::Installation {
                installation_id, ..
            } => (
                format!("installation:{installation_id}"),
                RATE_LIMIT_AUTHENTICATED,
            ),
            Caller::App { app_id } => (format!("app:{app_id}"), RATE_LIMIT_AUTHENTICATED),
            Caller::Anonymous | Caller::BadToken | Caller::BadJwt(_) => {
                (format!("ip:{peer}"), RATE_LIMIT_ANONYMOUS)
            }
        }
    }

    /// Runner and job endpoints take a PAT or an installation token of the
    /// account that owns the scope.
    pub fn require_token(&self, account: &str) -> Result<(), ApiError> {
        match self {
            Caller::Pat { .. } => Ok(()),
            Caller::Installation { account: a, .. } if a.eq_ignore_ascii_case(account) => Ok(()),
            Caller::Installation { .. } | Caller::App { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Resource not accessible by integration",
            )),
            Caller::Anonymous => Err(ApiError::requires_authentication()),
            Caller::BadToken | Caller::BadJwt(_) => Err(ApiError::bad_credentials()),
        }
    }

    /// `/app/...` and `.../installation` endpoints take only an App JWT.
    pub fn require_app(&self) -> Result<u64, ApiError> {
        match self {
            Caller::App { app_id } => Ok(*app_id),
            Caller::BadJwt(message) => Err(ApiError::new(StatusCode::UNAUTHORIZED, *message)),
            Caller::Anonymous => Err(ApiError::requires_authentication()),
            _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, JWT_UNDECODABLE)),
        }
    }
}

/// The token of an `Authorization: Bearer X` or `Authorization: token X`
/// header. `Some(None)` when the header is there but unusable.
fn presented_token(headers: &HeaderMap) -> Option<Option<&str>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(value) = value.to_str() else {
        return Some(None);
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Some(None);
    };
    let token = token.trim();
    if (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        && !token.is_empty()
    {
        Some(Some(token))
    } else {
        Some(None)
    }
}

pub(crate) fn identify(
    settings: &Settings,
    world: &World,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Caller {
    let token = match presented_token(headers) {
        None => return Caller::Anonymous,
        Some(None) => return Caller::BadToken,
        Some(Some(token)) => token,
    };
    if settings.is_pat(token) {
        return Caller::Pat {
            fingerprint: hex::encode(&sha256(token.as_bytes())[..8]),
        };
    }
    if let Some(t) = world.installation_token(token) {
        if t.expires_at > now {
            return Caller::Installation {
                installation_id: t.installation_id,
                account: t.account.clone(),
            };
        }
        return Caller::BadToken;
    }
    if token.split('.').count() == 3 {
        return match verify_jwt(settings, token, now) {
            Ok(app_id) => Caller::App { app_id },
            Err(message) => Caller::BadJwt(message),
        };
    }
    Caller::BadToken
}

#[derive(Deserialize)]
struct AppClaims {
    iat: Option<i64>,
    exp: Option<i64>,
    iss: Option<Value>,
}

/// Checks an App JWT the way GitHub does: RS256 signed by the App's key,
/// `iss` the App id, not expired, at most ten minutes long.
fn verify_jwt(settings: &Settings, token: &str, now: DateTime<Utc>) -> Result<u64, &'static str> {
    let app = settings.app.as_ref().ok_or(JWT_UNDECODABLE)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AppClaims>(token, &app.key, &validation)
        .map_err(|_| JWT_UNDECODABLE)?;
    let claims = data.claims;
    let issuer = match &claims.iss {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    if issuer != Some(app.app_id) {
        return Err(JWT_UNDECODABLE);
    }
    let now = now.timestamp();
    let iat = claims.iat.ok_or(JWT_IAT)?;
    let exp = claims.exp.ok_or(JWT_EXPIRED)?;
    if iat > now + JWT_DRIFT_SECS {
        return Err(JWT_IAT);
    }
    if exp <= now {
        return Err(JWT_EXPIRED);
    }
    if exp.saturating_sub(iat) > JWT_MAX_LIFETIME_SECS
        || exp > now + JWT_MAX_LIFETIME_SECS + JWT_DRIFT_SECS
    {
        return Err(JWT_TOO_LONG);
    }
    Ok(app.app_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn token_schemes() {
        assert_eq!(presented_token(&HeaderMap::new()), None);
        assert_eq!(presented_token(&headers("Bearer abc")), Some(Some("abc")));
        assert_eq!(presented_token(&headers("token abc")), Some(Some("abc")));
        assert_eq!(presented_token(&headers("Basic abc")), Some(None));
        assert_eq!(presented_token(&headers("Bearer ")), Some(None));
    }

    #[test]
    fn installation_tokens_only_serve_their_account() {
        let c = Caller::Installation {
            installation_id: 1,
            account: "octo".into(),
        };
        assert!(c.require_token("Octo").is_ok());
        assert_eq!(
            c.require_token("other").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Caller::BadToken.require_token("octo").unwrap_err().message,
            "Bad credentials"
        );
        assert_eq!(
            Caller::Pat {
                fingerprint: "x".into()
            }
            .require_app()
            .unwrap_err()
            .status,
            StatusCode::UNAUTHORIZED
        );
    }
}
