//! Client for one sandbox's envd, as the host agent sees it: Connect RPC (`process.Process`,
//! `filesystem.Filesystem`, JSON codec) plus the plain routes `/health`, `/init`, `/files`
//! and `/metrics`. One client per sandbox, cloned cheaply, so its HTTP connections are
//! pooled. The sandbox's access token is sent as `X-Access-Token`, the acting guest user as
//! `Authorization: Basic base64(user:)`.

mod files;
mod process;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use connectrpc::ConnectError;
use connectrpc::client::{CallOptions, ClientConfig, HttpClient};
use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use wrenn_proto::filesystem::FilesystemClient;
use wrenn_proto::process::ProcessClient;

pub use files::{ByteStream, EntryInfo, FileType, READ_CHUNK, WrittenFile};
pub use process::{
    EXEC_OUTPUT_LIMIT, ExecOutput, ExecSpec, ProcessEvent, ProcessEvents, ProcessInfo, PtySpec,
    Selector, Signal,
};

/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// How often `wait_healthy` polls `/health`.
const HEALTH_POLL: Duration = Duration::from_millis(75);
/// Bound on one `/health` probe, so a black-holed address cannot stall the poll loop.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on unary calls (list, signal, mkdir, ...): they never take long on a live envd.
const UNARY_TIMEOUT: Duration = Duration::from_secs(30);
const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// The most the agent reads of a small answer from envd (`/metrics`, an upload's reply): the
/// guest controls envd, and a body past this is an error, not memory.
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// The most of an error body kept (the rest is not read).
const ERROR_BODY_LIMIT: usize = 4 * 1024;

/// A failed envd call.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// envd answered a Connect call with an error (or the call failed in transport).
    #[error("envd: {0}")]
    Rpc(#[from] ConnectError),
    /// envd answered a plain route with a non-success status.
    #[error("envd answered {status}: {message}")]
    Http { status: u16, message: String },
    /// envd could not be reached or the connection broke.
    #[error("envd unreachable: {0}")]
    Transport(String),
    /// envd did not become healthy before the deadline.
    #[error("envd not healthy after {0:?}")]
    NotHealthy(Duration),
    /// The command ran past its timeout and was killed.
    #[error("command did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// envd answered something this client does not understand, or the caller gave
    /// something that cannot be sent.
    #[error("envd protocol: {0}")]
    Protocol(String),
    /// A local byte stream fed to an upload failed.
    #[error("upload source: {0}")]
    Source(String),
    /// The VM went away on purpose (the sandbox was paused): what was in flight ended.
    #[error("{0}")]
    Gone(String),
}

impl From<reqwest::Error> for EnvdError {
    fn from(e: reqwest::Error) -> Self {
        // Include the source chain: reqwest's own message ("error sending request") says
        // little.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        EnvdError::Transport(msg)
    }
}

/// envd's `/metrics` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvdMetrics {
    /// Unix seconds.
    #[serde(default)]
    pub ts: i64,
    #[serde(default)]
    pub cpu_count: u32,
    #[serde(default)]
    pub cpu_used_pct: f64,
    #[serde(default)]
    pub mem_total: u64,
    #[serde(default)]
    pub mem_used: u64,
    #[serde(default)]
    pub disk_used: u64,
    #[serde(default)]
    pub disk_total: u64,
}

struct Inner {
    base_url: String,
    process: ProcessClient<HttpClient>,
    fs: FilesystemClient<HttpClient>,
    http: reqwest::Client,
    /// The token envd currently requires; set by a successful `init`.
    token: RwLock<Option<HeaderValue>>,
    /// Sent with every authenticated request: how a proxy in front routes it.
    route: HeaderMap,
    /// Why this envd went away on purpose ([`EnvdClient::mark_gone`]).
    gone: RwLock<Option<String>>,
    /// Cancelled by [`EnvdClient::mark_gone`]: a VM that is gone never closes its
    /// connections, so streams wait on this instead of on a TCP timeout.
    gone_signal: tokio_util::sync::CancellationToken,
}

/// A pooled client for one sandbox's envd. Clones share connections and the token.
#[derive(Clone)]
pub struct EnvdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EnvdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvdClient")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

/// `Authorization` value selecting a guest user.
fn basic(user: &str) -> Result<HeaderValue, EnvdError> {
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    );
    HeaderValue::from_str(&v)
        .map_err(|_| EnvdError::Protocol(format!("invalid user name {user:?}")))
}

fn token_value(token: &str) -> Result<HeaderValue, EnvdError> {
    HeaderValue::from_str(token).map_err(|_| EnvdError::Protocol("invalid access token".into()))
}

impl EnvdClient {
    /// A client for the envd at `base_url` (`http://<host_ip>:49983`), with the access
    /// token envd already requires, if any.
    pub fn new(base_url: &str, access_token: Option<&str>) -> Result<Self, EnvdError> {
        Self::routed(base_url, access_token, HeaderMap::new())
    }

    /// A client for an envd behind a proxy at `base_url` that routes by the `route` headers
    /// (the control plane's `E2b-Sandbox-Id` / `E2b-Sandbox-Port`).
    pub fn routed(
        base_url: &str,
        access_token: Option<&str>,
        route: HeaderMap,
    ) -> Result<Self, EnvdError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        let uri: http::Uri = base_url
            .parse()
            .map_err(|e| EnvdError::Protocol(format!("invalid envd URL {base_url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(EnvdError::Protocol(format!(
                "envd URL must be http://host:port, got {base_url:?}"
            )));
        }
        let transport = HttpClient::plaintext();
        let config = ClientConfig::new(uri).json();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let token = access_token.map(token_value).transpose()?;
        Ok(EnvdClient {
            inner: Arc::new(Inner {
                process: ProcessClient::new(transport.clone(), config.clone()),
                fs: FilesystemClient::new(transport, config),
                http,
                base_url,
                route,
                token: RwLock::new(token),
                gone: RwLock::new(None),
                gone_signal: tokio_util::sync::CancellationToken::new(),
            }),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Says that this envd's VM is gone on purpose (paused): streams still open end now with
    /// `reason`, and calls that break from now on report it instead of a broken connection.
    pub fn mark_gone(&self, reason: &str) {
        *self.inner.gone.write().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        self.inner.gone_signal.cancel();
    }

    /// Resolves once [`EnvdClient::mark_gone`] was called.
    pub async fn gone(&self) {
        self.inner.gone_signal.cancelled().await
    }

    /// `e`, or why the VM went away when it did on purpose.
    pub fn explain(&self, e: EnvdError) -> EnvdError {
        match self
            .inner
            .gone
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(reason) => EnvdError::Gone(reason.clone()),
            None => e,
        }
    }

    fn token(&self) -> Option<HeaderValue> {
        self.inner
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Headers every authenticated request carries: the token and the acting user.
    fn auth_headers(&self, user: Option<&str>) -> Result<HeaderMap, EnvdError> {
        let mut h = self.inner.route.clone();
        if let Some(t) = self.token() {
            h.insert(ACCESS_TOKEN_HEADER, t);
        }
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            h.insert(http::header::AUTHORIZATION, basic(u)?);
        }
        Ok(h)
    }

    /// Call options for a Connect call: auth headers and an optional whole-call timeout.
    fn call_options(
        &self,
        user: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<CallOptions, EnvdError> {
        let mut o = CallOptions::default();
        for (name, value) in &self.auth_headers(user)? {
            o = o.with_header(name.clone(), value.clone());
        }
        if let Some(t) = timeout {
            o = o.with_timeout(t);
        }
        Ok(o)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base_url, path)
    }

    /// One `GET /health` probe.
    pub async fn health(&self) -> Result<(), EnvdError> {
        let r = self
            .inner
            .http
            .get(self.url("/health"))
            .timeout(HEALTH_PROBE_TIMEOUT)
            .send()
            .await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(http_error(r).await)
        }
    }

    /// Polls `/health` until it answers 2xx or `deadline` passes; returns the time waited.
    pub async fn wait_healthy(&self, deadline: Instant) -> Result<Duration, EnvdError> {
        let start = Instant::now();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let probe = tokio::time::timeout(remaining, self.health()).await;
            if let Ok(Ok(())) = probe {
                return Ok(start.elapsed());
            }
            if Instant::now() + HEALTH_POLL >= deadline {
                return Err(EnvdError::NotHealthy(start.elapsed()));
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// `POST /init`: hands envd its access token, default user (`None` or empty keeps
    /// envd's), extra environment and default workdir. On success this client uses the new
    /// token from then on.
    pub async fn init(
        &self,
        access_token: &str,
        default_user: Option<&str>,
        env: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
        workdir: Option<&str>,
    ) -> Result<(), EnvdError> {
        let token = token_value(access_token)?;
        let env: BTreeMap<String, String> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let mut body = serde_json::json!({
            "accessToken": access_token,
            "envVars": env,
            "timestamp": now_rfc3339()?,
        });
        if let Some(u) = default_user.filter(|u| !u.is_empty()) {
            body["defaultUser"] = u.into();
        }
        if let Some(w) = workdir.filter(|w| !w.is_empty()) {
            body["defaultWorkdir"] = w.into();
        }
        self.post_init(&body).await?;
        *self.inner.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    async fn post_init(&self, body: &serde_json::Value) -> Result<(), EnvdError> {
        let r = self
            .inner
            .http
            .post(self.url("/init"))
            .headers(self.auth_headers(None)?)
            .json(body)
            .timeout(UNARY_TIMEOUT)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(http_error(r).await);
        }
        Ok(())
    }

    /// `POST /init` after a restore: the guest sets its wall clock from the timestamp (it stood
    /// still while saved) and reseeds its random generator with `entropy`, so no two restores
    /// of one state share random numbers. Keeps the token, user and environment.
    pub async fn refresh_after_restore(&self, entropy: &[u8]) -> Result<(), EnvdError> {
        use base64::Engine;
        self.post_init(&serde_json::json!({
            "timestamp": now_rfc3339()?,
            "entropy": base64::engine::general_purpose::STANDARD.encode(entropy),
        }))
        .await
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<EnvdMetrics, EnvdError> {
        let r = self
            .inner
            .http
            .get(self.url("/metrics"))
            .headers(self.auth_headers(None)?)
            .timeout(UNARY_TIMEOUT)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(http_error(r).await);
        }
        let body = read_capped(r, SMALL_BODY_LIMIT, "/metrics").await?;
        serde_json::from_slice(&body)
            .map_err(|e| EnvdError::Protocol(format!("/metrics body: {e}")))
    }
}

/// Reads a whole body of at most `limit` bytes, each chunk within [`UNARY_TIMEOUT`]: a
/// longer or stalled body is a protocol error (what was read is dropped).
async fn read_capped(
    mut r: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<bytes::Bytes, EnvdError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(UNARY_TIMEOUT, r.chunk())
            .await
            .map_err(|_| EnvdError::Protocol(format!("{what} answer stalled")))??;
        let Some(chunk) = chunk else {
            return Ok(buf.freeze());
        };
        if buf.len() + chunk.len() > limit {
            return Err(EnvdError::Protocol(format!(
                "{what} answer is over {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
}

/// The error of a non-success plain-route response: envd's `{"code","message"}` body, or
/// the raw text when it is something else (at most [`ERROR_BODY_LIMIT`] bytes of it).
async fn http_error(mut r: reqwest::Response) -> EnvdError {
    #[derive(Deserialize)]
    struct Body {
        message: Option<String>,
    }
    let status = r.status().as_u16();
    let mut raw = Vec::new();
    while raw.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, r.chunk()).await {
            Ok(Ok(Some(c))) => raw.extend_from_slice(&c),
            _ => break,
        }
    }
    raw.truncate(ERROR_BODY_LIMIT);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let message = serde_json::from_str::<Body>(&text)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or(text);
    EnvdError::Http { status, message }
}

/// The host's wall clock for `/init`'s `timestamp`.
fn now_rfc3339() -> Result<String, EnvdError> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| EnvdError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile envd on loopback: every answer is an endless body. Returns its URL and the
    /// count of bytes it managed to send.
    async fn endless_envd() -> (String, Arc<std::sync::atomic::AtomicU64>) {
        use axum::body::Body;
        use std::sync::atomic::{AtomicU64, Ordering};
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let endless = move |status: u16| {
            let counter = counter.clone();
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::repeat_with(move || {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            axum::response::Response::builder()
                .status(status)
                .body(Body::from_stream(stream))
                .unwrap()
        };
        let (ok, err) = (endless.clone(), endless);
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || async move { ok(200) }),
            )
            .route(
                "/files",
                axum::routing::post(move || async move { err(500) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), sent)
    }

    #[tokio::test]
    async fn endless_answers_are_cut_off_at_a_fixed_bound() {
        let (url, sent) = endless_envd().await;
        let c = EnvdClient::new(&url, Some("tok")).unwrap();
        match c.metrics().await {
            Err(EnvdError::Protocol(m)) => assert!(m.contains("over"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        let body = futures::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"hi"))
        });
        match c.write_file("/tmp/x", None, body).await {
            Err(EnvdError::Http {
                status: 500,
                message,
            }) => {
                assert!(message.len() <= ERROR_BODY_LIMIT, "{}", message.len())
            }
            other => panic!("expected the 500, got {other:?}"),
        }
        // What the server pushed before the client stopped reading: socket buffers, not
        // the endless body.
        let n = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 32 * 1024 * 1024, "the agent read {n} bytes");
    }

    #[test]
    fn url_validation() {
        assert!(EnvdClient::new("http://10.0.0.1:49983", None).is_ok());
        assert!(EnvdClient::new("http://10.0.0.1:49983/", Some("tok")).is_ok());
        assert!(EnvdClient::new("https://10.0.0.1:49983", None).is_err());
        assert!(EnvdClient::new("not a url", None).is_err());
        assert!(EnvdClient::new("http://h:1", Some("bad\ntoken")).is_err());
    }

    #[test]
    fn basic_header() {
        assert_eq!(basic("user").unwrap(), "Basic dXNlcjo=");
    }

    #[tokio::test]
    async fn wait_healthy_gives_up_at_the_deadline() {
        // A port nobody listens on: connection refused at once, so the loop must poll
        // until the deadline rather than fail early.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = EnvdClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let start = Instant::now();
        let r = c
            .wait_healthy(Instant::now() + Duration::from_millis(400))
            .await;
        assert!(matches!(r, Err(EnvdError::NotHealthy(_))), "{r:?}");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
}
