//! The official E2B Python SDK (PyPI `e2b`, pinned in scripts/lib.sh) runs unchanged against
//! `wrenn up`: `tests/e2b_sdk/` is a pytest suite of SDK calls, run here with the environment
//! variables a user would set (`E2B_API_KEY`, `E2B_API_URL`, `E2B_SANDBOX_URL`: the API's own
//! port serves the sandbox proxy too). The venv comes from `scripts/test` (`WRENN_VENV`);
//! without it this test fails, it never skips.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::path::PathBuf;
use std::process::Command;

use agent::AgentEnv;
use serde_json::{Value, json};
use up_support::Up;

/// A second team's API key, for the isolation checks.
async fn other_team_key(url: &str) -> String {
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{url}/v1/auth/signup"))
        .json(&json!({"email": "other@example.com", "password": "correct horse battery", "name": "Other"}))
        .send()
        .await
        .expect("signup")
        .json()
        .await
        .expect("signup body");
    let token = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token in {v}"));
    let k: Value = http
        .post(format!("{url}/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("key body");
    k["key"]
        .as_str()
        .unwrap_or_else(|| panic!("key in {k}"))
        .to_owned()
}

#[test]
fn the_official_python_sdk_works_unchanged() {
    let venv = std::env::var("WRENN_VENV").unwrap_or_else(|_| {
        panic!("WRENN_VENV is not set: the E2B SDK venv comes from scripts/test (ensure_venv)")
    });
    let python = PathBuf::from(venv).join("bin/python");
    assert!(python.exists(), "{} is missing", python.display());
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2b_sdk");
    let env = AgentEnv::without_agent(&[]);
    let up = Up::start(&env);
    let other = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(other_team_key(&up.url));
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"])
        .arg(&suite)
        .env("E2B_API_KEY", &up.key)
        .env("E2B_API_URL", &up.url)
        .env("E2B_SANDBOX_URL", &up.url)
        .env("WRENN_OTHER_TEAM_KEY", &other)
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .expect("run pytest");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    up.stop();
    assert!(out.status.success(), "the SDK suite failed:\n{text}");
    assert!(env.qemu_pids().is_empty(), "sandboxes left running");
}
