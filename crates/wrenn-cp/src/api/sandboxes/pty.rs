//! Terminals: `GET /v1/sandboxes/{id}/pty` (WebSocket). A PTY is named by its tag and
//! outlives the socket: a client that lost its connection re-attaches with `connect`.
//!
//! Client frames: first `start` or `connect`, then `input` (base64), `resize`, `kill`,
//! `pong` (ignored). Server frames: `started`, `output` (base64), `exit`, `error` (with
//! `fatal`); a WebSocket ping every 30 s keeps idle terminals from being cut by proxies.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::Instrument;
use wrenn_proto::hostagent::v1 as pb;

use super::exec::span;
use super::guest::{self, Command};
use super::running;
use super::ws::{self, Incoming, ServerFrame, WsAuth, agent_stream};
use crate::agents::Agent;
use crate::api::State;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiPath};
use crate::ids::SandboxId;

pub const DEFAULT_CMD: &str = "/bin/bash";
pub const DEFAULT_COLS: u32 = 80;
pub const DEFAULT_ROWS: u32 = 24;
/// Largest terminal side accepted.
pub const MAX_SIDE: u32 = 1000;
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Control frames (input, resize, kill) waiting for the agent; more are refused with an
/// error frame rather than blocking the output the process may itself be waiting on.
pub const CONTROL_QUEUE: usize = 256;
/// Largest single `PtyInput` call after coalescing queued input frames.
pub const MAX_INPUT_BATCH: usize = 64 * 1024;

/// Client frames.
#[derive(Debug, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PtyClientFrame {
    /// Starts a new PTY (first frame only).
    Start {
        cmd: Option<String>,
        args: Option<Vec<String>>,
        cols: Option<u32>,
        rows: Option<u32>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        user: Option<String>,
        /// Default `pty-` + 8 hex digits.
        tag: Option<String>,
    },
    /// Re-attaches to a running PTY (first frame only).
    Connect {
        tag: String,
    },
    Input {
        data: String,
    },
    Resize {
        cols: u32,
        rows: u32,
    },
    Kill,
    Pong,
}

fn side(name: &str, v: u32) -> Result<u32, String> {
    if (1..=MAX_SIDE).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{name} must be 1 to {MAX_SIDE}"))
    }
}

/// The `PtyAttach` request for a first frame, or the message of the fatal error frame.
pub fn attach_request(
    sandbox_id: &str,
    frame: PtyClientFrame,
) -> Result<pb::PtyAttachRequest, String> {
    let msg = |e: ApiError| e.public_message().to_owned();
    match frame {
        PtyClientFrame::Start {
            cmd,
            args,
            cols,
            rows,
            env,
            cwd,
            user,
            tag,
        } => {
            let c = Command::new(
                cmd.as_deref().unwrap_or(DEFAULT_CMD),
                args,
                env,
                cwd.as_deref(),
                user.as_deref(),
            )
            .map_err(msg)?;
            let tag = match tag {
                Some(t) => guest::tag(&t).map_err(msg)?,
                None => guest::new_tag("pty").map_err(msg)?,
            };
            Ok(pb::PtyAttachRequest {
                sandbox_id: sandbox_id.to_owned(),
                tag,
                cmd: c.cmd,
                args: c.args,
                cols: side("cols", cols.unwrap_or(DEFAULT_COLS))?,
                rows: side("rows", rows.unwrap_or(DEFAULT_ROWS))?,
                envs: c.env.into_iter().collect(),
                cwd: c.cwd,
                user: c.user,
                ..Default::default()
            })
        }
        PtyClientFrame::Connect { tag } => Ok(pb::PtyAttachRequest {
            sandbox_id: sandbox_id.to_owned(),
            tag: guest::tag(&tag).map_err(msg)?,
            ..Default::default()
        }),
        _ => Err("the first frame must be start or connect".into()),
    }
}

/// A terminal over a WebSocket (protocol in the module docs). Credentials may also be
/// passed as `?api_key=` or `?token=`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/pty",
    tag = "sandboxes",
    operation_id = "pty_session",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), ws::WsCredentials),
    responses(
        (status = 101, description = "WebSocket; PTY frames"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn pty(
    st: State,
    WsAuth(auth): WsAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws::upgrade(ws)?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    let span = span("pty", &id, &agent);
    Ok(ws.on_upgrade(move |mut socket| {
        async move {
            ws::while_authorized(&st, &auth, &mut socket, async |s| {
                pty_session(s, agent, id).await
            })
            .await
        }
        .instrument(span)
    }))
}

/// What the control task sends to the agent, in the client's order.
#[derive(Debug)]
enum Control {
    Input(Vec<u8>),
    Resize(u32, u32),
    Kill,
}

async fn pty_session(socket: &mut WebSocket, agent: Agent, id: SandboxId) {
    let Some(frame) = ws::first_frame::<PtyClientFrame>(socket).await else {
        return;
    };
    let req = match attach_request(id.as_str(), frame) {
        Ok(r) => r,
        Err(e) => return ws::fail_with(socket, ServerFrame::error_fatal(e, true)).await,
    };
    let tag = req.tag.clone();
    let stream = match agent
        .rpc()
        .pty_attach_with_options(req, agent.opts_stream())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let m = ws::agent_message(&agent, e);
            return ws::fail_with(socket, ServerFrame::error_fatal(m, true)).await;
        }
    };
    let events = Box::pin(agent_stream!(stream));
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (err_tx, err_rx) = mpsc::channel(16);
    let control = tokio::spawn(
        control_task(agent.clone(), id.as_str().to_owned(), tag, ctl_rx, err_tx).in_current_span(),
    );
    relay(socket, events, ctl_tx, err_rx, &agent).await;
    // The control task drains what the client already sent, then ends; the PTY lives on.
    drop(control);
}

async fn relay<S>(
    socket: &mut WebSocket,
    mut events: S,
    ctl: mpsc::Sender<Control>,
    mut errors: mpsc::Receiver<String>,
    agent: &Agent,
) where
    S: Stream<Item = Result<pb::PtyEvent, connectrpc::ConnectError>> + Unpin,
{
    use pb::pty_event::Event;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            ev = events.next() => {
                let frame = match ev {
                    Some(Ok(pb::PtyEvent { event: Some(Event::Started(s)), .. })) => {
                        ServerFrame::Started { tag: s.tag.clone(), pid: s.pid }
                    }
                    Some(Ok(pb::PtyEvent { event: Some(Event::Output(b)), .. })) => {
                        ServerFrame::output(&b)
                    }
                    Some(Ok(pb::PtyEvent { event: Some(Event::Exited(x)), .. })) => {
                        if ws::send(socket, &ServerFrame::Exit { exit_code: x.exit_code }).await {
                            ws::close(socket).await;
                        }
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        let m = ws::agent_message(agent, e);
                        return ws::fail_with(socket, ServerFrame::error_fatal(m, true)).await;
                    }
                    None => {
                        let m = "the PTY stream ended without an exit";
                        return ws::fail_with(socket, ServerFrame::error_fatal(m, true)).await;
                    }
                };
                if !ws::send(socket, &frame).await {
                    return;
                }
            }
            msg = ws::next_frame::<PtyClientFrame>(socket) => {
                let problem = match msg {
                    Incoming::Closed => return,
                    Incoming::Bad(e) => Some(e),
                    Incoming::Frame(f) => handle_frame(f, &ctl),
                };
                if let Some(p) = problem
                    && !ws::send(socket, &ServerFrame::error_fatal(p, false)).await
                {
                    return;
                }
            }
            Some(e) = errors.recv() => {
                if !ws::send(socket, &ServerFrame::error_fatal(e, false)).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Queues a client frame for the agent; `Some(message)` for a non-fatal error frame.
fn handle_frame(frame: PtyClientFrame, ctl: &mpsc::Sender<Control>) -> Option<String> {
    let c = match frame {
        PtyClientFrame::Input { data } => match ws::decode_data(&data) {
            Ok(b) if b.is_empty() => return None,
            Ok(b) => Control::Input(b),
            Err(e) => return Some(e),
        },
        PtyClientFrame::Resize { cols, rows } => match (side("cols", cols), side("rows", rows)) {
            (Ok(c), Ok(r)) => Control::Resize(c, r),
            (Err(e), _) | (_, Err(e)) => return Some(e),
        },
        PtyClientFrame::Kill => Control::Kill,
        PtyClientFrame::Pong => return None,
        PtyClientFrame::Start { .. } | PtyClientFrame::Connect { .. } => {
            return Some("already attached to a PTY".into());
        }
    };
    match ctl.try_send(c) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => Some("input queue full; frame dropped".into()),
        Err(mpsc::error::TrySendError::Closed(_)) => Some("the PTY is gone".into()),
    }
}

/// Sends queued control frames to the agent one call at a time, merging consecutive input
/// frames into one `PtyInput` (a paste arrives as many frames). Failures become non-fatal
/// error frames.
async fn control_task(
    agent: Agent,
    sandbox_id: String,
    tag: String,
    mut rx: mpsc::Receiver<Control>,
    errors: mpsc::Sender<String>,
) {
    let mut next = None;
    loop {
        let c = match next.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        let result = match c {
            Control::Input(mut data) => {
                while data.len() < MAX_INPUT_BATCH {
                    match rx.try_recv() {
                        Ok(Control::Input(more)) => data.extend_from_slice(&more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let req = pb::PtyInputRequest {
                    sandbox_id: sandbox_id.clone(),
                    tag: tag.clone(),
                    data,
                    ..Default::default()
                };
                agent
                    .rpc()
                    .pty_input_with_options(req, agent.opts())
                    .await
                    .map(drop)
            }
            Control::Resize(cols, rows) => {
                let req = pb::PtyResizeRequest {
                    sandbox_id: sandbox_id.clone(),
                    tag: tag.clone(),
                    cols,
                    rows,
                    ..Default::default()
                };
                agent
                    .rpc()
                    .pty_resize_with_options(req, agent.opts())
                    .await
                    .map(drop)
            }
            Control::Kill => {
                let req = pb::PtyKillRequest {
                    sandbox_id: sandbox_id.clone(),
                    tag: tag.clone(),
                    ..Default::default()
                };
                agent
                    .rpc()
                    .pty_kill_with_options(req, agent.opts())
                    .await
                    .map(drop)
            }
        };
        if let Err(e) = result {
            let _ = errors.try_send(ws::agent_message(&agent, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandboxes::ws::parse_frame;

    #[test]
    fn first_frames() {
        let r = attach_request("sbx", parse_frame(r#"{"type":"start"}"#).unwrap()).unwrap();
        assert_eq!(r.cmd, DEFAULT_CMD);
        assert_eq!((r.cols, r.rows), (DEFAULT_COLS, DEFAULT_ROWS));
        assert!(r.tag.starts_with("pty-"), "{}", r.tag);
        let r = attach_request(
            "sbx",
            parse_frame(r#"{"type":"start","cmd":"/bin/sh","tag":"t1","cols":100,"rows":30}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (r.cmd.as_str(), r.tag.as_str(), r.cols),
            ("/bin/sh", "t1", 100)
        );
        let r = attach_request(
            "sbx",
            parse_frame(r#"{"type":"connect","tag":"t1"}"#).unwrap(),
        )
        .unwrap();
        assert_eq!((r.cmd.as_str(), r.tag.as_str()), ("", "t1"));

        for (frame, want) in [
            (r#"{"type":"input","data":"aGk="}"#, "first frame"),
            (r#"{"type":"start","cols":0}"#, "cols"),
            (r#"{"type":"start","rows":1001}"#, "rows"),
            (r#"{"type":"connect","tag":"a b"}"#, "tag"),
            (r#"{"type":"start","tag":"42"}"#, "tag"),
        ] {
            let e = attach_request("sbx", parse_frame(frame).unwrap()).unwrap_err();
            assert!(e.contains(want), "{frame}: {e}");
        }
        for bad in [
            r#"{"type":"connect"}"#,
            r#"{"type":"bogus"}"#,
            r#"{"type":"start","shell":"zsh"}"#,
        ] {
            assert!(parse_frame::<PtyClientFrame>(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn later_frames_queue_or_explain() {
        let (tx, mut rx) = mpsc::channel(2);
        let f = |s: &str| parse_frame::<PtyClientFrame>(s).unwrap();
        assert_eq!(
            handle_frame(f(r#"{"type":"input","data":"aGk="}"#), &tx),
            None
        );
        assert!(matches!(rx.try_recv(), Ok(Control::Input(b)) if b == b"hi"));
        let e = handle_frame(f(r#"{"type":"input","data":"%%"}"#), &tx).unwrap();
        assert!(e.contains("base64"), "{e}");
        let e = handle_frame(f(r#"{"type":"resize","cols":0,"rows":5}"#), &tx).unwrap();
        assert!(e.contains("cols"), "{e}");
        assert!(handle_frame(f(r#"{"type":"start"}"#), &tx).is_some());
        assert_eq!(handle_frame(f(r#"{"type":"pong"}"#), &tx), None);
        assert_eq!(handle_frame(f(r#"{"type":"kill"}"#), &tx), None);
        assert_eq!(
            handle_frame(f(r#"{"type":"resize","cols":9,"rows":9}"#), &tx),
            None
        );
        let e = handle_frame(f(r#"{"type":"kill"}"#), &tx).unwrap();
        assert!(e.contains("queue full"), "{e}");
        assert!(rx.try_recv().is_ok());
    }
}
