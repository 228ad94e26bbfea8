//! Keeps the layering of ARCHITECTURE.md true: the domain does no IO,
//! anyhow only in the binary, no adapter crate in the orchestrator's normal
//! dependencies, and no field of a stored job written outside the domain.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The crate names in `[dependencies]` of a crate's manifest (not dev- or
/// build-dependencies).
fn normal_dependencies(krate: &str) -> Vec<String> {
    let path = workspace().join("crates").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_domain_depends_on_no_io_crate_and_uses_no_io() {
    const ALLOWED: &[&str] = &[
        "async-trait",
        "bytes",
        "chrono",
        "futures",
        "hex",
        "secrecy",
        "serde",
        "serde_json",
        "sha2",
        "thiserror",
        "uuid",
    ];
    for dep in normal_dependencies("domain") {
        assert!(
            ALLOWED.contains(&dep.as_str()),
            "the domain crate must not depend on {dep:?} (only {ALLOWED:?})"
        );
    }
    for file in rust_sources(&workspace().join("crates/domain/src")) {
        // A unit-test module of its own file may read fixtures.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests (at the end of a file) may read fixtures; comments may
        // name what the code leaves to adapters.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for io in [
            "std::fs",
            "std::net",
            "std::process",
            "tokio",
            "std::env::var",
        ] {
            assert!(
                !code.contains(io),
                "{} uses {io}: the domain does no IO",
                file.display()
            );
        }
    }
}

#[test]
fn anyhow_is_used_only_by_the_binary() {
    for krate in crates() {
        if krate == "cli" {
            continue;
        }
        assert!(
            !normal_dependencies(&krate).iter().any(|d| d == "anyhow"),
            "crates/{krate} depends on anyhow; libraries use thiserror"
        );
    }
    assert!(normal_dependencies("cli").iter().any(|d| d == "anyhow"));
}

#[test]
fn the_orchestrator_depends_on_no_adapter() {
    let deps = normal_dependencies("orchestrator");
    for adapter in [
        "proxy-runner-store",
        "proxy-runner-store-postgres",
        "proxy-runner-docker",
        "proxy-runner-emulator",
        "proxy-runner-github",
    ] {
        assert!(
            !deps.iter().any(|d| d == adapter),
            "the orchestrator depends on the adapter {adapter}; adapters are wired in by the binary"
        );
    }
    assert!(deps.iter().any(|d| d == "proxy-runner-domain"));
}

#[test]
fn no_field_of_a_job_is_written_outside_the_domain() {
    const FIELDS: &[&str] = &[
        "status",
        "container_id",
        "ran_in_container_id",
        "runner_id",
        "provisioned_runner_id",
        "github_job_id",
        "attempts",
        "last_error",
        "not_before",
        "exit_code",
        "conclusion",
        "started_at",
        "completed_at",
        "updated_at",
        "runner_name",
    ];
    let mut offenders = Vec::new();
    for krate in ["orchestrator", "cli"] {
        for file in rust_sources(&workspace().join("crates").join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for field in FIELDS {
                    for op in [" = ", " += ", " -= "] {
                        let pattern = format!(".{field}{op}");
                        // `JobFilter` shares a field name with `Job`.
                        if code.contains(&pattern) && !code.contains("filter.") {
                            offenders.push(format!(
                                "{}:{}: {}",
                                file.display(),
                                n + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "job fields written outside the domain (use a `Job` method):\n{}",
        offenders.join("\n")
    );
}
