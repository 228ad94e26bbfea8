//! The supervisor's calls to the orchestrator (`/api/runners/*`), with its
//! runner token. Credentials in answers stay in `SecretString`s; errors
//! never carry them.

use std::time::Duration;

use proxy_runner_domain::proxy_runner::Heartbeat;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

/// Why a call failed, as the supervisor acts on it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer, or a 5xx: try again later.
    #[error("{0}")]
    Retry(String),
    /// A runner of that name is busy (409): take another name.
    #[error("{0}")]
    Conflict(String),
    /// Refused (4xx): retrying the same request cannot help.
    #[error("the orchestrator refused (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
}

/// A JIT config for one slot runner.
pub struct Jit {
    pub runner_id: u64,
    pub config: SecretString,
}

/// A registration token and the URL to configure against.
pub struct RegistrationToken {
    pub token: SecretString,
    pub url: String,
}

/// Where slot runners are registered; `None` for both: the orchestrator's
/// organization.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub organization: Option<String>,
    pub repository: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    scope: Scope,
}

impl Client {
    pub fn new(base: &str, token: SecretString, scope: Scope) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "proxy-runner-supervisor/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            scope,
        })
    }

    fn scope_fields(&self, body: &mut Value) {
        if let Some(org) = &self.scope.organization {
            body["organization"] = json!(org);
        }
        if let Some(repo) = &self.scope.repository {
            body["repository"] = json!(repo);
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let response = request
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                CallError::Retry(format!(
                    "cannot reach the orchestrator at {}: {}",
                    self.base,
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or_else(|| "no details".into());
        Err(match status.as_u16() {
            409 => CallError::Conflict(message),
            s if s >= 500 => {
                CallError::Retry(format!("the orchestrator failed (HTTP {s}): {message}"))
            }
            s => CallError::Refused { status: s, message },
        })
    }

    async fn json(&self, response: reqwest::Response) -> Result<Value, CallError> {
        response.json().await.map_err(|e| {
            CallError::Retry(format!(
                "the orchestrator's answer is not JSON: {}",
                e.without_url()
            ))
        })
    }

    /// A JIT config for `name` with `labels`, its work folder `work`.
    pub async fn jitconfig(
        &self,
        name: &str,
        labels: &[String],
        work: &str,
    ) -> Result<Jit, CallError> {
        let mut body = json!({"name": name, "labels": labels, "workFolder": work});
        self.scope_fields(&mut body);
        let response = self
            .send(
                self.http
                    .post(format!("{}/api/runners/jitconfig", self.base))
                    .json(&body),
            )
            .await?;
        let answer = self.json(response).await?;
        let config = answer["encodedJitConfig"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                CallError::Retry("the orchestrator's answer has no JIT config".into())
            })?;
        Ok(Jit {
            runner_id: answer["runnerId"].as_u64().unwrap_or_default(),
            config: SecretString::from(config.to_string()),
        })
    }

    pub async fn registration_token(
        &self,
        name: &str,
        labels: &[String],
        work: &str,
    ) -> Result<RegistrationToken, CallError> {
        let mut body = json!({"name": name, "labels": labels, "workFolder": work});
        self.scope_fields(&mut body);
        let response = self
            .send(
                self.http
                    .post(format!("{}/api/runners/registration-token", self.base))
                    .json(&body),
            )
            .await?;
        let answer = self.json(response).await?;
        match (answer["token"].as_str(), answer["url"].as_str()) {
            (Some(token), Some(url)) if !token.is_empty() => Ok(RegistrationToken {
                token: SecretString::from(token.to_string()),
                url: url.to_string(),
            }),
            _ => Err(CallError::Retry(
                "the orchestrator's answer has no registration token".into(),
            )),
        }
    }

    /// Deletes the runner `name` on GitHub; how many registrations went.
    pub async fn delete(&self, name: &str) -> Result<u64, CallError> {
        let query = match (&self.scope.organization, &self.scope.repository) {
            (Some(org), _) => format!("?organization={}", encode(org)),
            (None, Some(repo)) => format!("?repository={}", encode(repo)),
            (None, None) => String::new(),
        };
        let response = self
            .send(
                self.http
                    .delete(format!("{}/api/runners/{}{query}", self.base, encode(name))),
            )
            .await?;
        Ok(self.json(response).await?["deleted"].as_u64().unwrap_or(0))
    }

    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), CallError> {
        self.send(
            self.http
                .post(format!("{}/api/runners/heartbeat", self.base))
                .timeout(Duration::from_secs(10))
                .json(beat),
        )
        .await
        .map(|_| ())
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::encode("octo/app x"), "octo%2Fapp%20x");
        assert_eq!(super::encode("ci-0-1"), "ci-0-1");
    }
}
