//! Auto-removal, network clean-up, listing and exit events.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use proxy_runner_docker::{DockerBackend, DockerOptions};
use proxy_runner_domain::ports::{ContainerBackend, ContainerEvent};
use uuid::Uuid;

#[tokio::test]
async fn auto_removed_containers_vanish_and_then_their_network_can_go() {
    let Some(scope) = common::Scope::new("autoremove").await else {
        return;
    };
    let network = scope.network("net").await;

    // A process that exits by itself takes its container with it.
    let mut quick = scope.spec("quick", &network, "exit 0");
    quick.auto_remove = true;
    let quick = scope.docker.start(&quick).await.expect("started");
    assert!(scope.wait_gone(&quick.id).await, "auto-removed after exit");

    let mut long = scope.spec("long", &network, "sleep 60");
    long.auto_remove = true;
    let long = scope.docker.start(&long).await.expect("started");
    assert!(
        !scope
            .docker
            .remove_network_if_unused(&network)
            .await
            .expect("inspect"),
        "network removed while a container is attached"
    );
    let client = scope.docker.client().await.expect("client");
    assert!(client.inspect_network(&network, None).await.is_ok());

    scope
        .docker
        .stop(&long.id, Duration::from_secs(1))
        .await
        .expect("stopped");
    assert!(scope.wait_gone(&long.id).await, "auto-removed after stop");
    assert!(
        scope
            .docker
            .remove_network_if_unused(&network)
            .await
            .expect("removed")
    );
    assert!(client.inspect_network(&network, None).await.is_err());
    // Already gone: nothing to do.
    assert!(
        !scope
            .docker
            .remove_network_if_unused(&network)
            .await
            .expect("gone is fine")
    );
}

#[tokio::test]
async fn networks_of_other_instances_are_left_alone() {
    let Some(scope) = common::Scope::new("other-instance").await else {
        return;
    };
    let network = scope.network("net").await;
    let stranger = DockerBackend::connect(DockerOptions {
        instance: Some("someone-else".into()),
        ..DockerOptions::default()
    })
    .await
    .expect("backend");
    assert!(
        !stranger
            .remove_network_if_unused(&network)
            .await
            .expect("ok")
    );
    let mine = DockerBackend::connect(DockerOptions {
        instance: Some(scope.instance.clone()),
        ..DockerOptions::default()
    })
    .await
    .expect("backend");
    assert!(mine.remove_network_if_unused(&network).await.expect("ok"));
}

#[tokio::test]
async fn list_shows_only_the_instances_containers() {
    let Some(scope) = common::Scope::new("list").await else {
        return;
    };
    let Some(other) = common::Scope::new("list-other").await else {
        return;
    };
    let network = scope.network("net").await;
    let other_network = other.network("net").await;
    let mine = scope
        .docker
        .start(&scope.spec("c", &network, "sleep 60"))
        .await
        .expect("started");
    other
        .docker
        .start(&other.spec("c", &other_network, "sleep 60"))
        .await
        .expect("started");

    let listed = scope.docker.list(&scope.instance).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, mine.id);
    assert_eq!(listed[0].name, scope.name("c"));
    assert!(listed[0].running);
    assert_eq!(
        listed[0]
            .labels
            .get(proxy_runner_domain::ports::labels::INSTANCE),
        Some(&scope.instance)
    );
}

#[tokio::test]
async fn exit_events_carry_exit_codes_and_job_ids() {
    let Some(scope) = common::Scope::new("events").await else {
        return;
    };
    let network = scope.network("net").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = scope.docker.events(&scope.instance);
    let pump = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });

    // The subscription is live once a sentinel's exit shows up.
    let mut sentinels = HashSet::new();
    let mut subscribed = false;
    'outer: for attempt in 0..30 {
        let mut spec = scope.spec(&format!("sentinel-{attempt}"), &network, "exit 0");
        spec.auto_remove = true;
        let started = scope.docker.start(&spec).await.expect("sentinel");
        sentinels.insert(started.id);
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                event = rx.recv() => {
                    let event = event.expect("stream open").expect("event");
                    let ContainerEvent::Exited { container_id, .. } = event;
                    if sentinels.contains(&container_id) {
                        subscribed = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    assert!(subscribed, "no event from any sentinel");

    let mut expected = Vec::new();
    for (what, code) in [("ok", 0), ("three", 3)] {
        let spec = scope.spec(what, &network, &format!("exit {code}"));
        let job_id = spec
            .labels
            .get(proxy_runner_domain::ports::labels::JOB_ID)
            .and_then(|v| Uuid::parse_str(v).ok())
            .expect("job id label");
        let started = scope.docker.start(&spec).await.expect("started");
        expected.push(ContainerEvent::Exited {
            container_id: started.id,
            job_id: Some(job_id),
            exit_code: code,
        });
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("events arrive")
            .expect("stream open")
            .expect("event");
        let ContainerEvent::Exited { container_id, .. } = &event;
        if !sentinels.contains(container_id) {
            seen.push(event);
        }
    }
    for event in &expected {
        assert!(seen.contains(event), "missing {event:?} in {seen:?}");
    }
    pump.abort();
}

#[tokio::test]
async fn events_of_an_unreachable_engine_end_after_an_error() {
    let backend = DockerBackend::connect(DockerOptions::with_host("unix:///nonexistent.sock"))
        .await
        .expect("backend");
    let items: Vec<_> = backend.events("x").collect().await;
    assert_eq!(items.len(), 1);
    assert!(matches!(
        items[0],
        Err(proxy_runner_domain::ports::BackendError::DaemonUnreachable(
            _
        ))
    ));
}
