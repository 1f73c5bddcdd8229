//! Background processes: start (tagged), list, signal, and follow one over a WebSocket.

use std::collections::BTreeMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use wrenn_proto::hostagent::v1 as pb;

use super::exec::span;
use super::guest::{self, Command, Selector};
use super::running;
use super::ws::{self, OnClose, WsAuth, agent_stream};
use crate::agents::Agent;
use crate::api::State;
use crate::auth::extract::TeamAuth;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ids::SandboxId;

/// `POST /v1/sandboxes/{id}/processes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Program to run (looked up in `PATH`; not parsed by a shell).
    #[schema(schema_with = guest::cmd_schema)]
    pub cmd: String,
    #[schema(schema_with = guest::args_schema)]
    pub args: Option<Vec<String>>,
    #[schema(schema_with = guest::env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    /// Absolute working directory; default the user's home.
    #[schema(pattern = "^/[^\\x00]*$", max_length = 4096)]
    pub cwd: Option<String>,
    /// Guest user; default the sandbox's default user (`user`).
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub user: Option<String>,
    /// Names the process for later calls; default `proc-` + 8 hex digits.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._-]*[A-Za-z._-][A-Za-z0-9._-]*$"
    )]
    pub tag: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Started {
    pub pid: u32,
    pub tag: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub cmd: String,
    pub args: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// Starts a command in the background; it runs until it ends or is signalled.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/processes",
    tag = "sandboxes",
    operation_id = "start_process",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    request_body = StartBody,
    responses(
        (status = 202, description = "Started", body = Started),
        (status = 400, description = "Bad command or tag", body = ErrorBody),
        (status = 403, description = "The guest user does not exist, or may not do this", body = ErrorBody),
        (status = 404, description = "No such sandbox, or no such program", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, the tag is taken, or the guest refused the request in the sandbox's current state (e.g. `cwd` does not exist)", body = ErrorBody),
    )
)]
pub async fn start(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<(StatusCode, ApiJson<Started>), ApiError> {
    let cmd = Command::new(
        &body.cmd,
        body.args,
        body.env,
        body.cwd.as_deref(),
        body.user.as_deref(),
    )?;
    let tag = match &body.tag {
        Some(t) => guest::tag(t)?,
        None => guest::new_tag("proc")?,
    };
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::StartBackgroundRequest {
            sandbox_id: id.as_str().to_owned(),
            cmd: cmd.cmd,
            args: cmd.args,
            envs: cmd.env.into_iter().collect(),
            cwd: cmd.cwd,
            user: cmd.user,
            tag: tag.clone(),
            ..Default::default()
        };
        let r = agent
            .rpc()
            .start_background_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?
            .into_owned();
        tracing::info!(pid = r.pid, %tag, "background process started");
        Ok((StatusCode::ACCEPTED, ApiJson(Started { pid: r.pid, tag })))
    }
    .instrument(span("process_start", &id, &agent))
    .await
}

/// The processes running in the sandbox (background, streamed and PTY ones).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes",
    tag = "sandboxes",
    operation_id = "list_processes",
    security(("api_key" = []), ("bearer" = [])),
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    responses(
        (status = 200, body = ProcessList),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn list(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
) -> Result<ApiJson<ProcessList>, ApiError> {
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::ListProcessesRequest {
            sandbox_id: id.as_str().to_owned(),
            ..Default::default()
        };
        let r = agent
            .rpc()
            .list_processes_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?
            .into_owned();
        let processes = r
            .processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                tag: (!p.tag.is_empty()).then_some(p.tag),
                cmd: p.cmd,
                args: p.args,
            })
            .collect();
        Ok(ApiJson(ProcessList { processes }))
    }
    .instrument(span("process_list", &id, &agent))
    .await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SignalQuery {
    /// `SIGTERM` or `SIGKILL` (default).
    #[param(pattern = "^SIG(TERM|KILL)$")]
    pub signal: Option<String>,
}

pub fn parse_signal(s: Option<&str>) -> Result<pb::Signal, ApiError> {
    match s {
        None | Some("SIGKILL") => Ok(pb::Signal::SIGNAL_SIGKILL),
        Some("SIGTERM") => Ok(pb::Signal::SIGNAL_SIGTERM),
        Some(_) => Err(ApiError::invalid_request(
            "signal must be SIGTERM or SIGKILL",
        )),
    }
}

/// Signals a process by pid (a number) or tag.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}/processes/{selector}",
    tag = "sandboxes",
    operation_id = "signal_process",
    security(("api_key" = []), ("bearer" = [])),
    params(
        ("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"),
        ("selector" = Selector, Path, description = "pid or tag"),
        SignalQuery,
    ),
    responses(
        (status = 204, description = "Signal sent"),
        (status = 400, description = "Bad selector or signal", body = ErrorBody),
        (status = 404, description = "No such sandbox or process", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn signal(
    st: State,
    auth: TeamAuth,
    ApiPath((id, selector)): ApiPath<(SandboxId, String)>,
    ApiQuery(q): ApiQuery<SignalQuery>,
) -> Result<StatusCode, ApiError> {
    let selector = Selector::parse(&selector)?;
    let sig = parse_signal(q.signal.as_deref())?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    async {
        let req = pb::SignalProcessRequest {
            sandbox_id: id.as_str().to_owned(),
            process: selector.to_proto().into(),
            signal: sig.into(),
            ..Default::default()
        };
        agent
            .rpc()
            .signal_process_with_options(req, agent.opts())
            .await
            .map_err(|e| guest::refused(agent.err(e)))?;
        tracing::info!(?selector, ?sig, "process signalled");
        Ok(StatusCode::NO_CONTENT)
    }
    .instrument(span("process_signal", &id, &agent))
    .await
}

/// Follows a running process from now on, over a WebSocket. Server frames as the exec
/// stream (`start`, `stdout`, `stderr`, `exit`, `error`); `{"type":"stop"}` kills the
/// process; closing the socket leaves it running. Credentials may also be passed as
/// `?api_key=` or `?token=`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/processes/{selector}/stream",
    tag = "sandboxes",
    operation_id = "attach_process",
    security(("api_key" = []), ("bearer" = [])),
    params(
        ("id" = crate::ids::SandboxId, Path, description = "Sandbox ID"),
        ("selector" = Selector, Path, description = "pid or tag"),
        ws::WsCredentials,
    ),
    responses(
        (status = 101, description = "WebSocket; frames as the exec stream"),
        (status = 400, description = "Bad selector, or not a WebSocket upgrade", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
    )
)]
pub async fn attach(
    st: State,
    WsAuth(auth): WsAuth,
    ApiPath((id, selector)): ApiPath<(SandboxId, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws::upgrade(ws)?;
    let selector = Selector::parse(&selector)?;
    let (_, agent) = running(&st, auth.team_id(), &id).await?;
    let span = span("process_attach", &id, &agent);
    Ok(ws.on_upgrade(move |mut socket| {
        async move {
            ws::while_authorized(&st, &auth, &mut socket, async |s| {
                attach_session(s, agent, id, selector).await
            })
            .await
        }
        .instrument(span)
    }))
}

async fn attach_session(socket: &mut WebSocket, agent: Agent, id: SandboxId, selector: Selector) {
    let req = pb::AttachProcessRequest {
        sandbox_id: id.as_str().to_owned(),
        process: selector.to_proto().into(),
        ..Default::default()
    };
    let stream = match agent
        .rpc()
        .attach_process_with_options(req, agent.opts_stream())
        .await
    {
        Ok(s) => s,
        Err(e) => return ws::fail(socket, ws::agent_message(&agent, e)).await,
    };
    let events = Box::pin(agent_stream!(stream));
    ws::relay_exec_events(
        socket,
        events,
        &agent,
        id.as_str(),
        Some(selector),
        OnClose::Detach,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal(None).unwrap(), pb::Signal::SIGNAL_SIGKILL);
        assert_eq!(
            parse_signal(Some("SIGTERM")).unwrap(),
            pb::Signal::SIGNAL_SIGTERM
        );
        for bad in ["sigterm", "9", "SIGHUP", ""] {
            assert!(parse_signal(Some(bad)).is_err(), "{bad}");
        }
    }
}
