//! Harness for host-agent tests with real VMs.
//!
//! Each test gets: a network namespace standing in for the host (ip_forward=1, FORWARD policy
//! ACCEPT, so only our own rules isolate sandboxes), an "outside" namespace behind it with a
//! TCP listener standing in for the internet, a private files root whose `kernels/` and
//! `images/` come from the shared test image (built once, cached by content hash), and
//! `wrenn agent` running inside the host namespace. The test thread itself enters the host
//! namespace so it can reach the agent and the sandboxes. Everything is removed on drop, also
//! when the test fails.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_agent::auth::CpSigner;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::HostAgentServiceClient;

pub const HOST_ID: &str = "test-host";
pub const OUTSIDE_IP: &str = "192.0.2.1";
pub const OUTSIDE_PORT: u16 = 8080;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

fn target_dir() -> PathBuf {
    // tests live in <target>/debug/deps/
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

/// The `wrenn` binary under test: `WRENN_TEST_EXE` if set (a copy taken right after the build,
/// when other checkouts share the target directory and may relink `<target>/debug/wrenn`
/// while a test runs), else the one cargo built for this test.
pub fn wrenn_exe() -> PathBuf {
    std::env::var_os("WRENN_TEST_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wrenn")))
}

/// The shared test image root (kernel, initramfs, base template), built once per content hash.
pub fn image_root() -> PathBuf {
    let root = PathBuf::from(
        std::env::var("WRENN_TEST_IMAGE_ROOT")
            .unwrap_or_else(|_| "/var/cache/wrenn/test-root".into()),
    );
    std::fs::create_dir_all(&root).expect("create image root");
    // Serialise builds across test processes.
    let lock = std::fs::File::create(root.join(".lock")).expect("lock file");
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let envd = target_dir().join("envd");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "envd"])
        .env(
            "CARGO_TARGET_DIR",
            target_dir().parent().expect("target dir"),
        )
        .status()
        .expect("cargo build envd");
    assert!(status.success(), "building envd failed");
    let status = Command::new(wrenn_exe())
        .args(["image", "build", "--plain", "--root"])
        .arg(&root)
        .arg("--envd")
        .arg(&envd)
        .status()
        .expect("run wrenn image build");
    assert!(status.success(), "wrenn image build failed");
    prune_old_images(&root);
    root
}

/// Each envd build makes a new root image; drop superseded ones made over an hour ago (no
/// test VM lives that long) so the shared test root does not grow without bound.
fn prune_old_images(root: &Path) {
    let manifest =
        std::fs::read_to_string(root.join("images/base/manifest.json")).unwrap_or_default();
    let Ok(dir) = std::fs::read_dir(root.join("images/base")) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("rootfs-") || manifest.contains(&name) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn rand_tag() -> String {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).expect("random");
    format!("{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

/// Moves the calling thread into network namespace `name`.
pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd for this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// QEMU processes whose command line mentions `root` (a test's files root), ascending.
pub fn qemu_pids_of(root: &Path) -> Vec<i32> {
    let root = root.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let argv0 = cmdline.split('\0').next().unwrap_or("");
        if wrenn_agent::vmm::is_qemu_argv0(argv0) && cmdline.contains(&root) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

pub struct AgentEnv {
    pub tag: String,
    pub host_ns: String,
    pub outside_ns: String,
    pub root: tempfile::TempDir,
    pub signer: CpSigner,
    pub port: u16,
    /// What the agent is started with: its host ID and the control plane's public key.
    pub host_id: String,
    pub cp_public_key: PathBuf,
    /// A control plane to register with (`--cp-url`), and the one-time token the next start
    /// presents (`--register`); with a URL, the agent's identity comes from registration.
    pub cp_url: Option<String>,
    pub register_token: Option<String>,
    agent: Option<Child>,
    outside_listener: Option<Child>,
    pub extra_env: Vec<(String, String)>,
}

impl AgentEnv {
    /// Sets up the namespaces and files root and starts the agent. Call from a plain
    /// `#[test]`: this thread enters the host namespace (before any runtime exists).
    pub fn new() -> AgentEnv {
        Self::with_env(&[])
    }

    pub fn with_env(env: &[(&str, &str)]) -> AgentEnv {
        let mut e = Self::without_agent(env);
        e.start_agent();
        e
    }

    /// Namespaces, files root and the test's own signing key, but no agent yet: the caller
    /// may change `host_id` / `cp_public_key` first, then [`AgentEnv::start_agent`].
    pub fn without_agent(env: &[(&str, &str)]) -> AgentEnv {
        let images = image_root();
        let tag = rand_tag();
        let host_ns = format!("wt{tag}h");
        let outside_ns = format!("wt{tag}o");
        let root = tempfile::tempdir_in("/var/tmp").expect("temp root");
        let signer = CpSigner::generate().expect("key");
        let mut env_ = AgentEnv {
            tag: tag.clone(),
            host_ns: host_ns.clone(),
            outside_ns: outside_ns.clone(),
            root,
            signer,
            port: 50051,
            host_id: HOST_ID.to_string(),
            cp_public_key: PathBuf::new(),
            cp_url: None,
            register_token: None,
            agent: None,
            outside_listener: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // Host stand-in and outside namespaces, joined by a veth.
        ip(&["netns", "add", &host_ns]);
        ip(&["netns", "add", &outside_ns]);
        ip(&["-n", &host_ns, "link", "set", "lo", "up"]);
        ip(&["-n", &outside_ns, "link", "set", "lo", "up"]);
        let (hv, ov) = (format!("wt{tag}x"), format!("wt{tag}y"));
        ip(&[
            "-n",
            &host_ns,
            "link",
            "add",
            &hv,
            "type",
            "veth",
            "peer",
            "name",
            &ov,
            "netns",
            &outside_ns,
        ]);
        ip(&["-n", &host_ns, "addr", "add", "192.0.2.2/24", "dev", &hv]);
        ip(&[
            "-n",
            &outside_ns,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            &ov,
        ]);
        ip(&["-n", &host_ns, "link", "set", &hv, "up"]);
        ip(&["-n", &outside_ns, "link", "set", &ov, "up"]);
        ip(&["-n", &host_ns, "route", "add", "default", "via", OUTSIDE_IP]);
        run(Command::new("ip").args([
            "netns",
            "exec",
            &host_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]));
        // Explicit accept-everything forward policy: only our own rules may isolate.
        run(Command::new("ip").args([
            "netns", "exec", &host_ns, "nft",
            "add table inet hostfw; add chain inet hostfw forward { type filter hook forward priority 0; policy accept; }",
        ]));
        // "The internet": a TCP listener in the outside namespace.
        env_.outside_listener = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &outside_ns,
                    "python3",
                    "-m",
                    "http.server",
                    "--bind",
                    OUTSIDE_IP,
                    &OUTSIDE_PORT.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("outside listener"),
        );
        for d in ["kernels", "images"] {
            std::os::unix::fs::symlink(images.join(d), env_.root.path().join(d)).expect("symlink");
        }
        let pem = env_.root.path().join("cp.pub.pem");
        std::fs::write(&pem, env_.signer.public_key_pem()).expect("write pem");
        env_.cp_public_key = pem;
        enter_netns(&host_ns);
        env_
    }

    pub fn prefix(&self) -> String {
        format!("t{}", &self.tag[..5])
    }

    pub fn start_agent(&mut self) {
        let mut cmd = Command::new(wrenn_exe());
        cmd.arg("agent")
            .arg("--root")
            .arg(self.root.path())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)]);
        match &self.cp_url {
            Some(url) => {
                cmd.args(["--cp-url", url]);
                if let Some(t) = self.register_token.take() {
                    cmd.env("AGENT_REGISTER_TOKEN", t);
                }
            }
            None => {
                cmd.args(["--host-id", &self.host_id])
                    .arg("--cp-public-key")
                    .arg(&self.cp_public_key);
            }
        }
        cmd.args([
            "--net-prefix",
            &self.prefix(),
            "--accel",
            "tcg",
            "--max-sandboxes",
            "64",
        ])
        .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null());
        // SAFETY: prctl only; the agent is told to stop when the test process dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        // The test thread is in the host namespace; the child inherits it.
        self.agent = Some(cmd.spawn().expect("spawn wrenn agent"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("agent exited early: {status}");
            }
            assert!(Instant::now() < deadline, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILLs the agent (its VMs keep running).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn token(&self) -> String {
        self.signer.sign(HOST_ID, Duration::from_secs(120))
    }

    pub fn client(&self) -> HostAgentServiceClient<HttpClient> {
        let cfg = ClientConfig::new(
            format!("http://127.0.0.1:{}", self.port)
                .parse()
                .expect("uri"),
        )
        .with_default_header("authorization", format!("Bearer {}", self.token()));
        HostAgentServiceClient::new(HttpClient::plaintext(), cfg)
    }

    pub fn client_with_token(&self, token: &str) -> HostAgentServiceClient<HttpClient> {
        let cfg = ClientConfig::new(
            format!("http://127.0.0.1:{}", self.port)
                .parse()
                .expect("uri"),
        )
        .with_default_header("authorization", format!("Bearer {token}"));
        HostAgentServiceClient::new(HttpClient::plaintext(), cfg)
    }

    /// Namespaces of this test's agent prefix.
    pub fn sandbox_netns(&self) -> Vec<String> {
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix())))
            .map(str::to_string)
            .collect()
    }

    /// QEMU processes whose command line mentions this test's files root.
    pub fn qemu_pids(&self) -> Vec<i32> {
        qemu_pids_of(self.root.path())
    }

    /// What a failed or finished create must leave exactly as before.
    pub fn host_state(&self) -> HostState {
        HostState {
            netns: self.sandbox_netns(),
            links: ip(&["-o", "link", "show"])
                .lines()
                .map(|l| {
                    l.split(':')
                        .nth(1)
                        .unwrap_or("")
                        .trim()
                        .split('@')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .collect(),
            routes: ip(&["route", "show"]),
            nft: run(Command::new("nft").args(["list", "ruleset"])),
            qemu: self.qemu_pids(),
            sandbox_dirs: std::fs::read_dir(self.root.path().join("sandboxes"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct HostState {
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub routes: String,
    pub nft: String,
    pub qemu: Vec<i32>,
    pub sandbox_dirs: Vec<String>,
}

impl Drop for AgentEnv {
    fn drop(&mut self) {
        self.kill_agent();
        // Backstop: VMs outlive the agent by design, so kill them here.
        for pid in self.qemu_pids() {
            // SAFETY: killing a QEMU this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.qemu_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for ns in self.sandbox_netns() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        if let Some(mut l) = self.outside_listener.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.outside_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host_ns])
            .status();
    }
}

/// A create request with test defaults.
pub fn create_req(id: &str) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.to_string(),
        template: "base".into(),
        vcpus: 1,
        memory_mb: 256,
        ..Default::default()
    }
}

/// The agent RPC client the tests use.
pub type Client = HostAgentServiceClient<HttpClient>;

pub fn sandbox_id() -> String {
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{:02x}", x)).collect::<String>()[..20].to_string()
}

/// Runs `bash -c script` in the sandbox through the agent; returns (stdout, stderr, exit).
pub async fn sh(
    c: &HostAgentServiceClient<HttpClient>,
    id: &str,
    script: &str,
) -> (String, String, i32) {
    let r = c
        .exec(pb::ExecRequest {
            sandbox_id: id.into(),
            cmd: "/bin/bash".into(),
            args: vec!["-c".into(), script.into()],
            // Generous: four TCG guests on two cores can be slow to schedule.
            timeout_sec: 180,
            ..Default::default()
        })
        .await
        .expect("exec")
        .into_owned();
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
        r.exit_code,
    )
}

/// Builds a current-thread runtime (after the thread entered the host namespace).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A Python process that counts in memory only; SIGUSR1 makes it write the count to
/// `/dev/shm/count` (so a test can tell a process that went on from one that restarted).
pub const COUNTER: &str = "
import signal, time
n = 0
def dump(*_):
    open('/dev/shm/count', 'w').write(str(n))
signal.signal(signal.SIGUSR1, dump)
open('/dev/shm/counter-ready', 'w').close()
while True:
    n += 1
    time.sleep(0.01)
";

/// The shell line that asks the counter `pid` for its count and prints it. It waits for the
/// counter to have its handler first: before that, SIGUSR1 would kill it (a slow start under
/// load).
pub fn read_counter(pid: impl std::fmt::Display) -> String {
    format!(
        "for i in $(seq 300); do [ -e /dev/shm/counter-ready ] && break; sleep 0.1; done; \
         rm -f /dev/shm/count; kill -USR1 {pid} && for i in $(seq 50); do [ -s /dev/shm/count ] && break; sleep 0.1; done; cat /dev/shm/count"
    )
}
