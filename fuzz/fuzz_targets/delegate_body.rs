//! `POST /api/jobs/delegate` bodies: a refusal is a 4xx naming the problem;
//! an accepted delegation stores no credential in its environment or matrix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_runner_domain::env_filter::{contains_credential, is_secret_name};
use proxy_runner_domain::names::parse_repository;
use proxy_runner_orchestrator::requests::parse_delegation;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    match parse_delegation(body) {
        Ok(delegation) => {
            let job = &delegation.job;
            assert!(job.run_id > 0 && job.run_attempt > 0);
            assert!(!job.job_key.is_empty());
            assert!(parse_repository(&job.repository).is_ok());
            for (name, value) in &job.environment {
                assert!(
                    !is_secret_name(name),
                    "secret-named variable kept: {name:?}"
                );
                assert!(!contains_credential(value), "credential kept in {name:?}");
            }
            if let Some(matrix) = &job.matrix {
                assert!(matrix.is_object());
                each_string(matrix, &mut |s| {
                    assert!(!contains_credential(s), "credential kept in the matrix")
                });
            }
            // The same body parses the same way again.
            assert_eq!(parse_delegation(body).as_ref(), Ok(&delegation));
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{} for {}", e.status, e.message);
            assert!(matches!(
                e.code,
                "bad_json" | "invalid_field" | "missing_field"
            ));
            assert!(!e.message.is_empty());
        }
    }
});

fn each_string(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| each_string(v, f)),
        Value::Object(map) => map.values().for_each(|v| each_string(v, f)),
        _ => {}
    }
}
