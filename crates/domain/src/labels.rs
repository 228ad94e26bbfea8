//! Runner labels: parsing what hooks and webhooks send, and GitHub's matching
//! rule (a runner must carry every label the job asks for; case does not
//! count). [`runner_matches`] is that rule, and the only copy of it: the
//! orchestrator, the GitHub crate and the emulator all decide through it.

use serde::{Deserialize, Serialize};

/// Longest label GitHub accepts is 255 characters; we use the same bound.
pub const MAX_LABEL_LEN: usize = 255;
/// generate-jitconfig takes 1..=100 labels.
pub const MAX_LABELS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} characters")]
    TooLong(String),
    #[error("label {0:?} contains a control character")]
    ControlCharacter(String),
    #[error("label {0:?} has leading or trailing whitespace")]
    Whitespace(String),
    #[error("a label is empty")]
    Empty,
    #[error("more than {MAX_LABELS} labels")]
    TooMany,
}

/// Labels as they arrive: the design's hook sends one comma-separated string,
/// other callers send an array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Labels {
    Joined(String),
    List(Vec<String>),
}

impl Labels {
    /// Untrusted labels, checked strictly: in the joined form spaces around
    /// a comma belong to the separator and empty items are skipped (the
    /// design's hook joins `RUNNER_LABELS` as it is); in the array form
    /// every item must be a label as it is. Nothing else is trimmed.
    pub fn parse(&self) -> Result<LabelSet, LabelError> {
        match self {
            Labels::Joined(s) => LabelSet::parse_exact(
                s.split(',')
                    .map(|item| item.trim_matches(' '))
                    .filter(|item| !item.is_empty()),
            ),
            Labels::List(v) => LabelSet::parse_exact(v.iter().map(String::as_str)),
        }
    }
}

/// A normalised label list: no empties, no duplicates (ignoring case),
/// first spelling and order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelSet(Vec<String>);

impl LabelSet {
    /// Labels from the configuration: trimmed, empty items skipped.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, LabelError> {
        Self::parse_exact(items.into_iter().map(str::trim).filter(|l| !l.is_empty()))
    }

    /// Labels taken as they are: each must be non-empty, without leading or
    /// trailing whitespace or a control character, at most
    /// [`MAX_LABEL_LEN`] characters; at most [`MAX_LABELS`] items (counted
    /// before duplicates are dropped, so a flood of copies is refused too).
    pub fn parse_exact<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, LabelError> {
        let mut out: Vec<String> = Vec::new();
        for (count, label) in items.into_iter().enumerate() {
            if count >= MAX_LABELS {
                return Err(LabelError::TooMany);
            }
            if label.is_empty() {
                return Err(LabelError::Empty);
            }
            let shown = || label.chars().take(40).collect::<String>();
            if label.chars().count() > MAX_LABEL_LEN {
                return Err(LabelError::TooLong(shown()));
            }
            if label.chars().any(char::is_control) {
                return Err(LabelError::ControlCharacter(shown()));
            }
            if label.trim() != label {
                return Err(LabelError::Whitespace(shown()));
            }
            if !out.iter().any(|l| same_label(l, label)) {
                out.push(label.to_string());
            }
        }
        Ok(LabelSet(out))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, label: &str) -> bool {
        self.0.iter().any(|l| same_label(l, label))
    }

    /// Whether a runner carrying these labels may take a job asking for
    /// `job` ([`runner_matches`]).
    pub fn serves(&self, job: &[String]) -> bool {
        runner_matches(&self.0, job)
    }

    /// Adds labels that are not already present (ignoring case).
    pub fn extend<'a>(&mut self, more: impl IntoIterator<Item = &'a str>) {
        for l in more {
            if !self.contains(l) {
                self.0.push(l.to_string());
            }
        }
    }
}

/// Whether two spellings name the same label: GitHub ignores case.
pub fn same_label(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// GitHub's rule: a runner carrying `runner_labels` may take a job asking for
/// `job_labels` when it carries every one of them ([`same_label`]). Extra
/// runner labels do not matter; a job asking for nothing matches any runner.
pub fn runner_matches(runner_labels: &[String], job_labels: &[String]) -> bool {
    job_labels
        .iter()
        .all(|j| runner_labels.iter().any(|r| same_label(r, j)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn joined_string_as_the_design_hook_sends_it() {
        let l: Labels = serde_json::from_str(r#""self-hosted, linux ,x64,,""#).unwrap();
        assert_eq!(
            l.parse().unwrap().into_vec(),
            v(&["self-hosted", "linux", "x64"])
        );
        let empty: Labels = serde_json::from_str(r#""""#).unwrap();
        assert!(empty.parse().unwrap().is_empty());
    }

    #[test]
    fn array_form_and_duplicates() {
        let l: Labels = serde_json::from_str(r#"["self-hosted","Linux","linux","gpu"]"#).unwrap();
        assert_eq!(
            l.parse().unwrap().into_vec(),
            v(&["self-hosted", "Linux", "gpu"])
        );
    }

    #[test]
    fn untrusted_labels_are_never_trimmed_silently() {
        for (json, want) in [
            (r#"[" gpu"]"#, LabelError::Whitespace(" gpu".into())),
            (r#"["gpu\t"]"#, LabelError::ControlCharacter("gpu\t".into())),
            (
                r#"["a\u0000b"]"#,
                LabelError::ControlCharacter("a\0b".into()),
            ),
            (r#"["a",""]"#, LabelError::Empty),
            (r#""a,\tb""#, LabelError::ControlCharacter("\tb".into())),
        ] {
            let l: Labels = serde_json::from_str(json).unwrap();
            let got = l.parse().unwrap_err();
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{json}: {got}"
            );
        }
        // The configuration's lists are trimmed: an operator's spacing.
        assert_eq!(
            LabelSet::parse_list([" gpu ", ""]).unwrap().into_vec(),
            v(&["gpu"])
        );
    }

    #[test]
    fn other_json_types_are_not_labels() {
        assert!(serde_json::from_str::<Labels>("42").is_err());
        assert!(serde_json::from_str::<Labels>(r#"[1,2]"#).is_err());
        assert!(serde_json::from_str::<Labels>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn limits() {
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            LabelSet::parse_list([long.as_str()]),
            Err(LabelError::TooLong(_))
        ));
        assert!(matches!(
            LabelSet::parse_list(["a\nb"]),
            Err(LabelError::ControlCharacter(_))
        ));
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert_eq!(
            LabelSet::parse_list(many.iter().map(String::as_str)),
            Err(LabelError::TooMany)
        );
        // Copies count: ten thousand of one label are refused, not folded.
        assert_eq!(
            LabelSet::parse_exact(std::iter::repeat_n("gpu", 10_000)),
            Err(LabelError::TooMany)
        );
        let ok: Vec<String> = (0..MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert!(LabelSet::parse_list(ok.iter().map(String::as_str)).is_ok());
    }

    #[test]
    fn matching_follows_github() {
        let runner = v(&["self-hosted", "Linux", "X64", "gpu"]);
        assert!(runner_matches(&runner, &v(&["self-hosted"])));
        assert!(runner_matches(&runner, &v(&["linux", "x64"])));
        assert!(
            runner_matches(&runner, &[]),
            "a job with no labels matches any runner"
        );
        assert!(!runner_matches(&runner, &v(&["self-hosted", "arm64"])));
        assert!(!runner_matches(&[], &v(&["self-hosted"])));
        let set = LabelSet::parse_list(runner.iter().map(String::as_str)).unwrap();
        assert!(set.serves(&v(&["GPU"])));
        assert!(!set.serves(&v(&["ubuntu-latest"])));
    }

    #[test]
    fn one_rule_behind_every_spelling_of_the_question() {
        assert!(same_label("Self-Hosted", "self-hosted"));
        assert!(!same_label("linux", "linux64"));
        let runner = v(&["self-hosted", "linux"]);
        let set = LabelSet::parse_list(runner.iter().map(String::as_str)).unwrap();
        for job in [
            v(&[]),
            v(&["SELF-HOSTED"]),
            v(&["linux", "self-hosted"]),
            v(&["self-hosted", "gpu"]),
            v(&["windows"]),
        ] {
            assert_eq!(set.serves(&job), runner_matches(&runner, &job), "{job:?}");
        }
    }

    #[test]
    fn extend_keeps_first_spelling() {
        let mut s = LabelSet::parse_list(["ephemeral", "container"]).unwrap();
        s.extend(["Container", "self-hosted"]);
        assert_eq!(s.into_vec(), v(&["ephemeral", "container", "self-hosted"]));
    }
}
