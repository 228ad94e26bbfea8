//! Error mapping against a real engine (and against no engine at all).

mod common;

use std::time::Duration;

use proxy_runner_docker::{DockerBackend, DockerOptions};
use proxy_runner_domain::ports::{BackendError, ContainerBackend};

#[tokio::test]
async fn unreachable_daemon_is_reported_by_ping_and_start() {
    let backend = DockerBackend::connect(DockerOptions::with_host("unix:///nonexistent.sock"))
        .await
        .expect("construction succeeds without an engine");
    assert_eq!(backend.kind(), "docker");
    let ping = backend.ping().await;
    assert!(
        matches!(ping, Err(BackendError::DaemonUnreachable(ref m)) if m.contains("/nonexistent.sock")),
        "{ping:?}"
    );
    let spec = proxy_runner_domain::ports::ContainerSpec {
        name: "never".into(),
        image: "whatever:1".into(),
        env: vec![],
        stdin_secrets: vec![],
        command: None,
        labels: Default::default(),
        network: "none".into(),
        hardening: Default::default(),
        auto_remove: true,
    };
    let started = backend.start(&spec).await;
    assert!(
        matches!(started, Err(BackendError::DaemonUnreachable(_))),
        "{started:?}"
    );
    assert!(matches!(
        backend.list("x").await,
        Err(BackendError::DaemonUnreachable(_))
    ));
}

#[tokio::test]
async fn refused_tcp_connection_is_unreachable() {
    // Bind then drop a listener: the port is (very likely) closed afterwards.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let backend =
        DockerBackend::connect(DockerOptions::with_host(format!("tcp://127.0.0.1:{port}")))
            .await
            .expect("construction succeeds without an engine");
    assert!(matches!(
        backend.ping().await,
        Err(BackendError::DaemonUnreachable(_))
    ));
}

#[tokio::test]
async fn unsupported_host_is_rejected_at_construction() {
    let result = DockerBackend::connect(DockerOptions::with_host("ssh://me@example")).await;
    assert!(matches!(result, Err(BackendError::Other(ref m)) if m.contains("ssh://")));
}

#[tokio::test]
async fn missing_image_is_reported_not_pulled() {
    let Some(scope) = common::Scope::new("missing-image").await else {
        return;
    };
    let network = scope.network("net").await;
    let mut spec = scope.spec("c", &network, "true");
    spec.image = format!("proxy-runner-absent-{}:never", common::suffix());
    let err = scope
        .docker
        .start(&spec)
        .await
        .expect_err("image is absent");
    assert_eq!(
        err,
        BackendError::ImageMissing {
            image: spec.image.clone()
        }
    );
    assert!(err.to_string().contains(&spec.image));
    assert!(!err.is_retryable());
    // And nothing was pulled.
    assert!(
        !scope
            .docker
            .image_exists(&spec.image)
            .await
            .expect("inspect")
    );
}

#[tokio::test]
async fn name_conflict_is_reported() {
    let Some(scope) = common::Scope::new("conflict").await else {
        return;
    };
    let network = scope.network("net").await;
    let spec = scope.spec("c", &network, "sleep 30");
    scope.docker.start(&spec).await.expect("first start");
    let err = scope.docker.start(&spec).await.expect_err("same name");
    assert_eq!(err, BackendError::NameConflict(spec.name.clone()));
}

#[tokio::test]
async fn missing_network_is_retryable_and_leaves_nothing_behind() {
    let Some(scope) = common::Scope::new("no-net").await else {
        return;
    };
    let spec = scope.spec("c", &scope.name("never-created"), "true");
    let err = scope.docker.start(&spec).await.expect_err("no network");
    assert!(err.is_retryable(), "{err:?}");
    assert!(!scope.container_exists(&spec.name).await);
}

#[tokio::test]
async fn stopping_an_unknown_container_is_not_found() {
    let Some(scope) = common::Scope::new("stop-unknown").await else {
        return;
    };
    let err = scope
        .docker
        .stop(&scope.name("ghost"), Duration::from_secs(1))
        .await
        .expect_err("no such container");
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
}
