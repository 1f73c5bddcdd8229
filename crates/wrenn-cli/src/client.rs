//! HTTP + WebSocket access to the control plane: base URL and credentials resolved from flags,
//! environment and the config file; API error envelopes turned into [`ApiError`]; connection
//! failures turned into a hint naming the URL.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::Global;
use crate::config::{self, Config};

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const HINT: &str = "hint: is `wrenn server` running there? Pass --url, set WRENN_URL, or run `wrenn login --url URL`";

/// An error the API answered with: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The sandboxes a refused delete names (`error.sandbox_ids`).
    pub sandbox_ids: Vec<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if !self.sandbox_ids.is_empty() {
            write!(f, "\n  sandboxes: {}", self.sandbox_ids.join(" "))?;
        }
        Ok(())
    }
}

impl ApiError {
    /// From a failed response's status and body; a body without the envelope (a proxy's
    /// page, say) still yields a readable error.
    pub fn from_body(status: u16, body: &[u8]) -> ApiError {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            v.as_ref()
                .and_then(|v| v["error"][k].as_str())
                .map(str::to_owned)
        };
        match (field("code"), field("message")) {
            (Some(code), Some(message)) => ApiError {
                status,
                code,
                message,
                sandbox_ids: v
                    .as_ref()
                    .and_then(|v| v["error"]["sandbox_ids"].as_array())
                    .map(|ids| {
                        ids.iter()
                            .filter_map(Value::as_str)
                            .take(1000)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!(
                        "HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    )
                };
                ApiError {
                    status,
                    code: format!("http_{status}"),
                    message,
                    sandbox_ids: Vec::new(),
                }
            }
        }
    }
}

/// Which credentials a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An API key or a user session (sandboxes, templates).
    Team,
    /// A user session (API-key management refuses keys).
    User,
}

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Jwt(String),
    ApiKey(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
}

/// The URL to use: flag/env, else the saved one, else the default.
pub fn resolve_url(global: &Global, cfg: &Config) -> String {
    global
        .url
        .clone()
        .or_else(|| cfg.url.clone())
        .unwrap_or_else(|| config::DEFAULT_URL.to_owned())
}

/// Parses a control-plane base URL (`http://host:port[/prefix]`).
pub fn parse_base(url: &str) -> anyhow::Result<Url> {
    let mut u = Url::parse(url).with_context(|| format!("bad control-plane URL {url:?}"))?;
    match u.scheme() {
        "http" => {}
        // This build carries no TLS stack (reqwest/tungstenite without TLS features).
        "https" => bail!(
            "{url}: https is not supported by this build; use http:// (e.g. behind a local TLS-terminating proxy)"
        ),
        s => bail!("{url}: unsupported scheme {s:?}; expected http://"),
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    u.set_query(None);
    u.set_fragment(None);
    Ok(u)
}

/// One message of a command WebSocket (exec stream, PTY) as its JSON frame: `Ok(None)` for
/// what is not part of the protocol (pings are answered by tungstenite), an error when the
/// socket ended before the session did. `session` and `stream` name it in messages
/// ("command" / "exec stream", "terminal" / "pty stream").
pub fn ws_frame(
    msg: Option<Result<tungstenite::Message, tungstenite::Error>>,
    session: &str,
    stream: &str,
) -> anyhow::Result<Option<Value>> {
    let text = match msg {
        None | Some(Ok(tungstenite::Message::Close(_))) => {
            bail!("the connection closed before the {session} exited")
        }
        Some(Err(e)) => bail!("{stream}: {e}"),
        Some(Ok(tungstenite::Message::Text(t))) => t,
        Some(Ok(_)) => return Ok(None),
    };
    serde_json::from_str(text.as_str())
        .map(Some)
        .with_context(|| format!("bad frame from the server: {text}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Client {
    /// Resolves URL and credentials: `--api-key`/`WRENN_API_KEY` wins, then the saved key or
    /// session. `Need::User` insists on a session.
    pub fn new(global: &Global, need: Need) -> anyhow::Result<Client> {
        let cfg = Config::load(&config::path()?)?;
        let url = resolve_url(global, &cfg);
        let session = cfg.token.clone().map(|t| (t, cfg.token_expires_at));
        let auth = match need {
            Need::User => match session {
                Some((t, exp)) => {
                    check_expiry(exp)?;
                    Auth::Jwt(t)
                }
                None => bail!(
                    "this command needs a user login (API keys cannot manage keys): run `wrenn login --email you@example.com`"
                ),
            },
            Need::Team => match (global.api_key.clone(), cfg.api_key.clone(), session) {
                (Some(k), _, _) | (None, Some(k), _) => Auth::ApiKey(k),
                (None, None, Some((t, exp))) => {
                    check_expiry(exp)?;
                    Auth::Jwt(t)
                }
                (None, None, None) => bail!(
                    "not logged in: run `wrenn login` (or pass --api-key / set WRENN_API_KEY)"
                ),
            },
        };
        Client::with_auth(&url, auth)
    }

    pub fn with_auth(url: &str, auth: Auth) -> anyhow::Result<Client> {
        let base = parse_base(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("wrenn-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("HTTP client")?;
        Ok(Client { http, base, auth })
    }

    /// The base URL as the user would type it (no trailing slash).
    pub fn base_str(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// `path` is relative to the base, without a leading slash (`v1/sandboxes`).
    pub fn url(&self, path: &str) -> anyhow::Result<Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .with_context(|| format!("bad path {path:?}"))
    }

    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.auth {
            Auth::None => rb,
            Auth::Jwt(t) => rb.bearer_auth(t),
            Auth::ApiKey(k) => rb.header("X-API-Key", k),
        }
    }

    /// Sends; a connection failure becomes a hint naming the URL, a non-2xx an [`ApiError`].
    pub async fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Err(ApiError::from_body(status, &body).into())
    }

    pub fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() {
            unreachable_hint(&self.base_str(), &e)
        } else {
            anyhow::Error::new(e).context(format!("request to {}", self.base_str()))
        }
    }

    pub async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> anyhow::Result<T> {
        let resp = self.send(rb).await?;
        let url = resp.url().clone();
        resp.json()
            .await
            .with_context(|| format!("unexpected response from {url}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(self.request(Method::GET, self.url(path)?)).await
    }

    /// Every page of a list route: follows `next_cursor` and gathers `items_field`.
    pub async fn list_all(
        &self,
        path: &str,
        items_field: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(path)?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("limit", "1000");
                for (k, v) in query {
                    q.append_pair(k, v);
                }
                if let Some(c) = &cursor {
                    q.append_pair("cursor", c);
                }
            }
            let page: Value = self.json(self.request(Method::GET, url)).await?;
            match page.get(items_field).and_then(Value::as_array) {
                Some(items) => out.extend(items.iter().cloned()),
                None => bail!("unexpected response from {path}: no {items_field:?} list"),
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Opens a WebSocket to `path` with the credentials as headers.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > {
        let mut url = self.url(path)?;
        // http → ws (https is refused in parse_base).
        url.set_scheme("ws")
            .map_err(|()| anyhow!("cannot make a ws:// URL from {url}"))?;
        let mut req = url.as_str().into_client_request()?;
        let h = req.headers_mut();
        match &self.auth {
            Auth::None => {}
            Auth::Jwt(t) => {
                h.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {t}"))
                        .context("session token is not a valid header value")?,
                );
            }
            Auth::ApiKey(k) => {
                h.insert(
                    "x-api-key",
                    HeaderValue::from_str(k).context("API key is not a valid header value")?,
                );
            }
        }
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req));
        let Ok(result) = connect.await else {
            return Err(anyhow!(
                "cannot reach the control plane at {} (no answer within {}s)\n{HINT}",
                self.base_str(),
                CONNECT_TIMEOUT.as_secs()
            ));
        };
        match result {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                Err(ApiError::from_body(status, &body).into())
            }
            Err(tungstenite::Error::Io(e)) => Err(unreachable_hint(&self.base_str(), &e)),
            Err(e) => Err(anyhow!("WebSocket {path}: {e}")),
        }
    }
}

fn check_expiry(exp: Option<u64>) -> anyhow::Result<()> {
    match exp {
        Some(t) if t <= now_secs() => {
            bail!("your session has expired: run `wrenn login` again")
        }
        _ => Ok(()),
    }
}

fn unreachable_hint(url: &str, e: &dyn std::error::Error) -> anyhow::Error {
    // The innermost cause ("Connection refused (os error 111)") is the useful part.
    let mut cause = e;
    while let Some(s) = cause.source() {
        cause = s;
    }
    anyhow!("cannot reach the control plane at {url} ({cause})\n{HINT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_fallback() {
        let e = ApiError::from_body(
            401,
            br#"{"error":{"code":"unauthorized","message":"invalid email or password"}}"#,
        );
        assert_eq!(e.to_string(), "invalid email or password (unauthorized)");
        let e = ApiError::from_body(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.code, "http_502");
        assert_eq!(
            e.to_string(),
            "HTTP 502: <html>Bad Gateway</html> (http_502)"
        );
        assert_eq!(ApiError::from_body(500, b"").message, "HTTP 500");
    }

    #[test]
    fn base_urls() {
        let c = Client::with_auth("http://127.0.0.1:8080", Auth::None).unwrap();
        assert_eq!(
            c.url("v1/sandboxes").unwrap().as_str(),
            "http://127.0.0.1:8080/v1/sandboxes"
        );
        assert_eq!(c.base_str(), "http://127.0.0.1:8080");
        // A path prefix (reverse proxy) is kept.
        let c = Client::with_auth("http://h/wrenn", Auth::None).unwrap();
        assert_eq!(c.url("/v1/me").unwrap().as_str(), "http://h/wrenn/v1/me");
        assert!(parse_base("https://h").is_err());
        assert!(parse_base("ftp://h").is_err());
        assert!(parse_base("not a url").is_err());
    }
}
