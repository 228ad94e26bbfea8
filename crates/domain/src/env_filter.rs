//! Which environment entries may be stored. A hook sends the runner's whole
//! environment; anything that looks like a credential is dropped before it
//! reaches the store, the logs or an API response.

use std::collections::BTreeMap;

/// Substrings (upper-cased) that mark a name as a credential.
const SECRET_MARKERS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "COOKIE",
    "SESSION",
    "JITCONFIG",
    "SIGNATURE",
];

/// Names that are credentials although no marker says so.
const SECRET_NAMES: &[&str] = &[
    "RUNNER_TOKEN",
    "GITHUB_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_RUNTIME_URL",
    "ACTIONS_CACHE_URL",
    "ACTIONS_RESULTS_URL",
    "PROXY_RUNNER_ADMIN_TOKEN",
    "DATABASE_URL",
];

/// Whether an environment variable's name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAMES.contains(&upper.as_str()) || SECRET_MARKERS.iter().any(|m| upper.contains(m))
}

/// Values that carry credentials whatever their name: URLs with a user-info
/// part (`https://user:pass@host`), or a credential anywhere in the text.
fn is_secret_value(value: &str) -> bool {
    let url_with_user = value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| authority.contains('@'));
    url_with_user || contains_credential(value)
}

/// Whether a text holds one kind of credential.
pub type Detector = fn(&str) -> bool;

/// What a credential looks like, by its value: (name, detector). Extend the
/// list to recognise more.
pub const CREDENTIAL_SHAPES: &[(&str, Detector)] = &[
    ("GitHub token", github_token),
    ("JSON web token", json_web_token),
    ("private key", private_key_block),
    ("AWS access key", aws_access_key),
    ("Slack token", slack_token),
    ("chat webhook URL", chat_webhook_url),
];

/// Whether `text` holds a credential anywhere (free text included).
pub fn contains_credential(text: &str) -> bool {
    CREDENTIAL_SHAPES.iter().any(|(_, found)| found(text))
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `prefix` followed by at least `min` token characters, anywhere.
fn prefixed(text: &str, prefix: &str, min: usize) -> bool {
    text.match_indices(prefix).any(|(i, _)| {
        text[i + prefix.len()..]
            .chars()
            .take_while(|c| token_char(*c))
            .count()
            >= min
    })
}

fn github_token(text: &str) -> bool {
    ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]
        .iter()
        .any(|p| prefixed(text, p, 20))
        || prefixed(text, "github_pat_", 20)
}

fn json_web_token(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .any(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3 && parts[0].starts_with("eyJ") && parts.iter().all(|p| p.len() >= 10)
        })
}

fn private_key_block(text: &str) -> bool {
    text.contains("-----BEGIN") && text.contains("PRIVATE KEY")
}

fn aws_access_key(text: &str) -> bool {
    ["AKIA", "ASIA"].iter().any(|p| {
        text.match_indices(p).any(|(i, _)| {
            let rest: String = text[i + p.len()..].chars().take(16).collect();
            rest.len() == 16
                && rest
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
    })
}

fn slack_token(text: &str) -> bool {
    ["xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-"]
        .iter()
        .any(|p| prefixed(text, p, 10))
}

fn chat_webhook_url(text: &str) -> bool {
    [
        "hooks.slack.com/services/",
        "discord.com/api/webhooks/",
        "webhook.office.com/",
    ]
    .iter()
    .any(|p| text.contains(p))
}

/// Replaces credentials inside a JSON value (a matrix): strings that hold
/// one, and values under secret-looking keys, become `[redacted]`. Returns
/// how many were replaced.
pub fn redact_json(value: &mut serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) if is_secret_value(s) => {
            *s = REDACTED.to_string();
            1
        }
        serde_json::Value::Array(items) => items.iter_mut().map(redact_json).sum(),
        serde_json::Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| {
                if is_secret_name(k) && !v.is_null() {
                    *v = serde_json::Value::String(REDACTED.to_string());
                    1
                } else {
                    redact_json(v)
                }
            })
            .sum(),
        _ => 0,
    }
}

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// Limits on what is kept of a hook's environment.
pub const MAX_ENV_ENTRIES: usize = 512;
pub const MAX_ENV_NAME_LEN: usize = 256;

/// Returns the entries that may be stored, and how many were dropped as secrets.
pub fn filter_environment(env: BTreeMap<String, String>) -> (BTreeMap<String, String>, usize) {
    let before = env.len();
    let kept: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, v)| !is_secret_name(k) && !is_secret_value(v))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_value_under_any_name() {
        let jwt = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            "eyJzdWIiOiIxMjM0NTY3ODkwIn0", "c2lnbmF0dXJlLXNpZ25hdHVyZQ"
        );
        let found = [
            format!("ghp_{}", "a".repeat(36)),
            format!("github_pat_{}", "B1".repeat(20)),
            format!("deploy with ghs_{} now", "x".repeat(30)),
            jwt.clone(),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc".to_string(),
            "AKIAIOSFODNN7EXAMPLE".to_string(),
            format!("xoxb-{}", "1".repeat(20)),
            "https://hooks.slack.com/services/T000/B000/XXXX".to_string(),
        ];
        for value in &found {
            assert!(contains_credential(value), "{value}");
            let (kept, dropped) =
                filter_environment(BTreeMap::from([("BUILD_LABEL".to_string(), value.clone())]));
            assert!(kept.is_empty() && dropped == 1, "{value}");
        }
        for harmless in [
            "ghp_",
            "release-1.2.3",
            "eyJ.short.x",
            "AKIA-lower",
            "hello world",
        ] {
            assert!(!contains_credential(harmless), "{harmless}");
        }
    }

    #[test]
    fn a_matrix_keeps_its_shape_with_credentials_redacted() {
        let mut matrix = serde_json::json!({
            "os": "linux",
            "api_token": "s3cret",
            "targets": [{"url": format!("ghp_{}", "z".repeat(30))}, "plain"],
        });
        assert_eq!(redact_json(&mut matrix), 2);
        assert_eq!(
            matrix,
            serde_json::json!({"os": "linux", "api_token": REDACTED, "targets": [{"url": REDACTED}, "plain"]})
        );
    }

    #[test]
    fn credential_names_are_recognised() {
        for name in [
            "RUNNER_TOKEN",
            "GITHUB_TOKEN",
            "ACTIONS_RUNTIME_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "my_api_key",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "SSH_PRIVATE",
            "npm_config__authToken",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "PGPASSWD",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "GITHUB_REPOSITORY",
            "GITHUB_JOB",
            "RUNNER_NAME",
            "PATH",
            "HOME",
            "RUNNER_LABELS",
            "GITHUB_RUN_ID",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn filter_drops_secret_names_and_urls_with_credentials() {
        let env: BTreeMap<String, String> = [
            ("GITHUB_REPOSITORY", "o/r"),
            ("RUNNER_TOKEN", "AAAA"),
            ("HTTPS_PROXY", "http://user:pw@proxy:3128"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("NOTE", "mail me at a@b.c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (kept, dropped) = filter_environment(env);
        assert_eq!(dropped, 2);
        assert_eq!(
            kept.keys().map(String::as_str).collect::<Vec<_>>(),
            ["GITHUB_REPOSITORY", "GITHUB_SERVER_URL", "NOTE"]
        );
    }
}
