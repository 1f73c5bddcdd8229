//! `wrenn up` as a test starts it: in the test's network namespace, on the test image root,
//! its summary (API URL, key, host) read from its output.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::agent::AgentEnv;

#[allow(dead_code)]
pub const CP_PORT: u16 = 18080;

pub struct Up {
    child: Child,
    pub url: String,
    /// The plain loopback URL under `--domain` (its `Local` line), else `url`.
    #[allow(dead_code)]
    pub local: String,
    pub key: String,
    #[allow(dead_code)]
    pub host: String,
}

impl Up {
    #[allow(dead_code)]
    pub fn start(env: &AgentEnv) -> Up {
        Self::start_with(env, &format!("127.0.0.1:{CP_PORT}"), &[])
    }

    /// Listening on `listen`, with `extra` flags for `wrenn up` (e.g. `--domain`).
    pub fn start_with(env: &AgentEnv, listen: &str, extra: &[&str]) -> Up {
        let mut cmd = Command::new(crate::agent::wrenn_bin());
        cmd.arg("up")
            .arg("--data-dir")
            .arg(env.root.path())
            .args(["--listen", listen])
            .args(extra)
            .args(["--agent-listen", &format!("127.0.0.1:{}", env.port)])
            .arg(format!("--agent-arg=--net-prefix={}", env.prefix()))
            .arg("--agent-arg=--accel=tcg")
            .env_remove("DATABASE_URL")
            .env_remove("WRENN_DOMAIN")
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
        let (mut url, mut key, mut host, mut local) = (None, None, None, None);
        // The summary ends with "Try it:".
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
                (Some("Local"), Some(u)) => local = Some(u.to_owned()),
                _ => {}
            }
        }
        if local.is_none() {
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("Local"), Some(u)) => local = Some(u.to_owned()),
                    (Some("Try"), Some("it:")) => break,
                    _ => {}
                }
            }
        }
        let url = url.expect("url");
        Up {
            child,
            local: local.unwrap_or_else(|| url.clone()),
            url,
            key: key.expect("key"),
            host: host.expect("host"),
        }
    }

    #[allow(dead_code)]
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(crate::agent::wrenn_bin())
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
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "wrenn up exited with {status}");
    }
}

/// A second team's API key (signup + key over `url`), for the isolation checks.
#[allow(dead_code)]
pub async fn other_team_key(url: &str) -> String {
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

/// A directory an environment variable of `scripts/test` names; fails loudly without it.
#[allow(dead_code)]
pub fn prerequisite(var: &str, what: &str) -> std::path::PathBuf {
    let dir = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: {what} comes from scripts/test"));
    let dir = std::path::PathBuf::from(dir);
    assert!(dir.exists(), "{} ({var}) is missing", dir.display());
    dir
}
