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
/// part (`https://user:pass@host`).
fn is_secret_value(value: &str) -> bool {
    value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| authority.contains('@'))
}

/// Limits on what is kept of a hook's environment.
pub const MAX_ENV_ENTRIES: usize = 512;
pub const MAX_ENV_NAME_LEN: usize = 256;
pub const MAX_ENV_VALUE_LEN: usize = 8 * 1024;

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
