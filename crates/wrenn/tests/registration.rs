//! The agent's registration path against the real control plane, both real processes:
//! `wrenn agent --register <token>` → credentials file (0600) → host online via heartbeats →
//! control-plane tokens of the host's generation accepted, others refused → revoking the
//! host's credentials makes every call the control plane signs afterwards fail with 401 →
//! heartbeats stop. Over TLS, each side accepts only the certificate pinned out of band. No VMs
//! are created, so no sandbox network is touched.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectrpc::client::{CallOptions, ClientConfig, HttpClient};
use serde_json::{Value, json};
use wrenn_proto::hostagent::v1::{HostAgentServiceClient, PingRequest};
use wrenn_rpcauth::CpSigner;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrenn"));
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null());
    // SAFETY: prctl only: the child stops when the test dies.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
    Proc(cmd.spawn().expect("spawn wrenn"))
}

fn wait_port(port: u16, p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = p.0.try_wait() {
            panic!("process exited early: {st}");
        }
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = http.request(method, url).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

fn signer(data_dir: &Path) -> CpSigner {
    let hex = std::fs::read_to_string(data_dir.join("agent-signing.key")).expect("signing key");
    let bytes: Vec<u8> = (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).expect("hex"))
        .collect();
    CpSigner::from_seed(&bytes.try_into().expect("32 bytes")).expect("key")
}

async fn ping(port: u16, token: &str) -> Result<(), connectrpc::ConnectError> {
    let cfg = ClientConfig::new(format!("http://127.0.0.1:{port}").parse().expect("uri"));
    let c = HostAgentServiceClient::new(HttpClient::plaintext(), cfg);
    c.ping_with_options(
        PingRequest::default(),
        CallOptions::default().with_header("authorization", format!("Bearer {token}")),
    )
    .await
    .map(|_| ())
}

/// A control plane (`wrenn server`) with a platform admin, and a registration token.
struct Cp {
    _proc: Proc,
    /// `--listen`'s port (HTTPS when the server has a certificate).
    listen_port: u16,
    data: tempfile::TempDir,
    url: String,
    jwt: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Cp {
    fn start() -> Cp {
        Cp::start_with(&[])
    }

    /// `extra`: more `wrenn server` flags; with `--plain-listen ADDR` the test talks to that.
    fn start_with(extra: &[&str]) -> Cp {
        let data = tempfile::tempdir().expect("data dir");
        let port = free_port();
        let plain = extra
            .iter()
            .position(|a| *a == "--plain-listen")
            .and_then(|i| extra.get(i + 1))
            .map(|a| a.rsplit(':').next().expect("port").parse().expect("port"));
        let mut args = vec![
            "server".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_owned(),
            data.path().to_str().expect("utf-8").to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut proc = spawn(&args);
        let listen_port = port;
        let port = plain.unwrap_or(port);
        let url = format!("http://127.0.0.1:{port}");
        wait_port(port, &mut proc);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let http = reqwest::Client::new();
        let (s, admin) = rt.block_on(call(
            &http,
            reqwest::Method::POST,
            format!("{url}/v1/auth/signup"),
            None,
            json!({"email": "ops@example.com", "password": "correct horse battery", "name": "Ops"}),
        ));
        assert_eq!(s, 201, "{admin}");
        let jwt = admin["token"].as_str().expect("token").to_owned();
        Cp {
            _proc: proc,
            listen_port,
            data,
            url,
            jwt,
            rt,
            http,
        }
    }

    /// A one-time registration token and the ID of the host it is for.
    fn registration_token(&self) -> (String, String) {
        let (token, host, _) = self.registration();
        (token, host)
    }

    /// [`Cp::registration_token`] and the control plane's certificate fingerprint, if any.
    fn registration(&self) -> (String, String, Value) {
        let (s, created) = self.rt.block_on(call(
            &self.http,
            reqwest::Method::POST,
            format!("{}/v1/hosts/registration-tokens", self.url),
            Some(&self.jwt),
            json!({"platform": true, "name": "local"}),
        ));
        assert_eq!(s, 201, "{created}");
        (
            created["registration_token"]
                .as_str()
                .expect("token")
                .to_owned(),
            created["host"]["id"].as_str().expect("id").to_owned(),
            created["cp_tls_fingerprint"].clone(),
        )
    }

    fn host(&self, host_id: &str) -> Value {
        let (s, h) = self.rt.block_on(call(
            &self.http,
            reqwest::Method::GET,
            format!("{}/v1/hosts/{host_id}", self.url),
            Some(&self.jwt),
            Value::Null,
        ));
        assert_eq!(s, 200, "{h}");
        h
    }
}

#[test]
fn agent_registers_heartbeats_and_is_cut_off_by_revocation() {
    let cp = Cp::start();
    let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
    let agent_port = free_port();
    let (token, host_id) = cp.registration_token();
    let (token, cp_url, rt, data) = (token.as_str(), &cp.url, &cp.rt, &cp.data);
    let (jwt, http) = (cp.jwt.clone(), cp.http.clone());

    let agent_args = |register: Option<&str>| {
        let mut a = vec![
            "agent".to_string(),
            "--root".into(),
            root.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{agent_port}"),
            "--cp-url".into(),
            cp_url.clone(),
            "--accel".into(),
            "tcg".into(),
            "--net-prefix".into(),
            format!("rg{}", agent_port % 1000),
            "--heartbeat-secs".into(),
            "1".into(),
        ];
        if let Some(t) = register {
            a.extend(["--register".into(), t.to_owned()]);
        }
        a
    };
    let args = agent_args(Some(token));
    let mut agent = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_port(agent_port, &mut agent);

    // Credentials kept, 0600, naming the host the token was for.
    let creds_path = root.path().join("host-credentials.json");
    let creds: Value =
        serde_json::from_slice(&std::fs::read(&creds_path).expect("credentials")).expect("json");
    assert_eq!(creds["host_id"], host_id.as_str());
    assert_eq!(creds["credential_gen"], 1);
    let mode = std::fs::metadata(&creds_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Heartbeats move last_heartbeat_at.
    let host_url = format!("{cp_url}/v1/hosts/{host_id}");
    let (_, h1) = rt.block_on(call(
        &http,
        reqwest::Method::GET,
        host_url.clone(),
        Some(&jwt),
        Value::Null,
    ));
    assert_eq!(h1["status"], "online", "{h1}");
    std::thread::sleep(Duration::from_millis(2500));
    let (_, h2) = rt.block_on(call(
        &http,
        reqwest::Method::GET,
        host_url.clone(),
        Some(&jwt),
        Value::Null,
    ));
    assert!(
        h2["last_heartbeat_at"].as_i64() > h1["last_heartbeat_at"].as_i64(),
        "{h1} {h2}"
    );
    // Each beat carries the host's capacity.
    let cap = &h2["capacity"];
    assert!(cap["vcpus"].as_u64() >= Some(1), "{h2}");
    assert!(cap["memory_mib"].as_u64() > Some(0), "{h2}");
    assert!(cap["memory_available_mib"].as_u64() > Some(0), "{h2}");
    assert!(cap["disk_free_mib"].as_u64() > Some(0), "{h2}");
    assert_eq!(
        (cap["sandboxes"].as_u64(), cap["vcpus_allocated"].as_u64()),
        (Some(0), Some(0)),
        "{h2}"
    );

    // Tokens of the control plane's key and the host's generation pass; others do not.
    let cp_key = signer(data.path());
    let ttl = Duration::from_secs(60);
    rt.block_on(ping(
        agent_port,
        &cp_key.sign_generation(&host_id, ttl, Some(1)),
    ))
    .expect("current generation accepted");
    for (what, tok) in [
        ("no generation", cp_key.sign(&host_id, ttl)),
        (
            "other generation",
            cp_key.sign_generation(&host_id, ttl, Some(2)),
        ),
        (
            "other key",
            CpSigner::generate()
                .expect("key")
                .sign_generation(&host_id, ttl, Some(1)),
        ),
    ] {
        let e = rt.block_on(ping(agent_port, &tok)).expect_err(what);
        assert_eq!(e.code, connectrpc::ErrorCode::Unauthenticated, "{what}");
    }

    // A restarted agent comes back as the same host from its credentials file, also when
    // its (now used) registration token is still on its command line.
    drop(agent);
    let args = agent_args(Some(token));
    let mut agent = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_port(agent_port, &mut agent);
    rt.block_on(ping(
        agent_port,
        &cp_key.sign_generation(&host_id, ttl, Some(1)),
    ))
    .expect("same identity after restart");

    // Revocation: the generation moves on, so everything the control plane signs for this
    // host from now on is refused with 401, and the agent's own credentials die too.
    let (s, revoked) = rt.block_on(call(
        &http,
        reqwest::Method::POST,
        format!("{host_url}/revoke"),
        Some(&jwt),
        json!({}),
    ));
    assert_eq!(s, 200, "{revoked}");
    let gen_now = revoked["credential_gen"].as_u64().expect("gen");
    assert_eq!(gen_now, 2);
    let e = rt
        .block_on(ping(
            agent_port,
            &cp_key.sign_generation(&host_id, ttl, Some(gen_now)),
        ))
        .expect_err("revoked");
    assert_eq!(e.code, connectrpc::ErrorCode::Unauthenticated);
    // Heartbeats (and the refresh they fall back on) are refused: the host stays pending.
    std::thread::sleep(Duration::from_millis(3000));
    let (_, h3) = rt.block_on(call(
        &http,
        reqwest::Method::GET,
        host_url,
        Some(&jwt),
        Value::Null,
    ));
    assert_eq!(h3["status"], "pending", "{h3}");
    drop(agent);
    drop(cp);
}

/// A PATH holding links to the programs the agent runs, except `without`.
fn path_without(without: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("bin dir");
    for tool in ["qemu-system-x86_64", "qemu-img", "nft"] {
        if tool == without {
            continue;
        }
        let found = [
            "/usr/local/bin",
            "/usr/bin",
            "/bin",
            "/usr/local/sbin",
            "/usr/sbin",
            "/sbin",
        ]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed: the test needs it to leave it out"));
        std::os::unix::fs::symlink(&found, dir.path().join(tool)).expect("symlink");
    }
    dir
}

#[test]
fn agent_refuses_to_start_without_qemu_img_or_qemu_and_never_comes_online() {
    let cp = Cp::start();
    let (token, host_id) = cp.registration_token();
    for (program, package) in [
        ("qemu-img", "qemu-utils"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        let bin = path_without(program);
        let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
        let agent_port = free_port();
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .args(["agent", "--root"])
            .arg(root.path())
            .args(["--listen", &format!("127.0.0.1:{agent_port}")])
            .args(["--cp-url", &cp.url, "--register", &token, "--accel", "tcg"])
            .args(["--net-prefix", &format!("pf{}", agent_port % 1000)])
            .args(["--heartbeat-secs", "1"])
            .env("PATH", bin.path())
            .stdin(Stdio::null())
            .output()
            .expect("run wrenn agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "without {program}: {stderr}");
        assert!(
            stderr.contains(&format!("{program} not found"))
                && stderr.contains(&format!("apt-get install {package}")),
            "the program and its package are named: {stderr}"
        );
        assert!(
            !root.path().join("host-credentials.json").exists(),
            "the agent registered before its checks"
        );
        // Past a few heartbeats of time the host is still not online.
        std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
        assert_eq!(cp.host(&host_id)["status"], "pending", "without {program}");
    }
    // The same token still registers an agent that has everything: the refusal came from the
    // checks, not from the token.
    let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
    let agent_port = free_port();
    let mut agent = spawn(&[
        "agent",
        "--root",
        root.path().to_str().expect("utf-8"),
        "--listen",
        &format!("127.0.0.1:{agent_port}"),
        "--cp-url",
        &cp.url,
        "--register",
        &token,
        "--accel",
        "tcg",
        "--net-prefix",
        &format!("pf{}", agent_port % 1000),
        "--heartbeat-secs",
        "1",
    ]);
    wait_port(agent_port, &mut agent);
    assert_eq!(cp.host(&host_id)["status"], "online");
}

#[test]
fn wrenn_up_without_qemu_img_says_so_and_is_never_up() {
    let bin = path_without("qemu-img");
    let data = tempfile::tempdir_in("/var/tmp").expect("data dir");
    let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .arg("up")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .env("PATH", bin.path())
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run wrenn up");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("Wrenn is up"), "{stdout}");
    assert!(
        stderr.contains("qemu-img not found") && stderr.contains("apt-get install qemu-utils"),
        "{stderr}"
    );
    // It stopped before the image build and the control plane: nothing was made.
    assert!(!data.path().join("images").exists());
    assert!(!data.path().join("wrenn.db").exists());
}

#[test]
fn agent_of_a_deleted_host_stops_cleanly() {
    let cp = Cp::start();
    let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
    let agent_port = free_port();
    let (token, host_id) = cp.registration_token();
    let root_s = root.path().display().to_string();
    let listen = format!("127.0.0.1:{agent_port}");
    let prefix = format!("rd{}", agent_port % 1000);
    let mut agent = spawn(&[
        "agent",
        "--root",
        &root_s,
        "--listen",
        &listen,
        "--cp-url",
        &cp.url,
        "--accel",
        "tcg",
        "--net-prefix",
        &prefix,
        "--heartbeat-secs",
        "1",
        "--register",
        &token,
    ]);
    wait_port(agent_port, &mut agent);
    assert_eq!(cp.host(&host_id)["status"], "online");

    let (s, v) = cp.rt.block_on(call(
        &cp.http,
        reqwest::Method::DELETE,
        format!("{}/v1/hosts/{host_id}", cp.url),
        Some(&cp.jwt),
        Value::Null,
    ));
    assert_eq!(s, 204, "{v}");
    // Its next heartbeat gets 404: the agent shuts down on its own, with success.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = agent.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the agent of a deleted host kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "agent exited with {status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err());
}

/// Runs an agent to its exit (it must fail at registration); returns its stderr.
fn failed_agent(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wrenn agent");
    assert!(!out.status.success(), "the agent started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// TLS between the hosts: the agent trusts only the control plane whose fingerprint came with
/// its token (a wrong pin, or none for an https:// URL, and it never registers), and it serves
/// its RPC over TLS with its own certificate, which the control plane records and pins.
#[test]
fn agent_and_control_plane_trust_only_pinned_certificates() {
    let certs = tempfile::tempdir().expect("cert dir");
    let cp_cert = wrenn_tls::selfsigned::HostCert::ensure(&certs.path().join("cp")).expect("cp");
    let impostor =
        wrenn_tls::selfsigned::HostCert::ensure(&certs.path().join("other")).expect("other");
    let plain = free_port();
    let cert_dir = certs.path().join("cp");
    let cert = wrenn_tls::selfsigned::cert_path(&cert_dir);
    let key = wrenn_tls::selfsigned::key_path(&cert_dir);
    let cp = Cp::start_with(&[
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
        "--plain-listen",
        &format!("127.0.0.1:{plain}"),
    ]);
    let (token, host_id, fp) = cp.registration();
    assert_eq!(
        fp,
        cp_cert.fingerprint.as_str(),
        "the pin comes with the token"
    );
    let https_url = format!("https://127.0.0.1:{}", cp.listen_port);
    let root = tempfile::tempdir_in("/var/tmp").expect("agent root");
    let root_s = root.path().display().to_string();
    let agent_port = free_port();
    let listen = format!("127.0.0.1:{agent_port}");
    let prefix = format!("rt{}", agent_port % 1000);
    let agent_args = |pin: Option<&str>| {
        let mut a = vec![
            "agent",
            "--root",
            &root_s,
            "--listen",
            &listen,
            "--cp-url",
            &https_url,
            "--accel",
            "tcg",
            "--net-prefix",
            &prefix,
            "--heartbeat-secs",
            "1",
            "--rpc-tls",
            "--register",
            &token,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if let Some(p) = pin {
            a.extend(["--cp-fingerprint".to_owned(), p.to_owned()]);
        }
        a
    };

    // No pin for an https:// URL: refused before any call. A wrong pin: the handshake fails.
    let err = failed_agent(&agent_args(None));
    assert!(err.contains("--cp-fingerprint"), "{err}");
    let err = failed_agent(&agent_args(Some(&impostor.fingerprint)));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(
        cp.host(&host_id)["status"],
        "pending",
        "the token is unused"
    );

    // The right pin: registered, and called over TLS at its own certificate.
    let mut agent = spawn(&agent_args(Some(&cp_cert.fingerprint)));
    wait_port(agent_port, &mut agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    let host = loop {
        let h = cp.host(&host_id);
        if h["status"] == "online" {
            break h;
        }
        assert!(Instant::now() < deadline, "never online: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let agent_cert =
        wrenn_tls::selfsigned::HostCert::ensure(&root.path().join("tls")).expect("agent cert");
    assert_eq!(host["address"], format!("https://{listen}"));
    assert_eq!(host["tls_fingerprint"], agent_cert.fingerprint.as_str());
    // Plain HTTP to the agent gets no answer: it speaks TLS only.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let plain_ping = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), ping(agent_port, "x")).await
    });
    assert!(
        matches!(plain_ping, Ok(Err(_))),
        "plain ping: {plain_ping:?}"
    );
}
