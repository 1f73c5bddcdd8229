//! The control-plane HTTP server: configuration, shared state and the router.
//!
//! [`AppState`] owns the database, the JWT keys and the API-key cache and implements the
//! auth store traits of [`crate::auth::extract`], so handlers authenticate with the
//! extractors alone. Routes live in [`crate::api`], one module per resource.

pub mod secrets;

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
use crate::scheduler::Scheduler;

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
}

impl AppState {
    pub fn new(
        db: Db,
        jwt_secret: &[u8],
        agent_signer: CpSigner,
    ) -> Result<Arc<Self>, JwtKeyError> {
        Ok(Arc::new(AppState {
            db,
            jwt: JwtKeys::from_secret(jwt_secret)?,
            key_cache: new_key_cache(),
            agents: AgentPool::new(Arc::new(agent_signer)),
            scheduler: Scheduler::new(),
        }))
    }
}

/// Database errors of the auth lookups: a missing row is the caller's business, anything
/// else is a 503-worthy outage but surfaces as 500 with the cause in the log.
fn lookup_err(e: DbError) -> ApiError {
    ApiError::internal(e)
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
            Err(DbError::NotFound) => Err(ApiError::unauthorized("host no longer exists")),
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
    pub state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: in-flight requests finish, then the database closes.
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.stop.send(());
        let served = self
            .task
            .await
            .map_err(|e| ServerError::Serve(std::io::Error::other(e)))?;
        for t in self.background {
            t.abort();
        }
        self.state.db.close().await;
        served.map_err(ServerError::Serve)
    }
}

/// Opens the database, loads (or creates) the secrets, binds and serves in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let secrets = secrets::load_or_create(&config.data_dir)?;
    let db = Db::connect(DbConfig::new(
        &config.data_dir,
        config.database_url.clone(),
        &secrets.envd_key,
    ))
    .await?;
    crate::api::sandboxes::ensure_platform_templates(&db).await?;
    let signer = CpSigner::from_seed(&secrets.agent_signing_seed)?;
    let state = AppState::new(db.clone(), &secrets.jwt_secret, signer)?;
    // Brings rows in line with what the agents did on their own (deadlines, crashes).
    let reconciler = tokio::spawn(crate::api::sandboxes::run_reconciler(
        state.clone(),
        crate::api::sandboxes::RECONCILE_INTERVAL,
    ));
    // Hosts whose agent went silent → `unreachable`, their sandboxes → `missing`.
    let monitor = tokio::spawn(crate::hostmonitor::run(
        state.clone(),
        crate::hostmonitor::CHECK_EVERY,
        crate::hostmonitor::STALE_AFTER,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(url = %format!("http://{addr}"), data_dir = %config.data_dir.display(), backend = ?db.backend(), "control plane listening");
    let background = vec![crate::telemetry::spawn_upkeep(), reconciler, monitor];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(state.clone());
    // TCP_NODELAY: exec-stream and PTY WebSockets relay many small frames, and Nagle plus the
    // client's delayed ACK would hold each one back ~40 ms (measured on envd: 43 ms → 4 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        state,
        stop,
        task,
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
