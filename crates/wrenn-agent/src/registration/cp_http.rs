//! The agent's HTTP client for its control plane: a JSON POST per call over HTTP/1.1 — TLS
//! with the trust the operator gave, or plain to a control plane on loopback. One connection
//! per call: registration, a refresh now and then and a heartbeat every interval do not need
//! a pool, and a fresh connection never outlives a changed network.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{CpTrust, RegistrationError};

/// Longest answer read from the control plane (credentials are a few KiB).
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
}

/// An answer: status and (bounded) body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// A client for the control plane at one base URL.
#[derive(Clone)]
pub struct CpClient {
    /// `https://host:port` or `http://…` without a trailing slash.
    base: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl std::fmt::Debug for CpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl CpClient {
    /// Checks `url` against `trust`: `https://` needs a trust, `http://` a loopback host.
    pub fn new(
        url: &str,
        trust: Option<&CpTrust>,
        timeout: Duration,
    ) -> Result<CpClient, RegistrationError> {
        let bad = || RegistrationError::BadCpUrl {
            url: url.to_owned(),
        };
        let base = url.trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|_| bad())?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let host = host.trim_matches(['[', ']']).to_owned();
        if !uri.path().trim_end_matches('/').is_empty() || uri.query().is_some() {
            return Err(bad());
        }
        let (tls, default_port) = match uri.scheme_str() {
            Some("https") => {
                let trust = trust.ok_or_else(|| RegistrationError::NoCpTrust {
                    url: url.to_owned(),
                })?;
                (Some(Arc::new(super::tls_config(trust)?)), 443)
            }
            Some("http") if wrenn_tls::is_loopback_host(&host) => (None, 80),
            Some("http") => {
                return Err(RegistrationError::PlainCpUrl {
                    url: url.to_owned(),
                });
            }
            _ => return Err(bad()),
        };
        Ok(CpClient {
            base: base.to_owned(),
            port: uri.port_u16().unwrap_or(default_port),
            host,
            tls,
            timeout,
        })
    }

    /// POSTs `body` as JSON to `path` (with a bearer token when given).
    pub async fn post_json(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Answer, CallError> {
        tokio::time::timeout(self.timeout, self.post(path, bearer, body))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?
    }

    async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Answer, CallError> {
        let io = wrenn_tls::client::connect(&self.host, self.port, self.tls.as_ref())
            .await
            .map_err(CallError::Connect)?;
        let http = |e: &dyn std::fmt::Display| CallError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control-plane connection");
            }
        });
        let authority = match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        };
        let mut req = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| http(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok(Answer { status, body })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }
}
