//! Fault injection on the real stack (`wrenn server` + `wrenn agent` + QEMU under TCG, see
//! `e2e/mod.rs`): the agent SIGKILLed inside a create and inside a destroy, the control plane
//! SIGKILLed while clients create, read and exec, PostgreSQL restarted under the same load.
//! Each ends with every row settled (none stuck `pending`), no QEMU, network namespace or
//! sandbox directory left for a sandbox that is not running, and the survivors usable. A
//! host's link cut past the staleness window is `fleet.rs`.
//!
//! Each test prints its figures (faults injected, requests made, errors by phase and status)
//! on stderr, for the closing note (`--no-capture`).
mod agent;
#[path = "e2e/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use harness::System;

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id in {v}"))
        .to_owned()
}

/// Entries of a directory under the agent's files root (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sandbox_dirs(sys: &System) -> Vec<String> {
    entries(&sys.env.root.path().join("sandboxes"))
}

/// Warm bases still being built (a crash cut short).
fn warm_building(sys: &System) -> Vec<String> {
    entries(&sys.env.root.path().join("cache/warm"))
        .into_iter()
        .filter(|n| n.ends_with(".building"))
        .collect()
}

/// QEMU processes of one sandbox (its run dir is on the command line).
fn qemu_of(sys: &System, id: &str) -> Vec<i32> {
    agent::qemu_pids_of(&sys.env.root.path().join("sandboxes").join(id))
}

/// Sandbox rows by status.
async fn rows_by_status(sys: &System) -> BTreeMap<String, i64> {
    let db = sys.db().await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM sandboxes GROUP BY status")
            .fetch_all(db.pool())
            .await
            .expect("count rows by status");
    db.close().await;
    rows.into_iter().collect()
}

async fn until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Nothing is left for sandboxes that do not run: as many QEMUs and sandbox namespaces as
/// `live` running sandboxes, sandbox directories of exactly those, no half-built warm base.
async fn settles_clean(sys: &System, live: &[String]) {
    let want: Vec<String> = {
        let mut w = live.to_vec();
        w.sort();
        w
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    while !(sys.env.qemu_pids().len() == live.len()
        && sys.env.sandbox_netns().len() == live.len()
        && sandbox_dirs(sys) == want
        && warm_building(sys).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "left behind with {want:?} running: qemu {:?} netns {:?} dirs {:?} warm {:?}",
            sys.env.qemu_pids(),
            sys.env.sandbox_netns(),
            sandbox_dirs(sys),
            warm_building(sys)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for id in live {
        assert_eq!(qemu_of(sys, id).len(), 1, "{id} has its VM");
    }
}

/// Every row settled: none `pending` (a create whose task died must not stay there).
async fn rows_settle(sys: &System) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let rows = rows_by_status(sys).await;
        if !rows.contains_key("pending") {
            return rows;
        }
        assert!(Instant::now() < deadline, "rows left pending: {rows:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The public API with the admin's key, on a client of the calling runtime (the harness's
/// own client keeps its connections on the harness's runtime, which the agent test does not
/// drive).
struct Api {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Api {
    fn new(sys: &System) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: sys.url(),
            key: sys.api_key().to_owned(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/sandboxes",
                Some(json!({"memory_mb": 256})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        id_of(&v)
    }
}

async fn exec_echo(api: &Api, id: &str, word: &str) {
    let (s, v) = api
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": "echo", "args": [word], "timeout_sec": 60})),
        )
        .await;
    assert_eq!(
        (s, v["stdout"].as_str()),
        (StatusCode::OK, Some(format!("{word}\n").as_str())),
        "{v}"
    );
}

/// A request on a connection of its own, from a task (the test may be killing things
/// meanwhile): status and body, or the transport error.
fn spawn_call(
    sys: &System,
    method: Method,
    path: String,
    body: Option<Value>,
) -> tokio::task::JoinHandle<Result<(StatusCode, Value), String>> {
    let url = format!("{}{path}", sys.url());
    let key = sys.api_key().to_owned();
    tokio::spawn(async move {
        let mut req = reqwest::Client::new()
            .request(method, url)
            .header("x-api-key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let s = r.status();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((s, v))
    })
}

/// Polls (every millisecond) until `f` holds; false when `limit` passed first.
async fn poll_fast(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// What one SIGKILL left behind before the agent came back (to show where it landed).
fn leftovers(sys: &System) -> String {
    format!(
        "qemu={} netns={} sandbox_dirs={} warm_building={}",
        sys.env.qemu_pids().len(),
        sys.env.sandbox_netns().len(),
        sandbox_dirs(sys).len(),
        warm_building(sys).len()
    )
}

/// The agent SIGKILLed inside creates (during the first create's warm-base boot, and during a
/// clone's restore) and inside destroys (as the DELETE reaches it, and after its VM is gone
/// but before its network and files are), then restarted. The API settles every row, the
/// host keeps nothing of the sandboxes that did not survive, and the one that did still
/// runs commands.
#[test]
fn agent_killed_inside_creates_and_destroys() {
    let started = Instant::now();
    let mut sys = System::new(harness::Backend::Sqlite);
    let rt = agent::rt();
    let host_before = sys.env.host_state();
    let mut kills = Vec::new();
    rt.block_on(async {
        let api = Api::new(&sys);

        // 1. The first create builds the warm base: kill while its VM boots.
        let create = spawn_call(
            &sys,
            Method::POST,
            "/v1/sandboxes".into(),
            Some(json!({"memory_mb": 256})),
        );
        assert!(
            poll_fast(Duration::from_secs(120), || !sys.env.qemu_pids().is_empty()).await,
            "no VM booted"
        );
        sys.env.kill_agent();
        kills.push(format!("create (warm-base boot): {}", leftovers(&sys)));
        eprintln!("FAULTS {}", kills[kills.len() - 1]);
        let r = create.await.expect("task");
        let (s, v) = r.expect("the control plane answers");
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        sys.env.start_agent();
        settles_clean(&sys, &[]).await;

        // 2. A clone create (the base exists now): kill once its VM is up, before /init.
        let warm = spawn_call(
            &sys,
            Method::POST,
            "/v1/sandboxes".into(),
            Some(json!({"memory_mb": 256})),
        );
        let (s, v) = warm.await.expect("task").expect("answer");
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/v1/sandboxes/{}", id_of(&v)),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let create = spawn_call(
            &sys,
            Method::POST,
            "/v1/sandboxes".into(),
            Some(json!({"memory_mb": 256})),
        );
        assert!(
            poll_fast(Duration::from_secs(120), || !sys.env.qemu_pids().is_empty()).await,
            "no VM"
        );
        sys.env.kill_agent();
        kills.push(format!("create (clone restore): {}", leftovers(&sys)));
        eprintln!("FAULTS {}", kills[kills.len() - 1]);
        let (s, v) = create.await.expect("task").expect("answer");
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        sys.env.start_agent();
        settles_clean(&sys, &[]).await;

        // The survivor, and two victims for the destroys.
        let survivor = api.create().await;
        let v1 = api.create().await;
        let v2 = api.create().await;

        // 3. Destroy, killed as the DELETE reaches the agent.
        let del = spawn_call(&sys, Method::DELETE, format!("/v1/sandboxes/{v1}"), None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        sys.env.kill_agent();
        kills.push(format!("destroy (as it arrived): {}", leftovers(&sys)));
        eprintln!("FAULTS {}", kills[kills.len() - 1]);
        let first = del.await.expect("task").expect("answer").0;
        // 4. Destroy, killed once its VM is gone (network and files not yet).
        sys.env.start_agent();
        let del = spawn_call(&sys, Method::DELETE, format!("/v1/sandboxes/{v2}"), None);
        let landed = poll_fast(Duration::from_secs(30), || qemu_of(&sys, &v2).is_empty()).await;
        sys.env.kill_agent();
        assert!(landed, "v2's VM never went");
        kills.push(format!("destroy (after its VM): {}", leftovers(&sys)));
        eprintln!("FAULTS {}", kills[kills.len() - 1]);
        let second = del.await.expect("task").expect("answer").0;
        sys.env.start_agent();
        // A DELETE the agent could not answer is a 502 that changed nothing; the client's
        // retry finishes it.
        for (id, s) in [(&v1, first), (&v2, second)] {
            assert!(
                s == StatusCode::NO_CONTENT || s == StatusCode::BAD_GATEWAY,
                "{id}: {s}"
            );
            let (s, v) = api
                .call(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
                .await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        }
        settles_clean(&sys, std::slice::from_ref(&survivor)).await;
        let rows = rows_settle(&sys).await;
        let (_, got) = api
            .call(Method::GET, &format!("/v1/sandboxes/{survivor}"), None)
            .await;
        assert_eq!(got["status"], "running", "{got}");
        exec_echo(&api, &survivor, "survived").await;

        let (s, _) = api
            .call(Method::DELETE, &format!("/v1/sandboxes/{survivor}"), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        settles_clean(&sys, &[]).await;
        eprintln!("FAULTS agent SIGKILL: {} kills", kills.len());
        for k in &kills {
            eprintln!("FAULTS   {k}");
        }
        eprintln!("FAULTS   rows after: {rows:?}; survivor ran `echo` after 4 agent kills");
    });
    assert_eq!(sys.env.host_state(), host_before, "the host is as before");
    eprintln!(
        "FAULTS agent SIGKILL test: {} s",
        started.elapsed().as_secs()
    );
}

/// Outcomes of the load clients, by phase (`before`, `during`, `after` the fault) and kind.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<(u8, String), u64>,
}

const PHASES: [&str; 3] = ["before", "during", "after"];

struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    tally: Arc<Mutex<Tally>>,
    /// Per client: successes since the last phase change.
    fresh_ok: Arc<Vec<std::sync::atomic::AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `readers` clients looping over get/list/exec on `ids`, and `creators` clients that
    /// create a sandbox and delete it again.
    fn start(sys: &System, ids: &[String], readers: usize, creators: usize) -> Load {
        let n = readers + creators;
        let load = Load {
            stop: Arc::default(),
            phase: Arc::default(),
            tally: Arc::default(),
            fresh_ok: Arc::new((0..n).map(|_| Default::default()).collect()),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for c in 0..n {
            let (stop, phase, tally, fresh) = (
                load.stop.clone(),
                load.phase.clone(),
                load.tally.clone(),
                load.fresh_ok.clone(),
            );
            let (url, key, ids) = (sys.url(), sys.api_key().to_owned(), ids.to_vec());
            let creator = c >= readers;
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("client");
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let (m, path, body) = if creator {
                        (
                            Method::POST,
                            "/v1/sandboxes".to_owned(),
                            Some(json!({"memory_mb": 256})),
                        )
                    } else {
                        let id = &ids[i % ids.len()];
                        match i % 3 {
                            0 => (Method::GET, format!("/v1/sandboxes/{id}"), None),
                            1 => (Method::GET, "/v1/sandboxes".to_owned(), None),
                            _ => (
                                Method::POST,
                                format!("/v1/sandboxes/{id}/exec"),
                                Some(json!({"cmd": "true"})),
                            ),
                        }
                    };
                    let mut req = http
                        .request(m, format!("{url}{path}"))
                        .header("x-api-key", &key);
                    if let Some(b) = body {
                        req = req.json(&b);
                    }
                    let (kind, made) = match req.send().await {
                        Err(e) => (
                            if e.is_connect() {
                                "refused".to_owned()
                            } else {
                                "transport".to_owned()
                            },
                            None,
                        ),
                        Ok(r) => {
                            let s = r.status();
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            if s.is_success() {
                                (
                                    "ok".to_owned(),
                                    creator
                                        .then(|| v["id"].as_str().map(str::to_owned))
                                        .flatten(),
                                )
                            } else {
                                (
                                    format!(
                                        "{} {}",
                                        s.as_u16(),
                                        v["error"]["code"].as_str().unwrap_or("?")
                                    ),
                                    None,
                                )
                            }
                        }
                    };
                    // The phase it ended in: a request cut by the fault counts in `during`.
                    let p = phase.load(Ordering::SeqCst);
                    if kind == "ok" {
                        fresh[c].fetch_add(1, Ordering::SeqCst);
                    }
                    *tally
                        .lock()
                        .unwrap()
                        .counts
                        .entry((p, kind.clone()))
                        .or_default() += 1;
                    if let Some(id) = made {
                        let _ = http
                            .delete(format!("{url}/v1/sandboxes/{id}"))
                            .header("x-api-key", &key)
                            .send()
                            .await;
                    }
                    if kind != "ok" {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn set_phase(&self, p: u8) {
        for f in self.fresh_ok.iter() {
            f.store(0, Ordering::SeqCst);
        }
        self.phase.store(p, Ordering::SeqCst);
    }

    /// Until every client succeeded at least once since the last phase change.
    async fn all_recovered(&self, secs: u64) -> Duration {
        let t = Instant::now();
        until(secs, "every client succeeds again", || async {
            self.fresh_ok.iter().all(|f| f.load(Ordering::SeqCst) > 0)
        })
        .await;
        t.elapsed()
    }

    async fn finish(self) -> BTreeMap<(u8, String), u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("load client");
        }
        std::mem::take(&mut self.tally.lock().unwrap().counts)
    }
}

/// Prints the tally; returns the non-`ok` outcomes of `phase`.
fn report(name: &str, tally: &BTreeMap<(u8, String), u64>, phase: u8) -> Vec<String> {
    let total: u64 = tally.values().sum();
    eprintln!("FAULTS {name}: {total} requests");
    for ((p, kind), n) in tally {
        eprintln!("FAULTS   {:<6} {kind}: {n}", PHASES[*p as usize]);
    }
    tally
        .iter()
        .filter(|((p, k), _)| *p == phase && k != "ok")
        .map(|((_, k), n)| format!("{k}: {n}"))
        .collect()
}

e2e_test! {
    /// `wrenn server` SIGKILLed while six clients read and exec and one creates, with a
    /// create inside the agent at that moment; started again. The clients' requests fail
    /// while it is down (connection refused), every client succeeds again after, the create
    /// cut short settles (its row leaves `pending`, its VM goes), nothing else is left.
    fn control_plane_killed_under_load(sys) {
        let started = Instant::now();
        sys.block_on(async {
            let a = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
            let b = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
            let known = [a.clone(), b.clone()];
            let load = Load::start(sys, &known, 6, 1);
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Inside a create: its sandbox directory exists on the agent.
            let landed = poll_fast(Duration::from_secs(120), || {
                sandbox_dirs(sys).iter().any(|d| !known.contains(d))
            })
            .await;
            assert!(landed, "no create reached the agent");
            load.set_phase(1);
            sys.kill_server();
            eprintln!("FAULTS control plane SIGKILLed inside a create: {}", leftovers(sys));
            tokio::time::sleep(Duration::from_secs(2)).await;
            sys.start_server();
            load.set_phase(2);
            let back = load.all_recovered(60).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let tally = load.finish().await;
            let after = report("control plane SIGKILL", &tally, 2);
            eprintln!("FAULTS   every client succeeded again {} ms after the restart", back.as_millis());
            // The restart itself is the only outage: after it nothing fails.
            assert!(after.is_empty(), "errors after the restart: {after:?}");
            let rows = rows_settle(sys).await;
            eprintln!("FAULTS   rows after: {rows:?}");
            settles_clean(sys, &known).await;
            let api = Api::new(sys);
            for id in &known {
                exec_echo(&api, id, "still").await;
            }
        });
        eprintln!("FAULTS control plane SIGKILL test: {} s", started.elapsed().as_secs());
    }
}

/// Runs `pg_ctl <args>` on the throwaway cluster in the network namespace it was started
/// in: the test process's main thread's (this thread is in the test's host namespace).
/// Returns how long it took.
fn pg_ctl(args: &[&str]) -> Duration {
    let dir = std::env::var("WRENN_PG_DIR").expect("WRENN_PG_DIR (start_test_postgres)");
    let bin = std::env::var("WRENN_PG_BIN").expect("WRENN_PG_BIN (start_test_postgres)");
    let pid = std::process::id();
    let t = Instant::now();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/task/{pid}/ns/net"))
        .args(["runuser", "-u", "postgres", "--"])
        .arg(format!("{bin}/pg_ctl"))
        .args([
            "-D",
            &format!("{dir}/data"),
            "-l",
            &format!("{dir}/server.log"),
            "-w",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// The server's options of its last start (port, socket dir, settings), for a `pg_ctl
/// start` after a stop (`restart` reads them itself).
fn postmaster_opts() -> String {
    let dir = std::env::var("WRENN_PG_DIR").expect("WRENN_PG_DIR");
    let opts =
        std::fs::read_to_string(format!("{dir}/data/postmaster.opts")).expect("postmaster.opts");
    // The first word is the server binary.
    opts.trim()
        .split_once(' ')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default()
}

/// PostgreSQL restarted (`pg_ctl restart -m fast`), then stopped for 5 s and started again,
/// while six clients read and exec and one creates: requests may fail only while it is
/// down (which status, printed: 503 `unavailable` with `Retry-After`), every client succeeds
/// again with no action taken, and the creates of that moment settle.
#[test]
fn postgres_restarted_under_load() {
    let started = Instant::now();
    let sys = System::new(harness::Backend::Postgres);
    let sys = &sys;
    sys.block_on(async {
        let a = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
        let b = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
        let known = [a.clone(), b.clone()];
        let load = Load::start(sys, &known, 6, 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        load.set_phase(1);
        let restart = tokio::task::spawn_blocking(|| pg_ctl(&["-m", "fast", "restart"]))
            .await
            .expect("pg_ctl task");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let opts = postmaster_opts();
        tokio::task::spawn_blocking(|| pg_ctl(&["-m", "fast", "stop"]))
            .await
            .expect("pg_ctl task");
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::spawn_blocking(move || pg_ctl(&["-o", &opts, "start"]))
            .await
            .expect("pg_ctl task");
        let back = load.all_recovered(90).await;
        load.set_phase(2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let tally = load.finish().await;
        let after = report("PostgreSQL restart, then 5 s down", &tally, 2);
        eprintln!(
            "FAULTS   pg_ctl restart took {} ms; after the 5 s stop, every client succeeded again {} ms after the start",
            restart.as_millis(),
            back.as_millis()
        );
        assert!(after.is_empty(), "errors after recovery: {after:?}");
        let rows = rows_settle(sys).await;
        eprintln!("FAULTS   rows after: {rows:?}");
        settles_clean(sys, &known).await;
        let api = Api::new(sys);
        for id in &known {
            exec_echo(&api, id, "still").await;
        }
    });
    eprintln!(
        "FAULTS PostgreSQL restart test: {} s",
        started.elapsed().as_secs()
    );
}
