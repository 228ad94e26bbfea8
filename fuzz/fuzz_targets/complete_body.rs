//! `POST /api/jobs/{id}/complete` and `POST /api/tokens` bodies: a refusal
//! is a 4xx naming the problem; what is accepted keeps to its documented form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_runner_orchestrator::error::ApiError;
use proxy_runner_orchestrator::requests::{parse_completion, parse_token_request};

fn refusal(e: &ApiError) {
    assert!(e.status.is_client_error(), "{} for {}", e.status, e.message);
    assert!(matches!(
        e.code,
        "bad_json" | "invalid_field" | "missing_field"
    ));
    assert!(!e.message.is_empty());
}

fuzz_target!(|body: &[u8]| {
    match parse_completion(body) {
        Ok(completion) => {
            if let Some(conclusion) = &completion.conclusion {
                assert!(!conclusion.is_empty() && conclusion.chars().count() <= 32);
                assert!(
                    conclusion
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_')
                );
            }
            let effective = completion.effective_conclusion();
            assert_eq!(
                effective.is_some(),
                completion.conclusion.is_some() || completion.exit_code.is_some()
            );
        }
        Err(e) => refusal(&e),
    }
    match parse_token_request(body) {
        Ok(runner) => {
            assert!(!runner.is_empty() && runner.chars().count() <= 100);
            assert!(!runner.chars().any(char::is_control));
            assert_eq!(runner.trim(), runner);
        }
        Err(e) => refusal(&e),
    }
});
