//! Smoke run of `wrenn-bench --quick` on the groups without VMs (envd, control plane on
//! SQLite and PostgreSQL): every row it prints has numbers for ours and for the baseline, the
//! JSON matches, and features that do not exist yet say "not available". Timing is never
//! asserted here; the numbers are read from the full run (docs/benchmarks.md).

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    // Tests live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_run_without_vms_reports_every_row_beside_its_baseline() {
    let envd = target_dir().join("envd");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "envd"])
        .env(
            "CARGO_TARGET_DIR",
            target_dir().parent().expect("target dir"),
        )
        .status()
        .expect("cargo build envd");
    assert!(status.success(), "building envd failed");
    // The PostgreSQL rows need a server: the suite's (scripts/test starts one), else the
    // benchmark starts its own; either way they must come out as numbers.
    if let Ok(url) = std::env::var("WRENN_TEST_PG_URL") {
        // SAFETY: set before the benchmark starts any thread that reads the environment.
        unsafe { std::env::set_var("WRENN_BENCH_PG_URL", url) };
    }
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("bench.json");
    wrenn_bench::run(wrenn_bench::Args {
        quick: true,
        json: json.clone(),
        skip_vm: true,
        envd: Some(envd),
        only: vec!["envd".into(), "cp".into()],
        load_secs: None,
        wrenn: None,
    })
    .await
    .expect("wrenn-bench --quick --skip-vm");

    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let measured: Vec<&serde_json::Value> = rows.iter().filter(|r| !r["ours"].is_null()).collect();
    let names: Vec<&str> = measured
        .iter()
        .map(|r| r["scenario"].as_str().unwrap_or_default())
        .collect();
    for want in [
        "envd Start→end of `true` (direct)",
        "envd /files upload 100 MiB",
        "envd /files download 100 MiB",
        "CP GET /v1/sandboxes/{id}, 10000 rows, SQLite: throughput (32 in flight)",
        "CP list 100 of 10000 rows, SQLite: latency",
        "CP GET /v1/sandboxes/{id}, 10000 rows, PostgreSQL: throughput (32 in flight)",
        "CP list 100 of 10000 rows, PostgreSQL: latency",
    ] {
        assert!(names.contains(&want), "no row {want:?} in {names:?}");
    }
    for r in &measured {
        for side in ["ours", "baseline"] {
            let p50 = r[side]["p50"].as_f64();
            assert!(
                p50.is_some_and(|v| v.is_finite() && v > 0.0),
                "{}: {side} p50 {p50:?}",
                r["scenario"]
            );
        }
        assert!(
            r["ratio"]["p50"].as_f64().is_some_and(f64::is_finite),
            "{r}"
        );
    }
    let unavailable: Vec<&str> = rows
        .iter()
        .filter(|r| r["ours"].is_null())
        .map(|r| r["scenario"].as_str().unwrap_or_default())
        .collect();
    // Every scenario the run picked produced numbers: none is a placeholder.
    assert!(
        unavailable.is_empty(),
        "rows without numbers: {unavailable:?}"
    );
}
