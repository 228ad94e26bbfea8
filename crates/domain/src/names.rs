//! Names of the Docker objects proxy-runner creates, and repository names.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    #[error("repository must be \"owner/name\", got {0:?}")]
    Shape(String),
    #[error(
        "repository {0:?} has characters GitHub does not allow (letters, digits, '-', '_', '.')"
    )]
    Characters(String),
}

/// Checks `owner/name` as GitHub spells repositories and splits it.
pub fn parse_repository(full: &str) -> Result<(&str, &str), RepositoryError> {
    let shown = || full.chars().take(120).collect::<String>();
    let (owner, name) = full
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| RepositoryError::Shape(shown()))?;
    let ok = |s: &str| {
        s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s != "."
            && s != ".."
    };
    if ok(owner) && ok(name) {
        Ok((owner, name))
    } else {
        Err(RepositoryError::Characters(shown()))
    }
}

/// Docker object names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; we lower-case too
/// so that `Octo/Repo` and `octo/repo` share one network.
fn docker_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// `{prefix}-{owner}-{repo}-{hash}`: the design's per-repository network, with
/// 8 hex digits of SHA-256 of the lower-cased full name, because the design's
/// form alone is ambiguous (`a-b/c` and `a/b-c` would share a network).
pub fn network_name(prefix: &str, repository: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(repository.to_ascii_lowercase().as_bytes());
    let base = format!(
        "{}-{}",
        docker_safe(prefix),
        docker_safe(&repository.replace('/', "-"))
    );
    // Docker accepts long names, but keep them readable in `docker network ls`.
    let base: String = base.chars().take(180).collect();
    format!("{base}-{}", &hex::encode(digest)[..8])
}

/// `runner-{job id}`: the design's container name.
pub fn container_name(job_id: Uuid) -> String {
    format!("runner-{job_id}")
}

/// `ephemeral-{job id}`: the design's runner name on GitHub.
pub fn runner_name(job_id: Uuid) -> String {
    format!("ephemeral-{job_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        assert_eq!(parse_repository("octo/repo"), Ok(("octo", "repo")));
        assert_eq!(
            parse_repository("Octo-Org/my_repo.rs"),
            Ok(("Octo-Org", "my_repo.rs"))
        );
        for bad in ["", "octo", "/repo", "octo/", "a/b/c"] {
            assert!(
                matches!(parse_repository(bad), Err(RepositoryError::Shape(_))),
                "{bad}"
            );
        }
        for bad in ["oc to/repo", "octo/re;po", "../x", "octo/.."] {
            assert!(parse_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_names() {
        let n = network_name("proxy-runner", "Octo/Repo");
        assert!(
            n.starts_with("proxy-runner-octo-repo-")
                && n.len() == "proxy-runner-octo-repo-".len() + 8,
            "{n}"
        );
        assert_eq!(
            n,
            network_name("proxy-runner", "octo/repo"),
            "case does not split a repository"
        );
        assert!(network_name("pr", "a/b.c").starts_with("pr-a-b.c-"));
        assert_ne!(
            network_name("p", "a-b/c"),
            network_name("p", "a/b-c"),
            "no two repositories share a network"
        );
        let id = Uuid::nil();
        assert_eq!(
            container_name(id),
            "runner-00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            runner_name(id),
            "ephemeral-00000000-0000-0000-0000-000000000000"
        );
    }
}
