//! The configuration: TOML text, then `PROXY_RUNNER_*` variables. Input:
//! the file's text, optionally followed by a NUL byte and `NAME=value`
//! lines (the environment).
//!
//! An accepted configuration renders (secrets masked) to TOML that is
//! accepted again and renders the same; secret values never change what is
//! shown; a refusal does not quote a secret of the file.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use proxy_runner_orchestrator::config::{Config, Overrides, Secret};

fuzz_target!(|data: &[u8]| {
    let (text, env_part) = match data.iter().position(|&b| b == 0) {
        Some(cut) => (&data[..cut], &data[cut + 1..]),
        None => (data, &[][..]),
    };
    // The file is read as UTF-8 text.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: BTreeMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = Path::new("proxy-runner.toml");
    match Config::from_sources(Some((text, path)), &env, &Overrides::default()) {
        Ok(config) => accepted(&config),
        Err(e) => {
            let message = e.to_string();
            for secret in file_secrets(text) {
                // Checked only where the secret's text is nowhere else in the input.
                if secret.len() >= 8
                    && text.matches(secret.as_str()).count() == 1
                    && !env
                        .iter()
                        .any(|(k, v)| k.contains(&secret) || v.contains(&secret))
                {
                    assert!(!message.contains(&secret), "a secret in: {message}");
                }
            }
        }
    }
});

fn accepted(config: &Config) {
    config.validate().expect("a loaded config is valid");
    let shown = config.to_masked_toml();
    assert!(!shown.starts_with("# cannot render"), "{shown}");
    // The secrets' values never change what is shown.
    let mut other = config.clone();
    for secret in [
        &mut other.admin_token,
        &mut other.github.token,
        &mut other.github.webhook_secret,
    ] {
        if secret.is_set() {
            *secret = Secret::new("a different value");
        }
    }
    assert_eq!(other.to_masked_toml(), shown);
    assert_eq!(format!("{other:?}"), format!("{config:?}"));
    assert_eq!(other.paths_summary(), config.paths_summary());
    // What is shown, with the masked secrets given again, is a valid
    // configuration file that shows the same; as shown, a masked secret is
    // refused rather than taken as the secret.
    let secret_lines = [
        "admin_token = \"***\"",
        "token = \"***\"",
        "webhook_secret = \"***\"",
    ];
    let restored: String = shown
        .lines()
        .map(|line| match secret_lines.contains(&line) {
            true => line.replace("\"***\"", "\"restored-secret\""),
            false => line.to_string(),
        })
        .map(|line| line + "\n")
        .collect();
    let any_secret = config.admin_token.is_set()
        || config.github.token.is_set()
        || config.github.webhook_secret.is_set();
    assert_eq!(
        Config::from_toml(&shown, Path::new("shown.toml")).is_err(),
        any_secret,
        "{shown}"
    );
    let again = Config::from_toml(&restored, Path::new("shown.toml"))
        .unwrap_or_else(|e| panic!("the shown config does not parse: {e}\n{restored}"));
    again
        .validate()
        .unwrap_or_else(|e| panic!("the shown config is not valid: {e}\n{restored}"));
    assert_eq!(again.to_masked_toml(), shown);
}

/// The secret strings of a file (those a refusal must not quote).
fn file_secrets(text: &str) -> Vec<String> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let github = table.get("github").and_then(|g| g.as_table());
    [
        table.get("admin_token"),
        github.and_then(|g| g.get("token")),
        github.and_then(|g| g.get("webhook_secret")),
    ]
    .into_iter()
    .flatten()
    .filter_map(|v| v.as_str().map(str::to_string))
    .collect()
}
