//! Webhook signature checks, payload parsing against GitHub's published
//! examples, and the label rule.

mod common;

use proxy_runner_github::webhooks::signature_header;
use proxy_runner_github::{
    SignatureError, WebhookError, WorkflowJobAction, parse_workflow_job_event, verify_signature,
};
use secrecy::SecretString;

const VECTOR_SECRET: &str = "It's a Secret to Everybody";
const VECTOR_BODY: &[u8] = b"Hello, World!";
const VECTOR_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn secret() -> SecretString {
    SecretString::from(VECTOR_SECRET)
}

#[test]
fn githubs_published_test_vector_verifies() {
    assert_eq!(
        verify_signature(&secret(), VECTOR_BODY, Some(VECTOR_SIGNATURE)),
        Ok(())
    );
    assert_eq!(signature_header(&secret(), VECTOR_BODY), VECTOR_SIGNATURE);
    // Upper-case hex is still the same digest.
    let upper = format!("sha256={}", VECTOR_SIGNATURE[7..].to_ascii_uppercase());
    assert_eq!(
        verify_signature(&secret(), VECTOR_BODY, Some(&upper)),
        Ok(())
    );
}

#[test]
fn tampered_body_or_wrong_secret_mismatch() {
    assert_eq!(
        verify_signature(&secret(), b"Hello, World?", Some(VECTOR_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(
            &SecretString::from("It's a secret to everybody"),
            VECTOR_BODY,
            Some(VECTOR_SIGNATURE)
        ),
        Err(SignatureError::Mismatch)
    );
    let mut flipped = VECTOR_SIGNATURE.to_string();
    flipped.replace_range(70..71, "f");
    assert_eq!(
        verify_signature(&secret(), VECTOR_BODY, Some(&flipped)),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn missing_and_malformed_headers() {
    assert_eq!(
        verify_signature(&secret(), VECTOR_BODY, None),
        Err(SignatureError::Missing)
    );
    let digest = &VECTOR_SIGNATURE[7..];
    for bad in [
        "",
        digest,                                 // no prefix
        &format!("sha1={digest}"),              // wrong algorithm
        &format!("sha256={}", &digest[..63]),   // too short
        &format!("sha256={digest}00"),          // too long
        &format!("sha256={}zz", &digest[..62]), // not hex
        "sha256=",
    ] {
        assert_eq!(
            verify_signature(&secret(), VECTOR_BODY, Some(bad)),
            Err(SignatureError::Malformed),
            "{bad:?}"
        );
    }
}

struct Expect {
    file: &'static str,
    action: WorkflowJobAction,
    status: &'static str,
    conclusion: Option<&'static str>,
    name: &'static str,
    labels: &'static [&'static str],
    runner_id: Option<u64>,
    installation_id: Option<u64>,
    organization_id: Option<u64>,
}

#[test]
fn every_fixture_parses_into_the_right_fields() {
    let codeql =
        |file, action, status, conclusion, name, installation_id, organization_id| Expect {
            file,
            action,
            status,
            conclusion,
            name,
            labels: &["ubuntu-latest"],
            // Upstream quirk: even the queued example names a runner.
            runner_id: Some(5),
            installation_id,
            organization_id,
        };
    let cases = [
        codeql(
            "queued.payload.json",
            WorkflowJobAction::Queued,
            "queued",
            None,
            "update",
            Some(3456996),
            None,
        ),
        codeql(
            "in_progress.payload.json",
            WorkflowJobAction::InProgress,
            "in_progress",
            None,
            "Analyze (javascript)",
            Some(1),
            None,
        ),
        codeql(
            "completed.success.with-organization.payload.json",
            WorkflowJobAction::Completed,
            "completed",
            Some("success"),
            "linters",
            None,
            Some(38302899),
        ),
        codeql(
            "completed.failure.with-organization.payload.json",
            WorkflowJobAction::Completed,
            "completed",
            Some("failure"),
            "linters",
            None,
            Some(38302899),
        ),
        Expect {
            file: "waiting.payload.json",
            action: WorkflowJobAction::Waiting,
            status: "waiting",
            conclusion: None,
            name: "test",
            labels: &["self-hosted", "k8s"],
            runner_id: None,
            installation_id: Some(23154469),
            organization_id: None,
        },
    ];
    let dir = proxy_runner_test_support::fixture_path("github");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".payload.json"))
        .collect();
    on_disk.sort();
    let mut covered: Vec<String> = cases.iter().map(|c| c.file.to_string()).collect();
    covered.sort();
    assert_eq!(on_disk, covered, "every fixture has a case");

    for case in cases {
        let body = common::fixture(&format!("github/{}", case.file));
        let event = parse_workflow_job_event(body.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
        let wj = &raw["workflow_job"];
        assert_eq!(event.action, case.action, "{}", case.file);
        assert_eq!(event.job.id, wj["id"].as_u64().unwrap(), "{}", case.file);
        assert_eq!(event.job.run_id, wj["run_id"].as_u64().unwrap());
        assert_eq!(event.job.run_attempt, 1);
        assert_eq!(event.job.status, case.status, "{}", case.file);
        assert_eq!(
            event.job.conclusion.as_deref(),
            case.conclusion,
            "{}",
            case.file
        );
        assert_eq!(event.job.name, case.name, "{}", case.file);
        assert_eq!(event.job.labels, case.labels, "{}", case.file);
        assert_eq!(event.job.runner_id, case.runner_id, "{}", case.file);
        assert_eq!(
            event.job.runner_name.as_deref(),
            wj["runner_name"].as_str(),
            "{}",
            case.file
        );
        assert_eq!(
            event.job.workflow_name,
            wj["workflow_name"].as_str().unwrap()
        );
        assert_eq!(
            event.job.repository,
            raw["repository"]["full_name"].as_str().unwrap()
        );
        assert_eq!(event.repository_id, raw["repository"]["id"].as_u64());
        assert_eq!(event.installation_id, case.installation_id, "{}", case.file);
        assert_eq!(event.organization_id, case.organization_id, "{}", case.file);
        assert_eq!(
            event.organization_login.as_deref(),
            raw["organization"]["login"].as_str()
        );
        assert!(event.repository_scope().is_some());
    }
}

#[test]
fn unknown_fields_and_actions_are_kept_unknown_job_values_refused() {
    let body = common::fixture("github/waiting.payload.json");
    let mut raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    raw["action"] = "rescheduled".into();
    raw["brand_new_top_level"] = serde_json::json!({"nested": [1, 2, 3]});
    raw["workflow_job"]["some_future_field"] = serde_json::json!(true);
    raw["repository"]["another_new_field"] = serde_json::json!(null);
    let event = parse_workflow_job_event(raw.to_string().as_bytes()).unwrap();
    assert_eq!(event.action, WorkflowJobAction::Other("rescheduled".into()));
    assert_eq!(event.action.as_str(), "rescheduled");
    assert_eq!(event.job.repository, "lineville/elastic-machines-testing");
    // A job's status and conclusion are GitHub's documented values only.
    for (key, value, field) in [
        ("status", "teleporting", "workflow_job.status"),
        ("conclusion", "vaporised", "workflow_job.conclusion"),
    ] {
        let mut bad = raw.clone();
        bad["workflow_job"][key] = value.into();
        let err = parse_workflow_job_event(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }
}

#[test]
fn bad_payloads_are_errors_not_panics() {
    let body = common::fixture("github/queued.payload.json");
    for cut in (0..body.len()).step_by(97) {
        // Truncated JSON never parses, and never panics.
        assert!(parse_workflow_job_event(&body.as_bytes()[..cut]).is_err());
    }
    for bad in [
        &b""[..],
        b"null",
        b"[]",
        b"\xff\xfe",
        br#"{"action":"queued","action":"completed"}"#,
    ] {
        assert!(
            matches!(parse_workflow_job_event(bad), Err(WebhookError::Json(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let job = r#""id":1,"run_id":2,"status":"queued""#;
    for (bad, field) in [
        (r#"{"action":"queued"}"#.to_string(), "workflow_job"),
        (
            format!(r#"{{"action":"queued","workflow_job":{{{job}}}}}"#),
            "repository",
        ),
        (
            r#"{"action":"queued","workflow_job":{"id":"x","run_id":1,"status":"queued"},"repository":{"full_name":"a/b"}}"#.to_string(),
            "workflow_job.id",
        ),
        (
            r#"{"action":"queued","workflow_job":{"id":-1,"run_id":1,"status":"queued"},"repository":{"full_name":"a/b"}}"#.to_string(),
            "workflow_job.id",
        ),
        (
            format!(r#"{{"action":"queued","workflow_job":{{{job}}},"repository":{{"full_name":"../../etc"}}}}"#),
            "repository.full_name",
        ),
        (
            format!(r#"{{"action":"queued","workflow_job":{{{job}}},"repository":{{"full_name":" a/b"}}}}"#),
            "repository.full_name",
        ),
        (
            format!(r#"{{"action":"queued","workflow_job":{{{job}}},"repository":{{"full_name":"a/b","id":0}}}}"#),
            "repository.id",
        ),
        (
            format!(r#"{{"action":"que\u0000ued","workflow_job":{{{job}}},"repository":{{"full_name":"a/b"}}}}"#),
            "action",
        ),
        (
            r#"{"action":"queued","workflow_job":{"id":1,"run_id":2},"repository":{"full_name":"a/b"}}"#.to_string(),
            "workflow_job.status",
        ),
    ] {
        let err = parse_workflow_job_event(bad.as_bytes()).unwrap_err();
        assert_eq!(err.field(), Some(field), "{bad}: {err}");
    }
    // Minimal valid payload: missing optional fields default.
    let minimal = format!(
        r#"{{"action":"queued","workflow_job":{{{job},"labels":null}},"repository":{{"full_name":"a/b"}}}}"#
    );
    let event = parse_workflow_job_event(minimal.as_bytes()).unwrap();
    assert_eq!(event.job.labels, Vec::<String>::new());
    assert_eq!(event.job.run_attempt, 1);
}
