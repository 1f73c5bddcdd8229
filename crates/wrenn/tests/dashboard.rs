//! The dashboard in a real browser: `wrenn up` (as the README's run command starts it) in the
//! test's network namespace, then `frontend/tests/browser.mjs` (playwright-core driving
//! Debian's Chromium, axe-core) through the flows of issue 15. For the BYOC flow the page
//! writes the agent command it revealed to a file; this test starts that agent (on the
//! namespace's non-loopback address) and the page waits for it online. Screenshots of every
//! page at 1440×900 and 390×844 and the browser log go to
//! `<target>/nextest-output/dashboard/` (printed). A missing prerequisite (node, chromium,
//! the frontend's node_modules, a binary built without the dashboard) fails the test naming
//! what to install; it never skips.
mod agent;
#[path = "up_support/mod.rs"]
mod up_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::AgentEnv;
use up_support::Up;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The host side of the test namespace's veth: a BYOC host may not register at loopback.
const BYOC_LISTEN: &str = "192.0.2.2:50052";

/// A second agent, started with the registration token the dashboard revealed, as the
/// command line it shows (`--cp-url`, `--register`) plus this test's root, address and prefix.
struct ByocAgent {
    child: Option<std::process::Child>,
    _root: tempfile::TempDir,
}

impl ByocAgent {
    fn start(env: &AgentEnv, request: &Path) -> ByocAgent {
        let req: serde_json::Value =
            serde_json::from_slice(&std::fs::read(request).expect("agent request"))
                .expect("agent request JSON");
        let command = req["command"].as_str().expect("command");
        let words: Vec<&str> = command.split_whitespace().collect();
        let flag = |name: &str| {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1))
                .unwrap_or_else(|| panic!("{name} in {command}"))
                .to_string()
        };
        assert_eq!(&words[..3], ["sudo", "wrenn", "agent"], "{command}");
        let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
        for d in ["kernels", "images"] {
            let target = std::fs::read_link(env.root.path().join(d)).expect("image link");
            std::os::unix::fs::symlink(target, root.path().join(d)).expect("symlink");
        }
        let mut cmd = Command::new(agent::wrenn_bin());
        cmd.arg("agent")
            .arg("--root")
            .arg(root.path())
            .args(["--listen", BYOC_LISTEN])
            .args(["--cp-url", &flag("--cp-url")])
            .args(["--register", &flag("--register")])
            // `d`: a prefix no other test or benchmark uses, so no agent removes another's
            // networks as stale.
            .args(["--net-prefix", &format!("d{}", &env.tag[..5])])
            .args(["--accel", "tcg", "--heartbeat-secs", "1"])
            .stdin(Stdio::null());
        // SAFETY: prctl only; the agent stops when the test dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the BYOC agent");
        eprintln!("BYOC agent started (pid {})", child.id());
        ByocAgent {
            child: Some(child),
            _root: root,
        }
    }

    /// Its exit status once it ended by itself (within 30 s), else `None` after killing it.
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ByocAgent {
    /// A failing test still ends the agent it started, by its PID.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
    let request = tempfile::tempdir().expect("temp dir");
    let request_file = request.path().join("agent.json");
    let log_path = shots.join("browser.log");
    let log = std::fs::File::create(&log_path).expect("browser log");
    let mut node = Command::new("node")
        .arg("tests/browser.mjs")
        .current_dir(frontend_dir())
        .env("WRENN_URL", &up.url)
        .env("WRENN_ADMIN_PASSWORD", password.trim())
        .env("WRENN_SHOTS", &shots)
        .env("WRENN_CHROMIUM", CHROMIUM)
        .env("WRENN_AGENT_REQUEST", &request_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("run node tests/browser.mjs");
    // The BYOC flow asks for an agent registered with the token the page revealed.
    let mut byoc: Option<ByocAgent> = None;
    let status = loop {
        if let Some(st) = node.try_wait().expect("wait node") {
            break st;
        }
        if byoc.is_none() && request_file.exists() {
            byoc = Some(ByocAgent::start(&env, &request_file));
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = node.kill();
            break node.wait().expect("wait node");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    eprintln!(
        "browser run: {:.0} s, exit {:?}",
        started.elapsed().as_secs_f64(),
        status.code()
    );
    let byoc_exit = byoc.map(ByocAgent::stop);

    up.stop();
    drop(rt);
    assert!(status.success(), "the browser flows failed (output above)");
    // Its host deleted, the BYOC agent ends by itself, with success.
    let byoc_exit = byoc_exit.expect("the browser asked for a BYOC agent");
    assert!(
        byoc_exit.is_some_and(|s| s.success()),
        "BYOC agent: {byoc_exit:?}"
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
