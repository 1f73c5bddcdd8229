//! The bounded load test: 200 concurrent API clients for 60 s mixing get, list and exec on
//! ten real sandboxes (`wrenn_bench::load`), on loopback inside a namespace of its own. It
//! asserts that nothing failed: no transport error, no 5xx, no unexpected status, every exec
//! exit 0 (429s with `Retry-After` are back-pressure the clients honour, counted apart).
//! Timing is printed, never asserted; docs/benchmarks.md has the figures of a full run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn target_dir() -> PathBuf {
    // Tests live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

#[test]
fn two_hundred_clients_for_a_minute_without_errors() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "envd", "-p", "wrenn"])
        .env(
            "CARGO_TARGET_DIR",
            target_dir().parent().expect("target dir"),
        )
        .status()
        .expect("cargo build envd wrenn");
    assert!(status.success(), "building envd and wrenn failed");
    // Where several checkouts share a target dir, WRENN_TEST_BIN names this one's `wrenn`.
    let wrenn = std::env::var_os("WRENN_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wrenn"));
    let secs = std::env::var("WRENN_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let args = wrenn_bench::Args {
        quick: false,
        json: PathBuf::from("/dev/null"),
        skip_vm: false,
        envd: Some(target_dir().join("envd")),
        only: vec!["load".into()],
        load_secs: Some(secs),
        wrenn: Some(wrenn),
    };
    let r = wrenn_bench::load::run_report(&args, Duration::from_secs(secs)).expect("load run");
    eprintln!("{}", r.markdown());
    assert_eq!(r.clients, 200);
    assert_eq!(r.sandboxes, 10);
    for op in ["get", "list", "exec"] {
        assert!(
            r.requests.get(op).copied().unwrap_or(0) > 0,
            "no {op} answered: {:?}",
            r.requests
        );
    }
    assert_eq!(
        r.error_count(),
        0,
        "errors: {:?}, floor: {:?}",
        r.errors,
        r.floor_errors
    );
}
