//! One network per repository; networks are isolated from each other.

mod common;

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptions;
use proxy_runner_docker::{DockerBackend, DockerOptions};
use proxy_runner_domain::ports::{BackendError, ContainerBackend, NetworkSpec};

/// Serves `pong` on port 8080 to every connection.
const LISTENER: &str = "while true; do echo pong | nc -l -p 8080; done";

/// Exit 0 when `pong` came back from `ip`:8080 (a few tries, for the
/// listener's start-up), 1 otherwise.
fn client(ip: &str, tries: u32) -> String {
    format!(
        "i=0; while [ $i -lt {tries} ]; do \
           if nc -w 2 {ip} 8080 </dev/null | grep -q pong; then exit 0; fi; \
           i=$((i+1)); sleep 1; \
         done; exit 1"
    )
}

#[tokio::test]
async fn repositories_get_separate_isolated_networks() {
    let Some(scope) = common::Scope::new("isolation").await else {
        return;
    };
    let net_a = scope.network("repo-a").await;
    let net_b = scope.network("repo-b").await;
    assert_ne!(net_a, net_b);

    let listener_a = scope
        .docker
        .start(&scope.spec("listener-a", &net_a, LISTENER))
        .await
        .expect("listener a");
    let listener_b = scope
        .docker
        .start(&scope.spec("listener-b", &net_b, LISTENER))
        .await
        .expect("listener b");
    let ip_a = scope.ip_of(&listener_a.id, &net_a).await;
    let ip_b = scope.ip_of(&listener_b.id, &net_b).await;

    // Controls first: each listener is reachable from its own network.
    let a_to_a = scope
        .docker
        .start(&scope.spec("a-to-a", &net_a, &client(&ip_a, 10)))
        .await
        .expect("client a");
    assert_eq!(scope.docker.wait(&a_to_a.id).await.expect("exit"), 0);
    let b_to_b = scope
        .docker
        .start(&scope.spec("b-to-b", &net_b, &client(&ip_b, 10)))
        .await
        .expect("client b");
    assert_eq!(scope.docker.wait(&b_to_b.id).await.expect("exit"), 0);

    // Across repositories: nothing gets through.
    let a_to_b = scope
        .docker
        .start(&scope.spec("a-to-b", &net_a, &client(&ip_b, 2)))
        .await
        .expect("client a to b");
    assert_eq!(
        scope.docker.wait(&a_to_b.id).await.expect("exit"),
        1,
        "a container of repository A reached repository B's network"
    );
}

#[tokio::test]
async fn ensure_network_is_idempotent_under_concurrency() {
    let Some(scope) = common::Scope::new("ensure-net").await else {
        return;
    };
    // Two backends do not share the in-process lock: the engine must
    // still end up with exactly one network of that name.
    let other = DockerBackend::connect(DockerOptions::default())
        .await
        .expect("second backend");
    let spec = NetworkSpec {
        name: scope.name("shared"),
        labels: scope.labels(None),
    };
    let mut tasks = Vec::new();
    for i in 0..6 {
        let backend = if i % 2 == 0 {
            scope.docker.clone()
        } else {
            other.clone()
        };
        let spec = spec.clone();
        tasks.push(tokio::spawn(
            async move { backend.ensure_network(&spec).await },
        ));
    }
    for task in tasks {
        task.await.expect("task").expect("ensure_network ok");
    }
    scope.docker.ensure_network(&spec).await.expect("again ok");

    let client = scope.docker.client().await.expect("client");
    let networks = client
        .list_networks(Some(ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![spec.name.clone()],
            )])),
        }))
        .await
        .expect("list");
    let exact: Vec<_> = networks
        .iter()
        .filter(|n| n.name.as_deref() == Some(spec.name.as_str()))
        .collect();
    assert_eq!(exact.len(), 1, "duplicate networks: {exact:?}");
    let labels = exact[0].labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(proxy_runner_domain::ports::labels::INSTANCE),
        Some(&scope.instance)
    );
    assert_eq!(exact[0].driver.as_deref(), Some("bridge"));
    assert_eq!(exact[0].internal, Some(false));

    // The engine itself refuses a second network of that name (the
    // transport asks it to check for duplicates).
    let duplicate = client
        .create_network(NetworkCreateRequest {
            name: spec.name.clone(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            duplicate,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                ..
            })
        ),
        "{duplicate:?}"
    );
}

#[tokio::test]
async fn a_foreign_network_of_the_same_name_is_refused() {
    let Some(mut scope) = common::Scope::new("foreign-net").await else {
        return;
    };
    let name = scope.name("foreign");
    scope.own_network(&name);
    let client = scope.docker.client().await.expect("client");
    client
        .create_network(NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await
        .expect("foreign network");
    let result = scope
        .docker
        .ensure_network(&NetworkSpec {
            name: name.clone(),
            labels: scope.labels(None),
        })
        .await;
    assert!(
        matches!(result, Err(BackendError::Other(ref m)) if m.contains("not created by proxy-runner")),
        "{result:?}"
    );
    // And it is not ours to remove either.
    assert!(
        !scope
            .docker
            .remove_network_if_unused(&name)
            .await
            .expect("ok")
    );
}

#[tokio::test]
async fn our_networks_are_listed_with_their_labels() {
    let Some(scope) = common::Scope::new("net-list").await else {
        return;
    };
    let net = scope.network("repo-listed").await;
    let listed = scope
        .docker
        .list_networks(&scope.instance)
        .await
        .expect("networks listed");
    let ours = listed
        .iter()
        .find(|n| n.name == net)
        .unwrap_or_else(|| panic!("{net} not in {listed:?}"));
    assert_eq!(
        ours.labels
            .get(proxy_runner_domain::ports::labels::INSTANCE),
        Some(&scope.instance)
    );
    assert!(
        listed.iter().all(
            |n| n.labels.get(proxy_runner_domain::ports::labels::INSTANCE) == Some(&scope.instance)
        ),
        "only this instance's networks"
    );
}
