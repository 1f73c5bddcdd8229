//! `GET /v1/tunnel/{sandbox_id}/{port}`: a raw TCP tunnel from the control plane to a port of
//! a sandbox's guest (E2B SDK traffic, WebSockets, the tenant's own servers). The request is
//! an HTTP/1.1 upgrade (`Connection: upgrade`, `Upgrade: wrenn-tunnel`) carrying the usual
//! control-plane token; the agent connects to the guest first, then answers `101 Switching
//! Protocols` and copies bytes both ways until both sides close, or until the sandbox is
//! paused or destroyed. Refusals are Connect error JSON (`code`, `message`): 400
//! `invalid_argument`, 404 `not_found`, 409 `failed_precondition`, 429 `resource_exhausted`,
//! 502 `unavailable`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use connectrpc::{ConnectError, ErrorCode};
use http::{HeaderMap, HeaderName, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{BackendError, SandboxBackend};

/// The `Upgrade` protocol token.
pub const PROTOCOL: &str = "wrenn-tunnel";
/// Open tunnels allowed into one sandbox: each holds two sockets and a task on the agent,
/// and a hostile tenant must not exhaust them.
pub const MAX_TUNNELS_PER_SANDBOX: usize = 256;
/// How long the agent tries to reach the guest port before answering 502.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Open tunnels per sandbox ID; only IDs the backend knew are counted, so it stays small.
type OpenCounts = Arc<Mutex<HashMap<String, usize>>>;

#[derive(Clone)]
struct TunnelState {
    backend: Arc<dyn SandboxBackend>,
    open: OpenCounts,
}

/// The tunnel route (the caller puts it behind the control-plane token check).
pub(super) fn router(backend: Arc<dyn SandboxBackend>) -> axum::Router {
    axum::Router::new()
        .route("/v1/tunnel/{sandbox_id}/{port}", axum::routing::get(open))
        .with_state(TunnelState {
            backend,
            open: OpenCounts::default(),
        })
}

/// One counted tunnel; dropping it frees the place.
struct Slot {
    open: OpenCounts,
    id: String,
}

impl Slot {
    fn take(open: &OpenCounts, id: &str) -> Option<Slot> {
        let mut m = open.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(id.to_owned()).or_insert(0);
        if *n >= MAX_TUNNELS_PER_SANDBOX {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// A refusal: Connect error JSON with an explicit status.
fn refuse(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        ConnectError::new(code, message).to_json(),
    )
        .into_response()
}

fn invalid(message: String) -> Response {
    refuse(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn backend_refusal(id: &str, e: BackendError) -> Response {
    match e {
        BackendError::NotFound(_) => refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("sandbox {id} was not found"),
        ),
        BackendError::FailedPrecondition(m) => {
            refuse(StatusCode::CONFLICT, ErrorCode::FailedPrecondition, m)
        }
        BackendError::AlreadyExists(m) => refuse(StatusCode::CONFLICT, ErrorCode::AlreadyExists, m),
        BackendError::InvalidArgument(m) => invalid(m),
        BackendError::ResourceExhausted(m) => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            m,
        ),
        BackendError::Internal(m) => {
            warn!(sandbox_id = %id, error = %m, "tunnel: backend failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, m)
        }
    }
}

async fn open(
    State(st): State<TunnelState>,
    path: Result<Path<(String, String)>, PathRejection>,
    mut req: Request,
) -> Response {
    let Path((id, port)) = match path {
        Ok(p) => p,
        Err(e) => return invalid(e.body_text()),
    };
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
        return invalid(format!("port must be 1-65535, got {port:?}"));
    };
    if !lists(req.headers(), header::UPGRADE, PROTOCOL)
        || !lists(req.headers(), header::CONNECTION, "upgrade")
    {
        return invalid(format!(
            "a tunnel needs the headers Connection: upgrade and Upgrade: {PROTOCOL}"
        ));
    }
    // hyper puts this here only for an HTTP/1.1 request asking to upgrade.
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return invalid("a tunnel needs an HTTP/1.1 upgrade".into());
    };
    let target = match st.backend.tunnel_target(&id).await {
        Ok(t) => t,
        Err(e) => return backend_refusal(&id, e),
    };
    let Some(slot) = Slot::take(&st.open, &id) else {
        warn!(sandbox_id = %id, port, limit = MAX_TUNNELS_PER_SANDBOX, "tunnel refused: too many open");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            format!("sandbox {id} has {MAX_TUNNELS_PER_SANDBOX} tunnels open, the most allowed"),
        );
    };
    let addr = SocketAddr::new(target.ip, port);
    let connected = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => r,
        () = target.closed.cancelled() => {
            return refuse(
                StatusCode::CONFLICT,
                ErrorCode::FailedPrecondition,
                format!("sandbox {id} stopped running"),
            );
        }
    };
    let guest = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(sandbox_id = %id, port, error = %e, "tunnel: guest port refused");
            return not_open(&id, port);
        }
        Err(_) => {
            debug!(sandbox_id = %id, port, "tunnel: guest port connect timed out");
            return not_open(&id, port);
        }
    };
    // Interactive traffic (terminals, WebSockets) is small writes; the control plane's side
    // of the tunnel already has TCP_NODELAY (`serve`).
    if let Err(e) = guest.set_nodelay(true) {
        debug!(sandbox_id = %id, port, error = %e, "TCP_NODELAY on the guest socket");
    }
    debug!(sandbox_id = %id, port, "tunnel open");
    tokio::spawn(relay(id, port, on_upgrade, guest, target.closed, slot));
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, PROTOCOL)],
    )
        .into_response()
}

fn not_open(id: &str, port: u16) -> Response {
    refuse(
        StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable,
        format!("port {port} is not open in sandbox {id}"),
    )
}

/// Copies bytes both ways once hyper hands over the connection; holds `_slot` meanwhile.
async fn relay(
    id: String,
    port: u16,
    on_upgrade: OnUpgrade,
    mut guest: TcpStream,
    closed: CancellationToken,
    _slot: Slot,
) {
    let upgraded = tokio::select! {
        r = on_upgrade => match r {
            Ok(u) => u,
            Err(e) => {
                debug!(sandbox_id = %id, port, error = %e, "tunnel: upgrade failed");
                return;
            }
        },
        () = closed.cancelled() => return,
    };
    let mut client = TokioIo::new(upgraded);
    let started = Instant::now();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut guest) => match r {
            Ok((to_guest, from_guest)) => debug!(
                sandbox_id = %id, port, to_guest, from_guest,
                ms = started.elapsed().as_millis() as u64, "tunnel closed"
            ),
            Err(e) => debug!(sandbox_id = %id, port, error = %e, "tunnel broke"),
        },
        // Dropping both ends closes the control plane's connection now.
        () = closed.cancelled() => debug!(
            sandbox_id = %id, port, "tunnel ended: the sandbox stopped running"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.append(header::UPGRADE, "WRENN-TUNNEL".parse().unwrap());
        assert!(lists(&h, header::CONNECTION, "upgrade"));
        assert!(lists(&h, header::UPGRADE, PROTOCOL));
        assert!(!lists(&h, header::UPGRADE, "websocket"));
        assert!(!lists(&HeaderMap::new(), header::UPGRADE, PROTOCOL));
    }

    #[test]
    fn slots_are_bounded_per_sandbox_and_freed_on_drop() {
        let open = OpenCounts::default();
        let held: Vec<Slot> = (0..MAX_TUNNELS_PER_SANDBOX)
            .map(|_| Slot::take(&open, "a").expect("a place"))
            .collect();
        assert!(Slot::take(&open, "a").is_none());
        let other = Slot::take(&open, "b").expect("another sandbox has its own");
        drop(held);
        assert!(Slot::take(&open, "a").is_some());
        drop(other);
        assert!(
            open.lock().unwrap().is_empty(),
            "no entry outlives its tunnels"
        );
    }
}
