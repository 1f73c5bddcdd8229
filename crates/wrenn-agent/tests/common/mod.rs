//! Test harness for the agent's RPC relay: a fake `SandboxBackend` whose "sandboxes" are
//! real envd processes, each PID 1 of private PID and mount namespaces
//! (`scripts/envd-sandbox`), so commands run through them never write outside their
//! private `/tmp` and `/home` and die with them. The agent's router is served on a loopback
//! port and driven with the generated client and signed control-plane tokens.
#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_agent::auth::{CpSigner, CpVerifier};
use wrenn_agent::envd_client::EnvdClient;
use wrenn_agent::rpc::{BackendError, SandboxBackend, TunnelTarget};
use wrenn_proto::hostagent::v1::*;

pub const HOST_ID: &str = "host-test";
/// What the fake backend reports as a sandbox's overlay allocation.
pub const FAKE_DISK_ALLOCATED: u64 = 123_456_789;

pub type Client = HostAgentServiceClient<HttpClient>;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The envd binary of this build: `target/<profile>/envd`, beside `deps/` holding this test.
/// It is built by `cargo nextest run --workspace` (or `cargo build -p envd`).
fn envd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let bin = profile_dir.join("envd");
    assert!(
        bin.is_file(),
        "envd binary missing at {}: build it first (cargo build -p envd)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running envd in its own namespaces. Dropping it kills the sandbox.
pub struct Envd {
    child: Child,
    pub port: u16,
}

impl Envd {
    /// Starts envd on a free loopback port (health is awaited by the caller through
    /// `EnvdClient::wait_healthy`, as the real manager does).
    pub fn spawn() -> Envd {
        let port = free_port();
        let mut cmd = Command::new(repo_root().join("scripts/envd-sandbox"));
        cmd.arg(envd_binary())
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
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
        Envd { child, port }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

struct Sandbox {
    _envd: Envd,
    client: EnvdClient,
    info: SandboxInfo,
    /// Cancelled on destroy: ends the sandbox's tunnels.
    closed: tokio_util::sync::CancellationToken,
}

/// Fake sandbox manager: `create` starts an envd and initialises it with a fresh token.
#[derive(Default)]
pub struct TestBackend {
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    reaped: Mutex<Vec<String>>,
}

fn fresh_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[async_trait::async_trait]
impl SandboxBackend for TestBackend {
    async fn create(
        &self,
        req: CreateSandboxRequest,
    ) -> Result<(SandboxInfo, String), BackendError> {
        if self.sandboxes.lock().unwrap().contains_key(&req.sandbox_id) {
            return Err(BackendError::FailedPrecondition("exists".into()));
        }
        let envd = Envd::spawn();
        let client = EnvdClient::new(&envd.base(), None)
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        client
            .wait_healthy(Instant::now() + Duration::from_secs(20))
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let token = fresh_token();
        client
            .init(&token, Some(&req.default_user), &req.default_env, None)
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?;
        let info = SandboxInfo {
            sandbox_id: req.sandbox_id.clone(),
            status: SandboxStatus::SANDBOX_STATUS_RUNNING.into(),
            template: req.template.clone(),
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            host_ip: "127.0.0.1".into(),
            end_at_ms: req.end_at_ms,
            ..Default::default()
        };
        self.sandboxes.lock().unwrap().insert(
            req.sandbox_id.clone(),
            Sandbox {
                _envd: envd,
                client,
                info: info.clone(),
                closed: Default::default(),
            },
        );
        Ok((info, token))
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        let sb = self.sandboxes.lock().unwrap().remove(id);
        match sb {
            Some(sb) => {
                sb.closed.cancel();
                self.reaped.lock().unwrap().push(id.to_string());
                Ok(())
            }
            None => Err(BackendError::NotFound(format!("sandbox {id} not found"))),
        }
    }

    async fn snapshot(
        &self,
        id: &str,
        _name: &str,
        _team_id: &str,
    ) -> Result<wrenn_proto::hostagent::v1::SnapshotInfo, BackendError> {
        Err(BackendError::FailedPrecondition(format!(
            "sandbox {id}: the test backend cannot snapshot"
        )))
    }

    async fn delete_snapshot(&self, name: &str, _team_id: &str) -> Result<(), BackendError> {
        Err(BackendError::NotFound(format!("template {name} not found")))
    }

    // The RPC tests drive envd processes, not VMs: nothing to save.
    async fn pause(&self, id: &str) -> Result<SandboxInfo, BackendError> {
        Err(BackendError::FailedPrecondition(format!(
            "sandbox {id}: the test backend cannot pause"
        )))
    }

    async fn resume(&self, id: &str) -> Result<SandboxInfo, BackendError> {
        Err(BackendError::FailedPrecondition(format!(
            "sandbox {id}: the test backend cannot resume"
        )))
    }

    async fn list(&self) -> Result<ListSandboxesResponse, BackendError> {
        Ok(ListSandboxesResponse {
            sandboxes: self
                .sandboxes
                .lock()
                .unwrap()
                .values()
                .map(|s| s.info.clone())
                .collect(),
            reaped_ids: std::mem::take(&mut *self.reaped.lock().unwrap()),
            ..Default::default()
        })
    }

    async fn get(&self, id: &str) -> Result<SandboxInfo, BackendError> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|s| s.info.clone())
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id} not found")))
    }

    async fn set_timeout(&self, id: &str, end_at_ms: i64) -> Result<SandboxInfo, BackendError> {
        let mut map = self.sandboxes.lock().unwrap();
        let s = map
            .get_mut(id)
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id} not found")))?;
        s.info.end_at_ms = end_at_ms;
        Ok(s.info.clone())
    }

    async fn envd(&self, id: &str) -> Result<EnvdClient, BackendError> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|s| s.client.clone())
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id} not found")))
    }

    /// The "guest" is this host's loopback: the test's own listeners stand in for its ports.
    async fn tunnel_target(&self, id: &str) -> Result<TunnelTarget, BackendError> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|s| TunnelTarget {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                closed: s.closed.clone(),
            })
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id} not found")))
    }

    async fn disk_allocated(&self, id: &str) -> Result<u64, BackendError> {
        self.get(id).await.map(|_| FAKE_DISK_ALLOCATED)
    }

    fn host_facts(&self) -> PingResponse {
        PingResponse {
            host_id: HOST_ID.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            accelerator: "tcg".into(),
            cpu_count: 2,
            sandboxes_running: self.sandboxes.lock().unwrap().len() as u32,
            ..Default::default()
        }
    }
}

/// The agent serving on a loopback port with a fake backend, and a signer for tokens.
pub struct Agent {
    pub port: u16,
    pub signer: CpSigner,
    pub backend: Arc<TestBackend>,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub async fn start() -> Agent {
        let signer = CpSigner::generate().unwrap();
        let verifier = CpVerifier::from_public_pem(signer.public_key_pem()).unwrap();
        let backend = Arc::new(TestBackend::default());
        let app = wrenn_agent::rpc::router(backend.clone(), verifier, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            wrenn_agent::rpc::serve(listener, app, std::future::pending())
                .await
                .unwrap();
        });
        Agent {
            port,
            signer,
            backend,
            server,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client sending `token` (if any) as its bearer token.
    pub fn client_with(&self, token: Option<String>) -> Client {
        let mut cfg = ClientConfig::new(self.base().parse().unwrap());
        if let Some(t) = token {
            cfg = cfg.with_default_header("authorization", format!("Bearer {t}"));
        }
        HostAgentServiceClient::new(HttpClient::plaintext(), cfg)
    }

    /// A client with a valid control-plane token.
    pub fn client(&self) -> Client {
        self.client_with(Some(self.signer.sign(HOST_ID, Duration::from_secs(120))))
    }

    /// Creates a sandbox through the RPC.
    pub async fn create(&self, id: &str) -> SandboxInfo {
        let r = self
            .client()
            .create_sandbox(CreateSandboxRequest {
                sandbox_id: id.into(),
                template: "base".into(),
                vcpus: 1,
                memory_mb: 256,
                default_user: "user".into(),
                default_env: [("WRENN_TEST_ENV".to_string(), "from-init".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            })
            .await
            .expect("create sandbox")
            .into_owned();
        assert!(!r.envd_access_token.is_empty());
        r.sandbox.into_option().expect("sandbox info")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
        // Kill every envd even if the server task still holds the backend.
        self.backend.sandboxes.lock().unwrap().clear();
    }
}
