//! The control plane's side of CP → agent RPC: one Connect client per host over a shared
//! HTTP connection pool, and a short-lived token on every call (one signed token is reused
//! for a host while it has at least half its life left; signing costs ~50 µs).
//!
//! Tokens are Ed25519 JWTs of [`wrenn_rpcauth`] with the host as audience and the host's
//! credential generation, so revoking a host's credentials (`hosts.credential_gen` moves on)
//! makes its agent refuse every call we sign afterwards with 401 `unauthenticated`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectrpc::client::{
    CallOptions, ClientBody, ClientConfig, ClientTransport, Http2Connection, HttpClient,
    SharedHttp2Connection,
};
use connectrpc::{ConnectError, ErrorCode as RpcCode};
use http::Uri;
use wrenn_proto::hostagent::v1::HostAgentServiceClient;
use wrenn_rpcauth::CpSigner;

use crate::db::Host;
use crate::error::{ApiError, ErrorCode};

/// Lifetime of the token of one call; streams (exec, PTY, files) are authenticated when
/// they open, so a short life does not cut them off.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// A signed token is reused for calls to the same host (and generation) this long.
pub const TOKEN_REUSE: Duration = Duration::from_secs(TOKEN_TTL.as_secs() / 2);
/// How long a host row read for a call may be reused. Revocation on this server forgets it at
/// once; another control-plane replica may sign with the old generation for this long.
pub const HOST_CACHE_TTL: Duration = Duration::from_secs(2);

/// Deadline of a unary call unless the caller gives its own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The generated Connect client of `hostagent.v1.HostAgentService`.
pub type RpcClient = HostAgentServiceClient<AgentTransport>;

/// How calls reach an agent: plain HTTP (pooled; agents on loopback), or one multiplexed
/// HTTP/2 connection over TLS that accepts only the agent's pinned certificate.
#[derive(Clone)]
pub enum AgentTransport {
    /// Boxed: the pooled client is large, and clients are cloned per call.
    Plain(Box<HttpClient>),
    Tls(SharedHttp2Connection),
}

impl ClientTransport for AgentTransport {
    type ResponseBody = hyper::body::Incoming;
    type Error = ConnectError;

    fn send(
        &self,
        request: http::Request<ClientBody>,
    ) -> futures::future::BoxFuture<'static, Result<http::Response<Self::ResponseBody>, Self::Error>>
    {
        match self {
            AgentTransport::Plain(c) => c.send(request),
            AgentTransport::Tls(c) => c.send(request),
        }
    }
}

/// Requests queued for a TLS agent's connection before callers wait.
const TLS_QUEUE: usize = 1024;

/// A failed call to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host {host_id} has no usable agent address {address:?}")]
    BadAddress { host_id: String, address: String },
    /// An `https://` agent without a pinned certificate (or a pin rustls refuses).
    #[error("host {host_id}: no usable TLS pin for its agent: {reason}")]
    Tls { host_id: String, reason: String },
    #[error("host {host_id}: {error}")]
    Rpc {
        host_id: String,
        #[source]
        error: ConnectError,
    },
}

impl AgentError {
    /// Wraps a Connect error of a call to `host_id`.
    pub fn rpc(host_id: &str, error: ConnectError) -> Self {
        AgentError::Rpc {
            host_id: host_id.to_owned(),
            error,
        }
    }

    /// The Connect code, when the agent (or the transport) gave one.
    pub fn code(&self) -> Option<RpcCode> {
        match self {
            AgentError::Rpc { error, .. } => Some(error.code),
            AgentError::BadAddress { .. } | AgentError::Tls { .. } => None,
        }
    }

    /// The agent's message (without our prefix).
    pub fn message(&self) -> String {
        match self {
            AgentError::Rpc { error, .. } => error.message.clone().unwrap_or_default(),
            e => e.to_string(),
        }
    }
}

/// How an agent's answer reaches the API caller. Codes that describe the caller's request
/// (bad argument, missing object, wrong state) keep their meaning; the rest say the host
/// failed, without its internals.
/// Longest agent message passed on to a tenant.
const MAX_TENANT_MESSAGE: usize = 300;

impl From<AgentError> for ApiError {
    /// Codes that describe the request (bad argument, not found, wrong state ...) keep the
    /// agent's message, which is about the sandbox (cut to [`MAX_TENANT_MESSAGE`]); the
    /// others get a fixed one: a host failure's details (paths, addresses, command output)
    /// are the operator's, in the log.
    fn from(e: AgentError) -> Self {
        tracing::warn!(error = %e, "agent call failed");
        let msg = || -> String {
            let m = e.message();
            match m.char_indices().nth(MAX_TENANT_MESSAGE) {
                Some((i, _)) => format!("{}…", &m[..i]),
                None => m,
            }
        };
        match e.code() {
            Some(RpcCode::InvalidArgument | RpcCode::OutOfRange) => {
                ApiError::invalid_request(msg())
            }
            Some(RpcCode::NotFound) => ApiError::new(ErrorCode::NotFound, msg()),
            Some(RpcCode::FailedPrecondition) => ApiError::invalid_state(msg()),
            Some(RpcCode::AlreadyExists) => ApiError::conflict(msg()),
            Some(RpcCode::PermissionDenied) => ApiError::forbidden(msg()),
            // The contract's 502 `host_unavailable`: the request was fine, the host was not.
            Some(RpcCode::Unavailable | RpcCode::DeadlineExceeded) | None => ApiError::new(
                ErrorCode::HostUnavailable,
                "the sandbox's host did not answer; retry later",
            ),
            Some(RpcCode::Unauthenticated) => ApiError::new(
                ErrorCode::AgentError,
                "the host refused the control plane's credentials",
            ),
            Some(RpcCode::ResourceExhausted) => ApiError::new(
                ErrorCode::AgentError,
                "the sandbox's host is out of resources (disk or memory) for this operation",
            ),
            Some(_) => ApiError::new(
                ErrorCode::AgentError,
                "the sandbox's host failed the operation; details are in the host's log",
            ),
        }
    }
}

/// Signed `Authorization` values per host, reused for [`TOKEN_REUSE`].
struct Tokens {
    signer: Arc<CpSigner>,
    /// host → (generation, signed at, `Bearer <token>`)
    cache: Mutex<HashMap<String, (u64, std::time::Instant, String)>>,
}

impl Tokens {
    fn bearer(&self, host_id: &str, generation: u64) -> String {
        let now = std::time::Instant::now();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((g, at, v)) = cache.get(host_id)
            && *g == generation
            && now.saturating_duration_since(*at) < TOKEN_REUSE
        {
            return v.clone();
        }
        let token = self
            .signer
            .sign_generation(host_id, TOKEN_TTL, Some(generation));
        let v = format!("Bearer {token}");
        // Bounded by the number of hosts.
        cache.insert(host_id.to_owned(), (generation, now, v.clone()));
        v
    }
}

/// What a host's calls go through, cached per host.
#[derive(Clone)]
struct HostClient {
    /// The address and pin it was made for: a change makes a new one.
    address: String,
    fingerprint: Option<String>,
    rpc: RpcClient,
    /// For the sandbox proxy's tunnels (HTTP/1.1 upgrade); `None` for plain agents.
    tunnel_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Clients of every host this control plane talks to.
pub struct AgentPool {
    signer: Arc<CpSigner>,
    tokens: Arc<Tokens>,
    /// Plain HTTP: agents on loopback. Agents over TLS get a client of their own, which
    /// trusts only their pinned certificate.
    http: HttpClient,
    clients: Mutex<HashMap<String, HostClient>>,
    hosts: Mutex<HashMap<String, (std::time::Instant, Host)>>,
}

impl std::fmt::Debug for AgentPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPool").finish_non_exhaustive()
    }
}

impl AgentPool {
    pub fn new(signer: Arc<CpSigner>) -> Self {
        AgentPool {
            tokens: Arc::new(Tokens {
                signer: signer.clone(),
                cache: Mutex::new(HashMap::new()),
            }),
            signer,
            http: HttpClient::plaintext(),
            clients: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A host row read less than [`HOST_CACHE_TTL`] ago.
    pub fn cached_host(&self, host_id: &str) -> Option<Host> {
        let hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hosts
            .get(host_id)
            .filter(|(at, _)| at.elapsed() < HOST_CACHE_TTL)
            .map(|(_, h)| h.clone())
    }

    pub fn remember_host(&self, host: Host) {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded by the number of hosts; stale entries are replaced on the next read.
        hosts.insert(host.id.clone(), (std::time::Instant::now(), host));
    }

    /// Drops a host's cached row (its credentials or address changed).
    pub fn forget_host(&self, host_id: &str) {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(host_id);
    }

    /// Drops everything held for a deleted host: its cached row and its client.
    pub fn evict_host(&self, host_id: &str) {
        self.forget_host(host_id);
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(host_id);
    }

    /// The public half of the signing key (handed to agents at registration).
    pub fn public_key_pem(&self) -> &str {
        self.signer.public_key_pem()
    }

    /// The agent of `host`. Cheap: the client is cached per host (and rebuilt when the
    /// host's address changed); connections are pooled.
    pub fn agent(&self, host: &Host) -> Result<Agent, AgentError> {
        let base = base_uri(&host.address).ok_or_else(|| AgentError::BadAddress {
            host_id: host.id.clone(),
            address: host.address.clone(),
        })?;
        let client = {
            let mut clients = self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match clients.get(&host.id) {
                Some(c) if c.address == host.address && c.fingerprint == host.tls_fingerprint => {
                    c.clone()
                }
                _ => {
                    let c = self.host_client(host, base.clone())?;
                    clients.insert(host.id.clone(), c.clone());
                    c
                }
            }
        };
        Ok(Agent {
            host_id: host.id.clone(),
            generation: u64::try_from(host.credential_gen).unwrap_or(0),
            client: client.rpc,
            tunnel_tls: client.tunnel_tls,
            tokens: self.tokens.clone(),
            base,
        })
    }

    /// A client for `host`: over TLS to its pinned certificate when its address is
    /// `https://` (registration refuses plain addresses off loopback).
    fn host_client(&self, host: &Host, base: Uri) -> Result<HostClient, AgentError> {
        let tls_err = |reason: String| AgentError::Tls {
            host_id: host.id.clone(),
            reason,
        };
        // Binary protobuf: the agent relays file chunks and process output.
        let cfg = ClientConfig::new(base.clone()).proto();
        let (rpc, tunnel_tls) = if base.scheme_str() == Some("https") {
            let fp = host
                .tls_fingerprint
                .as_deref()
                .ok_or_else(|| tls_err("it registered no certificate fingerprint".into()))?;
            let pinned = |alpn: &[&[u8]]| {
                wrenn_tls::client_config(fp, alpn)
                    .map(Arc::new)
                    .map_err(|e| tls_err(e.to_string()))
            };
            let (rpc_tls, tunnel_tls) = (pinned(&[b"h2"])?, pinned(&[b"http/1.1"])?);
            let (host, port) = (
                base.host().unwrap_or_default().to_owned(),
                base.port_u16().unwrap_or(443),
            );
            let dial = tower::service_fn(move |_: Uri| {
                let (host, tls) = (host.clone(), rpc_tls.clone());
                async move {
                    let io = wrenn_tls::client::connect(&host, port, Some(&tls)).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
                }
            });
            let conn = Http2Connection::lazy_with_connector(dial, base.clone()).shared(TLS_QUEUE);
            (
                RpcClient::new(AgentTransport::Tls(conn), cfg),
                Some(tunnel_tls),
            )
        } else {
            (
                RpcClient::new(AgentTransport::Plain(Box::new(self.http.clone())), cfg),
                None,
            )
        };
        Ok(HostClient {
            address: host.address.clone(),
            fingerprint: host.tls_fingerprint.clone(),
            rpc,
            tunnel_tls,
        })
    }
}

/// `ip:port` → `http://ip:port`; an `http(s)://` URL as given.
pub fn base_uri(address: &str) -> Option<Uri> {
    let a = address.trim();
    if a.is_empty() {
        return None;
    }
    let url = if a.contains("://") {
        a.to_owned()
    } else {
        format!("http://{a}")
    };
    let uri: Uri = url.parse().ok()?;
    uri.host()?;
    Some(uri)
}

/// One host's agent, ready to call.
#[derive(Clone)]
pub struct Agent {
    host_id: String,
    generation: u64,
    client: RpcClient,
    tunnel_tls: Option<Arc<rustls::ClientConfig>>,
    tokens: Arc<Tokens>,
    /// Where the agent listens (`http://ip:port/` or `https://…`).
    base: Uri,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The generated client; pass [`Agent::opts`] (or [`Agent::opts_timeout`]) to every call.
    pub fn rpc(&self) -> &RpcClient {
        &self.client
    }

    /// Call options with a token and the default deadline.
    pub fn opts(&self) -> CallOptions {
        self.opts_timeout(DEFAULT_CALL_TIMEOUT)
    }

    /// Call options with a token and the given deadline.
    pub fn opts_timeout(&self, timeout: Duration) -> CallOptions {
        self.opts_stream().with_timeout(timeout)
    }

    /// Call options with a token and no deadline (long-lived streams: PTY, attach).
    pub fn opts_stream(&self) -> CallOptions {
        CallOptions::default().with_header(
            http::header::AUTHORIZATION,
            self.tokens.bearer(&self.host_id, self.generation),
        )
    }

    /// Where the agent listens, for the raw HTTP of the sandbox proxy's tunnels.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The TLS configuration of a raw connection to this agent (pinned to its certificate,
    /// ALPN `http/1.1`); `None`: plain HTTP.
    pub fn tunnel_tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tunnel_tls.as_ref()
    }

    /// `Authorization` for a call to this agent outside the Connect client.
    pub fn bearer(&self) -> String {
        self.tokens.bearer(&self.host_id, self.generation)
    }

    /// Maps a Connect error of this agent.
    pub fn err(&self, error: ConnectError) -> AgentError {
        AgentError::rpc(&self.host_id, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_failures_reach_tenants_without_host_details() {
        let api = |code: RpcCode, msg: &str| {
            ApiError::from(AgentError::rpc(
                "host-1",
                ConnectError::new(code, msg.to_owned()),
            ))
        };
        let secret =
            "qemu-img: /var/lib/wrenn/sandboxes/abc/root.qcow2: No space left; 10.0.0.7:50051";
        for code in [
            RpcCode::Internal,
            RpcCode::Unknown,
            RpcCode::ResourceExhausted,
            RpcCode::Unavailable,
            RpcCode::DataLoss,
        ] {
            let e = api(code, secret);
            assert!(
                !e.message().contains("/var/lib") && !e.message().contains("10.0.0.7"),
                "{code:?}: {}",
                e.message()
            );
        }
        // The caller's own mistakes keep the agent's words, cut short.
        let e = api(RpcCode::InvalidArgument, "path must be absolute");
        assert_eq!(
            (e.code(), e.message()),
            (ErrorCode::InvalidRequest, "path must be absolute")
        );
        let long = "x".repeat(1000);
        assert_eq!(
            api(RpcCode::NotFound, &long).message().chars().count(),
            MAX_TENANT_MESSAGE + 1
        );
    }

    #[test]
    fn base_uris() {
        assert_eq!(
            base_uri("127.0.0.1:50051").unwrap().to_string(),
            "http://127.0.0.1:50051/"
        );
        assert_eq!(
            base_uri("http://10.0.0.2:1").unwrap().to_string(),
            "http://10.0.0.2:1/"
        );
        assert!(base_uri("").is_none());
        assert!(base_uri("http://").is_none());
    }

    #[test]
    fn tokens_are_reused_per_host_and_generation() {
        let signer = Arc::new(CpSigner::generate().unwrap());
        let verifier = wrenn_rpcauth::CpVerifier::from_public_pem(signer.public_key_pem()).unwrap();
        let pool = AgentPool::new(signer);
        let a1 = pool.tokens.bearer("host-a", 1);
        assert_eq!(pool.tokens.bearer("host-a", 1), a1);
        // A new generation (revocation) is never served the old token.
        let a2 = pool.tokens.bearer("host-a", 2);
        assert_ne!(a2, a1);
        assert_eq!(pool.tokens.bearer("host-a", 2), a2);
        let claims = verifier
            .verify(a2.strip_prefix("Bearer ").unwrap(), "host-a")
            .unwrap();
        assert_eq!(claims.generation, Some(2));
        assert_ne!(pool.tokens.bearer("host-b", 2), a2);
    }

    #[test]
    fn host_rows_are_cached_briefly_and_forgotten_on_demand() {
        let pool = AgentPool::new(Arc::new(CpSigner::generate().unwrap()));
        assert!(pool.cached_host("host-a").is_none());
        let host = Host {
            id: "host-a".into(),
            team_id: None,
            name: "h".into(),
            address: "127.0.0.1:1".into(),
            status: crate::db::HostStatus::Online,
            last_heartbeat_at: None,
            specs: serde_json::json!({}),
            created_by: None,
            created_at: 0,
            credential_gen: 1,
            capacity: serde_json::json!({}),
            capacity_at: None,
            tls_fingerprint: None,
        };
        pool.remember_host(host);
        assert_eq!(pool.cached_host("host-a").unwrap().credential_gen, 1);
        pool.forget_host("host-a");
        assert!(pool.cached_host("host-a").is_none());
    }

    #[test]
    fn agent_codes_map_to_api_errors() {
        let e = |code| ApiError::from(AgentError::rpc("host-x", ConnectError::new(code, "m")));
        assert_eq!(e(RpcCode::InvalidArgument).status(), 400);
        assert_eq!(e(RpcCode::NotFound).status(), 404);
        assert_eq!(e(RpcCode::FailedPrecondition).status(), 409);
        assert_eq!(e(RpcCode::Unavailable).status(), 502);
        assert_eq!(e(RpcCode::Unavailable).code(), ErrorCode::HostUnavailable);
        assert_eq!(e(RpcCode::Unauthenticated).code(), ErrorCode::AgentError);
        assert_eq!(e(RpcCode::Internal).status(), 502);
    }
}
