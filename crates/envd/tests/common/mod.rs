//! Test harness: runs the real `envd` binary as PID 1 of private PID and mount namespaces
//! (`scripts/envd-sandbox`), so commands run through it never write outside the sandbox's
//! private `/tmp` and `/home`, and everything it started dies with it.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_proto::filesystem::FilesystemClient;
use wrenn_proto::process::ProcessClient;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running envd in its own namespaces. Dropping it kills the sandbox.
pub struct Envd {
    child: Child,
    pub port: u16,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Envd {
    pub async fn start() -> Envd {
        Self::start_with(&[]).await
    }

    /// Starts envd with extra flags and waits until `/health` answers.
    pub async fn start_with(extra: &[&str]) -> Envd {
        Self::start_on(free_port(), extra).await
    }

    pub async fn start_on(port: u16, extra: &[&str]) -> Envd {
        let script = repo_root().join("scripts/envd-sandbox");
        let mut cmd = Command::new(script);
        cmd.arg(env!("CARGO_BIN_EXE_envd"))
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ENVD_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        // SAFETY: prctl is async-signal-safe; the sandbox dies with the test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("spawn scripts/envd-sandbox (needs root, unshare)");
        let envd = Envd { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(envd.url("/health")).send().await {
                assert_eq!(r.status(), 204, "/health answered {}", r.status());
                break;
            }
            assert!(Instant::now() < deadline, "envd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        envd
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    fn config(&self, user: Option<&str>, token: Option<&str>) -> ClientConfig {
        let mut cfg = ClientConfig::new(self.base().parse().expect("uri")).json();
        if let Some(u) = user {
            cfg = cfg.with_default_header("authorization", basic(u));
        }
        if let Some(t) = token {
            cfg = cfg.with_default_header("x-access-token", t.to_string());
        }
        cfg
    }

    /// Process client acting as the default user.
    pub fn process(&self) -> ProcessClient<HttpClient> {
        self.process_as(None, None)
    }

    pub fn process_as(&self, user: Option<&str>, token: Option<&str>) -> ProcessClient<HttpClient> {
        ProcessClient::new(HttpClient::plaintext(), self.config(user, token))
    }

    pub fn fs(&self) -> FilesystemClient<HttpClient> {
        self.fs_as(None, None)
    }

    pub fn fs_as(&self, user: Option<&str>, token: Option<&str>) -> FilesystemClient<HttpClient> {
        FilesystemClient::new(HttpClient::plaintext(), self.config(user, token))
    }

    /// The envd process's pid on the host (for RSS measurements): the namespace's PID 1.
    pub fn host_pid(&self) -> u32 {
        // envd-sandbox -> unshare -> envd
        let children = |pid: u32| -> Vec<u32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        };
        let unshare = children(self.child.id());
        let unshare = *unshare.first().expect("unshare process");
        *children(unshare).first().expect("envd process")
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `Authorization` header value selecting `user`.
pub fn basic(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}
