//! The dashboard in a real browser: `wrenn up` (as the README's run command starts it) in the
//! test's network namespace, then `frontend/tests/browser.mjs` (playwright-core driving
//! Debian's Chromium, axe-core) through the flows of issue 15. Screenshots of every page at
//! 1440×900 and 390×844 go to `<target>/nextest-output/dashboard/` (printed). A missing
//! prerequisite (node, chromium, the frontend's node_modules, a binary built without the
//! dashboard) fails the test naming what to install; it never skips.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use agent::AgentEnv;
use up_support::Up;

const CHROMIUM: &str = "/usr/bin/chromium";

fn frontend_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../frontend")
}

/// `<target>/nextest-output/dashboard`, beside the profile dir this test runs from.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/debug/deps/<test>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    target.join("nextest-output").join("dashboard")
}

fn prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: apt-get install nodejs npm (scripts/test installs them)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium (scripts/test installs it)"
    );
    for m in ["playwright-core", "axe-core"] {
        let p = frontend_dir().join("node_modules").join(m);
        assert!(
            p.exists(),
            "{} is missing: run `npm ci` in frontend/ (scripts/test does, ensure_frontend)",
            p.display()
        );
    }
}

#[test]
fn dashboard_in_a_browser() {
    prerequisites();
    let env = AgentEnv::without_agent(&[]);
    let up = Up::start(&env);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The binary must carry the built app, not the placeholder.
    let page = rt.block_on(async {
        reqwest::get(format!("{}/login", up.url))
            .await
            .expect("GET /login")
            .text()
            .await
            .expect("body")
    });
    assert!(
        page.contains("/_app/immutable/"),
        "the binary was built without the dashboard (scripts/test builds frontend/ first):\n{page}"
    );

    let password = std::fs::read_to_string(env.root.path().join("admin-password"))
        .expect("wrenn up keeps the admin's password in the data dir");
    let shots = output_dir();
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    eprintln!("dashboard screenshots: {}", shots.display());

    let started = Instant::now();
    let out = Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(frontend_dir())
        .env("WRENN_URL", &up.url)
        .env("WRENN_ADMIN_PASSWORD", password.trim())
        .env("WRENN_SHOTS", &shots)
        .env("WRENN_CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .expect("run node tests/browser.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "browser run: {:.0} s, exit {:?}",
        started.elapsed().as_secs_f64(),
        out.status.code()
    );

    up.stop();
    drop(rt);
    assert!(
        out.status.success(),
        "the browser flows failed (output above)"
    );
    let pngs = std::fs::read_dir(&shots)
        .expect("screenshots")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(pngs >= 20, "{pngs} screenshots in {}", shots.display());
    assert!(env.qemu_pids().is_empty(), "sandboxes left running");
}
