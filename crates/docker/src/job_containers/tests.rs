use super::*;
use proxy_runner_domain::job_containers::{
    BindMount, Confinement, ContainerRole, PortProtocol, proxy_labels,
};
use secrecy::SecretString;

fn spec() -> JobContainerSpec {
    JobContainerSpec {
        name: "job-1".into(),
        image: "img:1".into(),
        env: vec![EnvVar::plain("A", "b")],
        entrypoint: Some(vec!["tail".into(), "-f".into(), "/dev/null".into()]),
        command: None,
        working_dir: Some("/__w/repo/repo".into()),
        user: None,
        hostname: Some("box".into()),
        mounts: vec![BindMount {
            source: "/srv/_work".into(),
            target: "/__w".into(),
            read_only: false,
        }],
        labels: proxy_labels("inst", "octo/repo", Uuid::nil(), ContainerRole::Job),
        network: "pr-net".into(),
        network_aliases: vec!["redis".into()],
        confinement: Confinement {
            capabilities: vec!["CHOWN".into(), "SETUID".into()],
            read_only_root_filesystem: false,
            tmpfs: vec![],
            pids_limit: 100,
            memory_bytes: 1 << 30,
            nano_cpus: 500_000_000,
        },
        ports: vec![
            PortMapping {
                container_port: 8080,
                protocol: PortProtocol::Tcp,
                host_port: Some(80),
                host_ip: None,
                publish: false,
            },
            PortMapping {
                container_port: 53,
                protocol: PortProtocol::Udp,
                host_port: None,
                host_ip: Some("127.0.0.1".into()),
                publish: true,
            },
        ],
        init: true,
    }
}

#[test]
fn confinement_maps_to_a_locked_down_host_config() {
    let hc = proxy_host_config(&spec(), "64m");
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        hc.cap_add,
        Some(vec!["CHOWN".to_string(), "SETUID".to_string()])
    );
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.ipc_mode.as_deref(), Some("private"));
    assert_eq!(hc.pid_mode, None);
    assert_eq!(hc.pids_limit, Some(100));
    assert_eq!(hc.memory, Some(1 << 30));
    assert_eq!(hc.memory_swap, Some(1 << 30));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.readonly_rootfs, Some(false));
    assert_eq!(hc.auto_remove, Some(false));
    assert_eq!(hc.init, Some(true));
    assert_eq!(hc.network_mode.as_deref(), Some("pr-net"));
    assert_eq!(hc.binds, None);
    let mounts = hc.mounts.expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].typ, Some(MountType::BIND));
    assert_eq!(mounts[0].source.as_deref(), Some("/srv/_work"));
    assert_eq!(mounts[0].read_only, Some(false));
    // Only the mapping marked publish is bound on the host.
    let bindings = hc.port_bindings.expect("bindings");
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        bindings["53/udp"],
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new()),
        }])
    );
    assert_eq!(hc.tmpfs, None);
}

#[test]
fn create_body_carries_entrypoint_aliases_and_exposed_ports() {
    let body = create_body(&spec(), vec!["A=b".into()], "64m");
    assert_eq!(
        body.entrypoint,
        Some(vec!["tail".into(), "-f".into(), "/dev/null".into()])
    );
    assert_eq!(body.user, None);
    assert_eq!(body.working_dir.as_deref(), Some("/__w/repo/repo"));
    assert_eq!(body.hostname.as_deref(), Some("box"));
    let mut exposed = body.exposed_ports.expect("exposed");
    exposed.sort();
    assert_eq!(exposed, vec!["53/udp".to_string(), "8080/tcp".to_string()]);
    let endpoints = body
        .networking_config
        .and_then(|n| n.endpoints_config)
        .expect("endpoints");
    assert_eq!(endpoints["pr-net"].aliases, Some(vec!["redis".to_string()]));
    assert_eq!(
        body.labels
            .expect("labels")
            .get(labels::ROLE)
            .map(String::as_str),
        Some("job")
    );
}

#[test]
fn read_only_roots_get_tmpfs_owned_by_a_numeric_user() {
    let mut s = spec();
    s.confinement.read_only_root_filesystem = true;
    s.confinement.tmpfs = vec!["/tmp".into()];
    s.user = Some("1001:1001".into());
    let hc = proxy_host_config(&s, "8m");
    assert_eq!(
        hc.tmpfs.expect("tmpfs")["/tmp"],
        "rw,exec,nosuid,nodev,size=8m,mode=1777,uid=1001,gid=1001"
    );
    assert_eq!(
        tmpfs_options(Some("runner"), "1m"),
        "rw,exec,nosuid,nodev,size=1m,mode=1777"
    );
}

#[test]
fn prepend_path_goes_before_the_containers_path() {
    let env = vec![EnvVar::plain("A", "1")];
    let container = vec![
        "HOME=/root".to_string(),
        "PATH=/opt/bin:/usr/bin".to_string(),
    ];
    let out = with_prepended_path(&env, &["/x/bin".into(), "/y/bin".into()], &container);
    let path: Vec<String> = out
        .iter()
        .filter(|v| v.name == "PATH")
        .map(|v| match &v.value {
            EnvValue::Plain(p) => p.clone(),
            EnvValue::Secret(_) => panic!("plain"),
        })
        .collect();
    assert_eq!(path, vec!["/x/bin:/y/bin:/opt/bin:/usr/bin".to_string()]);
    assert!(out.iter().any(|v| v.name == "A"));

    let defaulted = with_prepended_path(&env, &["/x".into()], &[]);
    assert!(defaulted.iter().any(|v| v.name == "PATH"
        && matches!(&v.value, EnvValue::Plain(p) if p == &format!("/x:{DEFAULT_PATH}"))));

    let own = vec![EnvVar::plain("PATH", "/own")];
    let out = with_prepended_path(&own, &["/x".into()], &container);
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0].value, EnvValue::Plain(p) if p == "/x:/own"));

    // Nothing to prepend: the env is left as it is.
    assert_eq!(with_prepended_path(&env, &[], &container).len(), 1);
}

#[test]
fn secrets_are_listed_for_redaction() {
    let env = vec![
        EnvVar::plain("A", "plain"),
        EnvVar::secret("T", SecretString::from("s3cret")),
    ];
    assert_eq!(secret_values(&env), vec!["s3cret"]);
}

#[test]
fn image_references_split_into_repository_and_tag() {
    assert_eq!(split_reference("node"), ("node".into(), "latest".into()));
    assert_eq!(split_reference("node:22"), ("node".into(), "22".into()));
    assert_eq!(
        split_reference("localhost:5000/octo/tool"),
        ("localhost:5000/octo/tool".into(), "latest".into())
    );
    assert_eq!(
        split_reference("localhost:5000/octo/tool:1.2"),
        ("localhost:5000/octo/tool".into(), "1.2".into())
    );
    assert_eq!(
        split_reference("ghcr.io/octo/tool@sha256:abc"),
        ("ghcr.io/octo/tool".into(), "sha256:abc".into())
    );
}

#[test]
fn published_ports_read_back_host_ports() {
    let ports = HashMap::from([
        (
            "80/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some("49153".into()),
            }]),
        ),
        ("81/tcp".to_string(), None),
    ]);
    assert_eq!(
        published_ports(Some(ports)),
        BTreeMap::from([("80/tcp".to_string(), "49153".to_string())])
    );
    assert!(published_ports(None).is_empty());
}

#[tokio::test]
async fn step_streams_end_after_the_exit_code_or_the_first_error() {
    let frames = futures::stream::iter(vec![
        Ok(LogOutput::StdOut {
            message: bytes::Bytes::from_static(b"out"),
        }),
        Ok(LogOutput::StdErr {
            message: bytes::Bytes::from_static(b"err"),
        }),
    ]);
    let items: Vec<_> = step_stream(frames, Box::pin(async { Ok(3) }), Box::new(()))
        .collect()
        .await;
    assert_eq!(
        items,
        vec![
            Ok(StepOutput::Stdout(bytes::Bytes::from_static(b"out"))),
            Ok(StepOutput::Stderr(bytes::Bytes::from_static(b"err"))),
            Ok(StepOutput::Exit(3)),
        ]
    );
    let failing = futures::stream::iter(vec![
        Err(EngineError::RequestTimeoutError),
        Ok(LogOutput::StdOut {
            message: bytes::Bytes::from_static(b"never"),
        }),
    ]);
    let items: Vec<_> = step_stream(failing, Box::pin(async { Ok(0) }), Box::new(()))
        .collect()
        .await;
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(BackendError::DaemonUnreachable(_))));
}
