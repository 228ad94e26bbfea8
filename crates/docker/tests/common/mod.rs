//! Shared helpers for the tests that talk to a real Docker engine.
//!
//! Every test gets a [`Scope`]: a unique instance id put on everything it
//! creates, and a guard that removes those containers, networks and images
//! when the test ends, passing or failing.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions, RemoveImageOptions,
};
use proxy_runner_docker::{DockerBackend, DockerOptions, ensure_test_busybox_image};
use proxy_runner_domain::ports::{
    ContainerBackend, ContainerSpec, EnvVar, Hardening, NetworkSpec, labels,
};
use uuid::Uuid;

/// A backend on the local engine, or None (after saying so) when there is
/// no engine and this is not CI. In CI a missing engine fails the test.
pub async fn docker_or_skip() -> Option<DockerBackend> {
    let backend = DockerBackend::connect(DockerOptions::default())
        .await
        .expect("backend construction never needs the engine");
    match backend.ping().await {
        Ok(()) => Some(backend),
        Err(err) => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!("docker not reachable in CI: {err}");
            }
            println!("skipping: docker not reachable ({err})");
            None
        }
    }
}

/// Random enough to keep parallel tests (and parallel runs) apart.
pub fn suffix() -> String {
    let simple = Uuid::now_v7().simple().to_string();
    simple[simple.len() - 12..].to_string()
}

pub struct Scope {
    pub docker: DockerBackend,
    pub instance: String,
    pub image: String,
    images: Vec<String>,
    networks: Vec<String>,
}

impl Scope {
    /// Connects (or skips) and makes sure the busybox test image exists.
    pub async fn new(test: &str) -> Option<Scope> {
        let docker = docker_or_skip().await?;
        // The probes use busybox's applets (nc, awk, ...): Debian's
        // busybox-static, which CI installs.
        if !std::path::Path::new(proxy_runner_docker::image::DEFAULT_BUSYBOX).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "busybox-static is required in CI (apt-get install busybox-static)"
            );
            eprintln!("skipping: busybox-static is not installed");
            return None;
        }
        let image = ensure_test_busybox_image(&docker)
            .await
            .expect("busybox test image builds");
        Some(Scope {
            docker,
            instance: format!("test-{test}-{}", suffix()),
            image,
            images: Vec::new(),
            networks: Vec::new(),
        })
    }

    /// A name unique to this scope.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.instance)
    }

    /// Removes this image too when the scope ends.
    pub fn own_image(&mut self, tag: &str) {
        self.images.push(tag.to_string());
    }

    /// Removes this (unlabelled) network too when the scope ends.
    pub fn own_network(&mut self, name: &str) {
        self.networks.push(name.to_string());
    }

    pub fn labels(&self, job_id: Option<Uuid>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (labels::INSTANCE.to_string(), self.instance.clone()),
            (labels::REPOSITORY.to_string(), "octo/test".to_string()),
        ]);
        if let Some(job) = job_id {
            labels.insert(labels::JOB_ID.to_string(), job.to_string());
        }
        labels
    }

    /// Creates (idempotently) a network of this scope.
    pub async fn network(&self, what: &str) -> String {
        let name = self.name(what);
        self.docker
            .ensure_network(&NetworkSpec {
                name: name.clone(),
                labels: self.labels(None),
            })
            .await
            .expect("network created");
        name
    }

    /// A hardened spec running `script` with busybox `sh -c`.
    pub fn spec(&self, what: &str, network: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: self.name(what),
            image: self.image.clone(),
            env: vec![EnvVar::plain("PROBE", "1")],
            stdin_secrets: vec![],
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            labels: self.labels(Some(Uuid::now_v7())),
            network: network.to_string(),
            hardening: Hardening {
                tmpfs: tmpfs_small(),
                ..Hardening::default()
            }
            .with_small_limits(),
            auto_remove: false,
        }
    }

    /// The IP address of a container on a network.
    pub async fn ip_of(&self, container: &str, network: &str) -> String {
        let client = self.docker.client().await.expect("client");
        let info = client
            .inspect_container(container, None)
            .await
            .expect("inspect");
        info.network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get(network).cloned())
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .expect("container has an address on the network")
    }

    /// Whether the container still exists.
    pub async fn container_exists(&self, container: &str) -> bool {
        let client = self.docker.client().await.expect("client");
        match client.inspect_container(container, None).await {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(err) => panic!("inspect failed: {err}"),
        }
    }

    /// Polls until the container is gone (bounded).
    pub async fn wait_gone(&self, container: &str) -> bool {
        for _ in 0..100 {
            if !self.container_exists(container).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Small tmpfs mounts keep test containers light.
fn tmpfs_small() -> Vec<String> {
    vec!["/tmp".into(), "/home/runner".into()]
}

trait SmallLimits {
    fn with_small_limits(self) -> Self;
}

impl SmallLimits for Hardening {
    fn with_small_limits(mut self) -> Self {
        self.memory_bytes = 64 * 1024 * 1024;
        self.pids_limit = 64;
        self.nano_cpus = 500_000_000;
        self
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let instance = self.instance.clone();
        let images = std::mem::take(&mut self.images);
        let networks = std::mem::take(&mut self.networks);
        // Drop cannot await; clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(cleanup(docker, instance, images, networks));
        });
        let _ = cleanup.join();
    }
}

async fn cleanup(
    docker: DockerBackend,
    instance: String,
    images: Vec<String>,
    networks: Vec<String>,
) {
    let Ok(client) = docker.client().await else {
        return;
    };
    let filter = HashMap::from([(
        "label".to_string(),
        vec![format!("{}={instance}", labels::INSTANCE)],
    )]);
    if let Ok(containers) = client
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filter.clone()),
            ..Default::default()
        }))
        .await
    {
        for id in containers.into_iter().filter_map(|c| c.id) {
            let _ = client
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
    if let Ok(networks) = client
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter),
        }))
        .await
    {
        for id in networks.into_iter().filter_map(|n| n.id) {
            let _ = client.remove_network(&id).await;
        }
    }
    for network in networks {
        let _ = client.remove_network(&network).await;
    }
    for image in images {
        let _ = client
            .remove_image(
                &image,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
    }
}
