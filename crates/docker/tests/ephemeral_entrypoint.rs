//! The production runner image's entrypoint script, run under the job
//! hardening (read-only root, uid 1001) against a stand-in runner: it must
//! read the credential from its standard input, hand it to the listener (or
//! config.sh) alone, in its environment and never as an argument, and keep
//! the listener's exit code.

mod common;

use proxy_runner_domain::ports::{ContainerBackend, EnvVar, StdinSecret};
use secrecy::SecretString;

const ENTRYPOINT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docker/ephemeral-runner/entrypoint.sh"
));

/// Lays out a fake runner distribution whose listener and config.sh report
/// their arguments and environment; the listener exits 7.
const FAKE_DIST: &str = r#"
mkdir -p /tmp/dist/bin /tmp/dist/externals
cat > /tmp/dist/bin/Runner.Listener <<'X'
#!/bin/sh
echo "listener: $*"
echo "env: token=${RUNNER_TOKEN:-unset} jit=${ACTIONS_RUNNER_INPUT_JITCONFIG:-unset} input-token=${ACTIONS_RUNNER_INPUT_TOKEN:-unset} pwd=$(pwd)"
echo "stdin: $(cat)."
exit 7
X
cat > /tmp/dist/config.sh <<'X'
#!/bin/sh
echo "config: $*"
echo "config env: token=${RUNNER_TOKEN:-unset} input-token=${ACTIONS_RUNNER_INPUT_TOKEN:-unset}"
X
chmod +x /tmp/dist/bin/Runner.Listener /tmp/dist/config.sh
export RUNNER_DIST=/tmp/dist HOME=/home/runner
"#;

/// Runs the entrypoint with `env` and `stdin` handed over; its exit code,
/// its output and what `docker inspect` shows of the container.
async fn run(
    scope: &common::Scope,
    what: &str,
    env: Vec<EnvVar>,
    stdin: Vec<StdinSecret>,
) -> (i64, String, String) {
    let network = scope.network("net").await;
    let script = format!("{FAKE_DIST}\n{ENTRYPOINT}");
    let mut spec = scope.spec(what, &network, &script);
    spec.env.extend(env);
    spec.stdin_secrets = stdin;
    let started = scope.docker.start(&spec).await.expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.expect("logs");
    let client = scope.docker.client().await.expect("client");
    let inspected = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect");
    let inspected = serde_json::to_string(&inspected).expect("JSON");
    (code, logs, inspected)
}

const JIT: &str = "eyJqaXQiOiJjb25maWcifQ==";

#[tokio::test]
async fn jit_mode_reads_the_config_from_stdin_and_hands_it_to_the_listener_alone() {
    let Some(scope) = common::Scope::new("entry-jit").await else {
        return;
    };
    let (code, logs, inspected) = run(
        &scope,
        "jit",
        vec![],
        vec![StdinSecret::new(
            "ACTIONS_RUNNER_INPUT_JITCONFIG",
            SecretString::from(JIT),
        )],
    )
    .await;
    assert_eq!(code, 7, "{logs}");
    // No argument carries it; the listener's environment does; its stdin is empty.
    assert!(logs.contains("listener: run\n"), "{logs}");
    assert!(
        logs.contains(&format!(
            "env: token=unset jit={JIT} input-token=unset pwd=/home/runner/actions-runner"
        )),
        "{logs}"
    );
    assert!(logs.contains("stdin: ."), "{logs}");
    assert!(!inspected.contains(JIT), "the config is in docker inspect");
}

#[tokio::test]
async fn token_mode_configures_ephemerally_then_runs_the_listener() {
    let Some(scope) = common::Scope::new("entry-token").await else {
        return;
    };
    let (code, logs, inspected) = run(
        &scope,
        "token",
        vec![
            EnvVar::plain("GITHUB_URL", "http://host.docker.internal:9999/octo/repo"),
            EnvVar::plain("RUNNER_NAME", "pr-runner-1"),
            EnvVar::plain("RUNNER_LABELS", "self-hosted,linux"),
        ],
        vec![StdinSecret::new(
            "RUNNER_TOKEN",
            SecretString::from("reg-token-1"),
        )],
    )
    .await;
    assert_eq!(code, 7, "{logs}");
    assert!(
        logs.contains(
            "config: --unattended --ephemeral --disableupdate \
             --url http://host.docker.internal:9999/octo/repo --name pr-runner-1 \
             --work _work --labels self-hosted,linux\n"
        ),
        "{logs}"
    );
    assert!(
        logs.contains("config env: token=unset input-token=reg-token-1"),
        "{logs}"
    );
    assert!(logs.contains("listener: run\n"), "{logs}");
    assert!(
        logs.contains("env: token=unset jit=unset input-token=unset"),
        "{logs}"
    );
    assert!(
        !inspected.contains("reg-token-1"),
        "the token is in docker inspect"
    );
}

#[tokio::test]
async fn a_config_in_the_environment_still_works() {
    let Some(scope) = common::Scope::new("entry-env").await else {
        return;
    };
    let (code, logs, _) = run(
        &scope,
        "env",
        vec![EnvVar::secret(
            "ACTIONS_RUNNER_INPUT_JITCONFIG",
            SecretString::from(JIT),
        )],
        vec![],
    )
    .await;
    assert_eq!(code, 7, "{logs}");
    assert!(logs.contains("listener: run\n"), "{logs}");
    assert!(logs.contains(&format!("jit={JIT}")), "{logs}");
}

#[tokio::test]
async fn missing_or_unexpected_configuration_is_a_usage_error() {
    let Some(scope) = common::Scope::new("entry-none").await else {
        return;
    };
    let (code, logs, _) = run(&scope, "none", vec![], vec![]).await;
    assert_eq!(code, 64, "{logs}");
    assert!(logs.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"), "{logs}");

    let (code, logs, _) = run(
        &scope,
        "other",
        vec![],
        vec![StdinSecret::new(
            "SOMETHING_ELSE",
            SecretString::from("v4lue-9"),
        )],
    )
    .await;
    assert_eq!(code, 64, "{logs}");
    assert!(
        logs.contains("unexpected SOMETHING_ELSE on stdin"),
        "{logs}"
    );
    assert!(!logs.contains("v4lue-9"), "{logs}");
}
