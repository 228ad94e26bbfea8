//! Tests of the configuration layers.
use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn precedence_is_flags_env_file_defaults() {
    let file = write(
        "listen = \"127.0.0.1:9000\"\ndatabase = \"from-file.db\"\nbackend = \"dry-run\"\ninstance = \"file\"\n",
    );
    let e = env(&[
        ("PROXY_RUNNER_DB", "from-env.db"),
        ("PROXY_RUNNER_INSTANCE", "env"),
    ]);
    let flags = Overrides {
        database: Some("from-flag.db".into()),
        ..Default::default()
    };
    let c = Config::load(Some(file.path()), &e, &flags).unwrap();
    assert_eq!(
        c.listen,
        "127.0.0.1:9000".parse().unwrap(),
        "file beats default"
    );
    assert_eq!(c.instance, "env", "env beats file");
    assert_eq!(c.database, PathBuf::from("from-flag.db"), "flag beats env");
    assert_eq!(c.backend, BackendKind::DryRun);
    assert_eq!(
        Config::load(None, &env(&[]), &Overrides::default())
            .unwrap()
            .listen
            .port(),
        8080
    );
}

#[test]
fn unknown_keys_are_errors() {
    let file = write("listen = \"127.0.0.1:9000\"\nlisten_adress = \"x\"\n");
    let err = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("listen_adress"), "{err}");
    let nested = write("[runners]\nimagee = \"x\"\n");
    let err = Config::load(Some(nested.path()), &env(&[]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("imagee"), "{err}");
}

#[test]
fn bad_values_name_their_source() {
    let err = Config::load(
        None,
        &env(&[("PROXY_RUNNER_LISTEN", "nope")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("PROXY_RUNNER_LISTEN"), "{err}");
    let err = Config::load(
        None,
        &env(&[("PROXY_RUNNER_BACKEND", "k8s")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("dry-run"), "{err}");
    let file = write("[runners.hardening]\nuser = \"0:0\"\n");
    let err = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("root"), "{err}");
    let missing = Config::load(
        Some(Path::new("/nonexistent/x.toml")),
        &env(&[]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/x.toml"),
        "{missing}"
    );
}

#[test]
fn secrets_are_masked_in_every_rendering() {
    let file = write(
        "admin_token = \"file-admin-SECRET-1\"\n[github]\nwebhook_secret = \"hook-SECRET-2\"\n",
    );
    let e = env(&[("PROXY_RUNNER_GITHUB_TOKEN", "ghp_env-SECRET-3")]);
    let c = Config::load(Some(file.path()), &e, &Overrides::default()).unwrap();
    let shown = format!("{}\n{:?}", c.to_masked_toml(), c);
    for s in ["file-admin-SECRET-1", "hook-SECRET-2", "ghp_env-SECRET-3"] {
        assert!(!shown.contains(s), "{s} leaked:\n{shown}");
    }
    assert!(shown.contains("***"));
    assert_eq!(c.admin_token_value(), Some("file-admin-SECRET-1"));
    assert!(c.github.token.is_set());
}

#[test]
fn label_sets_with_their_own_hardening() {
    let file = write(
        "[[runners.label_sets]]\nlabels = [\"self-hosted\", \"gpu\"]\nimage = \"gpu-runner:1\"\n[runners.label_sets.hardening]\nmemory_bytes = 1024\n",
    );
    let c = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap();
    let set = &c.runners.label_sets[0];
    assert_eq!(set.image.as_deref(), Some("gpu-runner:1"));
    let h = set.hardening.as_ref().unwrap();
    assert_eq!(h.memory_bytes, 1024);
    assert!(
        h.drop_all_capabilities,
        "unset hardening fields keep their hardened default"
    );
}

/// Found by the `config_file` fuzz target: the rendering showed unset
/// secrets as "(not set)" and set ones as "***", and a rendering used as a
/// file took those texts as the secrets.
#[test]
fn a_rendered_configuration_sets_no_secret_by_its_placeholders() {
    let unset = Config::default();
    let shown = unset.to_masked_toml();
    assert!(!shown.contains("(not set)"), "{shown}");
    let again = Config::from_toml(&shown, Path::new("shown.toml")).unwrap();
    assert!(!again.admin_token.is_set() && !again.github.token.is_set());
    assert!(!again.github.webhook_secret.is_set());
    assert_eq!(again.to_masked_toml(), shown);

    let file = write("admin_token = \"admin-SECRET\"\n[github]\ntoken = \"gh-SECRET\"\n");
    let set = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap();
    let err = Config::from_toml(&set.to_masked_toml(), Path::new("shown.toml")).unwrap_err();
    assert!(err.to_string().contains("masks a secret"), "{err}");
    for placeholder in ["***", "(not set)"] {
        let text = format!("[github]\nwebhook_secret = {placeholder:?}\n");
        let err = Config::from_toml(&text, Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("masks a secret"), "{err}");
    }
}

#[test]
fn warm_runners_from_the_file_and_the_environment() {
    let file = write(
        "[runners]\nwarm_max_age_secs = 1800\n[[runners.label_sets]]\nlabels = [\"self-hosted\", \"linux\"]\nwarm = 2\nwarm_repositories = [\"Octo/App\", \"octo/lib\"]\n",
    );
    let c = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap();
    let set = &c.runners.label_sets[0];
    assert_eq!(set.warm, 2);
    assert_eq!(set.warm_repositories, ["Octo/App", "octo/lib"]);
    assert_eq!(c.runners.warm_max_age_secs, 1800);
    assert_eq!(c.runners.warm_wait_secs, 10, "the default");
    // The rendering reads back the same.
    let again = Config::from_toml(&c.to_masked_toml(), Path::new("shown.toml")).unwrap();
    assert_eq!(again.runners.label_sets, c.runners.label_sets);
    let e = env(&[
        ("PROXY_RUNNER_WARM_MAX_AGE_SECS", "600"),
        ("PROXY_RUNNER_WARM_WAIT_SECS", "3"),
    ]);
    let c = Config::load(Some(file.path()), &e, &Overrides::default()).unwrap();
    assert_eq!(
        (c.runners.warm_max_age_secs, c.runners.warm_wait_secs),
        (600, 3),
        "the environment beats the file"
    );
    let defaults = Config::default();
    assert_eq!(defaults.runners.warm_max_age_secs, 3600);
    assert!(!defaults.to_masked_toml().contains("warm_repositories"));
}

#[test]
fn warm_runner_settings_are_refused_with_a_reason() {
    let set = |extra: &str| {
        format!(
            "[runners]\nmax_concurrent = 4\nmax_per_repository = 3\n[[runners.label_sets]]\nlabels = [\"self-hosted\"]\n{extra}\n"
        )
    };
    let cases = [
        ("warm = 1\n", "needs warm_repositories"),
        ("warm_repositories = [\"o/r\"]\n", "warm is 0"),
        (
            "warm = 1\nwarm_repositories = [\"not-a-repo\"]\n",
            "warm_repositories",
        ),
        (
            "warm = 1\nwarm_repositories = [\"o/r\", \"O/R\"]\n",
            "twice",
        ),
        (
            "warm = 4\nwarm_repositories = [\"o/r\"]\n",
            "max_per_repository = 3",
        ),
        (
            "warm = 2\nwarm_repositories = [\"o/a\", \"o/b\", \"o/c\"]\n",
            "max_concurrent = 4",
        ),
        ("warm = -1\n", "warm"),
    ];
    for (extra, want) in cases {
        let file = write(&set(extra));
        let err = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(want), "{extra}: {err}");
    }
    let file = write(
        "[github]\nregistration = \"registration-token\"\n[[runners.label_sets]]\nlabels = [\"self-hosted\"]\nwarm = 1\nwarm_repositories = [\"o/r\"]\n",
    );
    let err = Config::load(Some(file.path()), &env(&[]), &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("jit"), "{err}");
    let file = write(
        "[[runners.label_sets]]\nlabels = [\"self-hosted\"]\nwarm = 1\nwarm_repositories = [\"o/r\"]\n",
    );
    let err = Config::load(
        Some(file.path()),
        &env(&[("PROXY_RUNNER_WARM_WAIT_SECS", "0")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("warm_wait_secs"), "{err}");
    let err = Config::load(
        None,
        &env(&[("PROXY_RUNNER_WARM_MAX_AGE_SECS", "soon")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("PROXY_RUNNER_WARM_MAX_AGE_SECS"),
        "{err}"
    );
}

#[test]
fn http_limits_from_defaults_the_file_and_the_environment() {
    let defaults = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
    let h = &defaults.http;
    assert_eq!(
        (
            h.header_read_timeout_secs,
            h.max_connections,
            h.body_read_timeout_secs,
            h.body_read_deadline_secs,
            h.webhook_body_limit_bytes,
            h.max_large_bodies,
            h.large_body_wait_secs
        ),
        (10, 512, 30, 60, 1024 * 1024, 8, 10),
        "the defaults the README documents"
    );
    let file = write(
        "[http]\nheader_read_timeout_secs = 3\nmax_connections = 100\nbody_read_timeout_secs = 4\n\
         body_read_deadline_secs = 5\nwebhook_body_limit_bytes = 4096\nmax_large_bodies = 2\nlarge_body_wait_secs = 6\n",
    );
    let e = env(&[
        ("PROXY_RUNNER_HTTP_MAX_CONNECTIONS", "200"),
        ("PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS", "7"),
    ]);
    let c = Config::load(Some(file.path()), &e, &Overrides::default()).unwrap();
    let served = c.http.limits();
    assert_eq!(
        served.header_read_timeout,
        std::time::Duration::from_secs(3)
    );
    assert_eq!(served.max_connections, 200, "env beats file");
    let bodies = c.http.body_limits();
    assert_eq!(bodies.read_timeout, std::time::Duration::from_secs(4));
    assert_eq!(
        bodies.read_deadline,
        std::time::Duration::from_secs(7),
        "env beats file"
    );
    assert_eq!(bodies.webhook, 4096);
    assert_eq!(bodies.max_large_bodies, 2);
    assert_eq!(bodies.large_body_wait, std::time::Duration::from_secs(6));
}

#[test]
fn http_limits_out_of_range_are_refused_naming_the_setting() {
    for (var, value, named) in [
        (
            "PROXY_RUNNER_HTTP_WEBHOOK_BODY_LIMIT_BYTES",
            "1023",
            "webhook_body_limit_bytes",
        ),
        (
            "PROXY_RUNNER_HTTP_WEBHOOK_BODY_LIMIT_BYTES",
            "26214401",
            "webhook_body_limit_bytes",
        ),
        ("PROXY_RUNNER_HTTP_MAX_CONNECTIONS", "0", "max_connections"),
        (
            "PROXY_RUNNER_HTTP_HEADER_TIMEOUT_SECS",
            "0",
            "header_read_timeout_secs",
        ),
        (
            "PROXY_RUNNER_HTTP_BODY_DEADLINE_SECS",
            "0",
            "body_read_deadline_secs",
        ),
        (
            "PROXY_RUNNER_HTTP_BODY_TIMEOUT_SECS",
            "0",
            "body_read_timeout_secs",
        ),
        (
            "PROXY_RUNNER_HTTP_MAX_LARGE_BODIES",
            "0",
            "max_large_bodies",
        ),
        (
            "PROXY_RUNNER_HTTP_MAX_CONNECTIONS",
            "many",
            "PROXY_RUNNER_HTTP_MAX_CONNECTIONS",
        ),
    ] {
        let err = Config::load(None, &env(&[(var, value)]), &Overrides::default())
            .and_then(|c| c.validate().map(|()| c))
            .expect_err(&format!("{var}={value} was accepted"));
        assert!(err.to_string().contains(named), "{var}={value}: {err}");
    }
}
