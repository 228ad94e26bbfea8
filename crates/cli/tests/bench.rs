//! The delegation part of `proxy-runner bench` at a tiny size: it starts its
//! servers and load generator as processes and writes JSON with every case
//! and its figures. Checks the shape and counts, never the speed.

use std::process::Command;

#[test]
fn the_delegation_benchmark_writes_every_case_with_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = Command::new(env!("CARGO_BIN_EXE_proxy-runner"))
        .args(["bench", "--only", "delegations", "--clients", "1,3"])
        .args(["--delegations", "30", "--serial-delegations", "5"])
        .args(["--healthz-requests", "40", "--db-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("durable / in-memory delegations at 3 clients"),
        "{table}"
    );

    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(figures["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(figures.get("engine").is_none(), "only the delegations ran");
    let cases = figures["delegations"]["cases"].as_array().unwrap();
    let expected = [
        ("delegate", "sqlite-file", 1, 5),
        ("delegate", "sqlite-file", 3, 30),
        ("healthz", "sqlite-file", 3, 40),
        ("delegate", "memory", 1, 5),
        ("delegate", "memory", 3, 30),
    ];
    assert_eq!(cases.len(), expected.len(), "{cases:#?}");
    for (case, store, clients, requests) in expected {
        let found = cases
            .iter()
            .find(|c| c["case"] == case && c["store"] == store && c["clients"] == clients)
            .unwrap_or_else(|| panic!("no {case} case on {store} at {clients} clients"));
        let f = &found["figures"];
        assert_eq!(f["requests"], requests, "{case} {store} {clients}: {f}");
        assert_eq!(f["errors"], 0, "{case} {store} {clients}: {f}");
        for key in ["rate", "p50Ms", "p99Ms", "seconds"] {
            let v = f[key].as_f64().unwrap_or(f64::NAN);
            assert!(
                v.is_finite() && v > 0.0,
                "{case} {store} {clients}: {key} = {v}"
            );
        }
        assert!(f["p50Ms"].as_f64() <= f["p99Ms"].as_f64());
    }
    for clients in ["1", "3"] {
        let ratio = figures["delegations"]["durableToMemory"][clients]
            .as_f64()
            .unwrap();
        assert!(ratio.is_finite() && ratio > 0.0);
    }
    // The database file went with the benchmark.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("bench-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
