//! Credentials: a PAT as it is, or a GitHub App's JWT traded for an
//! installation token per repository / organization, cached and renewed
//! before it expires.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use http::{Method, StatusCode};
use proxy_runner_domain::ports::{GitHubError, Scope};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::client::{GitHubClient, lock, scope_path};
use crate::config::Auth;
use crate::model::{InstallationResponse, TokenResponse};
use crate::request::{BoxFuture, Call, CallAuth, Repeat, decode, status_error};

/// App JWTs are valid for 9 minutes; a new one is signed after this long.
const JWT_REUSE: TimeDelta = TimeDelta::minutes(5);

pub(crate) enum Credentials {
    Pat(SecretString),
    App(Box<AppState>),
}

pub(crate) struct AppState {
    pub(crate) app_id: u64,
    key: jsonwebtoken::EncodingKey,
    jwt: Mutex<Option<CachedJwt>>,
    installations: Mutex<HashMap<Scope, u64>>,
    tokens: Mutex<HashMap<u64, CachedToken>>,
    /// Serialises token refreshes so a burst of calls mints one token.
    refresh: tokio::sync::Mutex<()>,
}

struct CachedJwt {
    jwt: SecretString,
    reuse_until: DateTime<Utc>,
}

struct CachedToken {
    token: SecretString,
    renew_at: DateTime<Utc>,
}

impl Credentials {
    /// Checks the credential's shape (a PAT is not blank, an App key parses
    /// as RSA PEM and signs).
    pub(crate) fn new(auth: &Auth) -> Result<Credentials, GitHubError> {
        match auth {
            Auth::Pat(token) => {
                if token.expose_secret().trim().is_empty() {
                    return Err(GitHubError::Validation(
                        "GitHub personal access token is empty".into(),
                    ));
                }
                Ok(Credentials::Pat(token.clone()))
            }
            Auth::App {
                app_id,
                private_key_pem,
            } => {
                crate::config::validate_private_key(private_key_pem)
                    .map_err(|e| GitHubError::Validation(e.to_string()))?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(
                    private_key_pem.expose_secret().as_bytes(),
                )
                .map_err(|_| {
                    GitHubError::Validation(
                        "the GitHub App private key is not a usable RSA PEM key".into(),
                    )
                })?;
                Ok(Credentials::App(Box::new(AppState {
                    app_id: *app_id,
                    key,
                    jwt: Mutex::new(None),
                    installations: Mutex::new(HashMap::new()),
                    tokens: Mutex::new(HashMap::new()),
                    refresh: tokio::sync::Mutex::new(()),
                })))
            }
        }
    }
}

impl AppState {
    /// A JWT for App endpoints: RS256, iss = app id, iat a minute back (clock
    /// drift), exp in 9 minutes (GitHub allows at most 10).
    fn jwt(&self) -> Result<SecretString, GitHubError> {
        let mut cached = lock(&self.jwt);
        let now = Utc::now();
        if let Some(c) = cached.as_ref()
            && c.reuse_until > now
        {
            return Ok(c.jwt.clone());
        }
        let claims = serde_json::json!({
            "iat": (now - TimeDelta::seconds(60)).timestamp(),
            "exp": (now + TimeDelta::minutes(9)).timestamp(),
            "iss": self.app_id.to_string(),
        });
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|_| GitHubError::Unauthorized("cannot sign the GitHub App JWT".into()))?;
        let jwt = SecretString::from(jwt);
        *cached = Some(CachedJwt {
            jwt: jwt.clone(),
            reuse_until: now + JWT_REUSE,
        });
        Ok(jwt)
    }

    fn cached_token(&self, scope: &Scope) -> Option<SecretString> {
        let id = *lock(&self.installations).get(scope)?;
        let tokens = lock(&self.tokens);
        let cached = tokens.get(&id)?;
        (cached.renew_at > Utc::now()).then(|| cached.token.clone())
    }

    /// Drops what we know about the scope's installation (after a 401).
    pub(crate) fn forget(&self, scope: &Scope) {
        if let Some(id) = lock(&self.installations).remove(scope) {
            lock(&self.tokens).remove(&id);
        }
    }
}

impl GitHubClient {
    /// The bearer credential for a request.
    pub(crate) fn credential<'a>(
        &'a self,
        auth: CallAuth<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<SecretString, GitHubError>> {
        Box::pin(async move {
            match (self.credentials(), auth) {
                (Credentials::Pat(token), _) => Ok(token.clone()),
                (Credentials::App(app), CallAuth::AppJwt) => app.jwt(),
                (Credentials::App(app), CallAuth::Scope(scope)) => {
                    self.installation_token(app, scope, deadline).await
                }
            }
        })
    }

    async fn installation_token(
        &self,
        app: &AppState,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<SecretString, GitHubError> {
        if let Some(token) = app.cached_token(scope) {
            return Ok(token);
        }
        let _refreshing = app.refresh.lock().await;
        if let Some(token) = app.cached_token(scope) {
            return Ok(token);
        }
        let cached_id = lock(&app.installations).get(scope).copied();
        let installation_id = match cached_id {
            Some(id) => id,
            None => {
                let id = self.find_installation(scope, deadline).await?;
                lock(&app.installations).insert(scope.clone(), id);
                // Another scope may already hold a token of this installation.
                if let Some(token) = app.cached_token(scope) {
                    return Ok(token);
                }
                id
            }
        };
        let id = installation_id.to_string();
        let call = Call {
            method: Method::POST,
            url: self.url(&["app", "installations", &id, "access_tokens"], &[])?,
            endpoint: "installation_token",
            auth: CallAuth::AppJwt,
            body: None,
            // Minting a second token is harmless.
            repeat: Repeat::Safe,
        };
        let reply = self.execute(&call, deadline).await?;
        if !reply.status.is_success() {
            if reply.status == StatusCode::NOT_FOUND {
                // The App may have been re-installed under a new id.
                lock(&app.installations).remove(scope);
            }
            return Err(status_error(call.endpoint, &reply));
        }
        let minted: TokenResponse = decode(&reply.body, call.endpoint)?;
        // Renew `token_renew_margin` before expiry, or at half-life for
        // tokens shorter-lived than twice the margin.
        let lifetime = minted.expires_at - Utc::now();
        let margin = TimeDelta::from_std(self.config().token_renew_margin)
            .unwrap_or(TimeDelta::MAX)
            .min(lifetime / 2)
            .max(TimeDelta::zero());
        let token = SecretString::from(minted.token);
        lock(&app.tokens).insert(
            installation_id,
            CachedToken {
                token: token.clone(),
                renew_at: minted.expires_at - margin,
            },
        );
        tracing::debug!(installation_id, expires_at = %minted.expires_at, "minted installation token");
        Ok(token)
    }

    async fn find_installation(
        &self,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<u64, GitHubError> {
        let mut segments = scope_path(scope, &[]);
        segments.push("installation");
        let call = Call::get(
            self.url(&segments, &[])?,
            "get_installation",
            CallAuth::AppJwt,
        );
        let reply = self.execute(&call, deadline).await?;
        if !reply.status.is_success() {
            return Err(status_error(call.endpoint, &reply));
        }
        let installation: InstallationResponse = decode(&reply.body, call.endpoint)?;
        tracing::debug!(scope = %scope, installation_id = installation.id, "found App installation");
        Ok(installation.id)
    }
}
