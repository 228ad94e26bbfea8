//! Client commands: talk to a running orchestrator over its HTTP API.

use anyhow::{Context, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// Tokens asked for per page by `token list`.
const TOKEN_PAGE: usize = 500;

pub struct Client {
    base: String,
    admin_token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn from_env() -> anyhow::Result<Client> {
        let base =
            std::env::var("ORCHESTRATOR_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        let admin_token = std::env::var("PROXY_RUNNER_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .context("PROXY_RUNNER_ADMIN_TOKEN is not set")?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot build HTTP client")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            admin_token,
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("cannot reach the orchestrator at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = body["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("orchestrator answered {status}: {msg}");
        }
        Ok(body)
    }

    /// Issues a token for `runner`: the API's answer (`id`, `runner`,
    /// `token`, `createdAt`).
    pub async fn create_token(&self, runner: &str) -> anyhow::Result<Value> {
        let body = self
            .send(
                self.http
                    .post(format!("{}/api/tokens", self.base))
                    .json(&serde_json::json!({"runner": runner})),
            )
            .await?;
        if !body["token"].is_string() || !body["id"].is_string() {
            bail!("no token and id in the answer");
        }
        Ok(body)
    }

    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(format!("{}/api/tokens/{id}", self.base)))
            .await?;
        Ok(())
    }

    /// Revokes the token with this value (sent in the body, never in a URL);
    /// the revoked token's id.
    pub async fn revoke_token_by_value(&self, token: &SecretString) -> anyhow::Result<String> {
        let body = self
            .send(
                self.http
                    .post(format!("{}/api/tokens/revoke", self.base))
                    .json(&serde_json::json!({"token": token.expose_secret()})),
            )
            .await?;
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in the answer"))
    }

    /// Every token (revoked ones too), following the pages.
    pub async fn list_tokens(&self, runner: Option<&str>, json: bool) -> anyhow::Result<()> {
        let mut tokens: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut qs = vec![format!("limit={TOKEN_PAGE}")];
            if let Some(r) = runner {
                qs.push(format!("runner={}", encode(r)));
            }
            if let Some(a) = &after {
                qs.push(format!("after={}", encode(a)));
            }
            let body = self
                .send(
                    self.http
                        .get(format!("{}/api/tokens?{}", self.base, qs.join("&"))),
                )
                .await?;
            tokens.extend(body["tokens"].as_array().into_iter().flatten().cloned());
            match body["nextAfter"].as_str() {
                Some(next) if after.as_deref() != Some(next) => after = Some(next.to_string()),
                _ => break,
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&tokens)?);
            return Ok(());
        }
        println!("{:<36}  {:<24}  {:<25}  REVOKED", "ID", "RUNNER", "CREATED");
        for t in &tokens {
            println!(
                "{:<36}  {:<24}  {:<25}  {}",
                t["id"].as_str().unwrap_or(""),
                t["runner"].as_str().unwrap_or(""),
                t["createdAt"].as_str().unwrap_or(""),
                t["revokedAt"].as_str().unwrap_or("-"),
            );
        }
        Ok(())
    }

    pub async fn list_jobs(
        &self,
        status: Option<&str>,
        repository: Option<&str>,
        limit: usize,
        json: bool,
    ) -> anyhow::Result<()> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            query.push(("status", s.to_string()));
        }
        if let Some(r) = repository {
            query.push(("repository", r.to_string()));
        }
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let body = self
            .send(
                self.http
                    .get(format!("{}/api/jobs?{}", self.base, qs.join("&"))),
            )
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&body["jobs"])?);
            return Ok(());
        }
        println!(
            "{:<36}  {:<12}  {:<28}  {:<16}  {:<8}  CONCLUSION",
            "ID", "STATUS", "REPOSITORY", "JOB", "SOURCE"
        );
        for j in body["jobs"].as_array().into_iter().flatten() {
            println!(
                "{:<36}  {:<12}  {:<28}  {:<16}  {:<8}  {}",
                j["id"].as_str().unwrap_or(""),
                j["status"].as_str().unwrap_or(""),
                j["repository"].as_str().unwrap_or(""),
                j["jobId"].as_str().unwrap_or(""),
                j["source"].as_str().unwrap_or(""),
                j["conclusion"].as_str().unwrap_or("-"),
            );
        }
        Ok(())
    }

    pub async fn show_job(&self, id: &str, json: bool) -> anyhow::Result<()> {
        let job = self
            .send(self.http.get(format!("{}/api/jobs/{id}", self.base)))
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&job)?);
            return Ok(());
        }
        if let Value::Object(map) = &job {
            for (k, v) in map {
                let shown = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                println!("{k:<14} {shown}");
            }
        }
        Ok(())
    }
}

/// Percent-encodes a query value (everything but unreserved characters and '/').
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The first line of standard input as a token value (`token revoke --stdin`).
pub fn read_token_from_stdin() -> anyhow::Result<SecretString> {
    use std::io::Read;
    // A token is short; a bounded read keeps a runaway pipe from filling memory.
    let mut buf = Vec::new();
    std::io::stdin()
        .take(4096)
        .read_to_end(&mut buf)
        .context("cannot read the token from standard input")?;
    let text =
        String::from_utf8(buf).map_err(|_| anyhow!("the token on standard input is not UTF-8"))?;
    let value = text.lines().next().unwrap_or("").trim();
    if value.is_empty() {
        bail!("no token on standard input");
    }
    Ok(SecretString::from(value.to_string()))
}
