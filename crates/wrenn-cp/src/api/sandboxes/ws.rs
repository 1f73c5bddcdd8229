//! WebSocket plumbing shared by the exec stream, process attach and PTY routes: credentials in
//! the query string (browsers cannot set headers on a WebSocket), the upgrade, JSON text
//! frames both ways, and relaying a process's `ExecEvent` stream.
//!
//! Every route authenticates and checks the sandbox *before* upgrading, so a refused request
//! is an ordinary 4xx JSON error. After the upgrade, problems are `error` frames; a fatal one
//! is followed by a close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use connectrpc::ConnectError;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wrenn_proto::hostagent::v1 as pb;

use super::guest::Selector;
use crate::agents::Agent;
use crate::auth::extract::{TeamAuth, X_API_KEY};
use crate::error::ApiError;
use crate::server::AppState;

/// Largest frame a client may send (PTY input, a start frame with its env).
pub const MAX_CLIENT_FRAME: usize = 1024 * 1024;
/// How long a client has to send its first frame after the upgrade.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Credentials a WebSocket client may pass in the query string instead of headers.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsCredentials {
    /// An API key (`wrn_…`), for clients that cannot set `X-API-Key` (browsers).
    pub api_key: Option<String>,
    /// A user JWT, for clients that cannot set `Authorization: Bearer` (browsers).
    pub token: Option<String>,
}

impl WsCredentials {
    fn from_uri(uri: &Uri) -> Result<Self, ApiError> {
        axum::extract::Query::<Self>::try_from_uri(uri)
            .map(|axum::extract::Query(v)| v)
            .map_err(|e| ApiError::invalid_request(e.body_text()))
    }
}

/// [`TeamAuth`] for WebSocket routes: the usual headers, or else `?api_key=` / `?token=`.
/// (Query credentials can end up in proxy logs; headers are preferred where a client can
/// set them.)
#[derive(Debug, Clone)]
pub struct WsAuth(pub TeamAuth);

impl FromRequestParts<Arc<AppState>> for WsAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let creds = WsCredentials::from_uri(&parts.uri)?;
        let has_header =
            parts.headers.contains_key(&X_API_KEY) || parts.headers.contains_key(AUTHORIZATION);
        if !has_header {
            let bad = |_| ApiError::unauthorized("malformed credentials in the query string");
            if let Some(k) = creds.api_key {
                let v = HeaderValue::from_str(&k).map_err(bad)?;
                parts.headers.insert(X_API_KEY.clone(), v);
            } else if let Some(t) = creds.token {
                let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(bad)?;
                parts.headers.insert(AUTHORIZATION, v);
            }
        }
        TeamAuth::from_request_parts(parts, state).await.map(WsAuth)
    }
}

/// How often a live session re-checks its credentials.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Whether `auth` still grants access: its API key not revoked, its user still a member of
/// the team. A database outage keeps the session (it is not a revocation).
async fn still_authorized(st: &AppState, auth: &TeamAuth) -> bool {
    let r = match auth {
        TeamAuth::ApiKey(p) => st
            .db
            .api_key_by_id(p.team_id.as_str(), p.key_id.as_str())
            .await
            .map(|_| ()),
        TeamAuth::User(c) => st.db.role_of(&c.team_id, &c.sub).await.map(|_| ()),
    };
    !matches!(r, Err(crate::db::DbError::NotFound))
}

/// Runs a WebSocket session while `auth` stays valid (checked every [`RECHECK_EVERY`]); on
/// revocation the session is dropped (its agent stream with it) and the socket closed with
/// an error frame and 1008.
pub async fn while_authorized<F>(st: &AppState, auth: &TeamAuth, socket: &mut WebSocket, session: F)
where
    F: AsyncFnOnce(&mut WebSocket),
{
    let revoked = async {
        loop {
            tokio::time::sleep(RECHECK_EVERY).await;
            if !still_authorized(st, auth).await {
                return;
            }
        }
    };
    let ended = tokio::select! {
        _ = session(&mut *socket) => true,
        _ = revoked => false,
    };
    if !ended {
        tracing::info!(team_id = %auth.team_id(), "credentials revoked: WebSocket session ended");
        fail(socket, "credentials revoked").await;
    }
}

/// The upgrade, or a 400 envelope for a plain HTTP request to a WebSocket route.
pub fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::invalid_request(format!("expected a WebSocket upgrade: {}", e.body_text()))
    })?;
    Ok(ws
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME))
}

/// A frame the server sends. Bytes are base64 (`data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The process started (exec stream, process attach).
    Start {
        pid: u32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The process ended; the server closes the socket next.
    Exit {
        exit_code: i32,
    },
    /// The PTY started or was re-attached.
    Started {
        tag: String,
        pid: u32,
    },
    /// PTY output.
    Output {
        data: String,
    },
    /// `fatal` (PTY only) says whether the server closes the socket next.
    Error {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fatal: Option<bool>,
    },
}

impl ServerFrame {
    pub fn stdout(b: &[u8]) -> Self {
        ServerFrame::Stdout {
            data: B64.encode(b),
        }
    }
    pub fn stderr(b: &[u8]) -> Self {
        ServerFrame::Stderr {
            data: B64.encode(b),
        }
    }
    pub fn output(b: &[u8]) -> Self {
        ServerFrame::Output {
            data: B64.encode(b),
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        ServerFrame::Error {
            message: message.into(),
            fatal: None,
        }
    }
    pub fn error_fatal(message: impl Into<String>, fatal: bool) -> Self {
        ServerFrame::Error {
            message: message.into(),
            fatal: Some(fatal),
        }
    }

    pub fn to_message(&self) -> Message {
        // Serializing these plain structs cannot fail.
        let text = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        Message::Text(text.into())
    }
}

/// Decodes a base64 `data` field.
pub fn decode_data(data: &str) -> Result<Vec<u8>, String> {
    B64.decode(data)
        .map_err(|e| format!("data is not valid base64: {e}"))
}

/// Parses one client frame: JSON text of a `{"type": ...}` object.
pub fn parse_frame<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("bad frame: {e}"))
}

/// What the client sent next.
pub enum Incoming<T> {
    Frame(T),
    /// A frame that was not understood; the session goes on.
    Bad(String),
    /// The client closed the socket or the connection broke.
    Closed,
}

/// Waits for the next text frame of the client (pings and pongs are skipped).
pub async fn next_frame<T: DeserializeOwned>(socket: &mut WebSocket) -> Incoming<T> {
    loop {
        return match socket.recv().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Incoming::Closed,
            Some(Ok(Message::Text(t))) => match parse_frame(t.as_str()) {
                Ok(f) => Incoming::Frame(f),
                Err(e) => Incoming::Bad(e),
            },
            Some(Ok(Message::Binary(_))) => Incoming::Bad("frames must be JSON text".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
        };
    }
}

/// The client's first frame, within [`FIRST_FRAME_TIMEOUT`]. A bad or missing one gets an
/// error frame and a close; `None` means the session is over.
pub async fn first_frame<T: DeserializeOwned>(socket: &mut WebSocket) -> Option<T> {
    match tokio::time::timeout(FIRST_FRAME_TIMEOUT, next_frame(socket)).await {
        Ok(Incoming::Frame(f)) => Some(f),
        Ok(Incoming::Closed) => None,
        Ok(Incoming::Bad(e)) => {
            fail(socket, e).await;
            None
        }
        Err(_) => {
            fail(socket, "no first frame within 30 s").await;
            None
        }
    }
}

/// Sends a frame; `false` when the client is gone.
pub async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> bool {
    socket.send(frame.to_message()).await.is_ok()
}

/// Closes normally.
pub async fn close(socket: &mut WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// Sends a fatal error frame and closes with "policy violation" (1008).
pub async fn fail(socket: &mut WebSocket, message: impl Into<String>) {
    fail_with(socket, ServerFrame::error_fatal(message, true)).await;
}

/// Sends `frame` (an error) and closes with 1008.
pub async fn fail_with(socket: &mut WebSocket, frame: ServerFrame) {
    let _ = socket.send(frame.to_message()).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::POLICY,
            reason: "".into(),
        })))
        .await;
}

/// The client-facing message of a failed agent call.
pub fn agent_message(agent: &Agent, e: ConnectError) -> String {
    ApiError::from(agent.err(e)).public_message().to_owned()
}

/// A server stream of the agent as a `Stream` of owned messages; it ends after the first
/// error. (A macro: the generated stream types differ per method.)
macro_rules! agent_stream {
    ($stream:expr) => {
        ::futures::stream::unfold(Some($stream), |s| async move {
            let mut s = s?;
            match s.message().await {
                Ok(Some(m)) => Some((Ok(m.to_owned_message()), Some(s))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    };
}
pub(crate) use agent_stream;

/// What closing the socket does to the process being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClose {
    /// Foreground exec stream: the process dies with its socket.
    Kill,
    /// Attached to a background process: it keeps running.
    Detach,
}

/// Client frames after the start of an exec stream or a process attach.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayClientFrame {
    /// Kill the process (SIGKILL).
    Stop,
    /// Parsed (whatever its fields) only to answer "already started".
    Start(serde::de::IgnoredAny),
}

/// Relays a process's events to the socket until the process ends (`exit` frame, then a
/// normal close), the stream fails (`error` frame, close) or the client goes away. `stop`
/// from the client kills the process; `target` names it when the stream has not said its
/// pid yet (attach by tag).
pub async fn relay_exec_events<S>(
    socket: &mut WebSocket,
    mut events: S,
    agent: &Agent,
    sandbox_id: &str,
    mut target: Option<Selector>,
    on_close: OnClose,
) where
    S: Stream<Item = Result<pb::ExecEvent, ConnectError>> + Unpin,
{
    use pb::exec_event::Event;
    use pb::exec_event::data::Output;
    let mut stop_pending = false;
    loop {
        tokio::select! {
            ev = events.next() => {
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        fail(socket, agent_message(agent, e)).await;
                        return;
                    }
                    None => {
                        fail(socket, "the process stream ended without an exit").await;
                        return;
                    }
                };
                let frame = match ev.event {
                    Some(Event::Start(s)) => {
                        target = Some(Selector::Pid(s.pid));
                        if stop_pending {
                            kill(agent, sandbox_id, target.as_ref()).await;
                        }
                        ServerFrame::Start { pid: s.pid }
                    }
                    Some(Event::Data(d)) => match &d.output {
                        Some(Output::Stdout(b)) => ServerFrame::stdout(b),
                        Some(Output::Stderr(b)) => ServerFrame::stderr(b),
                        None => continue,
                    },
                    Some(Event::End(end)) => {
                        if !end.error.is_empty() {
                            tracing::debug!(error = %end.error, "process ended with an error");
                        }
                        if send(socket, &ServerFrame::Exit { exit_code: end.exit_code }).await {
                            close(socket).await;
                        }
                        return;
                    }
                    None => continue,
                };
                if !send(socket, &frame).await {
                    if on_close == OnClose::Kill {
                        kill(agent, sandbox_id, target.as_ref()).await;
                    }
                    return;
                }
            }
            msg = next_frame::<RelayClientFrame>(socket) => match msg {
                Incoming::Frame(RelayClientFrame::Stop) => {
                    if target.is_some() {
                        kill(agent, sandbox_id, target.as_ref()).await;
                    } else {
                        stop_pending = true;
                    }
                }
                Incoming::Frame(RelayClientFrame::Start(_)) => {
                    send(socket, &ServerFrame::error("already started")).await;
                }
                Incoming::Bad(e) => {
                    send(socket, &ServerFrame::error(e)).await;
                }
                Incoming::Closed => {
                    if on_close == OnClose::Kill {
                        if target.is_none() {
                            target = await_pid(&mut events).await;
                        }
                        kill(agent, sandbox_id, target.as_ref()).await;
                    }
                    return;
                }
            },
        }
    }
}

/// The pid of a process whose socket closed before its start event arrived (so it can be
/// killed rather than left running without an owner).
async fn await_pid<S>(events: &mut S) -> Option<Selector>
where
    S: Stream<Item = Result<pb::ExecEvent, ConnectError>> + Unpin,
{
    use pb::exec_event::Event;
    let wait = async {
        while let Some(Ok(ev)) = events.next().await {
            if let Some(Event::Start(s)) = ev.event {
                return Some(Selector::Pid(s.pid));
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .ok()
        .flatten()
}

/// SIGKILLs a process; failures (it may have ended already) are only logged.
pub async fn kill(agent: &Agent, sandbox_id: &str, target: Option<&Selector>) {
    let Some(target) = target else { return };
    let req = pb::SignalProcessRequest {
        sandbox_id: sandbox_id.to_owned(),
        process: target.to_proto().into(),
        signal: pb::Signal::SIGNAL_SIGKILL.into(),
        ..Default::default()
    };
    if let Err(e) = agent
        .rpc()
        .signal_process_with_options(req, agent.opts())
        .await
    {
        tracing::debug!(error = %e, ?target, "kill after the socket ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_encode() {
        let j = |f: ServerFrame| serde_json::to_value(f).unwrap();
        assert_eq!(
            j(ServerFrame::stdout(b"hi\n")),
            serde_json::json!({"type":"stdout","data":"aGkK"})
        );
        assert_eq!(
            j(ServerFrame::Exit { exit_code: 3 }),
            serde_json::json!({"type":"exit","exit_code":3})
        );
        assert_eq!(
            j(ServerFrame::error("x")),
            serde_json::json!({"type":"error","message":"x"})
        );
        assert_eq!(
            j(ServerFrame::error_fatal("x", false)),
            serde_json::json!({"type":"error","message":"x","fatal":false})
        );
        assert_eq!(
            j(ServerFrame::Started {
                tag: "pty-1".into(),
                pid: 9
            }),
            serde_json::json!({"type":"started","tag":"pty-1","pid":9})
        );
    }

    #[test]
    fn relay_frames_parse() {
        assert!(matches!(
            parse_frame::<RelayClientFrame>(r#"{"type":"stop"}"#).unwrap(),
            RelayClientFrame::Stop
        ));
        assert!(matches!(
            parse_frame::<RelayClientFrame>(r#"{"type":"start","cmd":"ls"}"#).unwrap(),
            RelayClientFrame::Start(_)
        ));
        for bad in [r#"{"type":"nope"}"#, r#"{"cmd":"ls"}"#, "not json", "[]"] {
            let e = parse_frame::<RelayClientFrame>(bad).unwrap_err();
            assert!(e.starts_with("bad frame"), "{bad}: {e}");
        }
    }

    #[test]
    fn base64_data() {
        assert_eq!(decode_data("aGkK").unwrap(), b"hi\n");
        assert!(decode_data("not base64!").is_err());
        assert!(decode_data("aGk").is_err(), "padding is required");
    }

    #[test]
    fn query_credentials() {
        let c = |q: &str| WsCredentials::from_uri(&format!("/x?{q}").parse().unwrap());
        let k = c("api_key=wrn_1").unwrap();
        assert_eq!(k.api_key.as_deref(), Some("wrn_1"));
        assert_eq!(c("token=a.b.c").unwrap().token.as_deref(), Some("a.b.c"));
        assert!(c("apikey=1").is_err(), "unknown parameters are refused");
        assert!(
            WsCredentials::from_uri(&"/x".parse().unwrap())
                .unwrap()
                .api_key
                .is_none()
        );
    }
}
