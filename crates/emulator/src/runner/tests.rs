use super::*;

#[test]
fn origins() {
    assert_eq!(origin_of("http://h:1/o/r"), Some("http://h:1"));
    assert_eq!(origin_of("https://h"), Some("https://h"));
    assert_eq!(origin_of("http:///x"), None);
    assert_eq!(origin_of("nope"), None);
}

#[test]
fn bad_jit_configs_say_nothing_about_their_content() {
    for bad in ["", "!!!", "bm90IGpzb24=", "e30="] {
        let err = SimRunner::from_jit_config(bad).unwrap_err();
        assert!(matches!(err, RunnerError::InvalidJitConfig), "{bad}");
        assert_eq!(err.exit_code(), EXIT_TERMINATED_ERROR);
    }
    let secret_doc = base64::engine::general_purpose::STANDARD.encode(
        r#"{"url":"ftp://x","scopeUrl":"","runnerId":1,"runnerName":"n","credential":"hunter2"}"#,
    );
    let err = SimRunner::from_jit_config(&secret_doc).unwrap_err();
    assert!(!err.to_string().contains("hunter2"));
    assert!(!format!("{err:?}").contains("hunter2"));
}

#[test]
fn debug_redacts_the_credential() {
    let doc = base64::engine::general_purpose::STANDARD.encode(
        r#"{"url":"http://127.0.0.1:1","scopeUrl":"http://127.0.0.1:1/o/r","runnerId":7,"runnerName":"r7","credential":"hunter2"}"#,
    );
    let runner = SimRunner::from_jit_config(&doc).unwrap();
    assert_eq!(runner.id(), 7);
    assert_eq!(runner.name(), "r7");
    assert_eq!(runner.server_url(), "http://127.0.0.1:1");
    assert!(!format!("{runner:?}").contains("hunter2"));
}

#[test]
fn exit_codes_follow_the_listener() {
    assert_eq!(RunOutcome::NoJob.exit_code(), EXIT_RETRYABLE_ERROR);
    assert_eq!(RunnerError::Deregistered.exit_code(), EXIT_TERMINATED_ERROR);
    assert_eq!(
        RunnerError::Transport("x".into()).exit_code(),
        EXIT_RETRYABLE_ERROR
    );
    assert_eq!(
        RunnerError::Server { status: 503 }.exit_code(),
        EXIT_RETRYABLE_ERROR
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    assert_eq!(backoff(1), Duration::from_millis(500));
    assert_eq!(backoff(2), Duration::from_secs(1));
    assert_eq!(backoff(30), Duration::from_secs(10));
}

fn ctx(command: &str) -> StepContext {
    StepContext {
        index: 0,
        command: command.into(),
        shell: None,
        env: vec![("GITHUB_REPOSITORY".into(), "octo/repo".into())],
    }
}

#[tokio::test]
async fn shell_steps_capture_output_and_exit_code() {
    let shell = ShellExecutor::default();
    let ok = shell
        .run_step(&ctx("echo out; echo err >&2; echo $GITHUB_REPOSITORY"))
        .await;
    assert_eq!(ok.exit_code, 0);
    assert!(ok.output.contains("out\n"), "{}", ok.output);
    assert!(ok.output.contains("err\n"), "{}", ok.output);
    assert!(ok.output.contains("octo/repo"), "{}", ok.output);
    let failed = shell.run_step(&ctx("exit 3")).await;
    assert_eq!(failed.exit_code, 3);
}

#[tokio::test]
async fn bash_steps_run_with_pipefail() {
    let shell = ShellExecutor::default();
    let step = StepContext {
        shell: Some("bash".into()),
        ..ctx("false | true; echo not reached")
    };
    let r = shell.run_step(&step).await;
    assert_eq!(r.exit_code, 1, "{}", r.output);
    assert_eq!(r.output, "");
    // The default shell has no pipefail.
    let r = shell.run_step(&ctx("false | true; echo reached")).await;
    assert_eq!((r.exit_code, r.output.as_str()), (0, "reached\n"));
}

#[test]
fn a_stored_configuration_starts_the_same_runner() {
    let doc = base64::engine::general_purpose::STANDARD.encode(
        r#"{"url":"http://127.0.0.1:1","scopeUrl":"http://127.0.0.1:1/o/r","runnerId":7,"runnerName":"r7","credential":"hunter2"}"#,
    );
    let runner = SimRunner::from_jit_config(&doc)
        .unwrap()
        .with_work_folder("/srv/work/r7");
    let again = SimRunner::from_jit_config(runner.encoded_config().expose_secret()).unwrap();
    assert_eq!((again.id(), again.name()), (7, "r7"));
    assert_eq!(again.server_url(), "http://127.0.0.1:1");
    assert_eq!(again.work_folder, "/srv/work/r7");
    assert_eq!(again.credential.expose_secret(), "hunter2");
}

#[test]
fn hosts_do_not_show_environment_values() {
    let host = RunnerHost {
        env: vec![("PROXY_RUNNER_TOKEN".into(), "hunter2".into())],
        ..RunnerHost::default()
    };
    let shown = format!("{host:?}");
    assert!(shown.contains("PROXY_RUNNER_TOKEN"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn shell_steps_do_not_inherit_the_environment() {
    // The test process has many variables (CARGO_*, ...); a step sees none of them.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let shell = ShellExecutor::default();
    let r = shell
        .run_step(&ctx("env | cut -d= -f1 | sort | tr '\\n' ' '"))
        .await;
    for name in r.output.split_whitespace() {
        assert!(
            [
                "PATH",
                "HOME",
                "GITHUB_REPOSITORY",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(&name),
            "unexpected variable {name}"
        );
    }
}

#[tokio::test]
async fn shell_output_is_bounded() {
    let shell = ShellExecutor {
        max_output: 1000,
        ..ShellExecutor::default()
    };
    let r = shell
        .run_step(&ctx("head -c 100000 /dev/zero | tr '\\0' 'a'"))
        .await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.output.len(), 1000);
}

#[tokio::test]
async fn shell_steps_time_out() {
    let shell = ShellExecutor {
        timeout: Duration::from_millis(300),
        ..ShellExecutor::default()
    };
    let r = shell.run_step(&ctx("echo started; sleep 30")).await;
    assert_eq!(r.exit_code, EXIT_STEP_TIMEOUT);
    assert!(r.output.starts_with("started"), "{}", r.output);
    assert!(r.output.contains("timed out"), "{}", r.output);
}

#[tokio::test]
async fn background_processes_do_not_hold_a_step_open() {
    let shell = ShellExecutor {
        timeout: Duration::from_secs(20),
        ..ShellExecutor::default()
    };
    let r = shell.run_step(&ctx("sleep 30 & echo done")).await;
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.output.trim(), "done");
}
