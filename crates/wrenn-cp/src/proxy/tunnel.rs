//! The control plane's end of an agent tunnel: `GET /v1/tunnel/{sandbox}/{port}` upgraded to
//! a byte stream that the agent splices onto a TCP connection to that port of the guest.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::agents::Agent;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An agent's refusal is a short JSON body; anything longer is cut.
const MAX_ERROR_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The agent did not answer (down, refused, timed out).
    #[error("host agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered with an error instead of switching protocols.
    #[error("host agent refused the tunnel ({status}): {message}")]
    Refused {
        status: u16,
        /// The Connect code string of the agent's JSON body (`not_found`, `unavailable`...).
        code: String,
        message: String,
    },
}

/// Opens a tunnel to `port` of sandbox `id` on `agent`'s host.
pub async fn open(agent: &Agent, id: &str, port: u16) -> Result<Upgraded, TunnelError> {
    let base = agent.base();
    let host = base.host().unwrap_or("127.0.0.1");
    let tls = agent.tunnel_tls();
    let agent_port = base
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addr = format!("{}:{agent_port}", host.trim_matches(['[', ']']));
    // TCP, then TLS to the agent's pinned certificate when it serves TLS.
    let io = tokio::time::timeout(
        CONNECT_TIMEOUT,
        wrenn_tls::client::connect(host, agent_port, tls),
    )
    .await
    .map_err(|_| TunnelError::Unreachable(format!("connect to {addr} timed out")))?
    .map_err(|e| TunnelError::Unreachable(format!("connect to {addr}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| TunnelError::Unreachable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent tunnel connection");
        }
    });
    let req = hyper::Request::get(format!("/v1/tunnel/{id}/{port}"))
        .header(hyper::header::HOST, addr.as_str())
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, "wrenn-tunnel")
        .header(hyper::header::AUTHORIZATION, agent.bearer())
        .body(Empty::<Bytes>::new())
        .map_err(|e| TunnelError::Unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| TunnelError::Unreachable("the agent did not answer in time".into()))?
        .map_err(|e| TunnelError::Unreachable(e.to_string()))?;
    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        return hyper::upgrade::on(resp)
            .await
            .map_err(|e| TunnelError::Unreachable(e.to_string()));
    }
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Err(TunnelError::Refused {
        status,
        code: v["code"].as_str().unwrap_or("").to_owned(),
        message: v["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&body).into_owned(),
            str::to_owned,
        ),
    })
}
