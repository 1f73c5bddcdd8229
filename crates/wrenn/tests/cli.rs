//! The `wrenn` client commands, run as the real binary against the real control plane
//! (`wrenn_cp` served in-process on 127.0.0.1:0 over a temp SQLite data dir). Each test has
//! its own control plane and its own config file (`WRENN_CONFIG`).
//!
//! The sandbox commands need hosts with VMs: [`sandbox_flow`] takes the URL and API key of
//! a running stack and is enabled by the `WRENN_TEST_URL` / `WRENN_TEST_API_KEY` test below.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use wrenn_cp::server::{RunningServer, ServerConfig};

const PASSWORD: &str = "correct horse battery";

/// A control plane on a free loopback port; stopped and its data dir removed on drop.
struct Cp {
    url: String,
    server: Option<RunningServer>,
    _data: TempDir,
}

impl Cp {
    async fn start() -> Cp {
        let data = tempfile::tempdir().unwrap();
        let server = wrenn_cp::server::start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            database_url: None,
        })
        .await
        .unwrap();
        Cp {
            url: server.url(),
            server: Some(server),
            _data: data,
        }
    }

    async fn signup(&self, email: &str) -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/auth/signup", self.url))
            .json(&json!({"email": email, "password": PASSWORD, "name": "Ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        // Stops accepting; the runtime's end drops the rest.
        if let Some(s) = self.server.take() {
            drop(tokio::spawn(s.stop()));
        }
    }
}

/// The CLI's world: a config path (not yet created) and a working directory, so no `.env`
/// or saved login of the machine leaks in.
struct Home {
    dir: TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
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
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("wrenn/config.json")
    }

    fn saved(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config()).unwrap()).unwrap()
    }

    /// Runs `wrenn ARGS` with `stdin` (closed when `None`); 60 s at most.
    async fn wrenn(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
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

    async fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let out = self.wrenn(args, stdin).await;
        assert_eq!(out.code, 0, "wrenn {args:?}: {out:?}");
        out
    }

    async fn login(&self, url: &str, email: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_manage_keys() {
    let cp = Cp::start().await;
    cp.signup("ada@example.com").await;
    let home = Home::new();
    home.login(&cp.url, "ada@example.com").await;

    // The session is saved 0600 with the URL; nothing else is in the config dir.
    let mode = std::fs::metadata(home.config())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let saved = home.saved();
    assert_eq!(saved["url"], cp.url.as_str());
    assert!(saved["token"].is_string() && saved.get("api_key").is_none());

    let created = home.ok(&["keys", "create", "ci"], None).await;
    let key = created.stdout.trim().to_owned();
    assert!(key.starts_with("wrn_") && key.len() == 36, "{created:?}");
    assert!(created.stderr.contains("not shown again"), "{created:?}");

    let ls = home.ok(&["keys", "ls"], None).await;
    assert!(ls.stdout.starts_with("ID"), "{ls:?}");
    assert!(ls.stdout.contains(" ci "), "{ls:?}");
    let list: Value =
        serde_json::from_str(&home.ok(&["keys", "ls", "--json"], None).await.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert!(key.starts_with(list[0]["prefix"].as_str().unwrap()));
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert!(ls.stdout.contains(&id), "{ls:?}");

    // A key login replaces the session; keys cannot manage keys, so `keys` asks for a login
    // before sending anything.
    let other = Home::new();
    let out = other
        .ok(&["login", "--url", &cp.url, "--api-key", &key], None)
        .await;
    assert!(out.stdout.contains("API key"), "{out:?}");
    assert_eq!(other.saved()["api_key"], key.as_str());
    assert!(other.saved().get("token").is_none());
    let out = other.wrenn(&["keys", "ls"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("needs a user login"), "{out:?}");

    home.ok(&["keys", "rm", &id], None).await;
    let list: Value =
        serde_json::from_str(&home.ok(&["keys", "ls", "--json"], None).await.stdout).unwrap();
    assert_eq!(list, json!([]));
    // Revoked: a key login with it is refused with the API's message, config untouched.
    let third = Home::new();
    let out = third
        .wrenn(&["login", "--url", &cp.url, "--api-key", &key], None)
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{out:?}");
    assert!(out.stderr.contains("(unauthorized)"), "{out:?}");
    assert!(!third.config().exists());
    // Removing it again: the API's 404 envelope.
    let out = home.wrenn(&["keys", "rm", &id], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: api key not found (not_found)"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_the_apis_error() {
    let cp = Cp::start().await;
    cp.signup("bob@example.com").await;
    let home = Home::new();
    let out = home
        .wrenn(
            &[
                "login",
                "--url",
                &cp.url,
                "--email",
                "bob@example.com",
                "--password-stdin",
            ],
            Some(b"wrong password\n"),
        )
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.lines().next(),
        Some("error: invalid email or password (unauthorized)"),
        "{out:?}"
    );
    assert!(!home.config().exists(), "nothing saved");
    // No password on stdin at all.
    let out = home
        .wrenn(
            &[
                "login",
                "--url",
                &cp.url,
                "--email",
                "bob@example.com",
                "--password-stdin",
            ],
            Some(b""),
        )
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no password on stdin"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_url_names_it() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let home = Home::new();
    let out = home
        .wrenn(
            &[
                "login",
                "--url",
                &url,
                "--email",
                "a@example.com",
                "--password-stdin",
            ],
            Some(b"pw\n"),
        )
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach the control plane at {url}")),
        "{out:?}"
    );
    assert!(out.stderr.contains("hint:"), "{out:?}");
    // Same for API-key commands and the WebSocket ones.
    for args in [
        &["ls", "--url", &url, "--api-key", "wrn_x"][..],
        &[
            "exec",
            "--url",
            &url,
            "--api-key",
            "wrn_x",
            "abc",
            "--",
            "true",
        ],
    ] {
        let out = home.wrenn(args, None).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(&url), "{args:?}: {out:?}");
        assert!(out.stderr.contains("hint:"), "{args:?}: {out:?}");
    }
    // Not logged in at all: says so instead of trying.
    let out = home.wrenn(&["ls"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not logged in"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs /v1/templates (sandboxes helper)"]
async fn templates_lists_base() {
    let cp = Cp::start().await;
    cp.signup("tess@example.com").await;
    let home = Home::new();
    home.login(&cp.url, "tess@example.com").await;
    let out = home.ok(&["templates"], None).await;
    assert!(out.stdout.starts_with("NAME"), "{out:?}");
    let v: Value =
        serde_json::from_str(&home.ok(&["templates", "--json"], None).await.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "base" && t["platform"] == true),
        "{v}"
    );
}

/// Against a running stack with a host: `WRENN_TEST_URL`, `WRENN_TEST_API_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs sandboxes API"]
async fn sandbox_commands_against_a_stack() {
    let url = std::env::var("WRENN_TEST_URL").expect("WRENN_TEST_URL");
    let key = std::env::var("WRENN_TEST_API_KEY").expect("WRENN_TEST_API_KEY");
    sandbox_flow(&url, &key).await;
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

    home.ok(&["rm", &id], None).await;
    let out = home.wrenn(&["sandbox", "get", &id, "--json"], None).await;
    if out.code == 0 {
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_ne!(v["status"], "running", "{v}");
    }
}
