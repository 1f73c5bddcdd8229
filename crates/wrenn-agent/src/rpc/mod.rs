//! The `hostagent.v1.HostAgentService` the control plane drives, over a [`SandboxBackend`]
//! (the sandbox manager): lifecycle calls go to the backend, sandbox I/O is relayed to the
//! sandbox's envd; `GET /v1/tunnel/{sandbox_id}/{port}` opens a TCP tunnel to a guest port
//! ([`tunnel`]). Every request needs a control-plane token ([`crate::auth`]).

mod errors;
mod files;
mod process;
mod service;
pub mod tunnel;

use std::sync::Arc;

pub use errors::{BackendError, envd_error};
pub use service::AgentService;
use wrenn_proto::hostagent::v1::{
    CreateSandboxRequest, ListSandboxesResponse, PingResponse, SandboxInfo,
};

use crate::auth::{AuthState, CpVerifier, require_cp_token};
use crate::envd_client::EnvdClient;

/// What the RPC layer needs from the sandbox manager.
#[async_trait::async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// Creates and boots a sandbox; returns it and the fresh envd access token.
    async fn create(
        &self,
        req: CreateSandboxRequest,
    ) -> Result<(SandboxInfo, String), BackendError>;
    async fn destroy(&self, id: &str) -> Result<(), BackendError>;
    /// All sandboxes; includes and drains the IDs reaped/paused since the last call.
    async fn list(&self) -> Result<ListSandboxesResponse, BackendError>;
    async fn get(&self, id: &str) -> Result<SandboxInfo, BackendError>;
    /// Saves a running sandbox's VM to disk and ends it (`FailedPrecondition` unless running).
    async fn pause(&self, id: &str) -> Result<SandboxInfo, BackendError>;
    /// Restores a paused sandbox (`FailedPrecondition` unless paused).
    async fn resume(&self, id: &str) -> Result<SandboxInfo, BackendError>;
    /// Freezes sandbox `id` into the team's snapshot template `name` on this host.
    async fn snapshot(
        &self,
        id: &str,
        name: &str,
        team_id: &str,
    ) -> Result<wrenn_proto::hostagent::v1::SnapshotInfo, BackendError>;
    async fn delete_snapshot(&self, name: &str, team_id: &str) -> Result<(), BackendError>;
    async fn set_timeout(&self, id: &str, end_at_ms: i64) -> Result<SandboxInfo, BackendError>;
    /// The envd client of a running sandbox (`NotFound` / `FailedPrecondition` otherwise);
    /// also marks the sandbox active.
    async fn envd(&self, id: &str) -> Result<EnvdClient, BackendError>;
    /// Where a tunnel into running sandbox `id` connects (`NotFound` / `FailedPrecondition`
    /// otherwise); also marks the sandbox active, as [`SandboxBackend::envd`] does.
    async fn tunnel_target(&self, id: &str) -> Result<TunnelTarget, BackendError>;
    /// Allocated bytes of the sandbox's root-disk overlay.
    async fn disk_allocated(&self, id: &str) -> Result<u64, BackendError>;
    /// The metrics samples recorded for sandbox `id` within `[start_ms, end_ms]` (0 =
    /// unbounded), oldest first; none for an unknown sandbox or a backend that keeps none.
    async fn metric_samples(
        &self,
        _id: &str,
        _start_ms: i64,
        _end_ms: i64,
    ) -> Vec<wrenn_proto::hostagent::v1::MetricSample> {
        Vec::new()
    }
    fn host_facts(&self) -> PingResponse;
}

/// A running sandbox's guest as the host reaches it.
#[derive(Debug, Clone)]
pub struct TunnelTarget {
    /// The sandbox's host-side address: every TCP port of it is the guest's (DNAT).
    pub ip: std::net::IpAddr,
    /// Cancelled when the guest goes away (pause, destroy, VM exit): a gone VM never closes
    /// its connections, so tunnels end on this instead of hanging.
    pub closed: tokio_util::sync::CancellationToken,
}

/// The agent's HTTP application: the tunnel route and the Connect service, both behind the
/// control-plane token check.
/// The audience tokens must carry is the backend's host ID; `generation` is the host's
/// credential generation once it registered (see [`AuthState`]).
pub fn router(
    backend: Arc<dyn SandboxBackend>,
    verifier: CpVerifier,
    generation: Option<u64>,
) -> axum::Router {
    let host_id: Arc<str> = backend.host_facts().host_id.into();
    let tunnels = tunnel::router(backend.clone());
    let connect = connectrpc::Router::new().add_service(Arc::new(AgentService::new(backend)));
    // No response compression: file and process output is often incompressible, and gzip
    // of a 10 MiB ReadFile cost seconds of CPU on a host whose cores belong to the VMs.
    // Compressed requests are still accepted.
    let connect = connect
        .into_axum_service()
        .with_compression_policy(connectrpc::CompressionPolicy::disabled());
    tunnels
        .fallback_service(connect)
        .layer(axum::middleware::from_fn_with_state(
            AuthState {
                verifier,
                host_id,
                generation,
            },
            require_cp_token,
        ))
}

/// Serves `app` on `listener` until `shutdown` resolves, with `TCP_NODELAY` on every
/// connection: streams (exec output, PTY) are many small frames, and without it Nagle plus
/// the peer's delayed ACK adds ~40 ms to a round trip (measured on envd: 43 ms -> 4 ms).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// [`serve`] over TLS (the listener sets `TCP_NODELAY` itself).
pub async fn serve_tls(
    listener: wrenn_tls::TlsListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
