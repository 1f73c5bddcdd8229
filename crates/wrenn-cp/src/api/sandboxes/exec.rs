//! Commands in a sandbox: `POST /v1/sandboxes/{id}/exec` runs one to its end and answers
//! with its output; `GET /v1/sandboxes/{id}/exec/stream` (WebSocket) streams it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use connectrpc::ErrorCode as RpcCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use wrenn_proto::hostagent::v1 as pb;

use super::guest::Command;
use super::running;
use super::ws::{self, OnClose, WsAuth, agent_stream};
use crate::agents::Agent;
use crate::api::State;
use crate::auth::extract::TeamAuth;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiJson, ApiPath, ErrorCode};
use crate::ids::SandboxId;

pub const DEFAULT_TIMEOUT_SEC: u32 = 60;
pub const MAX_TIMEOUT_SEC: u32 = 3600;
/// Output kept per stream by the agent; a command that writes more gets a 413 rather than
/// a silently cut answer (stream it instead).
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// Time the agent and envd get past the command's own limit to kill it and answer.
const CALL_GRACE: Duration = Duration::from_secs(30);

/// `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// Program to run (looked up in `PATH`; not parsed by a shell).
    #[schema(schema_with = super::guest::cmd_schema)]
    pub cmd: String,
    #[schema(schema_with = super::guest::args_schema)]
    pub args: Option<Vec<String>>,
    #[schema(schema_with = super::guest::env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    /// Absolute working directory; default the user's home.
    #[schema(pattern = "^/[^\\x00]*$", max_length = 4096)]
    pub cwd: Option<String>,
    /// Guest user; default the sandbox's default user (`user`).
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
    /// Seconds before the command is killed (1–3600, default 60).
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_sec: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// `utf-8`, or `base64` (both streams) when either is not valid UTF-8.
    pub encoding: &'static str,
    pub duration_ms: u64,
}

/// The output as JSON strings: both as text when both are UTF-8, else both base64.
pub fn encode_output(stdout: Vec<u8>, stderr: Vec<u8>) -> (String, String, &'static str) {
    match (String::from_utf8(stdout), String::from_utf8(stderr)) {
        (Ok(o), Ok(e)) => (o, e, "utf-8"),
        (o, e) => {
            let bytes = |r: Result<String, std::string::FromUtf8Error>| match r {
                Ok(s) => s.into_bytes(),
                Err(e) => e.into_bytes(),
            };
            (B64.encode(bytes(o)), B64.encode(bytes(e)), "base64")
        }
    }
}

fn timeout_sec(v: Option<u32>) -> Result<u32, ApiError> {
    match v.unwrap_or(DEFAULT_TIMEOUT_SEC) {
        t @ 1..=MAX_TIMEOUT_SEC => Ok(t),
        _ => Err(ApiError::invalid_request(format!(
            "timeout_sec must be 1 to {MAX_TIMEOUT_SEC}"
        ))),
    }
}

fn exec_request(sandbox_id: &str, c: Command, timeout_sec: u32) -> pb::ExecRequest {
    pb::ExecRequest {
        sandbox_id: sandbox_id.to_owned(),
        cmd: c.cmd,
        args: c.args,
        envs: c.env.into_iter().collect(),
        cwd: c.cwd,
        user: c.user,
        timeout_sec,
        ..Default::default()
    }
}

/// Whether a command's SIGKILL end was envd enforcing `timeout_sec`. envd does not say so
/// itself, and its clock is the guest's (under TCG it was seen killing a 1 s command 0.8 s
/// after we sent it), so a kill within a second of the deadline counts.
pub fn killed_at_deadline(status: &str, elapsed: Duration, timeout_sec: u32) -> bool {
    status == "signal: killed" && elapsed + KILL_SLACK >= Duration::from_secs(timeout_sec.into())
}

const KILL_SLACK: Duration = Duration::from_secs(1);

pub(super) fn span(route: &'static str, sandbox_id: &SandboxId, agent: &Agent) -> tracing::Span {
    tracing::info_span!("sandbox_io", route, sandbox_id = %sandbox_id, host_id = %agent.host_id())
}

/// Buffered `exec`s one team may have running at once: each holds up to 2 × 16 MiB of output
/// in the control plane until it ends.
pub const EXECS_PER_TEAM: usize = 8;

/// Per-team slots for buffered `exec`s, so one tenant's output cannot take the control
/// plane's memory from the others.
#[derive(Debug, Default)]
pub struct ExecSlots {
    teams: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl ExecSlots {
    /// A slot for `team`, or 429 while it has [`EXECS_PER_TEAM`] running.
    pub fn acquire(&self, team: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let sem = {
            let mut teams = self.teams.lock().unwrap_or_else(|e| e.into_inner());
            if teams.len() > 10_000 {
                teams.retain(|_, s| s.available_permits() < EXECS_PER_TEAM);
            }
            teams
                .entry(team.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(EXECS_PER_TEAM)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            ApiError::rate_limited(Duration::from_secs(1)).with_message(format!(
                "the team has {EXECS_PER_TEAM} commands running through /exec; wait for one, or use /exec/stream"
            ))
        })
    }
}

/// Runs a command to its end.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    tag = "sandboxes",
    operation_id = "exec_command",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ended", body = ExecResult),
        (status = 400, description = "Bad command, env, cwd, user or timeout", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox, or no such program", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or the guest refused the request in the sandbox's current state (e.g. `cwd` does not exist)", body = ErrorBody),
        (status = 413, description = "More than 16 MiB of output on a stream", body = ErrorBody),
        (status = 429, description = "The team has 8 commands running through /exec already (`Retry-After`)", body = ErrorBody),
        (status = 504, description = "The command ran out of time and was killed", body = ErrorBody),
    )
)]
pub async fn exec(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<ApiJson<ExecResult>, ApiError> {
    let cmd = Command::new(
        &body.cmd,
        body.args,
        body.env,
        body.cwd.as_deref(),
        body.user.as_deref(),
    )?;
    let timeout = timeout_sec(body.timeout_sec)?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    let _slot = st.exec_slots.acquire(auth.team_id())?;
    let span = span("exec", &id, &agent);
    async move {
        let req = exec_request(id.as_str(), cmd, timeout);
        let opts = agent
            .opts_timeout(Duration::from_secs(timeout.into()) + CALL_GRACE)
            // Both streams at the limit, plus the envelope.
            .with_max_message_size(2 * MAX_OUTPUT + 64 * 1024);
        let started = Instant::now();
        let out = match agent.rpc().exec_with_options(req, opts).await {
            Ok(r) => r.into_owned(),
            Err(e) if e.code == RpcCode::DeadlineExceeded => {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("the command did not end within {timeout} s and was killed"),
                ));
            }
            Err(e) => return Err(super::guest::refused(agent.err(e))),
        };
        let elapsed = started.elapsed();
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if killed_at_deadline(&out.status, elapsed, timeout) {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!("the command did not end within {timeout} s and was killed"),
            ));
        }
        if out.stdout.len() >= MAX_OUTPUT
            || out.stderr.len() >= MAX_OUTPUT
            || out.error.contains("truncated")
        {
            return Err(ApiError::payload_too_large(
                "the command wrote more than 16 MiB to a stream; use /exec/stream",
            ));
        }
        if !out.error.is_empty() {
            tracing::debug!(error = %out.error, "command ended with an error");
        }
        let (stdout, stderr, encoding) = encode_output(out.stdout, out.stderr);
        Ok(ApiJson(ExecResult {
            stdout,
            stderr,
            exit_code: out.exit_code,
            encoding,
            duration_ms,
        }))
    }
    .instrument(span)
    .await
}

/// The exec stream's first client frame.
#[derive(Debug, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecStreamStart {
    Start {
        cmd: String,
        args: Option<Vec<String>>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        user: Option<String>,
    },
}

/// The start frame as a command, or the message of the error frame.
pub fn start_command(frame: ExecStreamStart) -> Result<Command, String> {
    let ExecStreamStart::Start {
        cmd,
        args,
        env,
        cwd,
        user,
    } = frame;
    Command::new(&cmd, args, env, cwd.as_deref(), user.as_deref())
        .map_err(|e| e.public_message().to_owned())
}

/// Streams a command over a WebSocket.
///
/// The client's first text frame is `{"type":"start","cmd","args"?,"env"?,"cwd"?,"user"?}`.
/// The server sends `{"type":"start","pid"}`, `{"type":"stdout"|"stderr","data":"<base64>"}`,
/// `{"type":"exit","exit_code"}` (then closes) or `{"type":"error","message"}` (then
/// closes). `{"type":"stop"}` from the client kills the command; so does closing the socket.
/// Credentials may also be passed as `?api_key=` or `?token=` (browsers cannot set headers).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/exec/stream",
    tag = "sandboxes",
    operation_id = "exec_stream",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"), ws::WsCredentials),
    responses(
        (status = 101, description = "WebSocket; frames as described"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn exec_stream(
    st: State,
    WsAuth(auth): WsAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws::upgrade(ws)?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    let span = span("exec_stream", &id, &agent);
    Ok(ws.on_upgrade(move |mut socket| {
        async move {
            ws::while_authorized(&st, &auth, &mut socket, async |s| {
                exec_session(s, agent, id).await
            })
            .await
        }
        .instrument(span)
    }))
}

async fn exec_session(socket: &mut WebSocket, agent: Agent, id: SandboxId) {
    let Some(frame) = ws::first_frame::<ExecStreamStart>(socket).await else {
        return;
    };
    let cmd = match start_command(frame) {
        Ok(c) => c,
        Err(e) => return ws::fail(socket, e).await,
    };
    // No deadline: the command runs until it ends, is stopped or the socket closes.
    let req = exec_request(id.as_str(), cmd, 0);
    let stream = match agent
        .rpc()
        .exec_stream_with_options(req, agent.opts_stream())
        .await
    {
        Ok(s) => s,
        Err(e) => return ws::fail(socket, ws::agent_message(&agent, e)).await,
    };
    let events = Box::pin(agent_stream!(stream));
    ws::relay_exec_events(socket, events, &agent, id.as_str(), None, OnClose::Kill).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sandboxes::ws::parse_frame;

    #[test]
    fn a_team_has_a_fixed_number_of_exec_slots() {
        let slots = ExecSlots::default();
        let held: Vec<_> = (0..EXECS_PER_TEAM)
            .map(|_| slots.acquire("team-a").unwrap())
            .collect();
        let e = slots.acquire("team-a").unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        // Another team is not held back; a slot comes back when its exec ends.
        let _b = slots.acquire("team-b").unwrap();
        drop(held);
        assert!(slots.acquire("team-a").is_ok());
    }

    #[test]
    fn output_encoding() {
        let (o, e, enc) = encode_output(b"hi\n".to_vec(), vec![]);
        assert_eq!((o.as_str(), e.as_str(), enc), ("hi\n", "", "utf-8"));
        let (o, e, enc) = encode_output(b"ok".to_vec(), vec![0xff, 0xfe]);
        assert_eq!((o.as_str(), e.as_str(), enc), ("b2s=", "//4=", "base64"));
    }

    #[test]
    fn deadline_kills() {
        let s = Duration::from_secs;
        assert!(killed_at_deadline(
            "signal: killed",
            Duration::from_millis(814),
            1
        ));
        assert!(killed_at_deadline("signal: killed", s(59), 60));
        assert!(
            !killed_at_deadline("signal: killed", s(10), 60),
            "killed by someone else"
        );
        assert!(!killed_at_deadline("exit status 1", s(60), 60));
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_sec(None).unwrap(), DEFAULT_TIMEOUT_SEC);
        assert_eq!(timeout_sec(Some(3600)).unwrap(), 3600);
        assert!(timeout_sec(Some(0)).is_err());
        assert!(timeout_sec(Some(3601)).is_err());
    }

    #[test]
    fn start_frames() {
        let f: ExecStreamStart =
            parse_frame(r#"{"type":"start","cmd":"echo","args":["hi"]}"#).unwrap();
        let c = start_command(f).unwrap();
        assert_eq!(
            (c.cmd.as_str(), c.args.as_slice()),
            ("echo", &["hi".into()][..])
        );
        for bad in [
            r#"{"type":"stop"}"#,
            r#"{"type":"start"}"#,
            r#"{"type":"start","cmd":"x","bogus":1}"#,
            r#"{"cmd":"x"}"#,
            "",
        ] {
            assert!(parse_frame::<ExecStreamStart>(bad).is_err(), "{bad}");
        }
        let f: ExecStreamStart = parse_frame(r#"{"type":"start","cmd":"x","cwd":"rel"}"#).unwrap();
        assert!(start_command(f).unwrap_err().contains("absolute"));
    }
}
