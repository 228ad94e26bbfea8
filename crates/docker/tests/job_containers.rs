//! The proxy path on a real engine: the long-lived job container with the
//! policy applied, steps executed in it (streamed), services reachable by
//! alias on their own network only, container steps run to completion, and
//! clean-up by job label.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use proxy_runner_domain::container_hooks::{HookContainer, Mount, Registry};
use proxy_runner_domain::job_containers::{
    Confinement, ContainerRole, ExecSpec, JobContainerSpec, JobContainers, KEEP_ALIVE_ENTRYPOINT,
    RegistryCredentials, StartedJobContainer, StepOutput, proxy_labels,
};
use proxy_runner_domain::policy::{DOCKER_SOCKET_NOTICE, ProxyPolicy, STANDARD_CAPABILITIES};
use proxy_runner_domain::ports::{BackendError, EnvVar, labels};
use secrecy::SecretString;
use uuid::Uuid;

const REPOSITORY: &str = "octo/test";

/// What a finished step printed and returned.
#[derive(Debug, Default)]
struct Finished {
    stdout: String,
    stderr: String,
    exit: Option<i64>,
}

/// Collects a (small) step; every item after `Exit` would be a bug.
async fn finish(
    stream: Result<proxy_runner_domain::job_containers::StepStream, BackendError>,
) -> Finished {
    let mut stream = stream.expect("step started");
    let mut done = Finished::default();
    while let Some(item) = stream.next().await {
        assert!(done.exit.is_none(), "output after the exit code: {item:?}");
        match item.expect("step output") {
            StepOutput::Stdout(b) => done.stdout.push_str(&String::from_utf8_lossy(&b)),
            StepOutput::Stderr(b) => done.stderr.push_str(&String::from_utf8_lossy(&b)),
            StepOutput::Exit(code) => done.exit = Some(code),
        }
    }
    done
}

fn exec(container: &str, script: &str) -> ExecSpec {
    ExecSpec {
        container_id: container.to_string(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        prepend_path: vec![],
        working_dir: None,
        user: None,
    }
}

/// Folders standing in for the proxy runner's `_work` and `externals`.
struct Roots {
    _dir: tempfile::TempDir,
    work: PathBuf,
    externals: PathBuf,
}

fn roots() -> Roots {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = std::fs::canonicalize(dir.path()).expect("canonical");
    let work = base.join("_work");
    let externals = base.join("externals");
    for sub in ["_temp", "repo/repo"] {
        std::fs::create_dir_all(work.join(sub)).expect("work dirs");
    }
    std::fs::create_dir_all(&externals).expect("externals");
    std::fs::write(externals.join("tool.txt"), "from externals\n").expect("write");
    // Writable for the image's user, so only a read-only mount stops a write.
    use std::os::unix::fs::PermissionsExt;
    for dir in [work.join("_temp"), externals.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    Roots {
        _dir: dir,
        work,
        externals,
    }
}

fn policy(scope: &common::Scope, roots: &Roots) -> ProxyPolicy {
    ProxyPolicy {
        allowed_images: vec![scope.image.clone()],
        work_root: roots.work.clone(),
        externals_root: roots.externals.clone(),
        ..ProxyPolicy::default()
    }
}

fn resolve(path: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| e.to_string())
}

fn mount(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        source_volume_path: source.to_string_lossy().into_owned(),
        target_volume_path: target.into(),
        read_only,
    }
}

/// The runner's job container as prepare_job describes it.
fn hook_container(scope: &common::Scope, roots: &Roots, create_options: &str) -> HookContainer {
    HookContainer {
        image: Some(scope.image.clone()),
        working_directory: Some("/__w/repo/repo".into()),
        create_options: Some(create_options.into()),
        environment_variables: BTreeMap::from([("JOB_VAR".to_string(), "job".to_string())]),
        system_mount_volumes: vec![
            mount(
                Path::new("/var/run/docker.sock"),
                "/var/run/docker.sock",
                false,
            ),
            mount(&roots.work, "/__w", false),
            mount(&roots.externals, "/__e", true),
            mount(&roots.work.join("_temp"), "/__w/_temp", false),
        ],
        registry: Some(Registry {
            username: Some("octo".into()),
            password: Some(SecretString::from(format!(
                "registry-pass-{}",
                common::suffix()
            ))),
            server_url: Some("registry.invalid".into()),
        }),
        port_mappings: vec!["8080:80".into()],
        ..HookContainer::default()
    }
}

/// Plans the job container through the policy and starts it.
async fn start_job_container(
    scope: &common::Scope,
    roots: &Roots,
    network: &str,
    job: Uuid,
    create_options: &str,
) -> (StartedJobContainer, JobContainerSpec, Vec<String>) {
    let plan = policy(scope, roots)
        .plan_container(&hook_container(scope, roots, create_options), &resolve)
        .expect("policy accepts the job container");
    let notices = plan.notices.clone();
    let mut spec = plan.into_spec(
        scope.name(&format!("job-{}", common::suffix())),
        proxy_labels(&scope.instance, REPOSITORY, job, ContainerRole::Job),
        network.to_string(),
        vec![],
    );
    spec.entrypoint = Some(KEEP_ALIVE_ENTRYPOINT.map(String::from).to_vec());
    spec.init = true;
    spec.confinement.memory_bytes = 256 * 1024 * 1024;
    let started = scope
        .docker
        .create_job_container(&spec)
        .await
        .expect("job container started");
    (started, spec, notices)
}

fn service_spec(
    scope: &common::Scope,
    network: &str,
    job: Uuid,
    alias: &str,
    script: &str,
) -> JobContainerSpec {
    JobContainerSpec {
        name: scope.name(&format!("svc-{alias}-{}", common::suffix())),
        image: scope.image.clone(),
        env: vec![],
        entrypoint: None,
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        working_dir: None,
        user: None,
        hostname: None,
        mounts: vec![],
        labels: proxy_labels(&scope.instance, REPOSITORY, job, ContainerRole::Service),
        network: network.to_string(),
        network_aliases: vec![alias.to_string()],
        confinement: small_confinement(STANDARD_CAPABILITIES.map(String::from).to_vec()),
        ports: vec![],
        init: false,
    }
}

fn small_confinement(capabilities: Vec<String>) -> Confinement {
    Confinement {
        capabilities,
        read_only_root_filesystem: false,
        tmpfs: vec![],
        pids_limit: 64,
        memory_bytes: 64 * 1024 * 1024,
        nano_cpus: 500_000_000,
    }
}

/// Without the `CAP_` prefix some engines add, sorted.
fn capability_names(caps: Option<Vec<String>>) -> Vec<String> {
    let mut names: Vec<String> = caps
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn job_container_runs_on_its_network_with_the_policy_applied() {
    let Some(scope) = common::Scope::new("jc-policy").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let job = Uuid::now_v7();
    let (started, spec, notices) = start_job_container(
        &scope,
        &roots,
        &network,
        job,
        "--cpus 0.5 --hostname build-box",
    )
    .await;
    assert!(
        notices.contains(&DOCKER_SOCKET_NOTICE.to_string()),
        "{notices:?}"
    );

    let client = scope.docker.client().await.expect("client");
    let info = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect");
    let host = info.host_config.clone().expect("host config");
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    let mut wanted: Vec<String> = STANDARD_CAPABILITIES.map(String::from).to_vec();
    wanted.sort();
    assert_eq!(capability_names(host.cap_add.clone()), wanted);
    assert!(
        host.security_opt
            .clone()
            .unwrap_or_default()
            .contains(&"no-new-privileges:true".to_string())
    );
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.pids_limit, Some(spec.confinement.pids_limit));
    assert_eq!(host.memory, Some(256 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.readonly_rootfs, Some(false));
    assert_eq!(host.network_mode.as_deref(), Some(network.as_str()));
    assert_eq!(host.ipc_mode.as_deref(), Some("private"));
    assert_ne!(host.pid_mode.as_deref(), Some("host"));
    assert_eq!(host.init, Some(true));
    // Not published: the policy's default.
    assert!(host.port_bindings.unwrap_or_default().is_empty());
    assert_eq!(host.binds.unwrap_or_default(), Vec::<String>::new());

    // Exactly the allowed binds, the socket nowhere.
    let mut mounts: Vec<(String, String, bool)> = info
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.source.unwrap_or_default(),
                m.destination.unwrap_or_default(),
                m.rw.unwrap_or_default(),
            )
        })
        .collect();
    mounts.sort();
    let mut expected = vec![
        (roots.work.display().to_string(), "/__w".to_string(), true),
        (
            roots.externals.display().to_string(),
            "/__e".to_string(),
            false,
        ),
        (
            roots.work.join("_temp").display().to_string(),
            "/__w/_temp".to_string(),
            true,
        ),
    ];
    expected.sort();
    assert_eq!(mounts, expected);
    let inspected = serde_json::to_string(&info).expect("inspect as JSON");
    assert!(!inspected.contains("docker.sock"), "{inspected}");
    // The registry password is nowhere in the engine's data.
    assert!(!inspected.contains("registry-pass-"));

    let config = info.config.clone().expect("config");
    // The image's default user: the standard profile does not pick one.
    let image_user = client
        .inspect_image(&scope.image)
        .await
        .expect("image")
        .config
        .and_then(|c| c.user);
    assert_eq!(config.user, image_user);
    assert_eq!(spec.user, None);
    assert_eq!(config.hostname.as_deref(), Some("build-box"));
    assert_eq!(config.working_dir.as_deref(), Some("/__w/repo/repo"));
    assert_eq!(
        config.entrypoint,
        Some(vec!["tail".to_string(), "-f".into(), "/dev/null".into()])
    );
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"JOB_VAR=job".to_string())
    );
    let container_labels = config.labels.unwrap_or_default();
    assert_eq!(
        container_labels.get(labels::PATH).map(String::as_str),
        Some("proxy")
    );
    assert_eq!(
        container_labels.get(labels::ROLE).map(String::as_str),
        Some("job")
    );
    assert_eq!(container_labels.get(labels::JOB_ID), Some(&job.to_string()));
    // On the network, and only there.
    let networks = info
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    assert_eq!(networks.keys().collect::<Vec<_>>(), vec![&network]);

    // It stays up between steps, and the mounts are there.
    let step = finish(
        scope
            .docker
            .exec(&exec(
                &started.id,
                "cat /__e/tool.txt; ls -d /__w/repo/repo",
            ))
            .await,
    )
    .await;
    assert_eq!(step.exit, Some(0), "{step:?}");
    assert_eq!(step.stdout, "from externals\n/__w/repo/repo\n");
    let again = finish(
        scope
            .docker
            .exec(&exec(
                &started.id,
                "touch /__w/_temp/written && ! touch /__e/written 2>/dev/null",
            ))
            .await,
    )
    .await;
    assert_eq!(again.exit, Some(0), "{again:?}");
    assert!(
        roots.work.join("_temp/written").exists(),
        "written through the bind"
    );
}

#[tokio::test]
async fn a_step_keeps_its_exit_code_and_separates_stdout_from_stderr() {
    let Some(scope) = common::Scope::new("jc-exit").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let (started, _, _) = start_job_container(&scope, &roots, &network, Uuid::now_v7(), "").await;

    let step = finish(
        scope
            .docker
            .exec(&exec(
                &started.id,
                "echo out; echo err >&2; echo more; exit 7",
            ))
            .await,
    )
    .await;
    assert_eq!(step.stdout, "out\nmore\n");
    assert_eq!(step.stderr, "err\n");
    assert_eq!(step.exit, Some(7));

    let ok = finish(scope.docker.exec(&exec(&started.id, "true")).await).await;
    assert_eq!((ok.stdout.as_str(), ok.exit), ("", Some(0)));

    // A command that cannot start is a step failure with the engine's code.
    let missing = ExecSpec {
        command: vec!["/no/such/program".into()],
        ..exec(&started.id, "")
    };
    let failed = finish(scope.docker.exec(&missing).await).await;
    assert!(matches!(failed.exit, Some(code) if code != 0), "{failed:?}");

    // A vanished container is an error before anything streams.
    let gone = scope
        .docker
        .exec(&exec("no-such-container-of-ours", "true"))
        .await;
    assert!(
        matches!(gone, Err(BackendError::NotFound(_))),
        "{:?}",
        gone.err()
    );
}

#[tokio::test]
async fn ten_megabytes_of_output_stream_through_as_they_come() {
    let Some(scope) = common::Scope::new("jc-stream").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let (started, _, _) = start_job_container(&scope, &roots, &network, Uuid::now_v7(), "").await;

    const HALF: usize = 5 * 1024 * 1024;
    // The second half is written only after the test has seen the first
    // half arrive, so the step cannot end before its output is streamed.
    let script = format!(
        "head -c {HALF} /dev/zero; while [ ! -e /tmp/go ]; do sleep 0.05; done; head -c {HALF} /dev/zero; echo done >&2"
    );
    let mut stream = scope
        .docker
        .exec(&exec(&started.id, &script))
        .await
        .expect("step started");
    let mut received = 0usize;
    let mut chunks = 0usize;
    let mut largest = 0usize;
    let mut released = false;
    let mut stderr = String::new();
    let mut exit = None;
    let reading = async {
        while let Some(item) = stream.next().await {
            match item.expect("output") {
                StepOutput::Stdout(bytes) => {
                    assert!(bytes.iter().all(|b| *b == 0), "output intact");
                    received += bytes.len();
                    chunks += 1;
                    largest = largest.max(bytes.len());
                    if received >= HALF && !released {
                        let go =
                            finish(scope.docker.exec(&exec(&started.id, "touch /tmp/go")).await)
                                .await;
                        assert_eq!(go.exit, Some(0));
                        released = true;
                    }
                }
                StepOutput::Stderr(bytes) => stderr.push_str(&String::from_utf8_lossy(&bytes)),
                StepOutput::Exit(code) => exit = Some(code),
            }
        }
    };
    // Only a bound for a broken build: the step waits for the test.
    tokio::time::timeout(Duration::from_secs(240), reading)
        .await
        .expect("the first half streamed before the step ended");
    assert!(released);
    assert_eq!(received, 2 * HALF);
    assert_eq!(stderr, "done\n");
    assert_eq!(exit, Some(0));
    assert!(chunks > 10, "{chunks} chunks");
    assert!(largest <= 1024 * 1024, "a chunk of {largest} bytes");
}

#[tokio::test]
async fn env_prepend_path_and_working_directory_are_honoured() {
    let Some(scope) = common::Scope::new("jc-env").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let (started, _, _) = start_job_container(&scope, &roots, &network, Uuid::now_v7(), "").await;
    let client = scope.docker.client().await.expect("client");
    let container_path = client
        .inspect_container(&started.id, None)
        .await
        .expect("inspect")
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
        .unwrap_or_else(|| proxy_runner_docker::DEFAULT_PATH.to_string());

    let setup = finish(
        scope
            .docker
            .exec(&exec(
                &started.id,
                "mkdir -p /tmp/tools/bin /tmp/ws && printf '#!/bin/sh\\necho hello from tools\\n' > /tmp/tools/bin/greet && chmod +x /tmp/tools/bin/greet",
            ))
            .await,
    )
    .await;
    assert_eq!(setup.exit, Some(0), "{setup:?}");

    let secret = format!("step-secret-{}", common::suffix());
    let step = ExecSpec {
        container_id: started.id.clone(),
        command: vec![
            "sh".into(),
            "-c".into(),
            r#"echo "$STEP_VAR|$JOB_VAR|$STEP_SECRET|$PATH|$(pwd)"; greet"#.into(),
        ],
        env: vec![
            EnvVar::plain("STEP_VAR", "step value with spaces"),
            EnvVar::secret("STEP_SECRET", SecretString::from(secret.clone())),
        ],
        prepend_path: vec!["/tmp/tools/bin".into(), "/opt/other/bin".into()],
        working_dir: Some("/tmp/ws".into()),
        user: None,
    };
    let done = finish(scope.docker.exec(&step).await).await;
    assert_eq!(done.exit, Some(0), "{done:?}");
    assert_eq!(
        done.stdout,
        format!(
            "step value with spaces|job|{secret}|/tmp/tools/bin:/opt/other/bin:{container_path}|/tmp/ws\nhello from tools\n"
        )
    );

    // Without prependPath the container's own PATH is left alone, and the
    // step can run as another user.
    let plain = ExecSpec {
        user: Some("0:0".into()),
        ..exec(&started.id, r#"echo "$PATH|$(id -u)""#)
    };
    let done = finish(scope.docker.exec(&plain).await).await;
    assert_eq!(done.stdout, format!("{container_path}|0\n"));
}

#[tokio::test]
async fn a_service_is_reachable_by_alias_from_its_job_network_only() {
    let Some(scope) = common::Scope::new("jc-service").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("repo-a").await;
    let other_network = scope.network("repo-b").await;
    let job = Uuid::now_v7();
    let service = service_spec(
        &scope,
        &network,
        job,
        "cache",
        "mkdir -p /tmp/www && echo PONG > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    );
    let started_service = scope
        .docker
        .start_service(&service)
        .await
        .expect("service started");
    let (job_container, _, _) = start_job_container(&scope, &roots, &network, job, "").await;

    // The service needs a moment to listen: ask until it answers.
    let mut answer = Finished::default();
    for _ in 0..100 {
        answer = finish(
            scope
                .docker
                .exec(&exec(
                    &job_container.id,
                    "timeout 5 wget -q -O - http://cache:8080/",
                ))
                .await,
        )
        .await;
        if answer.exit == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.exit, Some(0), "{answer:?}");
    assert_eq!(answer.stdout, "PONG\n");

    // Another repository's job: neither the name nor the address works.
    let (foreign, _, _) =
        start_job_container(&scope, &roots, &other_network, Uuid::now_v7(), "").await;
    let by_name = finish(
        scope
            .docker
            .exec(&exec(
                &foreign.id,
                "timeout 5 wget -q -O - http://cache:8080/",
            ))
            .await,
    )
    .await;
    assert_ne!(by_name.exit, Some(0), "{by_name:?}");
    let address = scope.ip_of(&started_service.id, &network).await;
    let by_address = finish(
        scope
            .docker
            .exec(&exec(
                &foreign.id,
                &format!("timeout 5 wget -q -O - http://{address}:8080/"),
            ))
            .await,
    )
    .await;
    assert_ne!(by_address.exit, Some(0), "{by_address:?}");
    assert!(!by_address.stdout.contains("PONG"));
}

#[tokio::test]
async fn ports_are_published_only_when_the_policy_says_so() {
    let Some(scope) = common::Scope::new("jc-ports").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let job = Uuid::now_v7();
    let serve =
        "mkdir -p /tmp/www && echo PONG > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
    let mappings = vec!["127.0.0.1::8080".to_string()];

    let quiet = policy(&scope, &roots)
        .check_ports(&mappings)
        .expect("ports");
    let mut unpublished = service_spec(&scope, &network, job, "quiet", serve);
    unpublished.ports = quiet.ports;
    let started = scope
        .docker
        .start_service(&unpublished)
        .await
        .expect("service");
    assert!(started.ports.is_empty(), "{:?}", started.ports);

    let publishing = ProxyPolicy {
        publish_ports: true,
        ..policy(&scope, &roots)
    };
    let mut published = service_spec(&scope, &network, job, "loud", serve);
    published.ports = publishing.check_ports(&mappings).expect("ports").ports;
    let started = scope
        .docker
        .start_service(&published)
        .await
        .expect("service");
    let host_port: u16 = started
        .ports
        .get("8080/tcp")
        .and_then(|p| p.parse().ok())
        .expect("a host port for 8080/tcp");
    // Reachable from the host on the reported port once it listens.
    let mut answer = String::new();
    for _ in 0..100 {
        if let Ok(text) = http_get(host_port).await
            && text.contains("PONG")
        {
            answer = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.contains("PONG"), "{answer:?}");
}

async fn http_get(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test]
async fn a_container_step_runs_to_completion_and_is_removed() {
    let Some(scope) = common::Scope::new("jc-step").await else {
        return;
    };
    let network = scope.network("net").await;
    let job = Uuid::now_v7();
    let mut spec = service_spec(
        &scope,
        &network,
        job,
        "unused",
        "echo step-out; echo step-err >&2; echo \"$ACTION_INPUT\"; exit 3",
    );
    spec.network_aliases.clear();
    spec.labels = proxy_labels(&scope.instance, REPOSITORY, job, ContainerRole::Step);
    spec.env = vec![EnvVar::plain("ACTION_INPUT", "with-input")];
    let step = finish(scope.docker.run_to_completion(&spec).await).await;
    assert_eq!(step.stdout, "step-out\nwith-input\n");
    assert_eq!(step.stderr, "step-err\n");
    assert_eq!(step.exit, Some(3));
    // Removed before the exit code was handed out.
    assert!(!scope.container_exists(&spec.name).await);

    // Dropped midway (the client went away): removed all the same.
    let mut long = spec.clone();
    long.name = scope.name(&format!("step-long-{}", common::suffix()));
    long.command = Some(vec![
        "sh".into(),
        "-c".into(),
        "echo started; exec sleep 600".into(),
    ]);
    let mut stream = scope
        .docker
        .run_to_completion(&long)
        .await
        .expect("started");
    let first = stream.next().await.expect("an item").expect("output");
    assert_eq!(
        first,
        StepOutput::Stdout(bytes::Bytes::from_static(b"started\n"))
    );
    assert!(scope.container_exists(&long.name).await);
    drop(stream);
    assert!(scope.wait_gone(&long.name).await, "abandoned step removed");
}

#[tokio::test]
async fn remove_job_leaves_nothing_of_the_job() {
    let Some(scope) = common::Scope::new("jc-remove").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let job = Uuid::now_v7();
    let other_job = Uuid::now_v7();
    let (job_container, _, _) = start_job_container(&scope, &roots, &network, job, "").await;
    scope
        .docker
        .start_service(&service_spec(&scope, &network, job, "db", "exec sleep 600"))
        .await
        .expect("service");
    // A service that already exited counts too.
    let exited = scope
        .docker
        .start_service(&service_spec(&scope, &network, job, "once", "exit 0"))
        .await
        .expect("service");
    assert_eq!(scope.docker.wait(&exited.id).await.expect("exited"), 0);
    let (kept, _, _) = start_job_container(&scope, &roots, &network, other_job, "").await;

    let listed = scope
        .docker
        .list_proxy_containers(&scope.instance)
        .await
        .expect("list");
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().any(|c| c.id == job_container.id && c.running));

    assert_eq!(
        scope
            .docker
            .remove_job(&scope.instance, job)
            .await
            .expect("removed"),
        3
    );
    let left = scope
        .docker
        .list_proxy_containers(&scope.instance)
        .await
        .expect("list");
    assert_eq!(
        left.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![kept.id.clone()]
    );
    assert_eq!(
        left[0].labels.get(labels::JOB_ID),
        Some(&other_job.to_string())
    );
    assert!(!scope.container_exists(&job_container.id).await);
    // Idempotent, and another instance's job id matches nothing here.
    assert_eq!(
        scope
            .docker
            .remove_job(&scope.instance, job)
            .await
            .expect("again"),
        0
    );
    assert_eq!(
        scope
            .docker
            .remove_job("another-instance", other_job)
            .await
            .expect("other instance"),
        0
    );
    assert!(scope.container_exists(&kept.id).await);
}

/// Exit 0 only when root can do what a package install does: chown files
/// to other users, write into their private folders, change their modes,
/// keep setgid bits on files of other groups, switch to another user and
/// signal that user's processes; and nothing else is granted.
const APT_NEEDS: &str = r#"
set -u
[ "$(id -u)" = 0 ] || exit 10
[ "$(awk '/^CapEff/ {print $2}' /proc/self/status)" = 00000000000000fb ] || exit 11
[ "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)" = 1 ] || exit 12
mkdir -p /var/tmp/probe && cd /var/tmp/probe || exit 13
touch owned && chown 1001:1001 owned || exit 20
mkdir private && chown 1001:1001 private && chmod 700 private || exit 21
echo x > private/file || exit 22
chmod 600 owned || exit 23
touch tool && chgrp 1001 tool && chmod 2755 tool || exit 24
[ "$(stat -c %A tool)" = "-rwxr-sr-x" ] || exit 25
[ "$(su -s /bin/sh runner -c 'id -u')" = 1001 ] || exit 26
su -s /bin/sh runner -c 'exec sleep 600' &
pid=$!
while ! grep -q '^Uid:[[:space:]]*1001' /proc/$pid/status 2>/dev/null; do sleep 0.05; done
kill $pid || exit 27
wait $pid
exit 0
"#;

#[tokio::test]
async fn root_can_do_what_apt_needs_under_the_standard_profile() {
    let Some(scope) = common::Scope::new("jc-apt").await else {
        return;
    };
    let roots = roots();
    let network = scope.network("net").await;
    let (started, spec, _) =
        start_job_container(&scope, &roots, &network, Uuid::now_v7(), "--user 0:0").await;
    assert_eq!(spec.user.as_deref(), Some("0:0"));
    let probe = finish(scope.docker.exec(&exec(&started.id, APT_NEEDS)).await).await;
    assert_eq!(probe.exit, Some(0), "{probe:?}");

    // The same probe fails without those capabilities (so it can fail).
    let mut bare = service_spec(&scope, &network, Uuid::now_v7(), "bare", "unused");
    bare.network_aliases.clear();
    bare.user = Some("0:0".into());
    bare.entrypoint = Some(KEEP_ALIVE_ENTRYPOINT.map(String::from).to_vec());
    bare.command = None;
    bare.confinement = small_confinement(vec!["CHOWN".into()]);
    let bare = scope
        .docker
        .create_job_container(&bare)
        .await
        .expect("started");
    let probe = finish(scope.docker.exec(&exec(&bare.id, APT_NEEDS)).await).await;
    assert_eq!(probe.exit, Some(11), "{probe:?}");
    let no_dac = finish(
        scope
            .docker
            .exec(&exec(
                &bare.id,
                "mkdir -p /var/tmp/p && chown 1001 /var/tmp/p && chmod 700 /var/tmp/p && touch /var/tmp/p/x",
            ))
            .await,
    )
    .await;
    assert_ne!(no_dac.exit, Some(0), "{no_dac:?}");
}

#[tokio::test]
async fn never_pulls_never_mounts_the_socket_and_keeps_registry_passwords_out() {
    let Some(scope) = common::Scope::new("jc-secrets").await else {
        return;
    };
    let network = scope.network("net").await;
    let job = Uuid::now_v7();

    // A missing image is reported, not fetched.
    let missing = format!("proxy-runner-test-missing:{}", common::suffix());
    let mut spec = service_spec(&scope, &network, job, "x", "true");
    spec.image = missing.clone();
    assert_eq!(
        scope.docker.create_job_container(&spec).await.err(),
        Some(BackendError::ImageMissing {
            image: missing.clone()
        })
    );
    assert!(!scope.docker.image_present(&missing).await.expect("inspect"));
    assert!(
        scope
            .docker
            .image_present(&scope.image)
            .await
            .expect("inspect")
    );

    // The socket is refused even when a caller skipped the policy.
    for source in ["/var/run/docker.sock", "/run/docker.sock", "/var/run", "/"] {
        let mut spec = service_spec(&scope, &network, job, "x", "true");
        spec.mounts = vec![proxy_runner_domain::job_containers::BindMount {
            source: source.into(),
            target: "/sock".into(),
            read_only: true,
        }];
        let err = scope
            .docker
            .create_job_container(&spec)
            .await
            .expect_err(source);
        assert!(err.to_string().contains("Docker socket"), "{source}: {err}");
        assert!(!scope.container_exists(&spec.name).await);
    }

    // A pull that fails (nothing listens there) says so without the password.
    let password = format!("pull-pass-{}", common::suffix());
    let credentials = RegistryCredentials {
        username: "octo".into(),
        password: SecretString::from(password.clone()),
        server: Some("127.0.0.1:9".into()),
    };
    let err = scope
        .docker
        .pull_image(
            &format!("127.0.0.1:9/proxy-runner-test/none:{}", common::suffix()),
            Some(&credentials),
        )
        .await
        .expect_err("nothing to pull from");
    assert!(!err.to_string().contains(&password), "{err}");
    assert!(!format!("{err:?}{credentials:?}").contains(&password));
}
