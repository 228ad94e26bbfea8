//! `workflow_job` webhooks: verification and parsing live in
//! `proxy-runner-webhooks` (re-exported here); this module adds the label
//! rule deciding which jobs are ours.

use proxy_runner_domain::labels::{LabelError, LabelSet};
pub use proxy_runner_webhooks::*;

/// Which jobs proxy-runner takes, judged by their `runs-on` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServedLabels {
    /// Every job asking for `self-hosted` (case-insensitive); its runner is
    /// registered with exactly the job's labels.
    #[default]
    AnySelfHosted,
    /// Configured runner label sets: a job is ours when one set carries every
    /// label it asks for (GitHub's own rule); the first such set wins.
    Sets(Vec<LabelSet>),
}

impl ServedLabels {
    /// Builds the `Sets` variant from configured lists (normalised; an empty
    /// list is dropped since it could serve only label-less jobs).
    pub fn from_sets<I, S>(sets: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = Vec<S>>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for set in sets {
            let parsed = LabelSet::parse_list(set.iter().map(|s| s.as_ref()))?;
            if !parsed.is_empty() {
                out.push(parsed);
            }
        }
        Ok(ServedLabels::Sets(out))
    }

    /// The labels to register a runner with for this job, or `None` when the
    /// job is not ours. Jobs without labels, or with labels GitHub would not
    /// accept, are never ours.
    pub fn runner_labels_for(&self, job_labels: &[String]) -> Option<LabelSet> {
        let job = LabelSet::parse_list(job_labels.iter().map(String::as_str)).ok()?;
        if job.is_empty() {
            return None;
        }
        match self {
            ServedLabels::AnySelfHosted => job.contains("self-hosted").then_some(job),
            ServedLabels::Sets(sets) => sets.iter().find(|s| s.serves(job.as_slice())).cloned(),
        }
    }

    pub fn serves(&self, job_labels: &[String]) -> bool {
        self.runner_labels_for(job_labels).is_some()
    }
}
