//! Secret environment values reach the container and nothing else: not the
//! logs (ours or bollard's, captured at TRACE with `log` bridged), not error
//! messages.
//!
//! This file holds a single test because it installs the global subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use proxy_runner_domain::ports::{BackendError, ContainerBackend, EnvVar};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secret_env_values_never_reach_logs_or_errors() {
    use tracing_subscriber::util::SubscriberInitExt;
    let captured = Captured::default();
    let writer = captured.clone();
    // `try_init` also routes the `log` records bollard writes into tracing.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .try_init()
        .expect("first subscriber in this binary");

    let Some(scope) = common::Scope::new("secrets").await else {
        return;
    };
    let network = scope.network("net").await;
    let secret = format!("s3cr3t-{}-{}", common::suffix(), common::suffix());
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    let with_secret = |mut spec: proxy_runner_domain::ports::ContainerSpec| {
        spec.env.push(EnvVar::secret(
            "PLANTED_SECRET",
            SecretString::from(secret.clone()),
        ));
        spec
    };

    // The container gets the real value (not a placeholder).
    let spec = with_secret(scope.spec(
        "ok",
        &network,
        &format!("[ \"$(printf %s \"$PLANTED_SECRET\" | sha256sum | cut -c1-64)\" = {digest} ]"),
    ));
    let started = scope.docker.start(&spec).await.expect("started");
    assert_eq!(
        scope.docker.wait(&started.id).await.expect("exit"),
        0,
        "the container did not receive the secret value"
    );

    // Errors on the way.
    let conflict = scope.docker.start(&spec).await.expect_err("same name");
    assert!(matches!(conflict, BackendError::NameConflict(_)));
    let mut missing = with_secret(scope.spec("missing", &network, "true"));
    missing.image = format!("proxy-runner-absent-{}:x", common::suffix());
    let missing = scope.docker.start(&missing).await.expect_err("no image");
    assert!(matches!(missing, BackendError::ImageMissing { .. }));
    let no_network = with_secret(scope.spec("nonet", &scope.name("nowhere"), "true"));
    let no_network = scope.docker.start(&no_network).await.expect_err("no net");
    let mut root = with_secret(scope.spec("root", &network, "true"));
    root.hardening.user = "0".into();
    let root = scope.docker.start(&root).await.expect_err("root refused");

    for err in [&conflict, &missing, &no_network, &root] {
        assert!(!err.to_string().contains(&secret), "{err}");
        assert!(!format!("{err:?}").contains(&secret), "{err:?}");
    }
    assert!(!format!("{spec:?}").contains(&secret));

    let logs = captured.text();
    assert!(!logs.contains(&secret), "secret value found in the logs");
    // The capture works: bollard's debug log of the create body is in
    // there, with a placeholder where the value would be.
    assert!(
        logs.contains("PLANTED_SECRET=proxy-runner-secret-"),
        "bollard's debug log of the create body was not captured"
    );
}
