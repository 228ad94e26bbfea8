//! The ephemeral runner of the autoscaling path for one job: its names on
//! GitHub and on the engine, its labels, and the container that runs it.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::job::Job;
use crate::labels::LabelSet;
use crate::names::{container_name, runner_name};
use crate::ports::{
    ContainerSpec, EnvVar, Hardening, NetworkSpec, StdinSecret, labels as label_keys,
};

/// The name the runner image's entrypoint gets the JIT config under (on its
/// standard input) and hands it to the listener as.
pub const JITCONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
/// The name a registration-token runner gets its token under (on its
/// standard input).
pub const REGISTRATION_TOKEN_ENV: &str = "RUNNER_TOKEN";
/// Labels every ephemeral runner carries besides the job's own.
pub const RUNNER_BASE_LABELS: [&str; 2] = ["ephemeral", "container"];

/// One runner started for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralRunner {
    pub job_id: Uuid,
    /// The runner's name on GitHub.
    pub runner_name: String,
    /// The container's name on the engine.
    pub container_name: String,
    pub labels: LabelSet,
}

impl EphemeralRunner {
    /// The first runner of a job has the design's names
    /// (`ephemeral-{id}`, `runner-{id}`); a later one (after a failure or a
    /// hand-off) gets `suffix`, because the earlier runner may still be
    /// running another job under the old names.
    pub fn for_job(job: &Job, suffix: Option<&str>) -> Self {
        let suffix = suffix.map(|s| format!("-{s}")).unwrap_or_default();
        let mut labels = LabelSet::default();
        labels.extend(RUNNER_BASE_LABELS);
        labels.extend(job.labels.iter().map(String::as_str));
        EphemeralRunner {
            job_id: job.id,
            runner_name: format!("{}{suffix}", runner_name(job.id)),
            container_name: format!("{}{suffix}", container_name(job.id)),
            labels,
        }
    }
}

/// Whether the job's next runner needs names of its own: an earlier attempt
/// (which failed or was handed over) may still hold the first names.
pub fn needs_fresh_names(job: &Job) -> bool {
    job.last_error.is_some()
}

/// The job a runner was started for, from its name: `ephemeral-{job id}`,
/// with a suffix for later runners of the same job.
pub fn runner_owner(runner_name: &str) -> Option<Uuid> {
    let rest = runner_name.strip_prefix("ephemeral-")?;
    Uuid::parse_str(rest.get(..36)?).ok()
}

/// The runner in a runner container, from the container's name
/// (`runner-{job id}{suffix}` runs `ephemeral-{job id}{suffix}`).
pub fn runner_of_container(container_name: &str) -> Option<String> {
    let rest = container_name
        .trim_start_matches('/')
        .strip_prefix("runner-")?;
    Uuid::parse_str(rest.get(..36)?).ok()?;
    Some(format!("ephemeral-{rest}"))
}

/// Labels on everything created for a repository (networks).
pub fn repository_labels(repository: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            label_keys::REPOSITORY.to_string(),
            repository.to_ascii_lowercase(),
        ),
        (label_keys::INSTANCE.to_string(), instance.to_string()),
    ])
}

/// Labels on a job's containers: the repository's plus the job id.
pub fn job_labels(job_id: Uuid, repository: &str, instance: &str) -> BTreeMap<String, String> {
    let mut labels = repository_labels(repository, instance);
    labels.insert(label_keys::JOB_ID.to_string(), job_id.to_string());
    labels
}

pub fn network_spec(name: String, repository: &str, instance: &str) -> NetworkSpec {
    NetworkSpec {
        name,
        labels: repository_labels(repository, instance),
    }
}

/// Where and how the runner container runs.
#[derive(Debug, Clone)]
pub struct Placement {
    pub image: String,
    pub hardening: Hardening,
    pub network: String,
    pub instance: String,
    /// The URL the runner registers at (`GITHUB_URL`).
    pub runner_url: String,
}

/// The container that runs `runner` for `job`. `credential` (a JIT config or
/// a registration token) stays a secret all the way to the container, and
/// reaches it on its standard input, not in its configuration.
pub fn runner_container(
    job: &Job,
    runner: &EphemeralRunner,
    placement: Placement,
    credential: StdinSecret,
) -> ContainerSpec {
    ContainerSpec {
        name: runner.container_name.clone(),
        image: placement.image,
        env: vec![
            EnvVar::plain("RUNNER_NAME", runner.runner_name.clone()),
            EnvVar::plain("RUNNER_LABELS", runner.labels.as_slice().join(",")),
            EnvVar::plain("GITHUB_URL", placement.runner_url),
            EnvVar::plain("JOB_ID", job.job_key.clone()),
            EnvVar::plain("RUN_ID", job.run_id.to_string()),
        ],
        stdin_secrets: vec![credential],
        command: None,
        labels: job_labels(job.id, &job.repository, &placement.instance),
        network: placement.network,
        hardening: placement.hardening,
        auto_remove: true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap as Map;

    use chrono::DateTime;
    use secrecy::SecretString;

    use super::*;
    use crate::job::{JobSource, NewJob};
    use crate::ports::EnvValue;

    #[test]
    fn a_runner_container_names_its_runner() {
        let id = Uuid::nil();
        assert_eq!(
            runner_of_container(&format!("/runner-{id}")),
            Some(format!("ephemeral-{id}"))
        );
        assert_eq!(
            runner_of_container(&format!("runner-{id}-0a1b2c3d")),
            Some(format!("ephemeral-{id}-0a1b2c3d"))
        );
        assert_eq!(runner_of_container("runner-not-a-job"), None);
        assert_eq!(runner_of_container(&format!("job-{id}")), None);
    }

    fn job() -> Job {
        NewJob {
            job_key: "build".into(),
            run_id: 7,
            run_attempt: 1,
            repository: "Octo/Repo".into(),
            workflow: "CI".into(),
            runner_name: None,
            labels: vec!["self-hosted".into(), "Container".into()],
            environment: Map::new(),
            matrix: None,
            needs: vec![],
            github_job_id: Some(9),
            source: JobSource::Webhook,
            dropped_secrets: 0,
        }
        .into_job(Uuid::from_u128(5), DateTime::from_timestamp(0, 0).unwrap())
    }

    #[test]
    fn first_runner_has_the_designs_names_and_later_ones_a_suffix() {
        let j = job();
        let first = EphemeralRunner::for_job(&j, None);
        assert_eq!(first.runner_name, format!("ephemeral-{}", j.id));
        assert_eq!(first.container_name, format!("runner-{}", j.id));
        assert_eq!(
            first.labels.as_slice(),
            ["ephemeral", "container", "self-hosted"]
        );
        let later = EphemeralRunner::for_job(&j, Some("abc"));
        assert_eq!(later.runner_name, format!("ephemeral-{}-abc", j.id));
        assert_eq!(later.container_name, format!("runner-{}-abc", j.id));
        assert_eq!(runner_owner(&later.runner_name), Some(j.id));
        assert_eq!(runner_owner(&first.runner_name), Some(j.id));
        assert_eq!(runner_owner("proxy-1"), None);
        assert_eq!(runner_owner("ephemeral-short"), None);
    }

    #[test]
    fn the_container_carries_labels_env_and_its_credential_on_stdin() {
        let j = job();
        let r = EphemeralRunner::for_job(&j, None);
        let spec = runner_container(
            &j,
            &r,
            Placement {
                image: "img".into(),
                hardening: Hardening::default(),
                network: "net".into(),
                instance: "i1".into(),
                runner_url: "https://github.com/Octo/Repo".into(),
            },
            StdinSecret::new(JITCONFIG_ENV, SecretString::from("s3cret")),
        );
        assert_eq!(spec.labels[label_keys::REPOSITORY], "octo/repo");
        assert_eq!(spec.labels[label_keys::JOB_ID], j.id.to_string());
        assert_eq!(spec.labels[label_keys::INSTANCE], "i1");
        assert!(spec.auto_remove);
        assert!(
            spec.env
                .iter()
                .all(|e| matches!(e.value, EnvValue::Plain(_))),
            "no secret in the container's environment"
        );
        assert!(spec.env.iter().all(|e| e.name != JITCONFIG_ENV));
        let names: Vec<&str> = spec.stdin_secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [JITCONFIG_ENV], "the credential goes over stdin");
        assert!(!format!("{spec:?}").contains("s3cret"));
        let labels = spec.env.iter().find(|e| e.name == "RUNNER_LABELS").unwrap();
        assert!(
            matches!(&labels.value, EnvValue::Plain(v) if v == "ephemeral,container,self-hosted")
        );
    }
}
