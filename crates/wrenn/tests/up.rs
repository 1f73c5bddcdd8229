//! `wrenn up` — the README's run command — brings the system up on one (stand-in) host, and the
//! CLI runs a command in a sandbox through it. A second start reuses the admin key and the
//! registered host. Runs inside a test network namespace like the agent tests; the data dir
//! shares the test image root, so the image step is a cache hit.
mod agent;
#[path = "cli_support/mod.rs"]
mod cli_support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use agent::AgentEnv;

const CP_PORT: u16 = 18080;

struct Up {
    child: Child,
    url: String,
    key: String,
    host: String,
}

impl Up {
    fn start(env: &AgentEnv) -> Up {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrenn"));
        cmd.arg("up")
            .arg("--data-dir")
            .arg(env.root.path())
            .args(["--listen", &format!("127.0.0.1:{CP_PORT}")])
            .args(["--agent-listen", &format!("127.0.0.1:{}", env.port)])
            .arg(format!("--agent-arg=--net-prefix={}", env.prefix()))
            .arg("--agent-arg=--accel=tcg")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl only; `wrenn up` (and through it the agent) stops when the test dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn wrenn up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut key, mut host) = (None, None, None);
        while url.is_none() || key.is_none() || host.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(240))
                .expect("wrenn up printed its summary");
            if let Some(k) = line.trim().strip_prefix("API key") {
                key = Some(k.trim().to_owned());
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("API"), Some(u)) => url = Some(u.to_owned()),
                (Some("Host"), Some(h)) => host = Some(h.to_owned()),
                _ => {}
            }
        }
        Up {
            child,
            url: url.expect("url"),
            key: key.expect("key"),
            host: host.expect("host"),
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .args(args)
            .env("WRENN_URL", &self.url)
            .env("WRENN_API_KEY", &self.key)
            // No saved login of the machine leaks in.
            .env("WRENN_CONFIG", "/nonexistent/wrenn-config.json")
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI")
    }

    /// SIGTERM, as Ctrl-C would: stops the control plane and the agent.
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "wrenn up exited with {status}");
    }
}

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
