//! The `process.Process` Connect service: request validation and the mapping between
//! protocol messages and running processes.

use std::sync::Arc;
use std::time::Duration;

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::{Stream, StreamExt};
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use wrenn_proto::process::process_event::{DataEvent, EndEvent, KeepAlive, StartEvent};
use wrenn_proto::process::process_selector::Selector;
use wrenn_proto::process::*;

use super::handle::{End, Event, Output, ProcessHandle};
use super::spawn::SpawnSpec;
use crate::paths;
use crate::state::EnvdState;

const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";
/// Terminal size when a PTY request gives none.
const DEFAULT_PTY_SIZE: (u16, u16) = (80, 24);

pub struct ProcessService {
    state: Arc<EnvdState>,
}

impl ProcessService {
    pub fn new(state: Arc<EnvdState>) -> Self {
        ProcessService { state }
    }

    /// The running process a request's selector names.
    fn find(&self, selector: Option<&ProcessSelector>) -> Result<Arc<ProcessHandle>, ConnectError> {
        let selector = selector.and_then(|s| s.selector.as_ref()).ok_or_else(|| {
            ConnectError::invalid_argument("process selector (pid or tag) is required")
        })?;
        self.state
            .processes
            .get(selector)
            .ok_or_else(|| match selector {
                Selector::Pid(pid) => {
                    ConnectError::not_found(format!("process with pid {pid} not found"))
                }
                Selector::Tag(tag) => {
                    ConnectError::not_found(format!("process with tag '{tag}' not found"))
                }
            })
    }
}

/// The keepalive period a stream uses: `Keepalive-Ping-Interval` seconds, else envd's.
fn keepalive_interval(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get(KEEPALIVE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs)
}

fn to_tokio(deadline: std::time::Instant) -> Instant {
    Instant::from_std(deadline)
}

fn event(e: process_event::Event) -> ProcessEvent {
    ProcessEvent {
        event: Some(e),
        ..Default::default()
    }
}

fn start_event(pid: u32) -> ProcessEvent {
    event(
        StartEvent {
            pid,
            ..Default::default()
        }
        .into(),
    )
}

fn data_event(output: Output) -> ProcessEvent {
    use process_event::data_event::Output as O;
    let output = match output {
        Output::Stdout(b) => O::Stdout(b.to_vec()),
        Output::Stderr(b) => O::Stderr(b.to_vec()),
        Output::Pty(b) => O::Pty(b.to_vec()),
    };
    event(
        DataEvent {
            output: Some(output),
            ..Default::default()
        }
        .into(),
    )
}

fn end_event(end: End) -> ProcessEvent {
    let (exit_code, exited, status) = match end.exit {
        Some(exit) => (exit.code(), exit.exited(), exit.status()),
        None => (-1, false, "unknown".to_string()),
    };
    event(
        EndEvent {
            exit_code,
            exited,
            // As upstream envd (Go's `cmd.Wait` error): a failed or signalled process also
            // carries its status as `error`.
            error: end
                .error
                .or_else(|| (exit_code != 0 || !exited).then(|| status.clone())),
            status,
            ..Default::default()
        }
        .into(),
    )
}

fn keepalive_event() -> ProcessEvent {
    event(KeepAlive::default().into())
}

enum Next {
    Event(Option<Event>),
    Keepalive,
    Deadline,
}

/// A follower's event stream: `start{pid}`, then output and keepalives, then `end`.
/// With `deadline`, the stream ends with `deadline_exceeded` (saying `why`) then.
fn process_events(
    pid: u32,
    mut rx: mpsc::Receiver<Event>,
    keepalive: Duration,
    deadline: Option<Instant>,
    why: &'static str,
) -> impl Stream<Item = Result<ProcessEvent, ConnectError>> + Send + 'static {
    async_stream::stream! {
        yield Ok(start_event(pid));
        let mut tick = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expired = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            let next = tokio::select! {
                ev = rx.recv() => Next::Event(ev),
                _ = tick.tick() => Next::Keepalive,
                _ = &mut expired => Next::Deadline,
            };
            match next {
                Next::Event(Some(Event::Data(out))) => yield Ok(data_event(out)),
                Next::Event(Some(Event::End(end))) => {
                    yield Ok(end_event(end));
                    break;
                }
                Next::Event(None) => {
                    yield Err(ConnectError::internal("process output ended without an end event"));
                    break;
                }
                Next::Keepalive => yield Ok(keepalive_event()),
                Next::Deadline => {
                    yield Err(ConnectError::deadline_exceeded(why));
                    break;
                }
            }
        }
    }
}

fn pty_size(pty: &PTY) -> (u16, u16) {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    match pty.size.as_option() {
        Some(s) if s.cols > 0 && s.rows > 0 => (clamp(s.cols), clamp(s.rows)),
        _ => DEFAULT_PTY_SIZE,
    }
}

async fn write_input(
    handle: &ProcessHandle,
    input: Option<&ProcessInput>,
) -> Result<(), ConnectError> {
    match input.and_then(|i| i.input.as_ref()) {
        Some(process_input::Input::Stdin(data)) => handle.write_stdin(data).await?,
        Some(process_input::Input::Pty(data)) => handle.write_pty(data).await?,
        None => {}
    }
    Ok(())
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let processes = self
            .state
            .processes
            .list()
            .into_iter()
            .map(|h| ProcessInfo {
                config: h.config.clone().into(),
                pid: h.pid,
                tag: h.tag.clone(),
                ..Default::default()
            })
            .collect();
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let req = request.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        let rx = handle.follow().ok_or_else(|| {
            ConnectError::not_found(format!("process with pid {} has ended", handle.pid))
        })?;
        let keepalive = keepalive_interval(ctx.headers(), self.state.keepalive);
        let deadline = ctx.deadline().map(to_tokio);
        let stream = process_events(
            handle.pid,
            rx,
            keepalive,
            deadline,
            "deadline exceeded; the process keeps running",
        )
        .map(|r| {
            r.map(|event| ConnectResponse {
                event: event.into(),
                ..Default::default()
            })
        });
        Response::stream_ok(stream)
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let user = self.state.request_user(ctx.headers())?;
        let req = request.to_owned_message();
        let config = req.process.as_option().cloned().unwrap_or_default();
        let defaults = self.state.defaults();
        let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(raw) => paths::resolve(raw, &user, None)
                .map_err(|e| ConnectError::invalid_argument(format!("invalid cwd: {e}")))?,
            None => defaults
                .workdir
                .clone()
                .unwrap_or_else(|| user.home.clone()),
        };
        let spec = SpawnSpec {
            cmd: &config.cmd,
            args: &config.args,
            user: &user,
            cwd,
            default_env: &defaults.env,
            envs: config
                .envs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            pty: req.pty.as_option().map(pty_size),
            stdin: req.stdin.unwrap_or(false),
        };
        let tag = req.tag.clone().filter(|t| !t.is_empty());
        let (handle, rx) = self.state.processes.start(&spec, tag, config.clone())?;
        tracing::debug!(pid = handle.pid, cmd = %config.cmd, user = %user.name, "process started");

        // Connect-Timeout-Ms on Start is the command's timeout: at the deadline the process
        // is killed and the stream ends with `deadline_exceeded` (as upstream envd's does:
        // its handler's context expires), which the SDKs raise as a timeout.
        let deadline = ctx.deadline().map(to_tokio);
        if let Some(deadline) = deadline {
            let handle = handle.clone();
            tokio::spawn(async move {
                let done = handle.done();
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::debug!(pid = handle.pid, "deadline reached; killing process");
                        handle.kill_group();
                    }
                    _ = done.cancelled() => {}
                }
            });
        }

        let keepalive = keepalive_interval(ctx.headers(), self.state.keepalive);
        let stream = process_events(
            handle.pid,
            rx,
            keepalive,
            deadline,
            "command timed out; the process was killed",
        )
        .map(|r| {
            r.map(|event| StartResponse {
                event: event.into(),
                ..Default::default()
            })
        });
        Response::stream_ok(stream)
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = request.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        if let Some(pty) = req.pty.as_option() {
            let (cols, rows) = pty_size(pty);
            handle.resize(cols, rows).await?;
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        use stream_input_request::Event as In;
        let first = requests
            .next()
            .await
            .ok_or_else(|| ConnectError::invalid_argument("empty input stream: expected start"))??
            .to_owned_message();
        let handle = match &first.event {
            Some(In::Start(start)) => self.find(start.process.as_option())?,
            _ => {
                return Err(ConnectError::invalid_argument(
                    "the first input stream message must be start",
                ));
            }
        };
        while let Some(msg) = requests.next().await {
            let msg = msg?.to_owned_message();
            match &msg.event {
                Some(In::Data(data)) => write_input(&handle, data.input.as_option()).await?,
                Some(In::Start(_)) => {
                    return Err(ConnectError::invalid_argument(
                        "start may only be the first input stream message",
                    ));
                }
                Some(In::Keepalive(_)) | None => {}
            }
        }
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let req = request.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        write_input(&handle, req.input.as_option()).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        use nix::sys::signal::Signal as Sig;
        let req = request.to_owned_message();
        let signal = match req.signal.as_known() {
            Some(Signal::SIGNAL_SIGTERM) => Sig::SIGTERM,
            Some(Signal::SIGNAL_SIGKILL) => Sig::SIGKILL,
            _ => {
                return Err(ConnectError::invalid_argument(
                    "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                ));
            }
        };
        let handle = self.find(req.process.as_option())?;
        handle.signal(signal);
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let req = request.to_owned_message();
        let handle = self.find(req.process.as_option())?;
        handle.close_stdin().await?;
        Response::ok(CloseStdinResponse::default())
    }
}
