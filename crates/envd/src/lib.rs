//! envd: the agent inside every Wrenn sandbox.
//!
//! It speaks the E2B envd protocol exactly (Connect RPC `process.Process` and
//! `filesystem.Filesystem` with the JSON codec over HTTP/1.1, plus `/health`, `/files`,
//! `/init`, `/envs`, `/metrics`), so the official E2B SDKs drive it unchanged. It owns the
//! processes it starts (and, as PID 1 or a subreaper, reaps every orphan) and the guest
//! filesystem as seen by the requesting user. It must not know about hosts, the control
//! plane or the VMM: everything it learns about its sandbox arrives through `POST /init`.

pub mod auth;
pub mod config;
pub mod filesystem;
pub mod guest;
pub mod http;
pub mod paths;
pub mod process;
pub mod reaper;
pub mod state;
pub mod users;

use std::sync::Arc;

use anyhow::Context;
pub use config::Config;
use state::EnvdState;
use tokio::net::TcpListener;

/// envd protocol version advertised to SDKs; every feature gated up to it is implemented.
pub const ENVD_VERSION: &str = "0.6.4";

/// Sets up `tracing` from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Builds the complete envd HTTP application (Connect services and plain routes).
pub fn app(state: Arc<EnvdState>) -> axum::Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(process::ProcessService::new(state.clone())))
        .add_service(Arc::new(filesystem::FilesystemService::new(state.clone())));
    let connect = connect
        .into_axum_service()
        .with_limits(config::connect_limits());
    http::router(state.clone())
        .fallback_service(connect)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::access_token_layer,
        ))
        .layer(tower_http::cors::CorsLayer::very_permissive())
}

/// Runs envd until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    reaper::become_subreaper();
    let reaper = reaper::Reaper::start().context("start child reaper")?;
    let state = Arc::new(EnvdState::new(&config, reaper).context("initial state")?);
    let listener = TcpListener::bind((config.addr.as_str(), config.port))
        .await
        .with_context(|| format!("bind {}:{}", config.addr, config.port))?;
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        version = ENVD_VERSION,
        default_user = %config.default_user,
        pid1 = std::process::id() == 1,
        "envd listening"
    );
    // Streams are many small frames; without TCP_NODELAY, Nagle plus the peer's delayed ACK
    // adds ~40 ms to a round trip.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // PID 1 ignores signals without a handler, so handle both explicitly.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}
