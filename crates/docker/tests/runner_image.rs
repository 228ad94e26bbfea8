//! The local runner image builds from an executable on this machine and
//! runs hardened: read-only root, uid 1001, tmpfs for /tmp and home.

mod common;

use proxy_runner_docker::image::RUNNER_BINARY_PATH;
use proxy_runner_docker::{RunnerImageOptions, build_runner_image, ensure_runner_image};
use proxy_runner_domain::ports::ContainerBackend;

#[tokio::test]
async fn runner_image_builds_from_a_binary_and_runs_read_only() {
    let Some(mut scope) = common::Scope::new("runner-image").await else {
        return;
    };
    // This very test executable stands in for proxy-runner: it is a real
    // dynamically linked Rust program and answers `--list`.
    let binary = std::env::current_exe().expect("test executable");
    let tag = format!("proxy-runner-test-runner:{}", common::suffix());
    scope.own_image(&tag);
    let mut options = RunnerImageOptions::new(&tag, &binary);
    options.entrypoint = vec![RUNNER_BINARY_PATH.to_string()];
    options.command = Some(vec!["--list".to_string()]);

    assert!(
        ensure_runner_image(&scope.docker, &options)
            .await
            .expect("built")
    );
    assert!(scope.docker.image_exists(&tag).await.expect("inspect"));
    assert!(
        !ensure_runner_image(&scope.docker, &options)
            .await
            .expect("present"),
        "a present image is not rebuilt"
    );
    let client = scope.docker.client().await.expect("client");
    let inspected = client.inspect_image(&tag).await.expect("inspect");
    let config = inspected.config.expect("config");
    assert_eq!(config.user.as_deref(), Some("1001:1001"));
    assert_eq!(
        config
            .labels
            .unwrap_or_default()
            .get(proxy_runner_docker::IMAGE_LABEL)
            .map(String::as_str),
        Some("runner")
    );

    let network = scope.network("net").await;
    // The binary runs inside, under the default hardening.
    let mut spec = scope.spec("list", &network, "unused");
    spec.image = tag.clone();
    spec.command = None;
    let started = scope.docker.start(&spec).await.expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.expect("logs");
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("runner_image_builds_from_a_binary_and_runs_read_only: test"),
        "{logs}"
    );

    // A shell in the same image: uid 1001, read-only root, writable tmpfs.
    let probe = r#"
[ "$(id -u):$(id -g)" = 1001:1001 ] || exit 11
[ "$(awk '$2 == "/" {split($4, o, ","); print o[1]}' /proc/mounts)" = ro ] || exit 12
if touch /usr/local/bin/x 2>/dev/null; then exit 13; fi
touch /tmp/x /home/runner/x || exit 14
[ -x /usr/local/bin/proxy-runner ] || exit 15
grep -q '^runner:x:1001:1001:' /etc/passwd || exit 16
exit 0
"#;
    let mut shell = scope.spec("shell", &network, probe);
    shell.image = tag.clone();
    let started = scope
        .docker
        .start_with_entrypoint(&shell, Some(vec![]))
        .await
        .expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.unwrap_or_default();
    assert_eq!(code, 0, "probe failed: {logs}");

    // Rebuilding an existing tag works too.
    build_runner_image(&scope.docker, &options)
        .await
        .expect("rebuilt");
}

#[tokio::test]
async fn building_from_a_missing_binary_fails_cleanly() {
    let Some(scope) = common::Scope::new("runner-image-missing").await else {
        return;
    };
    let options = RunnerImageOptions::new(
        format!("proxy-runner-test-runner:{}", common::suffix()),
        "/nonexistent/proxy-runner",
    );
    let err = build_runner_image(&scope.docker, &options)
        .await
        .expect_err("no binary");
    assert!(
        matches!(err, proxy_runner_domain::ports::BackendError::Other(_)),
        "{err:?}"
    );
    assert!(
        !scope
            .docker
            .image_exists(&options.tag)
            .await
            .expect("inspect")
    );
}

#[tokio::test]
async fn without_busybox_the_image_gets_the_hosts_shell_and_tools() {
    let Some(mut scope) = common::Scope::new("runner-image-host").await else {
        return;
    };
    let binary = std::env::current_exe().expect("test executable");
    let tag = format!("proxy-runner-test-runner:{}", common::suffix());
    scope.own_image(&tag);
    let mut options = RunnerImageOptions::new(&tag, &binary);
    options.busybox = "/nonexistent/busybox".into();
    options.entrypoint = vec![RUNNER_BINARY_PATH.to_string()];
    options.command = Some(vec!["--list".to_string()]);
    build_runner_image(&scope.docker, &options)
        .await
        .expect("built without busybox");

    let network = scope.network("net").await;
    // The steps of the demo and common shell use work, hardened as always.
    let probe = r#"
[ "$(id -u):$(id -g)" = 1001:1001 ] || exit 11
if touch /usr/local/bin/x 2>/dev/null; then exit 13; fi
touch /tmp/x /home/runner/x || exit 14
echo "on $(hostname) $(uname -s)" | grep -q "on .* Linux" || exit 15
sleep 0.1 && date >/dev/null && ls / | grep -q tmp || exit 16
/usr/local/bin/proxy-runner --list | grep -q ": test" || exit 17
exit 0
"#;
    let mut shell = scope.spec("shell", &network, probe);
    shell.image = tag.clone();
    let started = scope
        .docker
        .start_with_entrypoint(&shell, Some(vec![]))
        .await
        .expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit");
    let logs = scope.docker.logs(&started.id).await.unwrap_or_default();
    assert_eq!(code, 0, "probe failed: {logs}");
}
