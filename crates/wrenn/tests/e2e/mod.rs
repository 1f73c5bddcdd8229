//! Harness for end-to-end tests: the real `wrenn server` and the real `wrenn agent`, both
//! inside a network namespace standing in for one host (set up by `tests/agent`), driven over
//! HTTP like a user would.
//!
//! [`System::new`] creates the namespaces, a data dir (SQLite) or a fresh PostgreSQL database,
//! starts the server, signs up the first user (platform admin), makes an API key and a
//! platform host registration token, registers the agent's host and starts the agent. Drop
//! stops both processes, kills the VMs, removes the namespaces, the data dir and the database,
//! also when the test panicked.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::db::Db;
use wrenn_cp::db::testing::TestDatabase;

use crate::agent::AgentEnv;

pub const SERVER_PORT: u16 = 8080;
pub const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs the body on SQLite and on PostgreSQL: `mod name { fn sqlite(); fn postgres(); }`.
/// PostgreSQL needs `WRENN_TEST_PG_URL` and `WRENN_PG_DIR` (`start_test_postgres`); without
/// them that half fails, it never skips.
#[macro_export]
macro_rules! e2e_test {
    ($(#[$meta:meta])* fn $name:ident($sys:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($sys: &$crate::harness::System) $body

            $(#[$meta])*
            #[test]
            fn sqlite() {
                let s = $crate::harness::System::new($crate::harness::Backend::Sqlite);
                body(&s);
            }

            $(#[$meta])*
            #[test]
            fn postgres() {
                let s = $crate::harness::System::new($crate::harness::Backend::Postgres);
                body(&s);
            }
        }
    };
}

/// A PostgreSQL URL reachable from inside the test's network namespace: the throwaway
/// cluster's Unix socket (its TCP port is on the root namespace's loopback).
pub fn pg_admin_url() -> String {
    let url = std::env::var(wrenn_cp::db::testing::PG_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "WRENN_TEST_PG_URL is not set: the PostgreSQL half of the E2E tests needs a cluster \
             (`source scripts/lib.sh; start_test_postgres`, or run scripts/test)"
        )
    });
    let dir = std::env::var("WRENN_PG_DIR").unwrap_or_else(|_| {
        panic!(
            "WRENN_PG_DIR is not set: E2E tests reach PostgreSQL through the Unix socket of \
             the cluster start_test_postgres made"
        )
    });
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in WRENN_TEST_PG_URL={url}"));
    format!("postgres://postgres@localhost:{port}/postgres?host={dir}")
}

pub struct System {
    /// Namespaces, files root and the agent process.
    pub env: AgentEnv,
    rt: tokio::runtime::Runtime,
    server: Mutex<Option<Child>>,
    data_dir: tempfile::TempDir,
    pg: Option<TestDatabase>,
    database_url: Option<String>,
    pub http: reqwest::Client,
    user_jwt: String,
    api_key: String,
    pub team_id: String,
    pub host_id: String,
}

impl System {
    /// Call from a plain `#[test]` (this thread enters the host namespace).
    pub fn new(backend: Backend) -> System {
        Self::with_agent_env(backend, &[])
    }

    /// With extra `AGENT_*` environment for the agent (e.g. a short heartbeat).
    pub fn with_agent_env(backend: Backend, agent_env: &[(&str, &str)]) -> System {
        let env = AgentEnv::without_agent(agent_env);
        let rt = crate::agent::rt();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(rt.block_on(TestDatabase::create_postgres(&pg_admin_url()))),
        };
        let database_url = pg.as_ref().and_then(|p| p.config.database_url.clone());
        let data_dir = tempfile::tempdir_in("/var/tmp").expect("data dir");
        let mut sys = System {
            env,
            rt,
            server: Mutex::new(None),
            data_dir,
            pg,
            database_url,
            http: reqwest::Client::new(),
            user_jwt: String::new(),
            api_key: String::new(),
            team_id: String::new(),
            host_id: String::new(),
        };
        sys.start_server();
        let (jwt, key, team) = sys.rt.block_on(sys.signup("admin@example.com"));
        sys.user_jwt = jwt;
        sys.api_key = key;
        sys.team_id = team;
        sys.start_agent();
        sys
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{SERVER_PORT}")
    }

    /// The first user's team's API key.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The first user's JWT (a platform admin).
    pub fn user_jwt(&self) -> &str {
        &self.user_jwt
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Registers the agent's host with the control plane and starts the agent with the
    /// credentials it got. (One place, so registration through `wrenn agent --register` can
    /// replace it.)
    fn start_agent(&mut self) {
        let (s, tok) = self.rt.block_on(self.call(
            Method::POST,
            "/v1/hosts/registration-tokens",
            Some(&self.user_jwt),
            Some(json!({"platform": true, "name": "e2e"})),
        ));
        assert_eq!(s, StatusCode::CREATED, "{tok}");
        // The agent registers itself with the one-time token, as `wrenn up` and remote hosts do.
        self.host_id = tok["host"]["id"].as_str().expect("host id").to_owned();
        self.env.host_id = self.host_id.clone();
        self.env.cp_url = Some(format!("http://127.0.0.1:{SERVER_PORT}"));
        self.env.register_token = Some(
            tok["registration_token"]
                .as_str()
                .expect("registration token")
                .to_owned(),
        );
        self.env.start_agent();
    }

    pub fn start_server(&self) {
        let mut cmd = Command::new(crate::agent::wrenn_exe());
        cmd.args(["server", "--listen", &format!("127.0.0.1:{SERVER_PORT}")])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .env_remove("DATABASE_URL")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        if let Some(url) = &self.database_url {
            cmd.env("DATABASE_URL", url);
        }
        // SAFETY: prctl only; the server stops when the test process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn wrenn server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", SERVER_PORT)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("wrenn server exited early: {status}");
            }
            assert!(Instant::now() < deadline, "wrenn server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        *self.server.lock().unwrap() = Some(child);
    }

    pub fn stop_server(&self) {
        if let Some(mut c) = self.server.lock().unwrap().take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        panic!("wrenn server did not stop within 30 s of SIGTERM");
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// SIGTERM, wait, start again on the same data dir / database.
    pub fn restart_server(&self) {
        self.stop_server();
        self.start_server();
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn server_rss_kib(&self) -> u64 {
        rss_kib(self.server_pid().expect("server running"))
    }

    pub fn agent_rss_kib(&self) -> u64 {
        rss_kib(self.env.agent_pid().expect("agent running"))
    }

    /// Signs up a new user (their own team); returns (JWT, API key, team ID).
    pub async fn signup(&self, email: &str) -> (String, String, String) {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({"email": email, "password": PASSWORD, "name": "E2E"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let jwt = v["token"].as_str().expect("token").to_owned();
        let team = v["team"]["id"].as_str().expect("team id").to_owned();
        let (s, k) = self
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(&jwt),
                Some(json!({"name": "e2e"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        (jwt, k["key"].as_str().expect("key").to_owned(), team)
    }

    /// One request; `auth` is an API key (`wrn_…`, sent as `X-API-Key`) or a JWT. Error
    /// answers must carry the envelope.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.raw(method, path, auth, body, Some("application/json"))
            .await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url()));
        match auth {
            Some(k) if k.starts_with("wrn_") => req = req.header("x-api-key", k),
            Some(t) => req = req.bearer_auth(t),
            None => {}
        }
        if let Some(b) = body {
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req = req.body(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status} {path}: not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        if !status.is_success() {
            assert!(v["error"]["code"].is_string(), "{status}: no envelope: {v}");
        }
        (status, v)
    }

    /// `POST /v1/sandboxes` with the admin's key; panics unless 201.
    pub async fn create_sandbox(&self, body: Value) -> Value {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/sandboxes",
                Some(self.api_key()),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// A connection to the same database as the server (for row counts).
    pub async fn db(&self) -> Db {
        let cfg = wrenn_cp::db::DbConfig::new(
            self.data_dir.path(),
            self.database_url.clone(),
            &[0u8; 32],
        );
        Db::connect(cfg)
            .await
            .expect("connect to the server's database")
    }

    /// Row counts of every table, by name.
    pub async fn counts(&self) -> Vec<(String, i64)> {
        let db = self.db().await;
        let mut out = Vec::new();
        for t in TABLES {
            let n: i64 = sqlx_count(&db, t).await;
            out.push((t.to_string(), n));
        }
        db.close().await;
        out
    }
}

/// Every table of the schema.
pub const TABLES: [&str; 12] = [
    "users",
    "teams",
    "memberships",
    "api_keys",
    "hosts",
    "host_registration_tokens",
    "host_refresh_tokens",
    "templates",
    "template_hosts",
    "sandboxes",
    "sandbox_metadata",
    "audit_log",
];

async fn sqlx_count(db: &Db, table: &str) -> i64 {
    wrenn_cp::db::testing::count_rows(db, table).await
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

impl Drop for System {
    fn drop(&mut self) {
        // The server first (it would call the agent), then the agent and its VMs (AgentEnv's
        // drop kills any QEMU of this test's root and removes the namespaces).
        if let Some(mut c) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pg) = self.pg.take() {
            self.rt.block_on(pg.cleanup());
        }
    }
}

pub fn data_dir_path(sys: &System) -> PathBuf {
    sys.data_dir.path().to_path_buf()
}
