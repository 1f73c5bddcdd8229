//! `wrenn up` — the README's run command — brings the system up on one (stand-in) host, and the
//! CLI runs a command in a sandbox through it. A second start reuses the admin key and the
//! registered host. Runs inside a test network namespace like the agent tests; the data dir
//! shares the test image root, so the image step is a cache hit.
mod agent;
#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "up_support/mod.rs"]
mod up_support;

use std::process::Output;

use agent::AgentEnv;
use up_support::{CP_PORT, Up};

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn up_then_the_cli_runs_a_command_in_a_sandbox() {
    let env = AgentEnv::without_agent(&[]);
    let up = Up::start(&env);
    assert_eq!(up.url, format!("http://127.0.0.1:{CP_PORT}"));
    assert!(up.key.starts_with("wrn_"), "{}", up.key);

    let created = up.cli(&["sandbox", "create", "--memory-mb", "256"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = text(&created).trim().to_owned();
    assert_eq!(id.len(), 20, "{id:?}");
    let hi = up.cli(&["exec", &id, "--", "echo", "hi"]);
    assert_eq!((text(&hi).as_str(), hi.status.code()), ("hi\n", Some(0)));
    let three = up.cli(&["exec", &id, "--", "sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3));
    // The rest of the CLI against the same system: ls/get, env/cwd, cp both ways (sha256
    // equal), shell with piped input and its exit code, rm (its own sandbox).
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(cli_support::sandbox_flow(&up.url, &up.key));

    // A second start reuses the admin key and the registered host; the sandbox survives it.
    let (key, host) = (up.key.clone(), up.host.clone());
    up.stop();
    let up = Up::start(&env);
    assert_eq!(
        (up.key.as_str(), up.host.as_str()),
        (key.as_str(), host.as_str())
    );
    let again = up.cli(&["exec", &id, "--", "uname", "-r"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again).starts_with("6.1."), "{}", text(&again));
    let rm = up.cli(&["sandbox", "rm", &id]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    up.stop();
    assert!(
        env.qemu_pids().is_empty(),
        "the deleted sandbox's VM is gone"
    );
}
