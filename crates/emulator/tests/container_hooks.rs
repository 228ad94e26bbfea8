//! The simulated runner around hooks, like the real runner: job hooks
//! around the job, and for jobs with containers the container hook
//! (prepare_job, run_script_step per step, cleanup_job), with the inputs the
//! runner sends (compared with the upstream examples in
//! fixtures/container-hooks) and the log it records.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_runner_emulator::runner::{JobRun, RunOptions, RunnerHost, SimRunner};
use serde_json::{Value, json};
use support::{Harness, RecordingExecutor};

/// A container hook for tests: it appends its input line to
/// `$HOOK_RECORD`, prints a line on stdout and one on stderr, copies
/// `$HOOK_DIR/<command>.response` (if any) to the response file, exits with
/// `$HOOK_DIR/<command>.exit` (if any), and runs a script step's script on
/// the host (the work folder stands in for `/__w`).
const CONTAINER_HOOK: &str = r#"#!/usr/bin/env bash
IFS= read -r line || true
printf '%s\n' "$line" >> "$HOOK_RECORD"
field() { printf '%s' "$line" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
command=$(field command)
echo "container hook $command on stdout"
echo "container hook $command on stderr" >&2
if [ -f "$HOOK_DIR/$command.response" ]; then cp "$HOOK_DIR/$command.response" "$(field responseFile)"; fi
if [ -f "$HOOK_DIR/$command.exit" ]; then exit "$(cat "$HOOK_DIR/$command.exit")"; fi
if [ "$command" = run_script_step ]; then
  script=$(printf '%s' "$line" | sed -n 's/.*"\(\/__w\/_temp\/[^"]*\.sh\)".*/\1/p')
  sh -e "$WORK_DIR${script#/__w}"
fi
"#;

/// A job hook for tests: prints what the runner gave it and exits with
/// `$HOOK_DIR/<name>.exit` (if any).
const JOB_HOOK: &str = r#"#!/usr/bin/env bash
name=$(basename "$0" .sh)
echo "$name hook: flags=$- bash=${BASH_VERSION:+yes} pwd=$(pwd)"
echo "$name hook on stderr" >&2
env | sort > "$HOOK_DIR/$name.env"
echo "FROM_$name=1" >> "$GITHUB_ENV"
if [ -f "$HOOK_DIR/$name.exit" ]; then exit "$(cat "$HOOK_DIR/$name.exit")"; fi
"#;

const PREPARED_STATE: &str =
    r#"{"jobId":"0193","container":"c-1","network":"n-1","services":{"redis":"s-1"}}"#;

struct Rig {
    h: Harness,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("container-hook.sh", CONTAINER_HOOK),
            ("started.sh", JOB_HOOK),
            ("completed.sh", JOB_HOOK),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::create_dir(dir.path().join("answers")).unwrap();
        let rig = Rig {
            h: Harness::start().await,
            dir,
        };
        rig.answer(
            "prepare_job",
            &format!(
                r#"{{"state":{PREPARED_STATE},"context":{{"container":{{"id":"c-1","network":"n-1","ports":{{}}}},"services":[{{"id":"s-1","network":"n-1","ports":{{"6379":"6379"}}}}]}},"isAlpine":false}}"#
            ),
        );
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The runner's root; its work folder is `root/_work`.
    fn root(&self) -> PathBuf {
        self.path("runner")
    }

    fn work(&self) -> PathBuf {
        std::fs::canonicalize(self.root()).unwrap().join("_work")
    }

    /// What the test hooks answer (`NAME.response`) or exit with (`NAME.exit`).
    fn answer(&self, command: &str, response: &str) {
        std::fs::write(
            self.path("answers").join(format!("{command}.response")),
            response,
        )
        .unwrap();
    }

    fn exit_with(&self, name: &str, code: i32) {
        std::fs::write(
            self.path("answers").join(format!("{name}.exit")),
            code.to_string(),
        )
        .unwrap();
    }

    /// The runner's environment with the given hook settings.
    fn env(&self, settings: &[(&str, String)]) -> Vec<(String, String)> {
        std::fs::create_dir_all(self.root()).unwrap();
        let mut env = vec![
            ("PATH".to_string(), std::env::var("PATH").unwrap()),
            (
                "HOOK_RECORD".to_string(),
                self.path("record").display().to_string(),
            ),
            (
                "HOOK_DIR".to_string(),
                self.path("answers").display().to_string(),
            ),
            ("WORK_DIR".to_string(), self.work().display().to_string()),
        ];
        for (k, v) in settings {
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    fn container_hooks(&self) -> (&'static str, String) {
        (
            "ACTIONS_RUNNER_CONTAINER_HOOKS",
            self.path("container-hook.sh").display().to_string(),
        )
    }

    async fn queue(&self, job: Value) -> u64 {
        let mut body = json!({"repository": "octo/app", "labels": ["self-hosted"]});
        for (k, v) in job.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, created) = self.h.admin("POST", "/jobs", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_u64().unwrap()
    }

    /// A JIT runner with this environment takes the queued job and runs it.
    async fn run(&self, env: Vec<(String, String)>, executor: &RecordingExecutor) -> JobRun {
        let (_, config) = self.h.jit("/repos/octo/app", "sim", &["self-hosted"]).await;
        let runner = SimRunner::from_jit_config(&config)
            .unwrap()
            .with_host(RunnerHost {
                env,
                root: Some(self.root()),
                hook_timeout: Duration::from_secs(60),
            });
        let options = RunOptions {
            job_wait: Some(Duration::from_secs(10)),
            poll_wait: Duration::from_millis(500),
            ..RunOptions::default()
        };
        runner
            .run(executor, &options)
            .await
            .unwrap()
            .job()
            .cloned()
            .expect("the runner took the job")
    }

    /// The container hook's inputs, one per call.
    fn recorded(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("record"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each input is one line of JSON"))
            .collect()
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn fixture(name: &str) -> Value {
    proxy_runner_test_support::fixture_json(&format!("container-hooks/{name}"))
}

fn names(log: &Value) -> Vec<String> {
    log.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn commands(inputs: &[Value]) -> Vec<&str> {
    inputs
        .iter()
        .map(|i| i["command"].as_str().unwrap())
        .collect()
}

/// Every field of a HookContainer the runner may send (HookInput.cs).
const HOOK_CONTAINER_KEYS: &[&str] = &[
    "image",
    "dockerfile",
    "entryPoint",
    "entryPointArgs",
    "workingDirectory",
    "createOptions",
    "registry",
    "environmentVariables",
    "portMappings",
    "systemMountVolumes",
    "userMountVolumes",
    "contextName",
];

#[tokio::test]
async fn a_container_job_runs_through_the_container_hook() {
    let rig = Rig::start().await;
    rig.answer(
        "run_script_step",
        r#"{"state":{"jobId":"0193","steps":"ran"}}"#,
    );
    let job = rig
        .queue(json!({
            "container": {"image": "node:22", "env": {"NODE_ENV": "development"}, "options": "--cpus 1"},
            "services": {"redis": {"image": "redis:7", "ports": ["6379:6379"], "options": "--health-cmd true"}},
            "steps": ["echo one; echo two >&2", {"run": "echo three", "shell": "bash"}],
        }))
        .await;
    let run = rig
        .run(
            rig.env(&[rig.container_hooks()]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.job_id, job);
    assert_eq!(run.conclusion, "success");

    let inputs = rig.recorded();
    assert_eq!(
        commands(&inputs),
        [
            "prepare_job",
            "run_script_step",
            "run_script_step",
            "cleanup_job"
        ]
    );
    for input in &inputs {
        assert_eq!(keys(input), keys(&fixture("prepare-job.json")));
        let response = PathBuf::from(input["responseFile"].as_str().unwrap());
        assert_eq!(
            response.parent().unwrap(),
            rig.work().join("_temp/_runner_hook_responses")
        );
        assert!(!response.exists(), "the runner deletes a response it read");
    }
    let work = rig.work();
    let root = work.parent().unwrap();

    // prepare_job: the runner's HookContainer, like the upstream example.
    let prepare = &inputs[0];
    assert_eq!(prepare["state"], Value::Null);
    let container = &prepare["args"]["container"];
    let example = fixture("prepare-job.json");
    let example_container = &example["args"]["container"];
    let allowed: BTreeSet<String> = HOOK_CONTAINER_KEYS.iter().map(|k| k.to_string()).collect();
    assert!(keys(example_container).is_subset(&keys(container)));
    assert!(keys(container).is_subset(&allowed), "{container}");
    assert_eq!(container["image"], "node:22");
    assert_eq!(container["createOptions"], "--cpus 1");
    assert_eq!(
        container["environmentVariables"],
        json!({"NODE_ENV": "development"})
    );
    assert_eq!(container["workingDirectory"], "/__w/app/app");
    assert_eq!(container["registry"], Value::Null);
    assert_eq!(container["userMountVolumes"], json!([]));
    assert_eq!(container["portMappings"], json!([]));
    let targets = |mounts: &Value| -> Vec<String> {
        mounts
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["targetVolumePath"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        targets(&container["systemMountVolumes"]),
        targets(&example_container["systemMountVolumes"])
    );
    let d = |p: &Path| p.display().to_string();
    assert_eq!(
        container["systemMountVolumes"],
        json!([
            {"sourceVolumePath": "/var/run/docker.sock", "targetVolumePath": "/var/run/docker.sock", "readOnly": false},
            {"sourceVolumePath": d(&work), "targetVolumePath": "/__w", "readOnly": false},
            {"sourceVolumePath": d(&root.join("externals")), "targetVolumePath": "/__e", "readOnly": true},
            {"sourceVolumePath": d(&work.join("_temp")), "targetVolumePath": "/__w/_temp", "readOnly": false},
            {"sourceVolumePath": d(&work.join("_actions")), "targetVolumePath": "/__w/_actions", "readOnly": false},
            {"sourceVolumePath": d(&work.join("_tool")), "targetVolumePath": "/__w/_tool", "readOnly": false},
            {"sourceVolumePath": d(&work.join("_temp/_github_home")), "targetVolumePath": "/github/home", "readOnly": false},
            {"sourceVolumePath": d(&work.join("_temp/_github_workflow")), "targetVolumePath": "/github/workflow", "readOnly": false},
        ])
    );
    for mount in container["systemMountVolumes"].as_array().unwrap() {
        let source = mount["sourceVolumePath"].as_str().unwrap();
        assert!(Path::new(source).exists(), "{source} exists on the host");
    }
    let services = prepare["args"]["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    let redis = &services[0];
    let mut example_keys = keys(&example["args"]["services"][0]);
    // The upstream example spells entryPoint "entrypoint".
    example_keys.remove("entrypoint");
    assert!(example_keys.is_subset(&keys(redis)), "{redis}");
    assert!(keys(redis).is_subset(&allowed), "{redis}");
    assert_eq!(redis["contextName"], "redis");
    assert_eq!(redis["image"], "redis:7");
    assert_eq!(redis["portMappings"], json!(["6379:6379"]));
    assert_eq!(redis["createOptions"], "--health-cmd true");
    assert_eq!(redis["systemMountVolumes"], json!([]));
    assert_eq!(redis["registry"], Value::Null);

    // run_script_step: the script file, the shell and the context.
    let example_step = fixture("run-script-step.json");
    let state: Value = serde_json::from_str(PREPARED_STATE).unwrap();
    let mut scripts = Vec::new();
    for (input, (shell, flags, content)) in inputs[1..3].iter().zip([
        ("sh", vec!["-e"], "echo one; echo two >&2"),
        (
            "bash",
            vec!["--noprofile", "--norc", "-eo", "pipefail"],
            "echo three",
        ),
    ]) {
        let args = &input["args"];
        assert_eq!(keys(args), keys(&example_step["args"]));
        assert_eq!(args["entryPoint"], shell);
        let mut argv: Vec<String> = args["entryPointArgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let script = argv.pop().unwrap();
        assert_eq!(argv, flags);
        let name = script
            .strip_prefix("/__w/_temp/")
            .unwrap_or_else(|| panic!("{script}"));
        assert!(name.ends_with(".sh") && !name.contains('/'), "{script}");
        assert_eq!(
            std::fs::read_to_string(work.join("_temp").join(name)).unwrap(),
            content
        );
        scripts.push(script);
        assert_eq!(args["workingDirectory"], "/__w/app/app");
        assert_eq!(args["prependPath"], json!([]));
        let env = &args["environmentVariables"];
        assert_eq!(env["GITHUB_WORKSPACE"], "/__w/app/app");
        assert_eq!(env["GITHUB_REPOSITORY"], "octo/app");
        assert_eq!(env["RUNNER_TEMP"], "/__w/_temp");
        assert_eq!(env["CI"], "true");
        for file in ["GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT"] {
            let path = env[file].as_str().unwrap();
            assert!(
                path.starts_with("/__w/_temp/_runner_file_commands/"),
                "{file}={path}"
            );
        }
    }
    assert_ne!(scripts[0], scripts[1]);
    // State: prepare_job's to the first step, the step's answer afterwards.
    assert_eq!(inputs[1]["state"], state);
    let stepped = json!({"jobId": "0193", "steps": "ran"});
    assert_eq!(inputs[2]["state"], stepped);
    assert_eq!(inputs[3]["state"], stepped);
    assert_eq!(inputs[3]["args"], json!({}));

    // The log: each hook call's output, each step's, in order.
    let view = rig.h.job(job).await;
    assert_eq!(
        names(&view["log"]),
        [
            "Initialize containers",
            "Run echo one; echo two >&2",
            "Run echo three",
            "Stop containers"
        ]
    );
    let outputs: Vec<&str> = view["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["output"].as_str().unwrap())
        .collect();
    for (output, command) in outputs.iter().zip(commands(&inputs)) {
        assert!(
            output.contains(&format!("container hook {command} on stdout\n")),
            "{output}"
        );
        assert!(
            output.contains(&format!("container hook {command} on stderr\n")),
            "{output}"
        );
    }
    assert!(outputs[1].ends_with("one\ntwo\n"), "{}", outputs[1]);
    assert!(outputs[2].ends_with("three\n"), "{}", outputs[2]);
    assert_eq!(view["steps"][1]["output"], outputs[2]);
    assert_eq!(view["steps"][1]["shell"], "bash");
    let local: Vec<&str> = run.log.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(local, names(&view["log"]));
}

#[tokio::test]
async fn a_failing_step_fails_the_job_and_the_containers_are_still_cleaned_up() {
    let rig = Rig::start().await;
    let job = rig
        .queue(json!({"container": "alpine:3", "steps": ["echo before; exit 3", "echo never"]}))
        .await;
    let run = rig
        .run(
            rig.env(&[rig.container_hooks()]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.conclusion, "failure");
    assert_eq!(
        commands(&rig.recorded()),
        ["prepare_job", "run_script_step", "cleanup_job"]
    );
    let view = rig.h.job(job).await;
    assert_eq!(
        view["steps"][0]["exitCode"], 3,
        "the hook's exit code is the step's"
    );
    assert_eq!(view["steps"][1]["conclusion"], "skipped");
    assert_eq!(
        names(&view["log"]),
        [
            "Initialize containers",
            "Run echo before; exit 3",
            "Stop containers"
        ]
    );
    let step_log = view["log"][1]["output"].as_str().unwrap();
    assert!(step_log.contains("before\n"), "{step_log}");
    assert_eq!(view["log"][2]["exitCode"], 0);
}

#[tokio::test]
async fn a_failing_hook_call_fails_its_section() {
    // prepare_job fails: no step runs, the clean-up still comes.
    let rig = Rig::start().await;
    rig.exit_with("prepare_job", 2);
    let job = rig
        .queue(json!({"container": "alpine:3", "steps": ["echo never"]}))
        .await;
    let run = rig
        .run(
            rig.env(&[rig.container_hooks()]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.conclusion, "failure");
    assert_eq!(commands(&rig.recorded()), ["prepare_job", "cleanup_job"]);
    let view = rig.h.job(job).await;
    assert_eq!(view["log"][0]["exitCode"], 2);
    assert!(
        view["log"][0]["output"]
            .as_str()
            .unwrap()
            .contains("running command 'prepare_job' did not execute successfully")
    );
    assert_eq!(view["steps"][0]["conclusion"], "skipped");

    // A job container needs isAlpine in the answer.
    let rig = Rig::start().await;
    rig.answer("prepare_job", r#"{"state":{"jobId":"x"}}"#);
    let job = rig
        .queue(json!({"container": "alpine:3", "steps": ["echo never"]}))
        .await;
    let run = rig
        .run(
            rig.env(&[rig.container_hooks()]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.conclusion, "failure");
    let view = rig.h.job(job).await;
    assert!(
        view["log"][0]["output"]
            .as_str()
            .unwrap()
            .contains("'isAlpine' is required"),
        "{view}"
    );
    // The runner keeps no state from a response it rejected: the clean-up
    // comes without one (the orchestrator finds the job by its runner).
    let inputs = rig.recorded();
    assert_eq!(commands(&inputs), ["prepare_job", "cleanup_job"]);
    assert_eq!(inputs[1]["state"], Value::Null);
}

#[tokio::test]
async fn file_commands_reach_later_steps() {
    let rig = Rig::start().await;
    let job = rig
        .queue(json!({
            "container": "alpine:3",
            "steps": [
                "echo /opt/a/bin >> \"$GITHUB_PATH\"; echo FOO=bar >> \"$GITHUB_ENV\"",
                "echo /opt/b/bin >> \"$GITHUB_PATH\"",
                "true",
            ],
        }))
        .await;
    let run = rig
        .run(
            rig.env(&[rig.container_hooks()]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.conclusion, "success", "{:?}", run.log);
    let inputs = rig.recorded();
    assert_eq!(inputs[1]["args"]["prependPath"], json!([]));
    assert_eq!(inputs[2]["args"]["prependPath"], json!(["/opt/a/bin"]));
    assert_eq!(inputs[2]["args"]["environmentVariables"]["FOO"], "bar");
    assert_eq!(
        inputs[3]["args"]["prependPath"],
        json!(["/opt/b/bin", "/opt/a/bin"]),
        "the newest entry first"
    );
    assert_eq!(rig.h.job(job).await["conclusion"], "success");
}

#[tokio::test]
async fn require_job_container_refuses_jobs_without_one() {
    let rig = Rig::start().await;
    let started = rig.path("started.sh").display().to_string();
    let env = rig.env(&[
        ("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER", "true".into()),
        ("ACTIONS_RUNNER_HOOK_JOB_STARTED", started),
        rig.container_hooks(),
    ]);
    let job = rig.queue(json!({"steps": ["echo never"]})).await;
    let executor = RecordingExecutor::default();
    let run = rig.run(env.clone(), &executor).await;
    assert_eq!(run.conclusion, "failure");
    assert!(executor.seen.lock().unwrap().is_empty());
    assert!(rig.recorded().is_empty(), "no container hook ran");
    assert!(!rig.path("answers/started.env").exists(), "no job hook ran");
    let view = rig.h.job(job).await;
    assert_eq!(names(&view["log"]), ["Set up job"]);
    assert!(
        view["log"][0]["output"]
            .as_str()
            .unwrap()
            .contains("Jobs without a job container are forbidden on this runner")
    );
    assert_eq!(view["steps"][0]["conclusion"], "skipped");

    // A job with a container runs on the same runner settings.
    rig.queue(json!({"container": "alpine:3", "steps": ["true"]}))
        .await;
    let run = rig.run(env, &executor).await;
    assert_eq!(run.conclusion, "success", "{:?}", run.log);
}

#[tokio::test]
async fn a_failing_started_hook_fails_the_job_and_the_completed_hook_still_runs() {
    let rig = Rig::start().await;
    rig.exit_with("started", 4);
    let started = rig.path("started.sh").display().to_string();
    let completed = rig.path("completed.sh").display().to_string();
    let env = rig.env(&[
        ("ACTIONS_RUNNER_HOOK_JOB_STARTED", started),
        ("ACTIONS_RUNNER_HOOK_JOB_COMPLETED", completed),
        rig.container_hooks(),
    ]);
    let job = rig
        .queue(json!({"container": "alpine:3", "steps": ["echo never"]}))
        .await;
    let run = rig.run(env, &RecordingExecutor::default()).await;
    assert_eq!(run.conclusion, "failure");
    assert!(
        rig.recorded().is_empty(),
        "containers are not prepared after a failed started hook"
    );
    let view = rig.h.job(job).await;
    assert_eq!(names(&view["log"]), ["Set up runner", "Complete runner"]);
    assert_eq!(view["log"][0]["exitCode"], 4);
    let started_log = view["log"][0]["output"].as_str().unwrap();
    assert!(
        started_log.contains("started hook on stderr"),
        "{started_log}"
    );
    assert!(
        started_log.contains("Process completed with exit code 4."),
        "{started_log}"
    );
    assert_eq!(view["log"][1]["exitCode"], 0);
    assert_eq!(view["steps"][0]["conclusion"], "skipped");

    // A failing completed hook fails a job whose steps passed.
    let rig = Rig::start().await;
    rig.exit_with("completed", 1);
    let completed = rig.path("completed.sh").display().to_string();
    rig.queue(json!({"steps": ["true"]})).await;
    let run = rig
        .run(
            rig.env(&[("ACTIONS_RUNNER_HOOK_JOB_COMPLETED", completed)]),
            &RecordingExecutor::default(),
        )
        .await;
    assert_eq!(run.conclusion, "failure");
    assert_eq!(run.steps[0].exit_code, 0);
}

#[tokio::test]
async fn job_hooks_run_with_bash_e_in_the_workspace_with_the_runners_environment() {
    let rig = Rig::start().await;
    let started = rig.path("started.sh").display().to_string();
    let completed = rig.path("completed.sh").display().to_string();
    let mut env = rig.env(&[
        ("ACTIONS_RUNNER_HOOK_JOB_STARTED", started),
        ("ACTIONS_RUNNER_HOOK_JOB_COMPLETED", completed),
        ("RUNNER_OWN_SETTING", "kept".into()),
        (
            "ACTIONS_RUNNER_INPUT_JITCONFIG",
            "planted-jit-config".into(),
        ),
    ]);
    env.push(("PROXY_RUNNER_TOKEN".into(), "runner-token".into()));
    let job = rig.queue(json!({"steps": ["echo step"]})).await;
    let executor = RecordingExecutor::default();
    let run = rig.run(env, &executor).await;
    assert_eq!(run.conclusion, "success", "{:?}", run.log);
    let workspace = rig.work().join("app/app");
    let view = rig.h.job(job).await;
    assert_eq!(
        names(&view["log"]),
        ["Set up runner", "Run echo step", "Complete runner"]
    );
    let first = view["log"][0]["output"].as_str().unwrap();
    assert!(first.starts_with("started hook: flags="), "{first}");
    let flags = first
        .split("flags=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert!(flags.contains('e'), "run with -e: {first}");
    assert!(first.contains(" bash=yes "), "run by bash: {first}");
    assert!(
        first.contains(&format!("pwd={}", workspace.display())),
        "{first}"
    );

    let env_of = |name: &str| -> Vec<(String, String)> {
        std::fs::read_to_string(rig.path(&format!("answers/{name}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let get = |env: &[(String, String)], key: &str| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let hook_env = env_of("started");
    for (key, value) in [
        ("GITHUB_REPOSITORY", "octo/app".to_string()),
        ("GITHUB_JOB", "build".to_string()),
        ("GITHUB_WORKSPACE", workspace.display().to_string()),
        ("RUNNER_NAME", "sim".to_string()),
        (
            "RUNNER_TEMP",
            rig.work().join("_temp").display().to_string(),
        ),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("CI", "true".to_string()),
        ("RUNNER_OWN_SETTING", "kept".to_string()),
        ("PROXY_RUNNER_TOKEN", "runner-token".to_string()),
    ] {
        assert_eq!(get(&hook_env, key), Some(value), "{key}");
    }
    assert!(get(&hook_env, "GITHUB_RUN_ID").is_some());
    for absent in [
        "ACTIONS_RUNNER_INPUT_JITCONFIG",
        "GITHUB_TOKEN",
        "RUNNER_LABELS",
    ] {
        assert_eq!(get(&hook_env, absent), None, "{absent}");
    }
    // GITHUB_ENV of the started hook reaches the steps, not the completed hook.
    let step_env = &executor.seen.lock().unwrap()[0].env;
    assert_eq!(get(step_env, "FROM_started"), Some("1".to_string()));
    assert_eq!(get(&env_of("completed"), "FROM_started"), None);
}

#[tokio::test]
async fn container_jobs_need_a_container_hook() {
    let rig = Rig::start().await;
    let job = rig
        .queue(json!({"container": "alpine:3", "steps": ["echo never"]}))
        .await;
    let executor = RecordingExecutor::default();
    let run = rig.run(rig.env(&[]), &executor).await;
    assert_eq!(run.conclusion, "failure");
    assert!(executor.seen.lock().unwrap().is_empty());
    let view = rig.h.job(job).await;
    assert_eq!(names(&view["log"]), ["Initialize containers"]);
    assert!(
        view["log"][0]["output"]
            .as_str()
            .unwrap()
            .contains("ACTIONS_RUNNER_CONTAINER_HOOKS")
    );
}

#[tokio::test]
async fn services_without_a_job_container_run_steps_on_the_host() {
    let rig = Rig::start().await;
    rig.answer("prepare_job", r#"{"state":{"jobId":"s"}}"#);
    rig.queue(json!({"services": {"db": "postgres:17"}, "steps": ["echo on host"]}))
        .await;
    let executor = RecordingExecutor::default();
    let run = rig.run(rig.env(&[rig.container_hooks()]), &executor).await;
    assert_eq!(run.conclusion, "success", "{:?}", run.log);
    let inputs = rig.recorded();
    assert_eq!(commands(&inputs), ["prepare_job", "cleanup_job"]);
    assert_eq!(inputs[0]["args"]["container"], Value::Null);
    assert_eq!(inputs[0]["args"]["services"][0]["contextName"], "db");
    assert_eq!(inputs[1]["state"], json!({"jobId": "s"}));
    assert_eq!(executor.seen.lock().unwrap()[0].command, "echo on host");
}

#[tokio::test]
async fn the_admin_api_takes_containers_and_keeps_their_passwords() {
    let rig = Rig::start().await;
    for bad in [
        json!({"container": {"env": {}}}),
        json!({"container": ""}),
        json!({"container": {"image": "a b"}}),
        json!({"container": {"image": "i", "env": {"1X": "v"}}}),
        json!({"container": {"image": "i", "env": {"X": ["v"]}}}),
        json!({"container": {"image": "i", "credentials": {"username": "u"}}}),
        json!({"services": {"bad name": "redis"}}),
        json!({"services": ["redis"]}),
        json!({"steps": [{"run": "x", "shell": "pwsh"}]}),
        json!({"steps": [{"shell": "bash"}]}),
    ] {
        let mut body = bad.clone();
        body["repository"] = json!("octo/app");
        let (status, answer) = rig.h.admin("POST", "/jobs", Some(body)).await;
        assert_eq!(status, 422, "{bad} -> {answer}");
    }
    let plain = rig
        .queue(json!({"steps": ["true"], "labels": ["nobody-has-this"]}))
        .await;
    let view = rig.h.job(plain).await;
    assert_eq!(view["container"], Value::Null);
    assert_eq!(view["services"], json!({}));
    assert_eq!(view["log"], json!([]));
    assert_eq!(
        view["steps"][0],
        json!({"command": "true", "output": null, "exitCode": null, "conclusion": null})
    );

    let password = "planted-registry-password";
    let job = rig
        .queue(json!({
            "container": {
                "image": "ghcr.io/octo/build:1",
                "credentials": {"username": "octo", "password": password},
                "ports": [8080, "9090:90"],
                "volumes": ["cache:/cache", "/data:ro"],
                "env": {"N": 1, "B": true},
            },
            "services": {"redis": {"image": "redis", "credentials": {"username": "u", "password": password}}},
            "steps": ["true"],
        }))
        .await;
    let view = rig.h.job(job).await;
    assert!(!view.to_string().contains(password), "{view}");
    assert_eq!(
        view["container"]["credentials"],
        json!({"username": "octo"})
    );
    assert_eq!(view["container"]["env"], json!({"N": "1", "B": "true"}));
    rig.run(
        rig.env(&[rig.container_hooks()]),
        &RecordingExecutor::default(),
    )
    .await;
    let container = &rig.recorded()[0]["args"]["container"];
    assert_eq!(
        container["registry"],
        json!({"username": "octo", "password": password, "serverUrl": "ghcr.io"})
    );
    assert_eq!(container["portMappings"], json!(["8080", "9090:90"]));
    assert_eq!(
        container["userMountVolumes"],
        json!([
            {"sourceVolumePath": "cache", "targetVolumePath": "/cache", "readOnly": false},
            {"sourceVolumePath": null, "targetVolumePath": "/data", "readOnly": true},
        ])
    );
    assert!(!rig.h.job(job).await.to_string().contains(password));
}
