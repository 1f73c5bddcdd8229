//! The sandbox traffic proxy: HTTP to a port of a sandbox, on the API's own port. A request
//! is the proxy's when it names a sandbox — by the `E2b-Sandbox-Id` / `E2b-Sandbox-Port`
//! headers (what the E2B SDKs send with `E2B_SANDBOX_URL`) or by a `<port>-<id>.<domain>`
//! host name — and the API's otherwise.
//!
//! The path of one request: find the sandbox (any team: the guest's port is what is being
//! addressed) → the caller's token (envd's port: the sandbox's access token; a private
//! sandbox's other ports: its traffic token) → resume it if it is paused and asked for that,
//! never before the token passed → a tunnel through its host's agent ([`tunnel`]) → HTTP/1.1 over
//! the tunnel, bodies streamed both ways, a WebSocket (or any) upgrade spliced through.
//! Failures answer the 502 bodies the SDKs map onto their exceptions.

pub mod tunnel;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;

use crate::db::{DbError, SandboxStatus};
use crate::ids::SandboxId;
use crate::server::AppState;

/// envd's port in every guest.
pub const ENVD_PORT: u16 = 49983;

const SANDBOX_ID: &str = "e2b-sandbox-id";
const SANDBOX_PORT: &str = "e2b-sandbox-port";
const ACCESS_TOKEN: &str = "x-access-token";
const TRAFFIC_TOKEN: &str = "e2b-traffic-access-token";

/// Which sandbox and port a request is for.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    id: String,
    port: u16,
}

/// The request's target, if it names one. A malformed port header is still the proxy's
/// (it answers 400), never the API's.
fn target(headers: &HeaderMap) -> Option<Result<Target, &'static str>> {
    if let Some(id) = headers.get(SANDBOX_ID) {
        let id = id.to_str().unwrap_or("").to_owned();
        let port = match headers.get(SANDBOX_PORT) {
            None => Ok(ENVD_PORT),
            Some(p) => p
                .to_str()
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or("E2b-Sandbox-Port must be a port number"),
        };
        return Some(port.map(|port| Target { id, port }));
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let label = host.split('.').next()?;
    // `<port>-<id>.<domain>`: at least one more label after the first.
    if !host.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    SandboxId::parse(id).ok()?;
    Some(Ok(Target {
        id: id.to_owned(),
        port,
    }))
}

/// Middleware in front of the whole router: proxied requests never reach the API's routes.
pub async fn intercept(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match target(req.headers()) {
        None => next.run(req).await,
        Some(Err(msg)) => json(StatusCode::BAD_REQUEST, None, msg),
        Some(Ok(t)) => forward(&st, t, req).await,
    }
}

/// The JSON body of every answer the proxy itself gives.
fn json(status: StatusCode, sandbox: Option<&str>, message: &str) -> Response {
    let mut body = serde_json::json!({"code": status.as_u16(), "message": message});
    if let Some(id) = sandbox {
        body["sandboxId"] = id.into();
    }
    (status, axum::Json(body)).into_response()
}

/// What the SDKs turn into `SandboxNotRunningException` ("was not found").
fn not_running(id: &str) -> Response {
    json(
        StatusCode::BAD_GATEWAY,
        Some(id),
        &format!("The sandbox {id} was not found"),
    )
}

/// What the SDKs turn into `SandboxUnreachableException` ("port is not open").
fn port_closed(id: &str, port: u16) -> Response {
    json(
        StatusCode::BAD_GATEWAY,
        Some(id),
        &format!("The sandbox {id} is running but port {port} is not open"),
    )
}

async fn forward(st: &AppState, t: Target, mut req: Request) -> Response {
    let Ok(id) = SandboxId::parse(&t.id) else {
        return not_running(&t.id);
    };
    let mut sb = match st.db.get_sandbox_any_team(id.as_str()).await {
        Ok(sb) => sb,
        Err(DbError::NotFound) => return not_running(id.as_str()),
        Err(e) => {
            tracing::error!(sandbox = %id, error = %e, "proxy: sandbox lookup");
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id.as_str()),
                "try again",
            );
        }
    };
    let wake = sb.status == SandboxStatus::Paused && sb.auto_resume;
    if sb.status != SandboxStatus::Running && !wake {
        return not_running(id.as_str());
    }
    // The caller's credentials before the resume: one who may not reach the sandbox must not
    // wake it either (an unauthenticated request would otherwise resume it on its host).
    // envd checks its token itself; refusing here as well keeps unauthenticated traffic off
    // the host. `/health` is open (as in envd) and `/files` may carry a signature instead.
    let allowed = match (t.port == ENVD_PORT).then(|| envd_open_route(&req)) {
        None | Some(Ok(())) => true,
        Some(Err(None)) => false,
        Some(Err(Some(given))) => token_matches(st, &sb.id, given).await,
    };
    if !allowed {
        return json(
            StatusCode::UNAUTHORIZED,
            Some(id.as_str()),
            "missing or invalid X-Access-Token",
        );
    }
    // Every other port is public unless the sandbox was made private.
    if t.port != ENVD_PORT {
        let given = req.headers().get(TRAFFIC_TOKEN).cloned();
        if let Some(refused) = traffic_refused(st, &sb.id, given).await {
            return json(refused.0, Some(id.as_str()), refused.1);
        }
    }
    if wake {
        match crate::api::sandboxes::auto_resume(st, sb).await {
            Ok(resumed) => sb = resumed,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "proxy: auto-resume failed");
                return not_running(id.as_str());
            }
        }
        if sb.status != SandboxStatus::Running {
            return not_running(id.as_str());
        }
    }
    let Some(host_id) = sb.host_id.as_deref() else {
        return not_running(id.as_str());
    };
    let agent = match agent_for(st, host_id).await {
        Some(a) => a,
        None => return not_running(id.as_str()),
    };
    if let Err(e) = st.db.touch_sandbox(&sb.id).await {
        tracing::debug!(sandbox = %id, error = %e, "proxy: activity");
    }
    let io = match tunnel::open(&agent, id.as_str(), t.port).await {
        Ok(io) => io,
        Err(tunnel::TunnelError::Refused { code, message, .. }) if code == "unavailable" => {
            tracing::debug!(sandbox = %id, port = t.port, %message, "proxy: port closed");
            return port_closed(id.as_str(), t.port);
        }
        Err(e) => {
            tracing::warn!(sandbox = %id, port = t.port, error = %e, "proxy: no tunnel");
            return not_running(id.as_str());
        }
    };
    let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "proxy: handshake over the tunnel");
            return port_closed(id.as_str(), t.port);
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection");
        }
    });
    let out = outgoing(req, client_upgrade.is_some());
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(sandbox = %id, error = %e, "proxy: guest did not answer");
            return port_closed(id.as_str(), t.port);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade
    {
        let guest = hyper::upgrade::on(&mut resp);
        let sid = sb.id.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client, guest) {
                Ok((c, g)) => {
                    let (mut c, mut g) = (TokioIo::new(c), TokioIo::new(g));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut g).await {
                        tracing::debug!(sandbox = %sid, error = %e, "proxied upgrade ended");
                    }
                }
                Err(e) => tracing::debug!(sandbox = %sid, error = %e, "proxy: upgrade failed"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    Response::from_parts(parts, Body::new(body))
}

async fn agent_for(st: &AppState, host_id: &str) -> Option<crate::agents::Agent> {
    let host = match st.agents.cached_host(host_id) {
        Some(h) => h,
        None => {
            let h = st.db.host_by_id(host_id).await.ok()?;
            st.agents.remember_host(h.clone());
            h
        }
    };
    st.agents.agent(&host).ok()
}

/// Whether a request to envd's port may pass: `None` when it needs its token checked.
fn envd_open_route(req: &Request) -> Result<(), Option<axum::http::HeaderValue>> {
    let path = req.uri().path();
    if path == "/health"
        || (path == "/files" && req.uri().query().is_some_and(|q| q.contains("signature=")))
    {
        return Ok(());
    }
    Err(req.headers().get(ACCESS_TOKEN).cloned())
}

async fn token_matches(st: &AppState, id: &str, given: axum::http::HeaderValue) -> bool {
    match st.db.sandbox_envd_token(id).await {
        Ok(Some(token)) => bool::from(given.as_bytes().ct_eq(token.as_bytes())),
        // No token set: envd is open.
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Why a request to a private sandbox's port is refused: 401 without its traffic token, 403
/// with another one. `None`: it may pass.
async fn traffic_refused(
    st: &AppState,
    id: &str,
    given: Option<axum::http::HeaderValue>,
) -> Option<(StatusCode, &'static str)> {
    let token = match st.db.sandbox_traffic_token(id).await {
        Ok(None) => return None,
        Ok(Some(t)) => t,
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "proxy: traffic token lookup");
            return Some((StatusCode::SERVICE_UNAVAILABLE, "try again"));
        }
    };
    match given {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "this sandbox's ports are private: send its traffic access token in E2b-Traffic-Access-Token",
        )),
        Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => None,
        Some(_) => Some((StatusCode::FORBIDDEN, "invalid traffic access token")),
    }
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); an upgrade
/// keeps `Connection`/`Upgrade`, which is how it travels.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !upgrade || *n != header::UPGRADE)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// The request as the guest gets it: origin-form URI, the proxy's own headers gone.
fn outgoing(req: Request, upgrade: bool) -> hyper::Request<Body> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(SANDBOX_ID);
    parts.headers.remove(SANDBOX_PORT);
    // The guest's server has no business seeing the proxy's credential.
    parts.headers.remove(TRAFFIC_TOKEN);
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = pq
        .parse()
        .unwrap_or_else(|_| axum::http::Uri::from_static("/"));
    parts.version = axum::http::Version::HTTP_11;
    hyper::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn targets() {
        let id = "abcdefghij0123456789";
        assert_eq!(
            target(&h(&[(SANDBOX_ID, id)])),
            Some(Ok(Target {
                id: id.into(),
                port: ENVD_PORT
            }))
        );
        assert_eq!(
            target(&h(&[(SANDBOX_ID, id), (SANDBOX_PORT, "8000")])),
            Some(Ok(Target {
                id: id.into(),
                port: 8000
            }))
        );
        assert!(matches!(
            target(&h(&[(SANDBOX_ID, id), (SANDBOX_PORT, "x")])),
            Some(Err(_))
        ));
        assert_eq!(
            target(&h(&[("host", &format!("8000-{id}.wrenn.test:8443"))])),
            Some(Ok(Target {
                id: id.into(),
                port: 8000
            }))
        );
        // The API's own names are never a sandbox's.
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "api.wrenn.test",
            "8000-short.wrenn.test",
            &format!("0-{id}.wrenn.test"),
            &format!("8000-{id}"),
        ] {
            assert_eq!(target(&h(&[("host", host)])), None, "{host}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut m = h(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut m, false);
        assert_eq!(m.len(), 1, "{m:?}");
        let mut m = h(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut m, true);
        assert!(m.contains_key("upgrade") && m.contains_key("connection"));
    }
}
