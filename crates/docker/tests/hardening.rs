//! Job containers are created hardened, verified by inspecting them and by
//! probing from inside.

mod common;

use std::time::Duration;

use proxy_runner_docker::HOST_GATEWAY_ENTRY;
use proxy_runner_domain::ports::ContainerBackend;

#[tokio::test]
async fn created_container_carries_the_hardening() {
    let Some(scope) = common::Scope::new("hardening").await else {
        return;
    };
    let network = scope.network("net").await;
    let mut spec = scope.spec("c", &network, "sleep 60");
    spec.auto_remove = true;
    let started = scope.docker.start(&spec).await.expect("started");
    assert_eq!(started.name, spec.name);

    let client = scope.docker.client().await.expect("client");
    let info = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect");
    let host = info.host_config.expect("host config");
    let wanted = &spec.hardening;
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(host.cap_add.unwrap_or_default(), Vec::<String>::new());
    assert!(
        host.security_opt
            .unwrap_or_default()
            .contains(&"no-new-privileges:true".to_string())
    );
    assert_ne!(host.privileged, Some(true));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.pids_limit, Some(wanted.pids_limit));
    assert_eq!(host.memory, Some(wanted.memory_bytes));
    assert_eq!(host.nano_cpus, Some(wanted.nano_cpus));
    assert_eq!(host.auto_remove, Some(true));
    assert_eq!(host.network_mode.as_deref(), Some(network.as_str()));
    assert!(
        host.extra_hosts
            .unwrap_or_default()
            .contains(&HOST_GATEWAY_ENTRY.to_string())
    );
    let tmpfs = host.tmpfs.unwrap_or_default();
    let mut tmpfs_paths: Vec<&String> = tmpfs.keys().collect();
    tmpfs_paths.sort();
    assert_eq!(tmpfs_paths, vec!["/home/runner", "/tmp"]);
    assert!(
        tmpfs
            .values()
            .all(|o| o.contains("nosuid") && o.contains("nodev"))
    );
    assert_eq!(host.binds.unwrap_or_default(), Vec::<String>::new());
    assert_eq!(host.mounts.unwrap_or_default(), vec![]);
    // No mount of the host at all, so no engine socket either.
    assert_eq!(info.mounts.unwrap_or_default(), vec![]);
    let config = info.config.expect("config");
    assert_eq!(config.user.as_deref(), Some("1001:1001"));
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"PROBE=1".to_string())
    );
    assert_eq!(
        config
            .labels
            .unwrap_or_default()
            .get(proxy_runner_domain::ports::labels::INSTANCE),
        Some(&scope.instance)
    );

    scope
        .docker
        .stop(&started.id, Duration::from_secs(1))
        .await
        .expect("stopped");
    assert!(
        scope.wait_gone(&started.id).await,
        "auto-removed after stop"
    );
}

/// Exit 0 only for a non-root user without capabilities or new privileges,
/// a read-only root and writable tmpfs mounts that allow executing (the
/// runner runs from its home).
const PROBE: &str = r#"
[ "$(awk '$2 == "/" {split($4, o, ","); print o[1]}' /proc/mounts)" = ro ] || exit 10
if touch /probe 2>/dev/null; then echo "root filesystem is writable"; exit 17; fi
touch /tmp/probe || exit 11
touch /home/runner/probe || exit 12
cp /bin/busybox /home/runner/true && /home/runner/true || exit 18
[ "$(id -u)" = 1001 ] || exit 13
[ "$(id -g)" = 1001 ] || exit 14
[ "$(awk '/^CapEff/ {print $2}' /proc/self/status)" = 0000000000000000 ] || exit 15
[ "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)" = 1 ] || exit 16
exit 0
"#;

#[tokio::test]
async fn root_filesystem_is_read_only_and_tmpfs_is_writable() {
    let Some(scope) = common::Scope::new("readonly").await else {
        return;
    };
    let network = scope.network("net").await;

    let spec = scope.spec("probe", &network, PROBE);
    let started = scope.docker.start(&spec).await.expect("started");
    let code = scope.docker.wait(&started.id).await.expect("exit code");
    let logs = scope.docker.logs(&started.id).await.unwrap_or_default();
    assert_eq!(code, 0, "probe failed: {logs}");

    // The same probe must notice a writable root (so it can fail).
    let mut writable = scope.spec("control", &network, PROBE);
    writable.hardening.read_only_root_filesystem = false;
    let started = scope.docker.start(&writable).await.expect("started");
    assert_eq!(scope.docker.wait(&started.id).await.expect("exit code"), 10);
}
