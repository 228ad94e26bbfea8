use super::*;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/container-hooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_json(value: Value) -> Result<HookInput> {
    HookInput::parse(value.to_string().as_bytes())
}

/// A minimal valid prepare_job input to break in tests.
fn prepare() -> Value {
    json!({
        "command": "prepare_job",
        "responseFile": "/tmp/r.json",
        "state": {},
        "args": {"container": {"image": "node:22"}, "services": []}
    })
}

fn err_field(value: Value) -> String {
    match parse_json(value) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.field().unwrap_or_default().to_string(),
    }
}

#[test]
fn prepare_job_fixture_parses_completely() {
    let input = HookInput::parse(&fixture("prepare-job.json")).expect("parses");
    assert_eq!(input.command, HookCommand::PrepareJob);
    assert_eq!(
        input.response_file.as_deref(),
        Some("/users/thboop/runner/_work/{guid}.json")
    );
    assert_eq!(input.state, json!({}));
    let HookArgs::PrepareJob(args) = input.args else {
        panic!("prepare args");
    };
    let c = args.container.expect("job container");
    assert_eq!(c.image.as_deref(), Some("node:22"));
    assert_eq!(c.working_directory.as_deref(), Some("/__w/repo/repo"));
    assert_eq!(c.create_options.as_deref(), Some("--cpus 1"));
    assert_eq!(
        c.environment_variables,
        BTreeMap::from([("NODE_ENV".to_string(), "development".to_string())])
    );
    assert_eq!(
        c.user_mount_volumes,
        vec![Mount {
            source_volume_path: "my_docker_volume".into(),
            target_volume_path: "/volume_mount".into(),
            read_only: false,
        }]
    );
    assert_eq!(c.system_mount_volumes.len(), 8);
    assert_eq!(
        c.system_mount_volumes[0].source_volume_path,
        "/var/run/docker.sock"
    );
    assert_eq!(
        c.system_mount_volumes[2],
        Mount {
            source_volume_path: "/Users/thomas/git/runner/_layout/externals".into(),
            target_volume_path: "/__e".into(),
            read_only: true,
        }
    );
    let registry = c.registry.expect("registry");
    assert_eq!(registry.username.as_deref(), Some("foo"));
    assert_eq!(
        registry.password.as_ref().map(|p| p.expose_secret()),
        Some("bar")
    );
    assert_eq!(
        registry.server_url.as_deref(),
        Some("https://index.docker.io/v1")
    );
    assert!(registry.has_credentials());
    assert_eq!(c.port_mappings, vec!["80:8080".to_string()]);
    assert_eq!(c.dockerfile, None);
    assert_eq!(c.entry_point, None);
    assert!(c.entry_point_args.is_empty());

    assert_eq!(args.services.len(), 1);
    let s = &args.services[0];
    assert_eq!(s.context_name.as_deref(), Some("redis"));
    assert_eq!(s.image.as_deref(), Some("redis"));
    // `"entrypoint": null` (lower-case p) is an unknown field: ignored.
    assert_eq!(s.entry_point, None);
    assert_eq!(s.port_mappings, vec!["8080:80", "8088:8080"]);
    assert_eq!(s.user_mount_volumes.len(), 1);
    assert!(s.environment_variables.is_empty());
}

#[test]
fn run_script_step_fixture_parses_completely() {
    let input = HookInput::parse(&fixture("run-script-step.json")).expect("parses");
    assert_eq!(input.command, HookCommand::RunScriptStep);
    assert_eq!(input.response_file, None);
    assert_eq!(
        input.state["container"],
        "82e8219701fe096a35941d869cf8d71af1d943b5d3bdd718850fb87ac3042480"
    );
    let HookArgs::RunScriptStep(args) = input.args else {
        panic!("script args");
    };
    assert_eq!(
        args,
        ScriptStepArgs {
            entry_point: "bash".into(),
            entry_point_args: vec!["-e".into(), "example-script.sh".into()],
            environment_variables: BTreeMap::from([(
                "NODE_ENV".to_string(),
                "development".to_string()
            )]),
            prepend_path: vec!["/foo/bar".into(), "bar/foo".into()],
            working_directory: Some("/__w/repo/repo".into()),
        }
    );
}

#[test]
fn run_container_step_fixture_parses_completely() {
    let input = HookInput::parse(&fixture("run-container-step.json")).expect("parses");
    assert_eq!(input.command, HookCommand::RunContainerStep);
    assert_eq!(
        input.state["services"]["redis"],
        "60972d9aa486605e66b0dad4abb638dc3d9116f566579e418166eedb8abb9105"
    );
    let HookArgs::RunContainerStep(c) = input.args else {
        panic!("container step args");
    };
    assert_eq!(c.image.as_deref(), Some("node:22"));
    assert_eq!(c.dockerfile, None);
    assert_eq!(c.entry_point.as_deref(), Some("bash"));
    assert_eq!(c.entry_point_args, vec!["-e", "example-script.sh"]);
    assert_eq!(c.prepend_path, vec!["/foo/bar", "bar/foo"]);
    assert!(c.registry.is_none());
    assert_eq!(c.system_mount_volumes.len(), 7);
    assert_eq!(
        c.system_mount_volumes[5].source_volume_path,
        "//Users/thomas/git/runner/_layout/_work/_temp/_github_home"
    );
    assert_eq!(c.port_mappings, vec!["8080:8080"]);
}

#[test]
fn fixtures_also_deserialize_through_serde() {
    for name in [
        "prepare-job.json",
        "run-script-step.json",
        "run-container-step.json",
    ] {
        let parsed: std::result::Result<HookInput, _> = serde_json::from_slice(&fixture(name));
        assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
    }
    let args: ScriptStepArgs =
        serde_json::from_value(json!({"entryPoint": "sh", "prependPath": "/a:/b"})).expect("args");
    assert_eq!(args.prepend_path, vec!["/a", "/b"]);
    let bad = serde_json::from_value::<PrepareJobArgs>(json!({"container": {"image": 5}}))
        .expect_err("wrong type");
    assert!(bad.to_string().contains("args.container.image"), "{bad}");
}

#[test]
fn the_runner_sends_prepend_path_as_one_string() {
    let input = parse_json(json!({
        "command": "run_script_step",
        "responseFile": null,
        "state": null,
        "args": {"entryPoint": "bash", "prependPath": "/new/bin:/tool/bin:"}
    }))
    .expect("parses");
    let HookArgs::RunScriptStep(args) = input.args else {
        panic!("script args");
    };
    assert_eq!(args.prepend_path, vec!["/new/bin", "/tool/bin"]);
    assert_eq!(input.state, Value::Null);
}

#[test]
fn unknown_fields_are_ignored_everywhere() {
    let mut v = prepare();
    v["newTopLevel"] = json!({"x": 1});
    v["args"]["newArg"] = json!([1, 2]);
    v["args"]["container"]["newField"] = json!(true);
    v["args"]["container"]["systemMountVolumes"] =
        json!([{"sourceVolumePath": "/a", "targetVolumePath": "/b", "propagation": "x"}]);
    let input = parse_json(v).expect("unknown fields ignored");
    let HookArgs::PrepareJob(args) = input.args else {
        panic!("prepare");
    };
    assert!(!args.container.expect("container").system_mount_volumes[0].read_only);
}

#[test]
fn nulls_count_as_absent_and_cleanup_needs_no_args() {
    let input = parse_json(
        json!({"command": "cleanup_job", "responseFile": null, "state": {"jobId": "x"}}),
    )
    .expect("cleanup");
    assert!(matches!(input.args, HookArgs::CleanupJob));
    assert_eq!(input.state["jobId"], "x");
    let mut v = prepare();
    v["args"]["container"]["registry"] =
        json!({"username": null, "password": null, "serverUrl": null});
    v["args"]["container"]["entryPointArgs"] = Value::Null;
    v["args"]["container"]["environmentVariables"] = json!({"EMPTY": null});
    let HookArgs::PrepareJob(args) = parse_json(v).expect("parses").args else {
        panic!("prepare");
    };
    let c = args.container.expect("container");
    assert!(!c.registry.expect("registry").has_credentials());
    assert_eq!(c.environment_variables["EMPTY"], "");
    assert!(c.entry_point_args.is_empty());
    let only_services = parse_json(json!({
        "command": "prepare_job",
        "args": {"container": null, "services": [{"image": "redis", "contextName": "redis"}]}
    }))
    .expect("services only");
    let HookArgs::PrepareJob(args) = only_services.args else {
        panic!("prepare");
    };
    assert!(args.container.is_none());
}

#[test]
fn wrong_types_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"command": 1}), "command"),
        (json!({"command": "prepare_job", "args": []}), "args"),
        (
            json!({"command": "prepare_job", "args": {"container": "node"}}),
            "args.container",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": 22}}}),
            "args.container.image",
        ),
        (
            json!({"command": "prepare_job", "args": {"services": {}}}),
            "args.services",
        ),
        (
            json!({"command": "prepare_job", "args": {"services": [{"image": "r", "portMappings": [80]}]}}),
            "args.services[0].portMappings[0]",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": "i", "environmentVariables": {"A": 1}}}}),
            "args.container.environmentVariables.A",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": "i", "environmentVariables": ["A=1"]}}}),
            "args.container.environmentVariables",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": "i", "userMountVolumes": [{"sourceVolumePath": "/a", "targetVolumePath": "/b", "readOnly": "yes"}]}}}),
            "args.container.userMountVolumes[0].readOnly",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": "i", "registry": {"password": 5}}}}),
            "args.container.registry.password",
        ),
        (
            json!({"command": "run_script_step", "args": {"entryPoint": "bash", "entryPointArgs": "-e x"}}),
            "args.entryPointArgs",
        ),
        (
            json!({"command": "run_script_step", "args": {"entryPoint": "bash", "prependPath": 3}}),
            "args.prependPath",
        ),
        (json!({"command": "cleanup_job", "args": 3}), "args"),
    ];
    for (value, field) in cases {
        let text = value.to_string();
        assert_eq!(err_field(value), field, "{text}");
    }
    let top = parse_json(json!([1])).expect_err("not an object");
    assert_eq!(top.field(), Some("(input)"));
}

#[test]
fn missing_required_fields_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"args": {}}), "command"),
        (json!({"command": "prepare_job"}), "args"),
        (json!({"command": "run_script_step"}), "args"),
        (
            json!({"command": "run_script_step", "args": {"entryPointArgs": []}}),
            "args.entryPoint",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"workingDirectory": "/w"}}}),
            "args.container.image",
        ),
        (
            json!({"command": "prepare_job", "args": {"services": [{"image": "r"}, {"contextName": "db"}]}}),
            "args.services[1].image",
        ),
        (
            json!({"command": "run_container_step", "args": {"entryPoint": "sh"}}),
            "args.image",
        ),
        (
            json!({"command": "prepare_job", "args": {"container": {"image": "i", "systemMountVolumes": [{"sourceVolumePath": "/a"}]}}}),
            "args.container.systemMountVolumes[0].targetVolumePath",
        ),
    ];
    for (value, field) in cases {
        let text = value.to_string();
        assert_eq!(err_field(value), field, "{text}");
    }
    // A container step may name a Dockerfile instead of an image.
    parse_json(json!({"command": "run_container_step", "args": {"dockerfile": "Dockerfile"}}))
        .expect("dockerfile step");
}

#[test]
fn unknown_commands_and_bad_values_are_refused() {
    let err = parse_json(json!({"command": "prepare_everything", "args": {}}))
        .expect_err("unknown command");
    assert_eq!(err.field(), Some("command"));
    assert!(err.to_string().contains("prepare_everything"));
    let mut v = prepare();
    v["args"]["container"]["environmentVariables"] = json!({"A=B": "x"});
    assert_eq!(err_field(v), "args.container.environmentVariables.A=B");
    let mut v = prepare();
    v["args"]["container"]["workingDirectory"] = json!("/a\u{0}b");
    assert_eq!(err_field(v), "args.container.workingDirectory");
    assert!(matches!(
        HookInput::parse(b"{\"command\": "),
        Err(HookInputError::Syntax(_))
    ));
}

#[test]
fn over_limit_sizes_are_refused_naming_the_field() {
    let long = "x".repeat(limits::STRING_BYTES + 1);
    let mut v = prepare();
    v["args"]["container"]["image"] = json!(long);
    assert_eq!(err_field(v), "args.container.image");

    let mut v = prepare();
    v["args"]["container"]["createOptions"] = json!("-e A=1 ".repeat(2000));
    assert_eq!(err_field(v), "args.container.createOptions");

    let mut v = prepare();
    v["args"]["container"]["portMappings"] = json!(vec!["80"; limits::LIST_ITEMS + 1]);
    assert_eq!(err_field(v), "args.container.portMappings");

    let mut v = prepare();
    let mount = json!({"sourceVolumePath": "/a", "targetVolumePath": "/b"});
    v["args"]["container"]["userMountVolumes"] = json!(vec![mount; limits::MOUNTS + 1]);
    assert_eq!(err_field(v), "args.container.userMountVolumes");

    let mut v = prepare();
    v["args"]["services"] = json!(vec![json!({"image": "r"}); limits::SERVICES + 1]);
    assert_eq!(err_field(v), "args.services");

    let mut v = prepare();
    v["args"]["container"]["environmentVariables"] =
        json!({"BIG": "y".repeat(limits::ENV_VALUE_BYTES + 1)});
    assert_eq!(err_field(v), "args.container.environmentVariables.BIG");

    let mut v = prepare();
    let many: Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("V{i}"),
                json!("z".repeat(limits::ENV_VALUE_BYTES - 10)),
            )
        })
        .collect();
    v["args"]["container"]["environmentVariables"] = Value::Object(many);
    let err = parse_json(v).expect_err("total env too large");
    assert_eq!(err.field(), Some("args.container.environmentVariables"));
    assert!(matches!(err, HookInputError::TooLarge { .. }));

    let mut v = prepare();
    v["state"] = json!({"blob": "s".repeat(limits::STATE_BYTES)});
    assert_eq!(err_field(v), "state");

    let huge = vec![b' '; limits::INPUT_BYTES + 1];
    assert!(matches!(
        HookInput::parse(&huge),
        Err(HookInputError::TooLarge { .. })
    ));
}

#[test]
fn registry_password_is_never_printed() {
    let input = HookInput::parse(&fixture("prepare-job.json")).expect("parses");
    let debug = format!("{input:?}");
    assert!(!debug.contains("\"bar\""), "{debug}");
    assert!(debug.contains("REDACTED"), "{debug}");
    // Nor in an error about it.
    let err = parse_json(json!({"command": "prepare_job", "args": {"container": {"image": "i", "registry": {"password": ["hunter2"]}}}}))
        .expect_err("wrong type");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn prepare_job_response_serializes_as_the_runner_reads_it() {
    let state = HookState {
        job_id: Uuid::nil(),
        container: Some("c1".into()),
        network: "net".into(),
        services: BTreeMap::from([("redis".to_string(), "s1".to_string())]),
    };
    let response = PrepareJobResponse {
        state: serde_json::to_value(&state).expect("state"),
        context: PrepareJobContext {
            container: Some(ContainerContext {
                id: "c1".into(),
                network: "net".into(),
                ports: BTreeMap::new(),
            }),
            services: vec![ContainerContext {
                id: "s1".into(),
                network: "net".into(),
                ports: BTreeMap::from([("6379/tcp".to_string(), "49153".to_string())]),
            }],
        },
        is_alpine: false,
    };
    let value = serde_json::to_value(&response).expect("serializes");
    assert_eq!(
        value,
        json!({
            "state": {
                "jobId": "00000000-0000-0000-0000-000000000000",
                "container": "c1",
                "network": "net",
                "services": {"redis": "s1"}
            },
            "context": {
                "container": {"id": "c1", "network": "net", "ports": {}},
                "services": [{"id": "s1", "network": "net", "ports": {"6379/tcp": "49153"}}]
            },
            "isAlpine": false
        })
    );
    let back: PrepareJobResponse = serde_json::from_value(value).expect("round trip");
    assert_eq!(back, response);
    let state_back: HookState = serde_json::from_value(back.state).expect("state round trip");
    assert_eq!(state_back, state);
}
