//! Container-hook input, both ways it arrives. The first byte picks the way
//! (and the policy's profile):
//! - the runner's stdin line (`HookInput::parse`), then the proxy policy's
//!   plan of every container in it;
//! - the orchestrator's `/api/hooks/*` bodies (`{runnerName, args, state}`),
//!   then the use case's parse of `args` and `state`.
//!
//! Refusals are 4xx and never quote a value (values may be credentials);
//! a registry password never shows in a parsed input's Debug output; what
//! the policy lets through keeps to the policy.
#![no_main]

use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use proxy_runner_domain::container_hooks::{
    HookArgs, HookContainer, HookInput, PrepareJobArgs, ScriptStepArgs,
};
use proxy_runner_domain::policy::{HardeningProfile, ProxyPolicy};
use proxy_runner_orchestrator::error::ApiError;
use proxy_runner_orchestrator::hook_api::parse_hook_request;
use proxy_runner_orchestrator::proxy::{ProxyError, hook_state};
use serde_json::Value;

const WORK_ROOT: &str = "/home/runner/_work";
const EXTERNALS_ROOT: &str = "/home/runner/externals";
/// Put in place of every value to see whether an error quotes one.
const MARKER: &str = "PLANTED-VALUE-5e1f";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let profile = if mode & 0x80 == 0 {
        HardeningProfile::Standard
    } else {
        HardeningProfile::Strict
    };
    match mode & 0x07 {
        0 | 5 | 6 | 7 => runner_line(input, &policy(profile)),
        route => hook_route(route, input),
    }
});

fn policy(profile: HardeningProfile) -> ProxyPolicy {
    ProxyPolicy {
        allowed_images: vec![
            "ghcr.io/octo/*".into(),
            "alpine:3.20".into(),
            "node:*".into(),
        ],
        profile,
        work_root: WORK_ROOT.into(),
        externals_root: EXTERNALS_ROOT.into(),
        ..ProxyPolicy::default()
    }
}

fn runner_line(input: &[u8], policy: &ProxyPolicy) {
    let parsed = HookInput::parse(input);
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        // Not JSON: the parse refuses it too.
        assert!(parsed.is_err());
        return;
    };
    quotes_no_value(&value);
    passwords_stay_hidden(&value);
    let Ok(hook) = parsed else { return };
    match &hook.args {
        HookArgs::PrepareJob(args) => args
            .container
            .iter()
            .chain(&args.services)
            .for_each(|c| plan(policy, c)),
        HookArgs::RunContainerStep(container) => plan(policy, container),
        HookArgs::RunScriptStep(args) => assert!(!args.entry_point.is_empty()),
        HookArgs::CleanupJob => {}
    }
}

/// Every string value replaced by the marker: a refusal must not show it.
fn quotes_no_value(value: &Value) {
    if object_keys_contain(value, MARKER) || strings_contain(value, MARKER) {
        return;
    }
    let mut planted = value.clone();
    plant(&mut planted, &|key| key != "command", false);
    if let Err(e) = HookInput::from_value(&planted) {
        assert!(!e.to_string().contains(MARKER), "{e}");
    }
}

/// Registry passwords replaced by the marker: a parsed input must not show it.
fn passwords_stay_hidden(value: &Value) {
    if object_keys_contain(value, MARKER) || strings_contain(value, MARKER) {
        return;
    }
    let mut planted = value.clone();
    plant(&mut planted, &|key| key == "password", false);
    if let Ok(hook) = HookInput::from_value(&planted) {
        assert!(!format!("{hook:?}").contains(MARKER));
    }
}

/// Replaces every string (however deep) under a key `replace` accepts;
/// `here`: the value itself is under such a key.
fn plant(value: &mut Value, replace: &dyn Fn(&str) -> bool, here: bool) {
    match value {
        Value::String(s) if here => *s = MARKER.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| plant(v, replace, here)),
        Value::Object(map) => map
            .iter_mut()
            .for_each(|(key, v)| plant(v, replace, here || replace(key))),
        _ => {}
    }
}

fn object_keys_contain(value: &Value, text: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|v| object_keys_contain(v, text)),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(text) || object_keys_contain(v, text)),
        _ => false,
    }
}

fn strings_contain(value: &Value, text: &str) -> bool {
    match value {
        Value::String(s) => s.contains(text),
        Value::Array(items) => items.iter().any(|v| strings_contain(v, text)),
        Value::Object(map) => map.values().any(|v| strings_contain(v, text)),
        _ => false,
    }
}

/// What the policy lets through stays within it.
fn plan(policy: &ProxyPolicy, container: &HookContainer) {
    match policy.plan_container(container, &lexical) {
        Ok(plan) => {
            assert_eq!(Some(plan.image.as_str()), container.image.as_deref());
            assert!(policy.check_image(&plan.image).is_ok());
            plan.confinement.validate().expect("a valid confinement");
            let limits = &policy.limits;
            assert!(plan.confinement.memory_bytes <= limits.max_memory_bytes);
            assert!(plan.confinement.nano_cpus <= limits.max_nano_cpus);
            for mount in &plan.mounts {
                let source = Path::new(&mount.source);
                assert!(
                    source.starts_with(WORK_ROOT) || source.starts_with(EXTERNALS_ROOT),
                    "mount source {source:?}"
                );
                assert!(
                    mount.target.starts_with('/'),
                    "mount target {:?}",
                    mount.target
                );
            }
            assert!(plan.ports.iter().all(|p| !p.publish));
            if policy.profile == HardeningProfile::Strict {
                let user = plan.user.expect("the strict profile names a user");
                let name = user.split(':').next().unwrap_or_default();
                assert!(
                    name != "root" && name.parse::<u32>() != Ok(0),
                    "user {user:?}"
                );
                assert!(plan.confinement.capabilities.is_empty());
            }
        }
        Err(e) => {
            let answer = ApiError::from(ProxyError::Policy(e));
            assert_eq!(answer.status.as_u16(), 422);
        }
    }
}

/// The canonical form without a filesystem: `.` and `..` resolved.
fn lexical(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    Ok(out)
}

/// One of the four `/api/hooks/*` routes.
fn hook_route(route: u8, body: &[u8]) {
    let cleanup = route == 4;
    let request = match parse_hook_request(body, !cleanup) {
        Ok(request) => request,
        Err(e) => return refusal(&e),
    };
    assert!(!request.runner_name.is_empty() && request.runner_name.len() <= 255);
    assert!(request.args.is_object());
    let args = match route {
        1 => PrepareJobArgs::from_value(&request.args).map(|_| ()),
        2 => ScriptStepArgs::from_value(&request.args).map(|_| ()),
        3 => HookContainer::from_value(&request.args).map(|_| ()),
        _ => Ok(()),
    };
    if let Err(e) = args {
        refusal(&ApiError::from(ProxyError::Input(e)));
    }
    if let Err(e) = hook_state(&request.state) {
        refusal(&ApiError::from(e));
    }
}

fn refusal(e: &ApiError) {
    assert!(e.status.is_client_error(), "{} for {}", e.status, e.message);
    assert!(!e.message.is_empty());
}
