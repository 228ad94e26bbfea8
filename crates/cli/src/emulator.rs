//! `proxy-runner emulator`: the GitHub emulator as a process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use proxy_runner_emulator::{EmulatorApp, EmulatorConfig, WebhookTarget};
use secrecy::SecretString;

#[derive(Args)]
pub struct EmulatorArgs {
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// A personal access token the emulator accepts (repeatable).
    #[arg(long = "token", env = "EMULATOR_TOKEN")]
    tokens: Vec<String>,
    /// GitHub App id whose JWTs are accepted (with --app-public-key).
    #[arg(long, requires = "app_public_key")]
    app_id: Option<u64>,
    #[arg(long)]
    app_public_key: Option<PathBuf>,
    /// Where to send signed workflow_job webhooks.
    #[arg(long, requires = "webhook_secret")]
    webhook_url: Option<String>,
    #[arg(long, env = "EMULATOR_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Base URL written into JIT configs (default: the listen URL).
    #[arg(long)]
    public_url: Option<String>,
}

pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let app = match (args.app_id, &args.app_public_key) {
        (Some(app_id), Some(path)) => Some(EmulatorApp {
            app_id,
            public_key_pem: std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        }),
        _ => None,
    };
    let webhook = match (args.webhook_url, args.webhook_secret) {
        (Some(url), Some(secret)) => Some(WebhookTarget {
            url,
            secret: SecretString::from(secret),
        }),
        _ => None,
    };
    let running = proxy_runner_emulator::spawn(
        EmulatorConfig {
            pats: args.tokens,
            app,
            webhook,
            public_url: args.public_url,
            installation_token_ttl: None,
        },
        args.listen,
    )
    .await
    .context("cannot start the emulator")?;
    println!("emulator listening on {}", running.url());
    crate::serve::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
