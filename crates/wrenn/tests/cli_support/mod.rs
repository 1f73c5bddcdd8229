//! Shared by the CLI tests (`cli.rs`, against an in-process control plane) and `up.rs`
//! (against `wrenn up`): the CLI's world and the sandbox command flow.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

pub const PASSWORD: &str = "correct horse battery";

/// The CLI's world: a config path (not yet created) and a working directory, so no `.env`
/// or saved login of the machine leaks in.
pub struct Home {
    pub dir: TempDir,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("wrenn/config.json")
    }

    pub fn saved(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config()).unwrap()).unwrap()
    }

    /// Runs `wrenn ARGS` with `stdin` (closed when `None`); 60 s at most.
    pub async fn wrenn(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wrenn"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("WRENN_CONFIG", self.config())
            .env_remove("WRENN_URL")
            .env_remove("WRENN_API_KEY")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn wrenn");
        if let Some(input) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(input).await.unwrap();
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("wrenn {args:?} did not finish in 60 s"))
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let out = self.wrenn(args, stdin).await;
        assert_eq!(out.code, 0, "wrenn {args:?}: {out:?}");
        out
    }

    pub async fn login(&self, url: &str, email: &str) {
        let pw = format!("{PASSWORD}\n");
        let out = self
            .ok(
                &["login", "--url", url, "--email", email, "--password-stdin"],
                Some(pw.as_bytes()),
            )
            .await;
        assert!(out.stdout.contains(&format!("as {email}")), "{out:?}");
    }
}

/// Removes the sandbox even when an assertion fails.
struct Cleanup<'a> {
    home: &'a Home,
    url: &'a str,
    key: &'a str,
    id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .args(["rm", "--url", self.url, "--api-key", self.key, &self.id])
            .env("WRENN_CONFIG", self.home.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn sha256(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// create → ls/get → exec (output, exit codes, env/cwd) → cp both ways (file and stdio) →
/// shell with piped input → rm.
pub async fn sandbox_flow(url: &str, key: &str) {
    let home = Home::new();
    home.ok(&["login", "--url", url, "--api-key", key], None)
        .await;
    let created = home
        .ok(
            &[
                "sandbox",
                "create",
                "--timeout",
                "600",
                "--metadata",
                "test=cli",
            ],
            None,
        )
        .await;
    let id = created.stdout.trim().to_owned();
    assert_eq!(id.len(), 20, "{created:?}");
    let _cleanup = Cleanup {
        home: &home,
        url,
        key,
        id: id.clone(),
    };

    let ls: Value = serde_json::from_str(
        &home
            .ok(&["ls", "--json", "--status", "running"], None)
            .await
            .stdout,
    )
    .unwrap();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{ls}"
    );
    let got: Value = serde_json::from_str(
        &home
            .ok(&["sandbox", "get", &id, "--json"], None)
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(got["status"], "running");
    assert_eq!(got["metadata"]["test"], "cli");

    let out = home.ok(&["exec", &id, "--", "echo", "hi"], None).await;
    assert_eq!(out.stdout, "hi\n");
    let out = home
        .wrenn(
            &["exec", &id, "--", "sh", "-c", "echo oops >&2; exit 3"],
            None,
        )
        .await;
    assert_eq!((out.code, out.stderr.as_str()), (3, "oops\n"), "{out:?}");
    let out = home
        .ok(
            &[
                "exec",
                &id,
                "--env",
                "A=1",
                "--cwd",
                "/tmp",
                "--",
                "sh",
                "-c",
                "echo $A $(pwd)",
            ],
            None,
        )
        .await;
    assert_eq!(out.stdout, "1 /tmp\n");

    // 3 MiB of random bytes up and back down.
    let local = home.dir.path().join("blob");
    let mut data = vec![0u8; 3 << 20];
    getrandom::fill(&mut data).unwrap();
    std::fs::write(&local, &data).unwrap();
    let remote = format!("{id}:/tmp/blob");
    home.ok(&["cp", local.to_str().unwrap(), &remote], None)
        .await;
    let back = home.dir.path().join("back");
    home.ok(&["cp", &remote, back.to_str().unwrap()], None)
        .await;
    assert_eq!(sha256(&local), sha256(&back));
    let out = home
        .ok(&["exec", &id, "--", "sha256sum", "/tmp/blob"], None)
        .await;
    let hex: String = sha256(&local).iter().map(|b| format!("{b:02x}")).collect();
    assert!(out.stdout.starts_with(&hex), "{out:?}");
    // stdin → sandbox → stdout.
    home.ok(&["cp", "-", &format!("{id}:/tmp/s.txt")], Some(b"hello\n"))
        .await;
    let out = home
        .ok(&["cp", &format!("{id}:/tmp/s.txt"), "-"], None)
        .await;
    assert_eq!(out.stdout, "hello\n");

    let out = home
        .wrenn(&["shell", &id], Some(b"echo hi; exit 5\n"))
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout.contains("hi"), "{out:?}");

    // Pause and resume: the file written before is still there after.
    let out = home.ok(&["sandbox", "pause", &id], None).await;
    assert!(out.stderr.contains("is paused"), "{out:?}");
    let out = home.wrenn(&["sandbox", "pause", &id], None).await;
    assert_ne!(out.code, 0, "pausing a paused sandbox: {out:?}");
    assert!(out.stderr.contains("invalid_state"), "{out:?}");
    let out = home.wrenn(&["exec", &id, "--", "true"], None).await;
    assert_ne!(out.code, 0, "exec while paused: {out:?}");
    let out = home.ok(&["sandbox", "resume", &id], None).await;
    assert!(out.stderr.contains("is running"), "{out:?}");
    let out = home
        .ok(&["cp", &format!("{id}:/tmp/s.txt"), "-"], None)
        .await;
    assert_eq!(out.stdout, "hello\n");

    // A snapshot template of it: listed, started from (with the file), refused while used.
    let out = home
        .ok(&["snapshot", "create", &id, "cli-snap"], None)
        .await;
    assert_eq!(out.stdout.trim(), "cli-snap", "{out:?}");
    let out = home.ok(&["snapshot", "ls"], None).await;
    assert!(out.stdout.contains("cli-snap"), "{out:?}");
    let out = home
        .ok(&["sandbox", "create", "--template", "cli-snap"], None)
        .await;
    let clone = out.stdout.trim().to_owned();
    let out = home
        .ok(&["cp", &format!("{clone}:/tmp/s.txt"), "-"], None)
        .await;
    assert_eq!(out.stdout, "hello\n");
    let out = home.wrenn(&["snapshot", "rm", "cli-snap"], None).await;
    assert_ne!(out.code, 0, "deleting a used snapshot: {out:?}");
    assert!(
        out.stderr.contains("conflict") && out.stderr.contains(&clone),
        "names the sandbox using it: {out:?}"
    );
    home.ok(&["snapshot", "rm", "--force", "cli-snap"], None)
        .await;
    let out = home.ok(&["snapshot", "ls"], None).await;
    assert!(!out.stdout.contains("cli-snap"), "{out:?}");
    home.ok(&["exec", &clone, "--", "true"], None).await;
    home.ok(&["rm", &clone], None).await;

    home.ok(&["rm", &id], None).await;
    let out = home.wrenn(&["sandbox", "get", &id, "--json"], None).await;
    if out.code == 0 {
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_ne!(v["status"], "running", "{v}");
    }
}
