//! From engine errors to the port's [`BackendError`].

use bollard::errors::Error as EngineError;
use proxy_runner_domain::ports::BackendError;

/// The general mapping: transport trouble is `DaemonUnreachable` (retryable),
/// a 404 is `NotFound`, anything else `Other`.
pub(crate) fn engine_error(err: EngineError) -> BackendError {
    match err {
        EngineError::DockerResponseServerError {
            status_code: 404,
            message,
        } => BackendError::NotFound(message),
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => BackendError::Other(format!("HTTP {status_code}: {message}")),
        EngineError::IOError { err } => BackendError::DaemonUnreachable(err.to_string()),
        EngineError::HyperResponseError { err } => BackendError::DaemonUnreachable(err.to_string()),
        EngineError::RequestTimeoutError => {
            BackendError::DaemonUnreachable("request to the container engine timed out".into())
        }
        other => BackendError::Other(other.to_string()),
    }
}

/// The mapping for container create: missing image and name conflicts get
/// their own variants; a vanished network is retryable (`Other`), because
/// the next attempt ensures the network again.
pub(crate) fn create_error(err: EngineError, name: &str, image: &str) -> BackendError {
    match err {
        EngineError::DockerResponseServerError {
            status_code: 404,
            message,
        } => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("no such image") {
                BackendError::ImageMissing {
                    image: image.to_string(),
                }
            } else if lower.contains("network") {
                BackendError::Other(format!("network missing: {message}"))
            } else {
                BackendError::NotFound(message)
            }
        }
        EngineError::DockerResponseServerError {
            status_code: 409, ..
        } => BackendError::NameConflict(name.to_string()),
        other => engine_error(other),
    }
}

/// The mapping for container start: engines that accept a create naming a
/// missing network fail the start instead; that is retryable too.
pub(crate) fn start_error(err: EngineError) -> BackendError {
    match err {
        EngineError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.to_ascii_lowercase().contains("network") => {
            BackendError::Other(format!("network missing: {message}"))
        }
        other => engine_error(other),
    }
}

/// Whether the error says the object does not exist.
pub(crate) fn is_not_found(err: &EngineError) -> bool {
    matches!(
        err,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Replaces every occurrence of a secret value in an engine message.
pub(crate) fn redact(message: String, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message, |m, s| m.replace(s, "[redacted]"))
}

/// Redacts the message inside any variant that carries engine text.
pub(crate) fn redact_error(err: BackendError, secrets: &[&str]) -> BackendError {
    match err {
        BackendError::DaemonUnreachable(m) => BackendError::DaemonUnreachable(redact(m, secrets)),
        BackendError::NotFound(m) => BackendError::NotFound(redact(m, secrets)),
        BackendError::Other(m) => BackendError::Other(redact(m, secrets)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> EngineError {
        EngineError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        }
    }

    #[test]
    fn create_maps_missing_image_and_conflicts() {
        assert_eq!(
            create_error(server(404, "No such image: ghost:1"), "job-1", "ghost:1"),
            BackendError::ImageMissing {
                image: "ghost:1".into()
            }
        );
        assert_eq!(
            create_error(
                server(
                    409,
                    "Conflict. The container name \"/job-1\" is already in use"
                ),
                "job-1",
                "img"
            ),
            BackendError::NameConflict("job-1".into())
        );
        let network = create_error(server(404, "network pr-net-x not found"), "job-1", "img");
        assert!(matches!(network, BackendError::Other(ref m) if m.contains("pr-net-x")));
        assert!(network.is_retryable());
        assert_eq!(
            create_error(server(404, "something else"), "job-1", "img"),
            BackendError::NotFound("something else".into())
        );
    }

    #[test]
    fn start_maps_missing_networks_to_retryable() {
        let err = start_error(server(404, "network pr-net-x not found"));
        assert!(matches!(err, BackendError::Other(ref m) if m.contains("pr-net-x")));
        assert_eq!(
            start_error(server(404, "No such container: c")),
            BackendError::NotFound("No such container: c".into())
        );
    }

    #[test]
    fn transport_failures_are_unreachable_and_retryable() {
        let refused = engine_error(EngineError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert!(matches!(refused, BackendError::DaemonUnreachable(_)));
        assert!(refused.is_retryable());
        assert!(matches!(
            engine_error(EngineError::RequestTimeoutError),
            BackendError::DaemonUnreachable(_)
        ));
        assert_eq!(
            engine_error(server(404, "No such container: x")),
            BackendError::NotFound("No such container: x".into())
        );
        assert_eq!(
            engine_error(server(500, "boom")),
            BackendError::Other("HTTP 500: boom".into())
        );
        assert!(is_not_found(&server(404, "x")));
        assert!(!is_not_found(&server(409, "x")));
    }

    #[test]
    fn redaction_removes_every_secret() {
        let err = redact_error(
            BackendError::Other("bad env TOKEN=hunter2 and hunter2 again".into()),
            &["hunter2", ""],
        );
        assert_eq!(
            err,
            BackendError::Other("bad env TOKEN=[redacted] and [redacted] again".into())
        );
    }
}
