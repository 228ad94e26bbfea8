use super::*;
use crate::container_hooks::{HookArgs, HookInput};
use crate::ports::EnvValue;

const WORK: &str = "/Users/thomas/git/runner/_layout/_work";
const EXTERNALS: &str = "/Users/thomas/git/runner/_layout/externals";

fn policy() -> ProxyPolicy {
    ProxyPolicy {
        allowed_images: vec!["node:22".into(), "redis".into(), "ghcr.io/octo/*".into()],
        work_root: WORK.into(),
        externals_root: EXTERNALS.into(),
        ..ProxyPolicy::default()
    }
}

/// A filesystem of plain directories plus these symlinks; paths under
/// `/missing` do not exist.
fn resolver(
    links: &'static [(&'static str, &'static str)],
) -> impl Fn(&Path) -> std::result::Result<PathBuf, String> {
    move |path: &Path| {
        let mut current = lexical(path);
        for _ in 0..40 {
            if current.starts_with("/missing") {
                return Err("No such file or directory".into());
            }
            let Some((from, to)) = links.iter().find(|(from, _)| current.starts_with(from)) else {
                return Ok(current);
            };
            let rest = current.strip_prefix(from).map_err(|e| e.to_string())?;
            current = lexical(&Path::new(to).join(rest));
        }
        Err("too many levels of symbolic links".into())
    }
}

fn mount(source: &str, target: &str) -> Mount {
    Mount {
        source_volume_path: source.into(),
        target_volume_path: target.into(),
        read_only: false,
    }
}

fn fixture_input(name: &str) -> HookInput {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/container-hooks")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    HookInput::parse(&bytes).expect("fixture parses")
}

// ------------------------------------------------------------ images

#[test]
fn images_must_be_on_the_allowlist() {
    let p = policy();
    assert_eq!(p.check_image("node:22"), Ok(()));
    assert_eq!(p.check_image("redis"), Ok(()));
    assert_eq!(p.check_image("ghcr.io/octo/tool:1"), Ok(()));
    for refused in [
        "node:20",
        "node",
        "redis:7",
        "ghcr.io/other/x",
        "ghcr.io/octopus",
        "",
    ] {
        let err = p.check_image(refused).expect_err(refused);
        assert_eq!(
            err,
            PolicyError::ImageNotAllowed {
                image: refused.into()
            }
        );
        assert!(err.to_string().contains(&format!("{refused:?}")));
    }
    let everything = ProxyPolicy {
        allowed_images: vec!["*".into()],
        ..policy()
    };
    assert_eq!(everything.check_image("anything:1"), Ok(()));
    let nothing = ProxyPolicy::default();
    assert!(nothing.check_image("node:22").is_err());
}

#[test]
fn policy_numbers_and_patterns_are_validated() {
    assert_eq!(policy().validate(), Ok(()));
    let mut p = policy();
    p.allowed_images = vec!["ghcr.io/*/tool".into()];
    assert!(p.validate().is_err());
    p.allowed_images = vec!["registry.example/équipe/*".into(), "ü".into()];
    assert_eq!(p.validate(), Ok(()));
    p.allowed_images = vec![String::new()];
    assert!(p.validate().is_err());
    let mut p = policy();
    p.limits.default_nano_cpus = p.limits.max_nano_cpus + 1;
    assert!(p.validate().is_err());
    let mut p = policy();
    p.limits.default_memory_bytes = 1024;
    assert!(p.validate().is_err());
    let mut p = policy();
    p.limits.pids_limit = 0;
    assert!(p.validate().is_err());
}

#[test]
fn policy_reads_from_config() {
    let p: ProxyPolicy = serde_json::from_value(serde_json::json!({
        "allowed_images": ["node:*"],
        "profile": "strict",
        "work_root": "/srv/runner/_work",
        "limits": {"max_nano_cpus": 4000000000i64}
    }))
    .expect("config");
    assert_eq!(p.profile, HardeningProfile::Strict);
    assert_eq!(p.limits.max_nano_cpus, 4_000_000_000);
    assert_eq!(p.limits.pids_limit, 1024);
    assert!(
        serde_json::from_value::<ProxyPolicy>(serde_json::json!({"allow_everything": true}))
            .is_err()
    );
}

// ------------------------------------------------------------ createOptions

#[test]
fn words_split_like_a_shell() {
    assert_eq!(
        split_words(r#"  -e 'A=x y'  -e "B=\"q\" \$HOME" -e C=a\ b --cpus=1 "" "#).expect("splits"),
        vec![
            "-e",
            "A=x y",
            "-e",
            r#"B="q" $HOME"#,
            "-e",
            "C=a b",
            "--cpus=1",
            ""
        ]
    );
    assert_eq!(split_words("").expect("empty"), Vec::<String>::new());
    assert_eq!(
        split_words("-e A=1\\\n -e B=2").expect("continuation"),
        vec!["-e", "A=1", "-e", "B=2"]
    );
    assert_eq!(split_words(r#""a\b""#).expect("kept"), vec![r"a\b"]);
    for bad in ["-e 'A=1", "-e \"A=1", "-e A=1\\"] {
        assert!(
            matches!(split_words(bad), Err(PolicyError::CreateOptionsSyntax(_))),
            "{bad}"
        );
    }
}

#[test]
fn the_safe_subset_parses_in_every_form() {
    let o = parse_create_options(
        "--cpus 1.5 -m 512m -e A=1 --env=B=two=2 -eC=3 -w /src --user 1000:1000 -h build-box",
    )
    .expect("parses");
    assert_eq!(
        o,
        CreateOptions {
            nano_cpus: Some(1_500_000_000),
            memory_bytes: Some(512 * 1024 * 1024),
            env: vec![
                ("A".into(), "1".into()),
                ("B".into(), "two=2".into()),
                ("C".into(), "3".into())
            ],
            working_dir: Some("/src".into()),
            user: Some("1000:1000".into()),
            hostname: Some("build-box".into()),
        }
    );
    let o = parse_create_options("--memory=1g --workdir=/w -u=runner --hostname=a.b -m=2GiB")
        .expect("parses");
    assert_eq!(o.memory_bytes, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(o.user.as_deref(), Some("runner"));
    assert_eq!(o.working_dir.as_deref(), Some("/w"));
    assert_eq!(
        parse_create_options("").expect("empty"),
        CreateOptions::default()
    );
}

#[test]
fn every_dangerous_option_is_refused_by_name() {
    let cases = [
        ("--privileged", "--privileged"),
        ("--privileged=true", "--privileged"),
        ("--cap-add SYS_ADMIN", "--cap-add"),
        ("--cap-add=ALL", "--cap-add"),
        ("-v /:/host", "-v"),
        ("-v/etc:/etc", "-v"),
        ("--volume /etc:/etc", "--volume"),
        ("--volume=/etc:/etc", "--volume"),
        ("--mount type=bind,src=/,dst=/h", "--mount"),
        ("--network host", "--network"),
        ("--net=host", "--net"),
        ("--pid host", "--pid"),
        ("--ipc=host", "--ipc"),
        ("--device /dev/kvm", "--device"),
        ("--security-opt seccomp=unconfined", "--security-opt"),
        ("--userns host", "--userns"),
    ];
    for (text, option) in cases {
        match parse_create_options(&format!("--cpus 1 {text}")) {
            Err(PolicyError::OptionRefused { option: o, reason }) => {
                assert_eq!(o, option, "{text}");
                assert!(!reason.is_empty());
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn unknown_options_are_refused_by_name_without_their_values() {
    for (text, option) in [
        ("--health-cmd 'redis-cli ping'", "--health-cmd"),
        ("--env-file /etc/secrets", "--env-file"),
        ("--cap-drop ALL", "--cap-drop"),
        ("--tmpfs /run", "--tmpfs"),
        ("-it", "-i"),
        ("-p 80:80", "-p"),
        ("--rm", "--rm"),
        ("--label x=TOKEN123", "--label"),
    ] {
        let err = parse_create_options(text).expect_err(text);
        assert!(
            matches!(&err, PolicyError::OptionRefused { option: o, .. } if o == option),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains("supported subset"), "{err}");
        assert!(!err.to_string().contains("TOKEN123"));
    }
    assert!(matches!(
        parse_create_options("ubuntu"),
        Err(PolicyError::CreateOptionsSyntax(_))
    ));
    assert!(matches!(
        parse_create_options("-- --cpus 1"),
        Err(PolicyError::CreateOptionsSyntax(_))
    ));
}

#[test]
fn bad_values_are_refused_naming_the_option() {
    for (text, option) in [
        ("--cpus", "--cpus"),
        ("--cpus 0", "--cpus"),
        ("--cpus -1", "--cpus"),
        ("--cpus lots", "--cpus"),
        ("--cpus 1.0000000001", "--cpus"),
        ("-m", "-m"),
        ("-m 12q", "-m"),
        ("--memory 0", "--memory"),
        ("-e NAME_ONLY", "-e"),
        ("--env =x", "--env"),
        ("-w relative/dir", "-w"),
        ("--user 'a b'", "--user"),
        ("-u :0", "-u"),
        ("--hostname -bad", "--hostname"),
        ("-h a_b", "-h"),
    ] {
        let err = parse_create_options(text).expect_err(text);
        assert!(
            matches!(&err, PolicyError::OptionInvalid { option: o, .. } if o == option),
            "{text}: {err:?}"
        );
    }
    // The value of a refused -e is not echoed.
    let err = parse_create_options("-e SECRET_TOKEN").expect_err("bare name");
    assert!(!err.to_string().contains("SECRET_TOKEN"), "{err}");
}

#[test]
fn limits_are_checked_against_the_maxima() {
    let p = policy();
    assert_eq!(
        p.create_options(Some("--cpus 2 -m 4g"))
            .expect("at the maxima"),
        CreateOptions {
            nano_cpus: Some(2_000_000_000),
            memory_bytes: Some(4 * 1024 * 1024 * 1024),
            ..CreateOptions::default()
        }
    );
    let err = p.create_options(Some("--cpus 2.5")).expect_err("over");
    assert_eq!(
        err.to_string(),
        "createOptions: --cpus: 2.5 CPUs exceeds the limit of 2"
    );
    assert!(matches!(
        p.create_options(Some("--memory 5g")),
        Err(PolicyError::OptionInvalid { option, .. }) if option == "--memory"
    ));
    assert!(matches!(
        p.create_options(Some("-m 1m")),
        Err(PolicyError::OptionInvalid { option, .. }) if option == "--memory"
    ));
    assert_eq!(
        p.create_options(None).expect("none"),
        CreateOptions::default()
    );
}

#[test]
fn sizes_parse_like_docker() {
    assert_eq!(parse_memory("1024"), Some(1024));
    assert_eq!(parse_memory("1b"), Some(1));
    assert_eq!(parse_memory("2k"), Some(2048));
    assert_eq!(parse_memory("1.5g"), Some(1536 * 1024 * 1024));
    assert_eq!(parse_memory("1 GB"), Some(1024 * 1024 * 1024));
    assert_eq!(parse_memory("3MiB"), Some(3 * 1024 * 1024));
    for bad in ["", "m", ".5g", "1.2.3m", "1x", "-1m", "1 g b"] {
        assert_eq!(parse_memory(bad), None, "{bad}");
    }
    assert_eq!(parse_cpus(".25"), Some(250_000_000));
    assert_eq!(parse_cpus("3"), Some(3_000_000_000));
    assert_eq!(parse_cpus("0.000000001"), Some(1));
    assert_eq!(parse_cpus("."), None);
    assert_eq!(format_cpus(1_250_000_000), "1.25");
}

// ------------------------------------------------------------ mounts

#[test]
fn fixture_mounts_drop_the_socket_and_refuse_the_named_volume() {
    let input = fixture_input("prepare-job.json");
    let HookArgs::PrepareJob(args) = input.args else {
        panic!("prepare");
    };
    let c = args.container.expect("container");
    let resolve = resolver(&[]);
    let p = policy();
    // The user's named volume is refused...
    let err = p
        .check_mounts(&c.system_mount_volumes, &c.user_mount_volumes, &resolve)
        .expect_err("named volume");
    assert_eq!(
        err,
        PolicyError::NamedVolumeRefused {
            name: "my_docker_volume".into()
        }
    );
    // ...and without it, the system mounts pass but the socket.
    let plan = p
        .check_mounts(&c.system_mount_volumes, &[], &resolve)
        .expect("system mounts");
    assert_eq!(plan.notices, vec![DOCKER_SOCKET_NOTICE.to_string()]);
    assert_eq!(plan.mounts.len(), 7);
    assert!(
        plan.mounts
            .iter()
            .all(|m| !m.source.contains("docker.sock"))
    );
    assert_eq!(
        plan.mounts[1],
        BindMount {
            source: EXTERNALS.into(),
            target: "/__e".into(),
            read_only: true,
        }
    );
    assert_eq!(plan.mounts[0].source, WORK);
    assert_eq!(plan.mounts[0].target, "/__w");
}

#[test]
fn the_socket_is_dropped_however_it_is_spelled() {
    let p = policy();
    let resolve = resolver(&[
        ("/var/run", "/run"),
        (
            "/Users/thomas/git/runner/_layout/_work/sock",
            "/run/docker.sock",
        ),
    ]);
    for source in [
        "/var/run/docker.sock",
        "//var/run//docker.sock",
        "/run/docker.sock",
        "/var/run/./docker.sock",
        "/tmp/../var/run/docker.sock",
        "/Users/thomas/git/runner/_layout/_work/sock",
    ] {
        let plan = p
            .check_mounts(&[mount(source, "/var/run/docker.sock")], &[], &resolve)
            .expect(source);
        assert!(plan.mounts.is_empty(), "{source}");
        assert_eq!(
            plan.notices,
            vec![DOCKER_SOCKET_NOTICE.to_string()],
            "{source}"
        );
    }
    // Several socket mounts, one notice.
    let plan = p
        .check_mounts(
            &[mount("/var/run/docker.sock", "/a")],
            &[mount("/run/docker.sock", "/b")],
            &resolve,
        )
        .expect("dropped");
    assert_eq!(plan.notices.len(), 1);
}

#[test]
fn sources_outside_the_roots_are_refused_by_path() {
    let p = policy();
    let resolve = resolver(&[]);
    for source in [
        "/etc",
        "/",
        "/Users/thomas/git/runner/_layout/_work2",
        "/Users/thomas/git/runner/_layout",
        "/Users/thomas/git/runner/_layout/_work/../secrets",
        "/home/user/.ssh",
    ] {
        let err = p
            .check_mounts(&[], &[mount(source, "/x")], &resolve)
            .expect_err(source);
        assert!(
            matches!(&err, PolicyError::MountRefused { path, .. } if path == source),
            "{source}: {err:?}"
        );
        assert!(err.to_string().contains(source));
    }
    for name in ["my_docker_volume", "cache", "./relative"] {
        assert_eq!(
            p.check_mounts(&[mount(name, "/x")], &[], &resolve),
            Err(PolicyError::NamedVolumeRefused { name: name.into() })
        );
    }
}

#[test]
fn symlinks_escaping_the_roots_are_refused() {
    let p = policy();
    let resolve = resolver(&[
        ("/Users/thomas/git/runner/_layout/_work/repo/evil", "/etc"),
        (
            "/Users/thomas/git/runner/_layout/_work/repo/ok",
            "/Users/thomas/git/runner/_layout/externals/node",
        ),
    ]);
    let err = p
        .check_mounts(
            &[],
            &[mount(
                "/Users/thomas/git/runner/_layout/_work/repo/evil/shadow",
                "/x",
            )],
            &resolve,
        )
        .expect_err("escape");
    assert!(
        matches!(&err, PolicyError::MountRefused { path, reason }
            if path.ends_with("evil/shadow") && reason.contains("outside")),
        "{err:?}"
    );
    // A link from one root into the other is fine, and the canonical
    // path is what gets mounted.
    let plan = p
        .check_mounts(
            &[],
            &[mount(
                "/Users/thomas/git/runner/_layout/_work/repo/ok",
                "/node",
            )],
            &resolve,
        )
        .expect("inside");
    assert_eq!(
        plan.mounts[0].source,
        "/Users/thomas/git/runner/_layout/externals/node"
    );
    // A root that is itself a symlink is compared in its canonical form.
    let linked = ProxyPolicy {
        work_root: "/srv/work".into(),
        ..policy()
    };
    let resolve = resolver(&[("/srv/work", "/data/work")]);
    let plan = linked
        .check_mounts(&[mount("/srv/work/_temp", "/__w/_temp")], &[], &resolve)
        .expect("inside the linked root");
    assert_eq!(plan.mounts[0].source, "/data/work/_temp");
}

#[test]
fn unresolvable_sources_and_bad_targets_are_refused() {
    let p = policy();
    let resolve = resolver(&[]);
    let err = p
        .check_mounts(&[mount("/missing/dir", "/x")], &[], &resolve)
        .expect_err("missing");
    assert!(matches!(&err, PolicyError::MountRefused { path, reason }
        if path == "/missing/dir" && reason.contains("No such file")));
    for target in ["relative", "/", "//."] {
        let err = p
            .check_mounts(&[mount(WORK, target)], &[], &resolve)
            .expect_err(target);
        assert!(matches!(&err, PolicyError::MountRefused { path, .. } if path == target));
    }
    let err = p
        .check_mounts(
            &[mount(WORK, "/__w")],
            &[mount(EXTERNALS, "/__w/")],
            &resolve,
        )
        .expect_err("twice");
    assert!(err.to_string().contains("mounted twice"));
    // Without usable roots nothing is mounted.
    let rootless = ProxyPolicy::default();
    assert!(
        rootless
            .check_mounts(&[mount(WORK, "/__w")], &[], &resolve)
            .is_err()
    );
}

// ------------------------------------------------------------ ports

#[test]
fn ports_are_parsed_and_published_only_when_allowed() {
    let mappings: Vec<String> = [
        "80:8080",
        "8088",
        "127.0.0.1:5432:5432",
        "53:53/udp",
        "[::1]:9000:9000/tcp",
        "127.0.0.1::6379",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = policy().check_ports(&mappings).expect("ports");
    assert_eq!(plan.notices, vec![PORTS_NOT_PUBLISHED_NOTICE.to_string()]);
    assert!(plan.ports.iter().all(|p| !p.publish));
    let p = &plan.ports;
    assert_eq!((p[0].host_port, p[0].container_port), (Some(80), 8080));
    assert_eq!((p[1].host_port, p[1].container_port), (None, 8088));
    assert_eq!(p[2].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(p[3].protocol, PortProtocol::Udp);
    assert_eq!(p[4].host_ip.as_deref(), Some("::1"));
    assert_eq!((p[5].host_port, p[5].container_port), (None, 6379));

    let publishing = ProxyPolicy {
        publish_ports: true,
        ..policy()
    };
    let plan = publishing.check_ports(&mappings).expect("ports");
    assert!(plan.notices.is_empty());
    assert!(plan.ports.iter().all(|p| p.publish));
    assert!(policy().check_ports(&[]).expect("none").notices.is_empty());

    for bad in [
        "",
        "http",
        "80:",
        "0",
        "70000",
        "8000-8010:8000-8010",
        "80/sctp",
        "a:b:c:d",
        "[::1:80:80",
    ] {
        let err = policy().check_ports(&[bad.to_string()]).expect_err(bad);
        assert!(matches!(&err, PolicyError::PortInvalid { mapping, .. } if mapping == bad));
    }
}

// ------------------------------------------------------------ profiles

#[test]
fn the_standard_profile_keeps_what_apt_needs_and_the_image_user() {
    let p = policy();
    let options = p.create_options(Some("--cpus 1.5")).expect("options");
    let c = p.confinement(&options);
    assert_eq!(
        c.capabilities,
        vec![
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID"
        ]
    );
    assert!(!c.read_only_root_filesystem);
    assert!(c.tmpfs.is_empty());
    assert_eq!(c.nano_cpus, 1_500_000_000);
    assert_eq!(c.memory_bytes, p.limits.default_memory_bytes);
    assert_eq!(c.pids_limit, p.limits.pids_limit);
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(p.user(&options), None);
    let root = p.create_options(Some("--user 0:0")).expect("root allowed");
    assert_eq!(p.user(&root).as_deref(), Some("0:0"));
}

#[test]
fn the_strict_profile_is_the_autoscaling_hardening() {
    let p = ProxyPolicy {
        profile: HardeningProfile::Strict,
        ..policy()
    };
    let strict = Hardening::default();
    let options = p.create_options(None).expect("none");
    let c = p.confinement(&options);
    assert!(c.capabilities.is_empty());
    assert!(c.read_only_root_filesystem);
    assert_eq!(c.tmpfs, strict.tmpfs);
    assert_eq!(c.pids_limit, strict.pids_limit);
    assert_eq!(c.memory_bytes, strict.memory_bytes);
    assert_eq!(c.nano_cpus, strict.nano_cpus);
    assert_eq!(p.user(&options), Some(strict.user.clone()));
    // Requests may lower the limits, not raise them.
    let lower = p.create_options(Some("-m 512m --cpus 0.5")).expect("lower");
    assert_eq!(p.confinement(&lower).memory_bytes, 512 * 1024 * 1024);
    assert!(p.create_options(Some("--cpus 2")).is_err());
    for root in ["--user root", "-u 0", "-u 0:1001"] {
        assert!(
            matches!(p.create_options(Some(root)), Err(PolicyError::OptionRefused { option, .. }) if option == "--user"),
            "{root}"
        );
    }
    let other = p.create_options(Some("-u 2000:2000")).expect("non-root");
    assert_eq!(p.user(&other).as_deref(), Some("2000:2000"));
}

// ------------------------------------------------------------ whole plans

#[test]
fn a_fixture_container_becomes_a_plan() {
    let HookArgs::PrepareJob(args) = fixture_input("prepare-job.json").args else {
        panic!("prepare");
    };
    let mut c = args.container.expect("container");
    c.user_mount_volumes.clear();
    c.create_options = Some("--cpus 1 -e NODE_ENV=production -w /__w/other".into());
    let plan = policy().plan_container(&c, &resolver(&[])).expect("plan");
    assert_eq!(plan.image, "node:22");
    let env: Vec<(String, String)> = plan
        .env
        .iter()
        .map(|v| match &v.value {
            EnvValue::Plain(p) => (v.name.clone(), p.clone()),
            EnvValue::Secret(_) => panic!("job env is plain"),
        })
        .collect();
    assert_eq!(
        env,
        vec![("NODE_ENV".to_string(), "production".to_string())]
    );
    assert_eq!(plan.working_dir.as_deref(), Some("/__w/other"));
    assert_eq!(plan.user, None);
    assert_eq!(plan.entrypoint, None);
    assert_eq!(plan.confinement.nano_cpus, 1_000_000_000);
    assert_eq!(plan.mounts.len(), 7);
    assert_eq!(plan.ports.len(), 1);
    assert!(!plan.ports[0].publish);
    assert_eq!(
        plan.notices,
        vec![
            DOCKER_SOCKET_NOTICE.to_string(),
            PORTS_NOT_PUBLISHED_NOTICE.to_string()
        ]
    );
    let spec = plan.into_spec("job-1".into(), BTreeMap::new(), "net".into(), vec![]);
    assert_eq!(spec.image, "node:22");
    assert_eq!(spec.network, "net");
    assert!(!spec.init);

    let service = &args.services[0];
    let mut service = service.clone();
    service.user_mount_volumes.clear();
    let plan = policy()
        .plan_container(&service, &resolver(&[]))
        .expect("service");
    assert_eq!(plan.image, "redis");
    assert_eq!(plan.ports.len(), 2);

    let mut refused = c.clone();
    refused.image = Some("node:20".into());
    assert_eq!(
        policy()
            .plan_container(&refused, &resolver(&[]))
            .map(|_| ()),
        Err(PolicyError::ImageNotAllowed {
            image: "node:20".into()
        })
    );
    let mut dockerfile = c.clone();
    dockerfile.image = None;
    dockerfile.dockerfile = Some("Dockerfile".into());
    assert_eq!(
        policy()
            .plan_container(&dockerfile, &resolver(&[]))
            .map(|_| ()),
        Err(PolicyError::DockerfileUnsupported)
    );
}

#[test]
fn a_container_step_keeps_its_entry_point_and_arguments() {
    let HookArgs::RunContainerStep(c) = fixture_input("run-container-step.json").args else {
        panic!("container step");
    };
    let mut c = *c;
    c.user_mount_volumes.clear();
    let plan = policy().plan_container(&c, &resolver(&[])).expect("plan");
    assert_eq!(plan.entrypoint, Some(vec!["bash".to_string()]));
    assert_eq!(
        plan.command,
        Some(vec!["-e".to_string(), "example-script.sh".to_string()])
    );
    // `//Users/...` resolves like `/Users/...`.
    assert!(
        plan.mounts
            .iter()
            .any(|m| m.source == format!("{WORK}/_temp/_github_home"))
    );
}
