//! The official E2B SDKs run unchanged against `wrenn up`, with the environment variables a
//! user would set (`E2B_API_KEY`, `E2B_API_URL`, `E2B_SANDBOX_URL`: the API's own port serves
//! the sandbox proxy too): the Python SDK (`tests/e2b_sdk`, pytest), the last Python SDK that
//! used the `/sandboxes` routes (`tests/e2b_sdk_legacy`) and the JavaScript SDK
//! (`tests/e2b_js`, node's test runner). Versions are pinned in scripts/lib.sh, which installs
//! them; without them this test fails, it never skips.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::path::PathBuf;
use std::process::Command;

use agent::AgentEnv;
use up_support::{Up, other_team_key, prerequisite};

/// Runs one suite with the user's environment variables; returns (passed, output).
fn run_suite(mut cmd: Command, up: &Up, other_key: &str) -> (bool, String) {
    let out = cmd
        .env("E2B_API_KEY", &up.key)
        .env("E2B_API_URL", &up.url)
        .env("E2B_SANDBOX_URL", &up.url)
        .env("WRENN_OTHER_TEAM_KEY", other_key)
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .expect("run the suite");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_official_sdks_work_unchanged() {
    let venv = prerequisite("WRENN_VENV", "the E2B Python SDK venv (ensure_venv)");
    let legacy = prerequisite(
        "WRENN_LEGACY_VENV",
        "the e2b 2.50 venv (ensure_legacy_venv)",
    );
    let js = prerequisite("WRENN_E2B_JS", "the npm e2b SDK (ensure_js_sdk)");
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests");
    let env = AgentEnv::without_agent(&[]);
    let up = Up::start(&env);
    let other = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(other_team_key(&up.url));
    let pytest = |venv: &PathBuf, dir: &str| {
        let mut c = Command::new(venv.join("bin/python"));
        c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"])
            .arg(tests.join(dir));
        c
    };
    let mut node = Command::new("node");
    node.arg("--test")
        .arg(tests.join("e2b_js/sdk.test.cjs"))
        .env("NODE_PATH", js.join("node_modules"));
    let mut failed = Vec::new();
    for (name, cmd) in [
        ("Python e2b (tests/e2b_sdk)", pytest(&venv, "e2b_sdk")),
        (
            "Python e2b 2.50 (tests/e2b_sdk_legacy)",
            pytest(&legacy, "e2b_sdk_legacy"),
        ),
        ("JavaScript e2b (tests/e2b_js)", node),
    ] {
        let (ok, text) = run_suite(cmd, &up, &other);
        eprintln!(
            "===== {name}: {}\n{text}",
            if ok { "passed" } else { "FAILED" }
        );
        if !ok {
            failed.push(name);
        }
    }
    up.stop();
    assert!(
        failed.is_empty(),
        "failed suites: {failed:?} (output above)"
    );
    assert!(env.qemu_pids().is_empty(), "sandboxes left running");
}
