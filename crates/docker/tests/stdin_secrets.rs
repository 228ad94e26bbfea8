//! Secrets handed over on a container's standard input: the entrypoint reads
//! them (then the input ends), and the container's configuration, as
//! `docker inspect` shows it, holds none of them.

mod common;

use proxy_runner_domain::ports::{BackendError, ContainerBackend, StdinSecret};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn the_entrypoint_reads_stdin_secrets_that_inspect_never_shows() {
    let Some(scope) = common::Scope::new("stdin").await else {
        return;
    };
    let network = scope.network("net").await;
    let secret = format!("s3cr3t-{}-{}", common::suffix(), common::suffix());
    let token = format!("t0ken-{}", common::suffix());
    // `$(cat)` drops the last newline only.
    let expected = format!("PLANTED_SECRET={secret}\nOTHER_TOKEN={token}");
    let digest = hex::encode(Sha256::digest(expected.as_bytes()));
    let script = format!(
        r#"payload=$(cat)
[ "$(printf %s "$payload" | sha256sum | cut -c1-64)" = {digest} ] || exit 3
env | grep -q PLANTED && exit 4
exit 0"#
    );
    let mut spec = scope.spec("ok", &network, &script);
    spec.stdin_secrets = vec![
        StdinSecret::new("PLANTED_SECRET", SecretString::from(secret.clone())),
        StdinSecret::new("OTHER_TOKEN", SecretString::from(token.clone())),
    ];
    let started = scope.docker.start(&spec).await.expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.unwrap_or_default();
    assert_eq!(code, 0, "the entrypoint did not read the hand-over: {logs}");

    let client = scope.docker.client().await.expect("client");
    let inspected = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect");
    let text = serde_json::to_string(&inspected).expect("JSON");
    assert!(!text.contains(&secret), "the secret is in docker inspect");
    assert!(!text.contains(&token), "the token is in docker inspect");
    let config = inspected.config.expect("config");
    assert_eq!(config.open_stdin, Some(true));
    assert_eq!(config.stdin_once, Some(true));
    assert!(
        config
            .env
            .unwrap_or_default()
            .iter()
            .all(|e| !e.starts_with("PLANTED_SECRET") && !e.starts_with("OTHER_TOKEN"))
    );

    // A container without a hand-over keeps a closed stdin (reads end at once).
    let plain = scope.spec("plain", &network, "[ -z \"$(cat)\" ]");
    let started = scope.docker.start(&plain).await.expect("started");
    assert_eq!(scope.docker.wait(&started.id).await.expect("exit"), 0);
    let client = scope.docker.client().await.expect("client");
    let inspected = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect");
    assert_ne!(inspected.config.expect("config").open_stdin, Some(true));
}

#[tokio::test]
async fn a_hand_over_that_cannot_be_one_line_creates_nothing_and_names_no_value() {
    let Some(scope) = common::Scope::new("stdin-bad").await else {
        return;
    };
    let network = scope.network("net").await;
    let secret = format!("two\nlines-{}", common::suffix());
    let mut spec = scope.spec("bad", &network, "true");
    spec.stdin_secrets = vec![StdinSecret::new(
        "PLANTED_SECRET",
        SecretString::from(secret.clone()),
    )];
    let err = scope.docker.start(&spec).await.expect_err("refused");
    assert!(matches!(err, BackendError::Other(_)), "{err:?}");
    assert!(err.to_string().contains("PLANTED_SECRET"), "{err}");
    assert!(!err.to_string().contains("lines-"), "{err}");
    let live = scope.docker.list(&scope.instance).await.expect("list");
    assert!(
        live.iter().all(|c| c.name != spec.name),
        "a container was created: {live:?}"
    );
}
