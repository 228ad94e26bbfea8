//! Planted secrets: every credential the crate handles gets a distinctive
//! value; servers even echo them back in error messages. Neither the TRACE
//! log nor any error's Display/Debug may contain one.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Scripted, serve};
use proxy_runner_domain::ports::{JitRequest, Scope};
use proxy_runner_github::webhooks::signature_header;
use proxy_runner_github::{
    Auth, GitHubClient, GitHubConfig, load_private_key, parse_workflow_job_event, verify_signature,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

const PAT: &str = "ghp_PLANTEDpat7f3a9c11d0";
const INSTALLATION_TOKEN: &str = "ghs_PLANTEDinstall42b9e";
const JIT_CONFIG: &str = "eyJQTEFOVEVEaml0Y29uZmlnIjoxfQ==";
const REGISTRATION_TOKEN: &str = "PLANTEDregtokenA1B2C3D4";
const WEBHOOK_SECRET: &str = "whsec_PLANTED_5be1c0ffee";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn repo() -> Scope {
    Scope::Repository {
        owner: "octo".into(),
        repo: "hello".into(),
    }
}

/// A server that answers everything with errors quoting the credential it
/// was sent, except where it has to mint credentials.
async fn echoing_server() -> common::ScriptedServer {
    serve(|req, i| {
        let auth = req.header("authorization").unwrap_or("").to_string();
        let echo = |status: u16| {
            Scripted::json(
                status,
                json!({"message": format!("you sent {auth}"), "errors": [format!("token {auth}")]}),
            )
            .header("x-echo", &auth)
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/repos/octo/hello/installation") => Scripted::json(200, json!({"id": 7})),
            ("POST", "/app/installations/7/access_tokens") => Scripted::json(
                201,
                json!({"token": INSTALLATION_TOKEN, "expires_at": "2999-01-01T00:00:00Z"}),
            ),
            ("POST", "/repos/octo/hello/actions/runners/generate-jitconfig") => Scripted::json(
                201,
                json!({"runner": common::runner_json(5, "r"), "encoded_jit_config": JIT_CONFIG}),
            ),
            ("POST", "/repos/octo/hello/actions/runners/registration-token") => Scripted::json(
                201,
                json!({"token": REGISTRATION_TOKEN, "expires_at": "2999-01-01T00:00:00Z"}),
            ),
            // A body that does not decode, quoting the token.
            ("POST", "/repos/octo/hello/actions/runners/remove-token") => Scripted::json(
                201,
                json!({"token": REGISTRATION_TOKEN, "expires_at": 12345}),
            ),
            (_, path) if path.ends_with("/401") => echo(401),
            (_, path) if path.ends_with("/403") => echo(403),
            (_, path) if path.ends_with("/404") => echo(404),
            (_, path) if path.ends_with("/422") => echo(422),
            (_, path) if path.ends_with("/500") => echo(500),
            _ => echo(if i % 2 == 0 { 409 } else { 400 }),
        }
    })
    .await
}

fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn secrets_never_reach_logs_or_errors() {
    let log = Buffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let key_path = proxy_runner_test_support::fixture_path("test-keys/github-app-test.private.pem");
    let private_key = load_private_key(&key_path).unwrap();
    let mut secrets: Vec<String> = vec![
        PAT.into(),
        INSTALLATION_TOKEN.into(),
        JIT_CONFIG.into(),
        REGISTRATION_TOKEN.into(),
        WEBHOOK_SECRET.into(),
    ];
    secrets.extend(pem_body_lines(private_key.expose_secret()));
    assert!(secrets.len() > 10, "the key's lines are planted too");

    let server = echoing_server().await;
    let mut texts: Vec<String> = Vec::new();
    let mut record = |e: &dyn std::fmt::Debug, d: String| {
        texts.push(format!("{e:?}"));
        texts.push(d);
    };

    // PAT client: every error status, echoing the PAT back.
    let mut pat_config = common::config(&server.url, Auth::Pat(SecretString::from(PAT)));
    pat_config.breaker.failure_threshold = 1000;
    let pat_client = GitHubClient::new(pat_config.clone()).unwrap();
    record(&pat_config, format!("{pat_config:?}"));
    record(&pat_client, format!("{pat_client:?}"));
    for id in [401, 403, 404, 422, 500, 409, 400] {
        let err = pat_client.get_runner(&repo(), id).await.unwrap_err();
        record(&err, err.to_string());
    }
    let err = pat_client
        .rerun_job("octo", "hello", 500)
        .await
        .unwrap_err();
    record(&err, err.to_string());

    // Credentials handed out by GitHub.
    let jit = pat_client
        .generate_jit_config(
            &repo(),
            &JitRequest {
                name: "r".into(),
                labels: vec!["self-hosted".into()],
                runner_group_id: 1,
                work_folder: "_work".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(jit.encoded_jit_config.expose_secret(), JIT_CONFIG);
    record(&jit, format!("{jit:?}"));
    let reg = pat_client.create_registration_token(&repo()).await.unwrap();
    assert_eq!(reg.token.expose_secret(), REGISTRATION_TOKEN);
    record(&reg, format!("{reg:?}"));
    let err = pat_client.create_remove_token(&repo()).await.unwrap_err();
    record(&err, err.to_string());

    // App client: JWT, installation token, echoed back.
    let mut app_config = common::config(
        &server.url,
        Auth::App {
            app_id: 99,
            private_key_pem: private_key.clone(),
        },
    );
    app_config.breaker.failure_threshold = 1000;
    let app_client = GitHubClient::new(app_config.clone()).unwrap();
    record(&app_config, format!("{app_config:?}"));
    record(&app_client, format!("{app_client:?}"));
    for id in [401, 404, 500] {
        let err = app_client.get_runner(&repo(), id).await.unwrap_err();
        record(&err, err.to_string());
    }
    let jwts: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path.contains("installation"))
        .filter_map(|r| {
            r.header("authorization")
                .map(|a| a.trim_start_matches("Bearer ").to_string())
        })
        .collect();
    assert!(!jwts.is_empty(), "the App signed JWTs");
    secrets.extend(jwts);
    let sent_installation_token = server
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {INSTALLATION_TOKEN}")));
    assert!(sent_installation_token);

    // Bad keys and configs.
    let bad = GitHubConfig::new(
        "https://x",
        Auth::App {
            app_id: 1,
            private_key_pem: SecretString::from(format!(
                "-----BEGIN PRIVATE KEY-----\n{PAT}{PAT}\n-----END PRIVATE KEY-----\n"
            )),
        },
    );
    let err = GitHubClient::new(bad).unwrap_err();
    record(&err, err.to_string());

    // Webhooks.
    let webhook_secret = SecretString::from(WEBHOOK_SECRET);
    let body = common::fixture("github/queued.payload.json");
    let good = signature_header(&webhook_secret, body.as_bytes());
    assert!(verify_signature(&webhook_secret, body.as_bytes(), Some(&good)).is_ok());
    for header in [
        None,
        Some("sha256=00"),
        Some(&*format!("sha256={}", "0".repeat(64))),
    ] {
        let err = verify_signature(&webhook_secret, body.as_bytes(), header).unwrap_err();
        record(&err, err.to_string());
    }
    let err = parse_workflow_job_event(WEBHOOK_SECRET.as_bytes()).unwrap_err();
    record(&err, err.to_string());

    let log = log.text();
    assert!(
        log.contains("GitHub answered"),
        "TRACE output was captured: {log}"
    );
    assert!(log.contains("retrying"), "retry warnings were logged");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "log leaks {secret:.12}…");
        for text in &texts {
            assert!(
                !text.contains(secret.as_str()),
                "error text leaks {secret:.12}…: {text}"
            );
        }
    }
    // The server really did echo the credentials; the client scrubbed them.
    assert!(texts.iter().any(|t| t.contains("[redacted]")), "{texts:#?}");
}
