//! The control-plane HTTP server: configuration, shared state and the router.
//!
//! [`AppState`] owns the database, the JWT keys and the API-key cache and implements the
//! auth store traits of [`crate::auth::extract`], so handlers authenticate with the
//! extractors alone. Routes live in [`crate::api`], one module per resource.

pub mod secrets;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use wrenn_rpcauth::CpSigner;

use crate::agents::AgentPool;
use crate::auth::api_key::{ApiKeyCache, KeyPrincipal, new_key_cache};
use crate::auth::extract::{AuthBackend, HostStore, KeyStore, UserStore};
use crate::auth::jwt::{JwtKeyError, JwtKeys, UserClaims};
use crate::db::{Db, DbConfig, DbError};
use crate::error::ApiError;
use crate::ids::{ApiKeyId, HostId, TeamId};
use crate::scheduler::{Placement, Scheduler};

/// Default listen address (spec: `WRENN_CP_LISTEN_ADDR`, default `:8080`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `WRENN_DATA_DIR`: the SQLite file (unless `database_url`) and the secrets.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: PostgreSQL when set.
    pub database_url: Option<String>,
    /// With a certificate and key the listener serves HTTPS only.
    pub tls: Option<tls::TlsFiles>,
    /// `WRENN_DOMAIN`: what the E2B SDKs build URLs from (`api.<domain>`,
    /// `<port>-<id>.<domain>`); returned as the sandboxes' `domain`.
    pub domain: Option<String>,
    /// A second, plain-HTTP listener (loopback) for local clients without TLS: `wrenn up`'s
    /// agent and the CLI, whose HTTP client has no TLS.
    pub plain_listen: Option<SocketAddr>,
    /// How new sandboxes are placed among the hosts (`--placement`).
    pub placement: Placement,
    /// A host silent this long is `unreachable` and its sandboxes `missing`
    /// (`--host-stale-secs`; [`crate::hostmonitor::STALE_AFTER`] by default).
    pub host_stale_after: std::time::Duration,
    /// Who may sign up (`--signup open|closed|invite`).
    pub signup: crate::db::SignupGate,
}

/// [`DEFAULT_LISTEN`] and `/var/lib/wrenn`, plain HTTP, SQLite, no domain.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("/var/lib/wrenn"),
            database_url: None,
            tls: None,
            domain: None,
            plain_listen: None,
            placement: Placement::default(),
            host_stale_after: crate::hostmonitor::STALE_AFTER,
            signup: crate::db::SignupGate::Open,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("secrets: {0}")]
    Secrets(#[from] secrets::SecretError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("JWT keys: {0}")]
    Jwt(#[from] JwtKeyError),
    #[error("agent signing key: {0}")]
    AgentKey(#[from] wrenn_rpcauth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Serve(std::io::Error),
}

/// Everything a handler needs. Cheap to share: routers hold `Arc<AppState>`.
pub struct AppState {
    pub db: Db,
    pub jwt: JwtKeys,
    pub key_cache: ApiKeyCache,
    /// Clients of the host agents; signs every call with the key agents trust.
    pub agents: AgentPool,
    /// Picks the host of each new sandbox.
    pub scheduler: Scheduler,
    /// The E2B domain, when configured (see [`ServerConfig::domain`]).
    pub domain: Option<String>,
    /// Login/signup attempt limits and the password-hashing bound.
    pub auth_limits: crate::auth::limits::AuthLimits,
    /// Per-team bound on buffered `exec`s.
    pub exec_slots: crate::api::sandboxes::exec::ExecSlots,
    /// Who may sign up (`--signup`).
    pub signup: crate::db::SignupGate,
    /// The fingerprint of the certificate this control plane serves HTTPS with, handed out
    /// with host registration tokens (agents pin it).
    pub tls_fingerprint: Option<String>,
    /// The reconciler's memory of `pending` rows whose sandbox is already made.
    pub lost_creates: crate::api::sandboxes::LostCreates,
}

/// The configurable parts of [`AppState`].
#[derive(Debug, Clone, Default)]
pub struct StateOptions {
    /// See [`ServerConfig::domain`].
    pub domain: Option<String>,
    pub placement: Placement,
    pub signup: crate::db::SignupGate,
    /// See [`AppState::tls_fingerprint`].
    pub tls_fingerprint: Option<String>,
}

impl AppState {
    pub fn new(
        db: Db,
        jwt_secret: &[u8],
        agent_signer: CpSigner,
    ) -> Result<Arc<Self>, JwtKeyError> {
        Self::with_domain(db, jwt_secret, agent_signer, None)
    }

    pub fn with_domain(
        db: Db,
        jwt_secret: &[u8],
        agent_signer: CpSigner,
        domain: Option<String>,
    ) -> Result<Arc<Self>, JwtKeyError> {
        Self::with_options(
            db,
            jwt_secret,
            agent_signer,
            StateOptions {
                domain,
                ..Default::default()
            },
        )
    }

    pub fn with_options(
        db: Db,
        jwt_secret: &[u8],
        agent_signer: CpSigner,
        o: StateOptions,
    ) -> Result<Arc<Self>, JwtKeyError> {
        Ok(Arc::new(AppState {
            db,
            jwt: JwtKeys::from_secret(jwt_secret)?,
            key_cache: new_key_cache(),
            agents: AgentPool::new(Arc::new(agent_signer)),
            scheduler: Scheduler::with_placement(o.placement),
            domain: o.domain,
            signup: o.signup,
            tls_fingerprint: o.tls_fingerprint,
            auth_limits: Default::default(),
            exec_slots: Default::default(),
            lost_creates: Default::default(),
        }))
    }
}

/// Database errors of the auth lookups: a missing row is the caller's business; an
/// unreachable database is a 503 worth retrying, anything else a 500 with the cause in the
/// log.
fn lookup_err(e: DbError) -> ApiError {
    if e.is_unavailable() {
        crate::error::database_unavailable(e)
    } else {
        ApiError::internal(e)
    }
}

impl AuthBackend for AppState {
    fn jwt_keys(&self) -> &JwtKeys {
        &self.jwt
    }
}

impl UserStore for AppState {
    /// The user must still exist and still belong to the token's team; the role claim is not
    /// trusted for team management (handlers re-read it).
    async fn check_user(&self, claims: &UserClaims) -> Result<(), ApiError> {
        match self.db.role_of(&claims.team_id, &claims.sub).await {
            Ok(_) => Ok(()),
            Err(DbError::NotFound) => Err(ApiError::unauthorized(
                "account or team membership no longer exists",
            )),
            Err(e) => Err(lookup_err(e)),
        }
    }
}

impl KeyStore for AppState {
    fn key_cache(&self) -> &ApiKeyCache {
        &self.key_cache
    }

    async fn principal_for_key_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<KeyPrincipal>, ApiError> {
        let key = match self.db.api_key_by_hash(key_hash).await {
            Ok(k) => k,
            Err(DbError::NotFound) => return Ok(None),
            Err(e) => return Err(lookup_err(e)),
        };
        // Runs on cache misses only (every few seconds per key); debounced further in the db.
        if let Err(e) = self.db.touch_api_key(&key.id).await {
            tracing::warn!(error = %e, key_id = %key.id, "could not record API key use");
        }
        Ok(Some(KeyPrincipal {
            key_id: ApiKeyId::parse(&key.id).map_err(ApiError::internal)?,
            team_id: TeamId::parse(&key.team_id).map_err(ApiError::internal)?,
        }))
    }
}

impl HostStore for AppState {
    async fn check_host(&self, host_id: &HostId) -> Result<(), ApiError> {
        match self.db.host_by_id(host_id.as_str()).await {
            // Revoked credentials put the host back to pending until it registers again.
            Ok(h) if h.status == crate::db::HostStatus::Pending => {
                Err(ApiError::unauthorized("host credentials revoked"))
            }
            Ok(_) => Ok(()),
            // 404, not 401: the agent of a deleted host stops instead of refreshing.
            Err(DbError::NotFound) => Err(ApiError::not_found("host")),
            Err(e) => Err(lookup_err(e)),
        }
    }
}

/// The whole HTTP surface (API, `/openapi.json`, `/docs`, `/metrics`).
pub fn router(state: Arc<AppState>) -> Router {
    // The proxy goes first: a request that names a sandbox is the sandbox's, whatever its path.
    crate::api::router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::proxy::intercept,
        ))
        .with_state(state)
}

/// Opens the database, loads (or creates) the secrets, and serves until Ctrl-C / SIGTERM.
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let server = start(config).await?;
    shutdown_signal().await;
    server.stop().await
}

/// A control plane serving in this process (`wrenn server`, `wrenn up`, tests).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The plain-HTTP listener's address, when [`ServerConfig::plain_listen`] asked for one.
    pub plain_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// The API's URL: `https://api.<domain>:<port>` with TLS and a domain.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `http://<plain listener>`, when there is one.
    pub fn plain_url(&self) -> Option<String> {
        self.plain_addr.map(|a| format!("http://{a}"))
    }

    /// Graceful stop: in-flight requests finish, then the database closes.
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        let mut served = Ok(());
        for t in self.tasks {
            let r = t
                .await
                .map_err(|e| ServerError::Serve(std::io::Error::other(e)))?;
            if served.is_ok() {
                served = r;
            }
        }
        for t in self.background {
            t.abort();
        }
        self.state.db.close().await;
        served.map_err(ServerError::Serve)
    }
}

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// tokio's `bind` asks for 128: a burst of more clients connecting at once (200 in the load
/// benchmark) overflows that, and each dropped SYN costs its client a 1 s retransmit.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std and tokio's own `bind` do: a restarted server rebinds while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// The TCP peer of a connection (`ConnectInfo<PeerAddr>`), whichever listener accepted it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A listener that hands out [`PeerAddr`] (axum implements `Connected` for `SocketAddr` on
/// its own listener types only, not on ours, e.g. TLS).
struct Peers<L>(L);

impl<L: axum::serve::Listener> axum::serve::Listener for Peers<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    fn accept(&mut self) -> impl std::future::Future<Output = (Self::Io, Self::Addr)> + Send {
        self.0.accept()
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Peers<L>>>
    for PeerAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Peers<L>>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Serves `app` on `listener` until `stopped` turns true, then lets in-flight requests finish.
fn spawn_serve<L>(
    listener: L,
    app: Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    tokio::spawn(async move {
        // Peer addresses for the per-client limits (`auth::extract::ClientIp`).
        axum::serve(
            Peers(listener),
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    })
}

/// TCP_NODELAY: exec-stream and PTY WebSockets relay many small frames, and Nagle plus the
/// client's delayed ACK would hold each one back ~40 ms (measured on envd: 43 ms → 4 ms).
fn nodelay(listener: tokio::net::TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    })
}

/// Opens the database, loads (or creates) the secrets, binds and serves in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    // Files first: a bad certificate fails the start before anything else happens.
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    let tls_fingerprint = match &config.tls {
        Some(files) => tls::load_certs(&files.cert)?
            .first()
            .map(|leaf| wrenn_tls::fingerprint(leaf)),
        None => None,
    };
    let domain = config
        .domain
        .as_deref()
        .map(tls::normalize_domain)
        .transpose()?;
    let secrets = secrets::load_or_create(&config.data_dir)?;
    let db = Db::connect(DbConfig::new(
        &config.data_dir,
        config.database_url.clone(),
        &secrets.envd_key,
    ))
    .await?;
    crate::api::sandboxes::ensure_platform_templates(&db).await?;
    let signer = CpSigner::from_seed(&secrets.agent_signing_seed)?;
    let state = AppState::with_options(
        db.clone(),
        &secrets.jwt_secret,
        signer,
        StateOptions {
            domain: domain.clone(),
            placement: config.placement,
            signup: config.signup,
            tls_fingerprint: tls_fingerprint.clone(),
        },
    )?;
    // Brings rows in line with what the agents did on their own (deadlines, crashes).
    let reconciler = tokio::spawn(crate::api::sandboxes::run_reconciler(
        state.clone(),
        crate::api::sandboxes::RECONCILE_INTERVAL,
    ));
    // Hosts whose agent went silent → `unreachable`, their sandboxes → `missing`.
    let monitor = tokio::spawn(crate::hostmonitor::run(
        state.clone(),
        crate::hostmonitor::check_every(config.host_stale_after),
        config.host_stale_after,
    ));
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let plain = match config.plain_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let plain_addr = plain
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(ServerError::Serve)?;
    let url = match (&tls_config, &domain) {
        (Some(_), Some(d)) => format!("https://api.{d}:{}", addr.port()),
        (Some(_), None) => format!("https://{addr}"),
        (None, _) => format!("http://{addr}"),
    };
    let background = vec![crate::telemetry::spawn_upkeep(), reconciler, monitor];
    tracing::info!(%url, plain = ?plain_addr, tls_fingerprint = tls_fingerprint.as_deref(), data_dir = %config.data_dir.display(), backend = ?db.backend(), "control plane listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let mut tasks = Vec::new();
    match tls_config {
        Some(c) => {
            let listener = tls::TlsListener::new(listener, c).map_err(ServerError::Serve)?;
            tasks.push(spawn_serve(listener, app.clone(), stopped.clone()));
        }
        None => tasks.push(spawn_serve(nodelay(listener), app.clone(), stopped.clone())),
    }
    if let Some(p) = plain {
        tasks.push(spawn_serve(nodelay(p), app, stopped));
    }
    Ok(RunningServer {
        addr,
        plain_addr,
        state,
        url,
        stop,
        tasks,
        background,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still works.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
