//! Schemathesis (pinned in scripts/lib.sh, `ensure_schemathesis_venv`) against `wrenn up`'s
//! `/openapi.json` with every check: every documented route, the sandbox routes with live
//! sandboxes (its stateful phase follows create → `{id}` routes), must answer as the
//! document says — 0 failures. Without schemathesis this test fails; it never skips.
//!
//! It acts as a second, non-admin account whose team's quota is small (two sandboxes, two
//! vCPUs), so the run can never start more than two VMs; a hook turns any generated
//! `allow_internet: true` into false. Everything runs on loopback inside the test's network
//! namespace.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use agent::AgentEnv;
use serde_json::{Value, json};
use up_support::{Up, prerequisite};

/// Examples per operation and phase: enough to reach every status a route documents,
/// few enough that the run (real VMs under TCG) stays within a few minutes on 2 CPUs.
const MAX_EXAMPLES: &str = "8";

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url}: {status} {v}");
    v
}

/// The tester's user JWT, its team's quota set small by the admin.
async fn tester(up: &Up, data_dir: &std::path::Path) -> String {
    let http = reqwest::Client::new();
    let url = &up.url;
    let password = std::fs::read_to_string(data_dir.join("admin-password"))
        .expect("wrenn up keeps the admin's password in the data dir");
    let admin = post(
        &http,
        &format!("{url}/v1/auth/login"),
        None,
        json!({"email": "admin@wrenn.local", "password": password.trim()}),
    )
    .await;
    let admin_jwt = admin["token"].as_str().expect("admin token").to_owned();
    let t = post(
        &http,
        &format!("{url}/v1/auth/signup"),
        None,
        json!({"email": "tester@example.com", "password": "correct horse battery", "name": "Tester"}),
    )
    .await;
    let team = t["team"]["id"].as_str().expect("team id");
    let quota = json!({
        "max_sandboxes": 2, "max_vcpus": 2, "max_memory_mb": 1024,
        "max_disk_mb": 131_072, "max_timeout_sec": 600, "allow_no_timeout": false,
    });
    let resp = http
        .put(format!("{url}/v1/admin/teams/{team}/quota"))
        .bearer_auth(&admin_jwt)
        .json(&quota)
        .send()
        .await
        .expect("set quota");
    assert!(resp.status().is_success(), "quota: {}", resp.status());
    t["token"].as_str().expect("tester token").to_owned()
}

/// "N generated" of schemathesis' summary line.
fn cases_generated(out: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let l = l.trim();
        let (n, rest) = l.split_once(' ')?;
        rest.starts_with("generated").then(|| n.parse().ok())?
    })
}

#[test]
fn schemathesis_finds_nothing_undocumented() {
    let venv = prerequisite(
        "WRENN_SCHEMATHESIS_VENV",
        "schemathesis (ensure_schemathesis_venv)",
    );
    let st = venv.join("bin/st");
    assert!(st.exists(), "{} is missing", st.display());
    let hooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let env = AgentEnv::without_agent(&[]);
    let up = Up::start(&env);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let token = rt.block_on(tester(&up, env.root.path()));

    // Fixed so a failure reproduces; `WRENN_ST_SEED` tries another.
    let seed = std::env::var("WRENN_ST_SEED").unwrap_or_else(|_| "14".into());
    let report = tempfile::tempdir().expect("report dir");
    let started = Instant::now();
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", up.url))
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // A route that does not answer within this is a failure (a hang), not a longer wait.
        // The same bound for the response-time check `--checks all` brings (10 s by default,
        // which a create building its first warm base on a loaded 2-CPU machine can pass):
        // speed is the benchmarks' business, not this test's.
        .args(["--request-timeout", "30", "--max-response-time", "30"])
        .args(["--workers", "1", "--seed", &seed, "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "wrenn_hooks")
        .current_dir(report.path())
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let cases = cases_generated(&text);
    eprintln!(
        "schemathesis: {} cases in {:.0} s, exit {:?}",
        cases.map_or("?".into(), |n| n.to_string()),
        started.elapsed().as_secs_f64(),
        out.status.code()
    );

    // Whatever the run left: delete the tester's sandboxes so their VMs go with the test.
    let http = reqwest::Client::new();
    rt.block_on(async {
        let list: Value = http
            .get(format!(
                "{}/v1/sandboxes?status=pending,running,paused,missing,error",
                up.url
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list body");
        for sb in list["sandboxes"].as_array().into_iter().flatten() {
            if let Some(id) = sb["id"].as_str() {
                let _ = http
                    .delete(format!("{}/v1/sandboxes/{id}", up.url))
                    .bearer_auth(&token)
                    .send()
                    .await;
            }
        }
    });
    up.stop();
    assert!(
        cases.is_some_and(|n| n > 0),
        "schemathesis ran no case (output above)"
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (output above)"
    );
    assert!(env.qemu_pids().is_empty(), "sandboxes left running");
}
