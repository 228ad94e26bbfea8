//! GitHub `workflow_job` deliveries as the receiver handles them: the
//! signature check over the raw body, then the payload parse. The first byte
//! picks the signature header: correct, wrong in one digit, missing, or
//! taken from the input (the first line), so that the parse behind the
//! check is reached and the check itself is exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_runner_webhooks::{
    SignatureError, WorkflowJobAction, parse_workflow_job_event, signature_header, verify_signature,
};
use secrecy::SecretString;

/// Longest error message: errors name the problem, they do not echo the
/// body. A bad repository name is quoted cut to 120 characters, each
/// escaped to at most 10 bytes (`\u{10ffff}`).
const MAX_ERROR_LEN: usize = 100 + 120 * 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = SecretString::from("fuzz-webhook-secret");
    let (header, body) = match mode % 4 {
        0 => (Some(signature_header(&secret, rest)), rest),
        1 => (
            Some(one_digit_wrong(&signature_header(&secret, rest))),
            rest,
        ),
        2 => (None, rest),
        _ => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let header = String::from_utf8_lossy(&rest[..cut]).into_owned();
            (Some(header), rest.get(cut + 1..).unwrap_or_default())
        }
    };
    let verdict = verify_signature(&secret, body, header.as_deref());
    let expected = signature_header(&secret, body);
    // Accepted exactly when the header is GitHub's (hex digits in any case).
    let matches = |h: &str| {
        let h = h.trim();
        h.starts_with("sha256=") && h.eq_ignore_ascii_case(&expected)
    };
    match (&header, &verdict) {
        (None, v) => assert_eq!(v, &Err(SignatureError::Missing)),
        (Some(h), v) => assert_eq!(v.is_ok(), matches(h), "header {h:?}: {v:?}"),
    }
    if mode % 4 == 1 {
        assert_eq!(verdict, Err(SignatureError::Mismatch));
    }
    if verdict.is_err() {
        return;
    }
    match parse_workflow_job_event(body) {
        Ok(event) => {
            assert!(event.repository_scope().is_some());
            assert_eq!(
                WorkflowJobAction::parse(event.action.as_str()),
                event.action
            );
            assert_ne!(event.job.runner_id, Some(0));
            assert_ne!(event.job.runner_name.as_deref(), Some(""));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.is_empty() && message.len() <= MAX_ERROR_LEN,
                "{message}"
            );
        }
    }
});

fn one_digit_wrong(header: &str) -> String {
    let mut bytes = header.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap_or_default()
}
