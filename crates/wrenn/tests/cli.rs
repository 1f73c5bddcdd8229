//! The `wrenn` client commands, run as the real binary against the real control plane
//! (`wrenn_cp` served in-process on 127.0.0.1:0 over a temp SQLite data dir). Each test has
//! its own control plane and its own config file (`WRENN_CONFIG`).
//!
//! The sandbox commands need hosts with VMs: `up.rs` runs `cli_support::sandbox_flow` against
//! `wrenn up`.

#[path = "cli_support/mod.rs"]
mod cli_support;

use std::os::unix::fs::PermissionsExt;

use cli_support::{Home, PASSWORD};
use serde_json::{Value, json};
use tempfile::TempDir;
use wrenn_cp::server::{RunningServer, ServerConfig};

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
            ..Default::default()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_token_ls_and_rm() {
    let cp = Cp::start().await;
    let admin = cp.signup("ops@example.com").await; // platform admin
    let home = Home::new();
    home.login(&cp.url, "ops@example.com").await;

    let out = home
        .ok(&["hosts", "token", "rack-1", "--platform"], None)
        .await;
    let token = out.stdout.trim().to_owned();
    assert_eq!(token.len(), 64, "{out:?}");
    let cmd = format!("wrenn agent --cp-url {} --register {token}", cp.url);
    assert!(out.stderr.contains(&cmd), "{out:?}");
    let ls = home.ok(&["hosts", "ls"], None).await;
    assert!(ls.stdout.starts_with("ID"), "{ls:?}");
    assert!(
        ls.stdout.contains("rack-1")
            && ls.stdout.contains("pending")
            && ls.stdout.contains("platform"),
        "{ls:?}"
    );
    let list: Value =
        serde_json::from_str(&home.ok(&["hosts", "ls", "--json"], None).await.stdout).unwrap();
    let host = list[0]["id"].as_str().unwrap().to_owned();

    // A sandbox on it: rm is refused and names it; --force goes through.
    let db = &cp.server.as_ref().unwrap().state.db;
    let team = admin["team"]["id"].as_str().unwrap();
    let sb = db
        .insert_pending_sandbox(wrenn_cp::db::testing::new_sandbox(team, Some(&host)))
        .await
        .unwrap();
    let out = home.wrenn(&["hosts", "rm", &host], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("(conflict)") && out.stderr.contains(&sb.id),
        "{out:?}"
    );
    let out = home.ok(&["hosts", "rm", &host, "--force"], None).await;
    assert!(out.stderr.contains("Deleted host"), "{out:?}");
    let list: Value =
        serde_json::from_str(&home.ok(&["hosts", "ls", "--json"], None).await.stdout).unwrap();
    assert_eq!(list, json!([]));
    let out = home.wrenn(&["hosts", "rm", &host], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("(not_found)"), "{out:?}");
}
