//! The production runner image's entrypoint script, run under the job
//! hardening (read-only root, uid 1001) against a stand-in runner: it must
//! pass the JIT config, scrub secrets from the environment and keep the
//! listener's exit code.

mod common;

use proxy_runner_domain::ports::{ContainerBackend, EnvVar};
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
echo "env: token=${RUNNER_TOKEN:-unset} jit=${ACTIONS_RUNNER_INPUT_JITCONFIG:-unset} pwd=$(pwd)"
exit 7
X
cat > /tmp/dist/config.sh <<'X'
#!/bin/sh
echo "config: $*"
echo "config env: token=${RUNNER_TOKEN:-unset}"
X
chmod +x /tmp/dist/bin/Runner.Listener /tmp/dist/config.sh
export RUNNER_DIST=/tmp/dist HOME=/home/runner
"#;

async fn run(scope: &common::Scope, what: &str, env: Vec<EnvVar>) -> (i64, String) {
    let network = scope.network("net").await;
    let script = format!("{FAKE_DIST}\n{ENTRYPOINT}");
    let mut spec = scope.spec(what, &network, &script);
    spec.env.extend(env);
    let started = scope.docker.start(&spec).await.expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.expect("logs");
    (code, logs)
}

#[tokio::test]
async fn jit_mode_runs_the_listener_with_the_config_and_keeps_its_exit_code() {
    let Some(scope) = common::Scope::new("entry-jit").await else {
        return;
    };
    let (code, logs) = run(
        &scope,
        "jit",
        vec![EnvVar::secret(
            "ACTIONS_RUNNER_INPUT_JITCONFIG",
            SecretString::from("eyJqaXQiOiJjb25maWcifQ=="),
        )],
    )
    .await;
    assert_eq!(code, 7, "{logs}");
    assert!(
        logs.contains("listener: run --jitconfig eyJqaXQiOiJjb25maWcifQ=="),
        "{logs}"
    );
    assert!(
        logs.contains("env: token=unset jit=unset pwd=/home/runner/actions-runner"),
        "{logs}"
    );
}

#[tokio::test]
async fn token_mode_configures_ephemerally_then_runs_the_listener() {
    let Some(scope) = common::Scope::new("entry-token").await else {
        return;
    };
    let (code, logs) = run(
        &scope,
        "token",
        vec![
            EnvVar::plain("GITHUB_URL", "http://host.docker.internal:9999/octo/repo"),
            EnvVar::secret("RUNNER_TOKEN", SecretString::from("reg-token-1")),
            EnvVar::plain("RUNNER_NAME", "pr-runner-1"),
            EnvVar::plain("RUNNER_LABELS", "self-hosted,linux"),
        ],
    )
    .await;
    assert_eq!(code, 7, "{logs}");
    assert!(
        logs.contains(
            "config: --unattended --ephemeral --disableupdate \
             --url http://host.docker.internal:9999/octo/repo --name pr-runner-1 \
             --work _work --labels self-hosted,linux --token reg-token-1"
        ),
        "{logs}"
    );
    assert!(logs.contains("config env: token=unset"), "{logs}");
    assert!(logs.contains("listener: run\n"), "{logs}");
    assert!(logs.contains("env: token=unset jit=unset"), "{logs}");
}

#[tokio::test]
async fn missing_configuration_is_a_usage_error() {
    let Some(scope) = common::Scope::new("entry-none").await else {
        return;
    };
    let (code, logs) = run(&scope, "none", vec![]).await;
    assert_eq!(code, 64, "{logs}");
    assert!(logs.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"), "{logs}");
}
