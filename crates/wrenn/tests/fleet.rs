//! The fleet end to end: two control-plane replicas (`wrenn server`) sharing one PostgreSQL
//! database and three agents (`wrenn agent`), each agent in its own network namespace standing
//! in for a separate machine, registered by token and linked to the replicas' namespace by its
//! own veth pair — a link the test can cut. Real QEMU VMs under TCG.
//!
//! ```text
//!            fabric netns: replica A :18090, replica B :18091, the test's HTTP client
//!           /  10.88.1.1        |  10.88.2.1         \  10.88.3.1
//!   host 1 (platform)    host 2 (platform)      host 3 (team B's BYOC host)
//!   agent → replica A    agent → replica B      agent → replica A
//! ```
//!
//! Drop stops every process it started (by PID), kills the VMs of the three files roots,
//! removes every namespace and temp dir and the database, also when the test panicked.
mod agent;
#[path = "e2e/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::db::testing::TestDatabase;

use agent::ip;

/// The replicas' HTTPS ports (agents), and their plain loopback ports (the test's client).
const PORTS: [u16; 2] = [18090, 18091];
const PLAIN_PORTS: [u16; 2] = [18092, 18093];
/// The replicas' staleness window (`--host-stale-secs`).
const STALE_SECS: u64 = 4;
const PASSWORD: &str = "correct horse battery";

struct Host {
    ns: String,
    /// The fabric side of its link.
    link: String,
    ip: String,
    root: tempfile::TempDir,
    prefix: String,
    agent: Option<Child>,
    id: String,
}

impl Host {
    fn gateway(&self) -> String {
        self.ip.replace(".2", ".1")
    }

    /// QEMU processes of this host's files root.
    fn qemu_pids(&self) -> Vec<i32> {
        agent::qemu_pids_of(self.root.path())
    }
}

struct Fleet {
    /// The replicas' HTTPS certificate (one for both, as a deployment shares it) and its
    /// fingerprint, which agents and the test's client pin.
    cp_cert: tempfile::TempDir,
    cp_fingerprint: String,
    tag: String,
    fabric: String,
    hosts: Vec<Host>,
    replicas: Vec<Child>,
    data_dirs: Vec<tempfile::TempDir>,
    pg: Option<TestDatabase>,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

/// Spawns `cmd` with the parent-death signal set (and, with `netns`, inside that namespace).
fn spawn_in(mut cmd: Command, netns: Option<&str>) -> Child {
    let ns = netns.map(|n| std::fs::File::open(format!("/run/netns/{n}")).expect("open netns"));
    let fd = ns.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: prctl and setns only, on an fd that stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            if let Some(fd) = fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn wait_tcp(addr: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) -> Option<ExitStatus> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Fleet {
    /// Namespaces, links, PostgreSQL database and both replicas (no agents yet). The calling
    /// thread enters the fabric namespace.
    fn new() -> Fleet {
        let images = agent::image_root();
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).expect("random");
        let tag = format!("{:02x}{:02x}", b[0], b[1]);
        let fabric = format!("wf{tag}c");
        ip(&["netns", "add", &fabric]);
        ip(&["-n", &fabric, "link", "set", "lo", "up"]);
        let mut hosts = Vec::new();
        for i in 1..=3 {
            let ns = format!("wf{tag}h{i}");
            let (link, peer) = (format!("wf{tag}a{i}"), format!("wf{tag}b{i}"));
            let (gw, host_ip) = (format!("10.88.{i}.1"), format!("10.88.{i}.2"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &fabric, "link", "add", &link, "type", "veth", "peer", "name", &peer,
                "netns", &ns,
            ]);
            ip(&[
                "-n",
                &fabric,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                &link,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &peer,
            ]);
            ip(&["-n", &fabric, "link", "set", &link, "up"]);
            ip(&["-n", &ns, "link", "set", &peer, "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &gw]);
            agent::run(Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]));
            let root = tempfile::tempdir_in("/var/tmp").expect("files root");
            for d in ["kernels", "images"] {
                std::os::unix::fs::symlink(images.join(d), root.path().join(d)).expect("symlink");
            }
            hosts.push(Host {
                ns,
                link,
                ip: host_ip,
                root,
                prefix: format!("f{tag}{i}"),
                agent: None,
                id: String::new(),
            });
        }
        agent::enter_netns(&fabric);
        let rt = agent::rt();
        let pg = rt.block_on(TestDatabase::create_postgres(&harness::pg_admin_url()));
        let cp_cert = tempfile::tempdir_in("/var/tmp").expect("cert dir");
        let cp_fingerprint = wrenn_tls::selfsigned::HostCert::ensure(cp_cert.path())
            .expect("control-plane certificate")
            .fingerprint;
        let http = reqwest::Client::new();
        let mut fleet = Fleet {
            cp_cert,
            cp_fingerprint,
            tag,
            fabric,
            hosts,
            replicas: Vec::new(),
            data_dirs: Vec::new(),
            pg: Some(pg),
            rt,
            http,
        };
        fleet.start_replicas();
        fleet
    }

    /// Replica A makes the secrets; B starts with copies of them (as deploy/README.md says).
    fn start_replicas(&mut self) {
        let url = self
            .pg
            .as_ref()
            .and_then(|p| p.config.database_url.clone())
            .expect("database URL");
        for (i, (port, plain)) in PORTS.iter().zip(PLAIN_PORTS).enumerate() {
            let dir = tempfile::tempdir_in("/var/tmp").expect("data dir");
            if let Some(first) = self.data_dirs.first() {
                for f in ["jwt.secret", "envd.key", "agent-signing.key"] {
                    std::fs::copy(first.path().join(f), dir.path().join(f)).expect("copy secret");
                }
            }
            let mut cmd = Command::new(agent::wrenn_bin());
            cmd.args(["server", "--listen", &format!("0.0.0.0:{port}")])
                .arg("--data-dir")
                .arg(dir.path())
                .arg("--tls-cert")
                .arg(wrenn_tls::selfsigned::cert_path(self.cp_cert.path()))
                .arg("--tls-key")
                .arg(wrenn_tls::selfsigned::key_path(self.cp_cert.path()))
                .args(["--plain-listen", &format!("127.0.0.1:{plain}")])
                .args(["--host-stale-secs", &STALE_SECS.to_string()])
                .env("DATABASE_URL", &url);
            let mut child = spawn_in(cmd, None);
            wait_tcp(&format!("127.0.0.1:{plain}"), &mut child, "replica");
            eprintln!("replica {i} listening on :{port}");
            self.replicas.push(child);
            self.data_dirs.push(dir);
        }
    }

    /// Starts host `i`'s agent against replica `replica`, registering with `token`.
    fn start_agent(
        &mut self,
        i: usize,
        replica: usize,
        token: &str,
        pause_after: u32,
        extra: &[String],
    ) {
        let h = &self.hosts[i];
        let mut cmd = Command::new(agent::wrenn_bin());
        cmd.arg("agent")
            .arg("--root")
            .arg(h.root.path())
            .args(["--listen", &format!("{}:50051", h.ip)])
            .args([
                "--cp-url",
                &format!("https://{}:{}", h.gateway(), PORTS[replica]),
            ])
            .args(["--cp-fingerprint", &self.cp_fingerprint])
            .args(["--net-prefix", &h.prefix, "--accel", "tcg"])
            .args(["--heartbeat-secs", "1"])
            .args(["--pause-after-missed-heartbeats", &pause_after.to_string()])
            // Machines of their own would each have the whole range; on one machine, one each.
            .args(["--vm-uid-base", &(2_000_000_000 + 100_000 * i).to_string()])
            .args(extra)
            .env("AGENT_REGISTER_TOKEN", token);
        let child = spawn_in(cmd, Some(&h.ns));
        self.hosts[i].agent = Some(child);
    }

    fn url(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", PLAIN_PORTS[replica])
    }

    async fn call(
        &self,
        replica: usize,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url(replica)))
            .timeout(Duration::from_secs(240));
        if !auth.is_empty() {
            req = req.bearer_auth(auth);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        let text = r.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn ok(
        &self,
        replica: usize,
        method: Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Value {
        let (s, v) = self.call(replica, method.clone(), path, auth, body).await;
        assert!(
            s.is_success(),
            "{method} {path} via replica {replica}: {s} {v}"
        );
        v
    }

    /// Signs up through `replica`; returns (JWT, team ID).
    async fn signup(&self, replica: usize, email: &str) -> (String, String) {
        let v = self
            .ok(
                replica,
                Method::POST,
                "/v1/auth/signup",
                "",
                Some(json!({"email": email, "password": PASSWORD, "name": "Fleet"})),
            )
            .await;
        (
            v["token"].as_str().expect("token").into(),
            v["team"]["id"].as_str().expect("team").into(),
        )
    }

    /// Polls `f` until it returns `Some`, up to `secs`.
    async fn until<T, F, Fut>(&self, secs: u64, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes sandbox `s` (a create's answer) through `replica`.
    async fn delete_sandbox(&self, replica: usize, key: &str, s: &Value) {
        let path = format!("/v1/sandboxes/{}", id_of(s));
        let (st, v) = self.call(replica, Method::DELETE, &path, key, None).await;
        assert!(st.is_success(), "DELETE {path}: {v}");
    }

    async fn host_status(&self, replica: usize, jwt: &str, id: &str) -> String {
        let v = self
            .ok(replica, Method::GET, &format!("/v1/hosts/{id}"), jwt, None)
            .await;
        v["status"].as_str().unwrap_or_default().to_owned()
    }

    async fn sandbox(&self, replica: usize, key: &str, id: &str) -> Value {
        self.ok(
            replica,
            Method::GET,
            &format!("/v1/sandboxes/{id}"),
            key,
            None,
        )
        .await
    }

    async fn sh(&self, replica: usize, key: &str, id: &str, script: &str) -> String {
        let v = self
            .ok(
                replica,
                Method::POST,
                &format!("/v1/sandboxes/{id}/exec"),
                key,
                Some(json!({"cmd": "bash", "args": ["-c", script], "timeout_sec": 120})),
            )
            .await;
        assert_eq!(v["exit_code"], 0, "{v}");
        v["stdout"].as_str().unwrap_or_default().trim().to_owned()
    }

    /// Starts the counter in `id` and writes a tmpfs file; returns the counter's pid.
    async fn counter_and_keep(&self, key: &str, id: &str) -> i64 {
        let bg = self
            .ok(
                0,
                Method::POST,
                &format!("/v1/sandboxes/{id}/processes"),
                key,
                Some(json!({"cmd": "python3", "args": ["-c", agent::COUNTER], "tag": "counter"})),
            )
            .await;
        self.sh(1, key, id, &format!("echo {id} > /dev/shm/keep"))
            .await;
        bg["pid"].as_i64().expect("pid")
    }

    async fn counter(&self, key: &str, id: &str, pid: i64) -> u64 {
        let out = self.sh(0, key, id, &agent::read_counter(pid)).await;
        out.parse().unwrap_or_else(|_| panic!("a count: {out:?}"))
    }

    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.fabric,
            "link",
            "set",
            &self.hosts[i].link,
            state,
        ]);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut c) = h.agent.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            // VMs outlive their agent by design: kill this test's, by PID.
            for pid in h.qemu_pids() {
                // SAFETY: killing a QEMU this test's agent started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.hosts.iter().any(|h| !h.qemu_pids().is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in &mut self.replicas {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pg) = self.pg.take() {
            self.rt.block_on(pg.cleanup());
        }
        let names = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours = format!("f{}", self.tag);
        for n in names.lines().filter_map(|l| l.split_whitespace().next()) {
            if n.starts_with(&ours) {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.fabric])
            .status();
    }
}

/// This machine's memory in MiB, as the agents read it.
fn memtotal_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemTotal")
        / 1024
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id in {v}"))
        .to_owned()
}

#[test]
fn two_replicas_three_hosts_byoc_link_cuts_and_retirement() {
    let mut fleet = Fleet::new();
    let rt = agent::rt();

    // Accounts, through either replica: the first user is the platform admin (team A); Bob's
    // team B is made BYOC by the admin through replica B, and Bob's very next request
    // (through replica A, same JWT) may register a host.
    let ((admin, _team_a), (bob, team_b)) = rt.block_on(async {
        let a = fleet.signup(0, "admin@example.com").await;
        let b = fleet.signup(1, "bob@example.com").await;
        (a, b)
    });
    let (key_a, key_b, tokens) = rt.block_on(async {
        let (s, v) = fleet
            .call(
                0,
                Method::POST,
                "/v1/hosts/registration-tokens",
                &bob,
                Some(json!({"name": "b-own"})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "not BYOC yet: {v}");
        let (s, v) = fleet
            .call(1, Method::GET, "/v1/admin/teams", &bob, None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        fleet
            .ok(
                1,
                Method::PUT,
                &format!("/v1/admin/teams/{team_b}/byoc"),
                &admin,
                Some(json!({"enabled": true})),
            )
            .await;
        let mut tokens = Vec::new();
        for (replica, jwt, body) in [
            (0, &admin, json!({"platform": true, "name": "p1"})),
            (1, &admin, json!({"platform": true, "name": "p2"})),
            (0, &bob, json!({"name": "b-own"})),
        ] {
            let v = fleet
                .ok(
                    replica,
                    Method::POST,
                    "/v1/hosts/registration-tokens",
                    jwt,
                    Some(body),
                )
                .await;
            // The pin the agent needs comes with its token.
            assert_eq!(
                v["cp_tls_fingerprint"],
                fleet.cp_fingerprint.as_str(),
                "{v}"
            );
            tokens.push((
                v["registration_token"].as_str().expect("token").to_owned(),
                id_of(&v["host"]),
            ));
        }
        let ka = fleet
            .ok(
                0,
                Method::POST,
                "/v1/api-keys",
                &admin,
                Some(json!({"name": "a"})),
            )
            .await;
        let kb = fleet
            .ok(
                1,
                Method::POST,
                "/v1/api-keys",
                &bob,
                Some(json!({"name": "b"})),
            )
            .await;
        (
            ka["key"].as_str().expect("key").to_owned(),
            kb["key"].as_str().expect("key").to_owned(),
            tokens,
        )
    });

    // Agents: host 1 never pauses on its own; host 2 pauses after 3 missed heartbeats.
    // Host 1 admits guest memory for two 256 MiB sandboxes, not three.
    let host1_memory = [
        "--memory-overcommit".to_owned(),
        format!("{}", 700.5 / memtotal_mib() as f64),
    ];
    for (i, (replica, pause_after)) in [(0, 0), (1, 3), (0, 0)].into_iter().enumerate() {
        let extra: &[String] = if i == 0 { &host1_memory } else { &[] };
        fleet.start_agent(i, replica, &tokens[i].0, pause_after, extra);
        fleet.hosts[i].id = tokens[i].1.clone();
    }
    rt.block_on(async {
        for i in 0..3 {
            let id = fleet.hosts[i].id.clone();
            let jwt = if i == 2 { &bob } else { &admin };
            fleet
                .until(90, "hosts online, capacity reported", || async {
                    let v = fleet
                        .ok(i % 2, Method::GET, &format!("/v1/hosts/{id}"), jwt, None)
                        .await;
                    (v["status"] == "online" && v["capacity"]["vcpus"].as_u64() >= Some(1))
                        .then_some(())
                })
                .await;
        }
        // Every beat carries capacity: both replicas see it in the shared database.
        let all = fleet
            .ok(1, Method::GET, "/v1/admin/hosts", &admin, None)
            .await;
        let listed = all
            .as_array()
            .or_else(|| all["hosts"].as_array())
            .expect("hosts")
            .clone();
        assert_eq!(listed.len(), 3, "{all}");
        for h in &listed {
            assert!(h["capacity"]["vcpus"].as_u64() >= Some(1), "{h}");
            // Agents off loopback are called over TLS, to the certificate they registered.
            assert!(
                h["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("https://"))
                    && h["tls_fingerprint"]
                        .as_str()
                        .is_some_and(|f| f.starts_with("sha256:")),
                "{h}"
            );
        }
        let byoc = listed
            .iter()
            .find(|h| h["id"] == fleet.hosts[2].id.as_str())
            .expect("BYOC host");
        assert!(byoc["team_name"].is_string(), "{byoc}");
    });
    let (h1, h2, h3) = (
        fleet.hosts[0].id.clone(),
        fleet.hosts[1].id.clone(),
        fleet.hosts[2].id.clone(),
    );

    // Placement: team A's sandboxes spread over the two platform hosts, never onto B's host;
    // team B's land only on its own host. Creates alternate between the replicas.
    let create = |replica: usize, key: &str| {
        let key = key.to_owned();
        let f = &fleet;
        async move {
            let (s, v) = f
                .call(
                    replica,
                    Method::POST,
                    "/v1/sandboxes",
                    &key,
                    Some(json!({"memory_mb": 256, "timeout_sec": 900})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            assert_eq!(v["status"], "running", "{v}");
            v
        }
    };
    let (a_sbs, b_sbs) = rt.block_on(async {
        let mut a = Vec::new();
        for n in 0..4 {
            a.push(create(n % 2, &key_a).await);
        }
        let mut b = Vec::new();
        for n in 0..2 {
            b.push(create(n % 2, &key_b).await);
        }
        (a, b)
    });
    let a_hosts: BTreeSet<&str> = a_sbs
        .iter()
        .map(|s| s["host_id"].as_str().expect("host_id"))
        .collect();
    assert_eq!(
        a_hosts,
        BTreeSet::from([h1.as_str(), h2.as_str()]),
        "team A spread over the platform hosts: {a_sbs:?}"
    );
    for s in &b_sbs {
        assert_eq!(
            s["host_id"],
            h3.as_str(),
            "team B only on its own host: {s}"
        );
    }
    // Host 1 is full (its agent reports a 700 MiB limit, two 256 MiB sandboxes run there):
    // the next creates go to host 2, through either replica, at the same time.
    rt.block_on(async {
        let v = fleet
            .ok(0, Method::GET, &format!("/v1/hosts/{h1}"), &admin, None)
            .await;
        assert_eq!(v["capacity"]["memory_limit_mib"], 700, "{v}");
        let on_h1 = a_sbs.iter().filter(|s| s["host_id"] == h1.as_str()).count();
        assert_eq!(on_h1, 2, "two of four on host 1: {a_sbs:?}");
        let more = futures::future::join_all((0..2).map(|n| create(n % 2, &key_a))).await;
        for s in &more {
            assert_eq!(s["host_id"], h2.as_str(), "a full host is passed over: {s}");
            fleet.delete_sandbox(0, &key_a, s).await;
        }
    });
    let on = |h: &str| -> Vec<String> {
        a_sbs
            .iter()
            .filter(|s| s["host_id"] == h)
            .map(id_of)
            .collect()
    };
    let (on_h1, on_h2) = (on(&h1), on(&h2));
    let (s1, s2) = (on_h1[0].clone(), on_h2[0].clone());
    let (c1, c2, before1, before2) = rt.block_on(async {
        let c1 = fleet.counter_and_keep(&key_a, &s1).await;
        let c2 = fleet.counter_and_keep(&key_a, &s2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        (
            c1,
            c2,
            fleet.counter(&key_a, &s1, c1).await,
            fleet.counter(&key_a, &s2, c2).await,
        )
    });
    let qemu1 = fleet.hosts[0].qemu_pids();
    assert_eq!(qemu1.len(), on_h1.len(), "one VM per sandbox on host 1");

    // Cut hosts 1 and 2 off past the staleness window.
    fleet.set_link(0, false);
    fleet.set_link(1, false);
    let cut_at = Instant::now();
    rt.block_on(async {
        for (h, ids) in [(&h1, &on_h1), (&h2, &on_h2)] {
            fleet
                .until(60, "host unreachable", || async {
                    (fleet.host_status(1, &admin, h).await == "unreachable").then_some(())
                })
                .await;
            // The monitor marks the host, then its sandboxes (a second statement).
            for id in ids.iter() {
                fleet
                    .until(30, "sandbox missing", || async {
                        (fleet.sandbox(0, &key_a, id).await["status"] == "missing").then_some(())
                    })
                    .await;
            }
        }
        eprintln!(
            "hosts unreachable and sandboxes missing {} ms after the cut",
            cut_at.elapsed().as_millis()
        );
        // Host 2's agent, its control plane gone, pauses its sandboxes to disk: no VM left.
        fleet
            .until(120, "host 2's VMs paused", || async {
                fleet.hosts[1].qemu_pids().is_empty().then_some(())
            })
            .await;
        eprintln!(
            "host 2 paused its sandboxes {} ms after the cut",
            cut_at.elapsed().as_millis()
        );
        // Host 1's agent keeps its VMs running, untouched.
        assert_eq!(
            fleet.hosts[0].qemu_pids(),
            qemu1,
            "host 1's VMs untouched while cut off"
        );
        // Team B's host is unaffected.
        assert_eq!(fleet.host_status(0, &bob, &h3).await, "online");
    });

    fleet.set_link(0, true);
    fleet.set_link(1, true);
    rt.block_on(async {
        for h in [&h1, &h2] {
            fleet
                .until(60, "host online again", || async {
                    (fleet.host_status(0, &admin, h).await == "online").then_some(())
                })
                .await;
        }
        // The reconciler (whichever replica claims the host) settles the rows.
        for (ids, want) in [(&on_h1, "running"), (&on_h2, "paused")] {
            for id in ids.iter() {
                fleet
                    .until(60, "rows settled", || async {
                        let v = fleet.sandbox(1, &key_a, id).await;
                        (v["status"] == want).then_some(())
                    })
                    .await;
            }
        }
        assert_eq!(fleet.hosts[0].qemu_pids(), qemu1, "same VMs on host 1");
        let after1 = fleet.counter(&key_a, &s1, c1).await;
        assert!(
            after1 > before1,
            "host 1's counter kept counting: {before1} → {after1}"
        );
        assert_eq!(fleet.sh(1, &key_a, &s1, "cat /dev/shm/keep").await, s1);
        // Host 2's sandbox resumes with its memory: the same process, its count carried on.
        let v = fleet
            .ok(
                0,
                Method::POST,
                &format!("/v1/sandboxes/{s2}/resume"),
                &key_a,
                None,
            )
            .await;
        assert_eq!(v["status"], "running", "{v}");
        let after2 = fleet.counter(&key_a, &s2, c2).await;
        assert!(
            after2 >= before2,
            "host 2's counter resumed from memory: {before2} → {after2}"
        );
        assert_eq!(fleet.sh(1, &key_a, &s2, "cat /dev/shm/keep").await, s2);
    });

    // Retiring team B's host: 409 listing its sandboxes; forced → VMs gone, rows stopped,
    // its agent stops cleanly.
    rt.block_on(async {
        let b_ids: BTreeSet<String> = b_sbs.iter().map(id_of).collect();
        let (s, v) = fleet
            .call(1, Method::DELETE, &format!("/v1/hosts/{h3}"), &bob, None)
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let listed: BTreeSet<String> = v["error"]["sandbox_ids"]
            .as_array()
            .expect("sandbox_ids")
            .iter()
            .map(|x| x.as_str().expect("id").to_owned())
            .collect();
        assert_eq!(listed, b_ids, "{v}");
        assert_eq!(
            fleet.hosts[2].qemu_pids().len(),
            2,
            "nothing destroyed by the refused delete"
        );
        let (s, v) = fleet
            .call(
                0,
                Method::DELETE,
                &format!("/v1/hosts/{h3}?force=true"),
                &bob,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        assert!(
            fleet.hosts[2].qemu_pids().is_empty(),
            "forced delete destroyed the VMs"
        );
        for id in &b_ids {
            let v = fleet.sandbox(1, &key_b, id).await;
            assert_eq!(v["status"], "stopped", "{v}");
        }
        // Team B has no host left: its creates are refused, not placed on the platform's.
        let (s, v) = fleet
            .call(1, Method::POST, "/v1/sandboxes", &key_b, Some(json!({})))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("no_hosts_available")),
            "{v}"
        );
    });
    let agent3 = fleet.hosts[2].agent.as_mut().expect("agent 3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = agent3.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted host's agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the deleted host's agent exits cleanly: {status}"
    );
    fleet.hosts[2].agent = None;

    // Clean up team A's sandboxes through the API; then every VM is gone.
    rt.block_on(async {
        for s in &a_sbs {
            fleet.delete_sandbox(1, &key_a, s).await;
        }
    });
    assert!(fleet.hosts[0].qemu_pids().is_empty() && fleet.hosts[1].qemu_pids().is_empty());
    for i in 0..2 {
        if let Some(mut c) = fleet.hosts[i].agent.take() {
            stop(&mut c);
        }
    }
}
