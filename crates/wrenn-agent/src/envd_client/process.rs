//! Processes through envd's `process.Process` service: foreground and background
//! commands, following running ones, signals, and PTYs addressed by tag.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use wrenn_proto::process as pb;
use wrenn_proto::process::process_event::Event as PbEvent;
use wrenn_proto::process::process_event::data_event::Output as PbOutput;

pub use wrenn_proto::process::Signal;
pub use wrenn_proto::process::process_selector::Selector;

use super::{EnvdClient, EnvdError, UNARY_TIMEOUT};

/// Most output `exec` keeps per stream; the rest is dropped and the result marked
/// truncated, so one chatty command cannot exhaust the agent's memory.
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;
/// Grace past a command's timeout for envd to kill it and report the end, before the agent
/// gives up on the call itself.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A command to run in the sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    /// Working directory; `None` = envd's default (the user's home or `/init`'s workdir).
    pub cwd: Option<String>,
    /// Guest user; `None` = the sandbox's default user.
    pub user: Option<String>,
}

/// Terminal size of a PTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySpec {
    pub cols: u32,
    pub rows: u32,
}

/// One event of a process stream. envd's keepalives are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Start {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    End {
        exit_code: i32,
        exited: bool,
        status: String,
        error: Option<String>,
    },
}

/// A stream of process events ending after `End` (or with an error).
pub type ProcessEvents = Pin<Box<dyn Stream<Item = Result<ProcessEvent, EnvdError>> + Send>>;

/// Everything a foreground command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
    /// Output beyond [`EXEC_OUTPUT_LIMIT`] was dropped.
    pub truncated: bool,
}

/// A running process as envd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub cmd: String,
    pub args: Vec<String>,
}

fn convert(ev: pb::ProcessEvent) -> Option<ProcessEvent> {
    Some(match ev.event? {
        PbEvent::Start(s) => ProcessEvent::Start { pid: s.pid },
        PbEvent::Data(d) => match d.output? {
            PbOutput::Stdout(b) => ProcessEvent::Stdout(b),
            PbOutput::Stderr(b) => ProcessEvent::Stderr(b),
            PbOutput::Pty(b) => ProcessEvent::Pty(b),
        },
        PbEvent::End(e) => ProcessEvent::End {
            exit_code: e.exit_code,
            exited: e.exited,
            status: e.status,
            error: e.error.filter(|s| !s.is_empty()),
        },
        PbEvent::Keepalive(_) => return None,
    })
}

/// Turns an envd `Start`/`Connect` server stream into [`ProcessEvents`]. (A macro: the two
/// response types differ only in name.)
macro_rules! relay_events {
    ($stream:expr) => {{
        let mut stream = $stream;
        Box::pin(async_stream::stream! {
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        let owned = msg.to_owned_message();
                        let Some(ev) = owned.event.into_option().and_then(convert) else {
                            continue;
                        };
                        let end = matches!(ev, ProcessEvent::End { .. });
                        yield Ok(ev);
                        if end {
                            break;
                        }
                    }
                    Ok(None) => {
                        yield Err(EnvdError::Protocol(
                            "process stream ended without an end event".into(),
                        ));
                        break;
                    }
                    Err(e) => {
                        yield Err(EnvdError::Rpc(e));
                        break;
                    }
                }
            }
        }) as ProcessEvents
    }};
}

fn selector(sel: Selector) -> pb::ProcessSelector {
    pb::ProcessSelector {
        selector: Some(sel),
        ..Default::default()
    }
}

fn tag_selector(tag: &str) -> Result<pb::ProcessSelector, EnvdError> {
    if tag.is_empty() {
        return Err(EnvdError::Protocol("a PTY tag is required".into()));
    }
    Ok(selector(Selector::Tag(tag.to_string())))
}

fn pty_size(p: PtySpec) -> pb::PTY {
    pb::PTY {
        size: pb::pty::Size {
            cols: p.cols,
            rows: p.rows,
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
}

impl EnvdClient {
    /// Starts a command (optionally tagged, optionally in a PTY) and follows it. With
    /// `timeout`, envd kills the command when it runs out (sent as `Connect-Timeout-Ms`,
    /// not enforced locally, so the stream still reports the end).
    pub async fn start(
        &self,
        spec: &ExecSpec,
        tag: Option<&str>,
        pty: Option<PtySpec>,
        timeout: Option<Duration>,
    ) -> Result<ProcessEvents, EnvdError> {
        let req = pb::StartRequest {
            process: pb::ProcessConfig {
                cmd: spec.cmd.clone(),
                args: spec.args.clone(),
                envs: spec
                    .envs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                cwd: spec.cwd.clone().filter(|c| !c.is_empty()),
                ..Default::default()
            }
            .into(),
            pty: pty.map(pty_size).into(),
            tag: tag.filter(|t| !t.is_empty()).map(str::to_string),
            ..Default::default()
        };
        let mut opts = self.call_options(spec.user.as_deref(), None)?;
        if let Some(t) = timeout {
            opts = opts.with_header(
                "connect-timeout-ms",
                http::HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        let stream = self.inner.process.start_with_options(req, opts).await?;
        Ok(relay_events!(stream))
    }

    /// Runs a command to its end and collects its output. With `timeout`, a command still
    /// running then is killed and the call fails with [`EnvdError::Timeout`].
    pub async fn exec(
        &self,
        spec: &ExecSpec,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, EnvdError> {
        let started = tokio::time::Instant::now();
        let run = async {
            let mut events = self.start(spec, None, None, timeout).await?;
            let mut out = ExecOutput::default();
            while let Some(ev) = events.next().await {
                let ev = match (ev, timeout) {
                    // envd killed the command at its deadline.
                    (Err(EnvdError::Rpc(e)), Some(t))
                        if e.code == connectrpc::ErrorCode::DeadlineExceeded =>
                    {
                        return Err(EnvdError::Timeout(t));
                    }
                    (ev, _) => ev?,
                };
                match ev {
                    ProcessEvent::Start { pid } => out.pid = pid,
                    ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => {
                        append(&mut out.stdout, &b, &mut out.truncated)
                    }
                    ProcessEvent::Stderr(b) => append(&mut out.stderr, &b, &mut out.truncated),
                    ProcessEvent::End {
                        exit_code,
                        exited,
                        status,
                        error,
                    } => {
                        out.exit_code = exit_code;
                        out.exited = exited;
                        out.status = status;
                        out.error = error;
                        return Ok(out);
                    }
                }
            }
            Err(EnvdError::Protocol("process stream ended early".into()))
        };
        let out = match timeout {
            Some(t) => tokio::time::timeout(t + KILL_GRACE, run)
                .await
                .map_err(|_| EnvdError::Timeout(t))??,
            None => run.await?,
        };
        // Killed by envd at the deadline: a signal end at or after it.
        if let Some(t) = timeout
            && !out.exited
            && started.elapsed() >= t
        {
            return Err(EnvdError::Timeout(t));
        }
        Ok(out)
    }

    /// Starts a command without following it; returns its pid. The process keeps running
    /// after this call (envd owns it).
    pub async fn start_background(
        &self,
        spec: &ExecSpec,
        tag: Option<&str>,
    ) -> Result<u32, EnvdError> {
        let mut events = self.start(spec, tag, None, None).await?;
        match events.next().await {
            Some(Ok(ProcessEvent::Start { pid })) => Ok(pid),
            Some(Err(e)) => Err(e),
            Some(Ok(other)) => Err(EnvdError::Protocol(format!(
                "expected a start event first, got {other:?}"
            ))),
            None => Err(EnvdError::Protocol("process stream was empty".into())),
        }
    }

    /// The processes envd is running.
    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>, EnvdError> {
        let r = self
            .inner
            .process
            .list_with_options(
                pb::ListRequest::default(),
                self.call_options(None, Some(UNARY_TIMEOUT))?,
            )
            .await?
            .into_owned();
        Ok(r.processes
            .into_iter()
            .map(|p| {
                let config = p.config.into_option().unwrap_or_default();
                ProcessInfo {
                    pid: p.pid,
                    tag: p.tag.filter(|t| !t.is_empty()),
                    cmd: config.cmd,
                    args: config.args,
                }
            })
            .collect())
    }

    /// Sends `signal` to a process.
    pub async fn signal(&self, process: Selector, signal: Signal) -> Result<(), EnvdError> {
        let req = pb::SendSignalRequest {
            process: selector(process).into(),
            signal: signal.into(),
            ..Default::default()
        };
        self.inner
            .process
            .send_signal_with_options(req, self.call_options(None, Some(UNARY_TIMEOUT))?)
            .await?;
        Ok(())
    }

    /// Follows a running process from now on: `Start` first, then its output and end.
    pub async fn attach(&self, process: Selector) -> Result<ProcessEvents, EnvdError> {
        let req = pb::ConnectRequest {
            process: selector(process).into(),
            ..Default::default()
        };
        let stream = self
            .inner
            .process
            .connect_with_options(req, self.call_options(None, None)?)
            .await?;
        Ok(relay_events!(stream))
    }

    /// Starts `spec` in a PTY of `size` under `tag`, or — with `spec` `None` — re-attaches
    /// to the running PTY with that tag. Either way the stream begins with `Start`.
    pub async fn pty(
        &self,
        tag: &str,
        spec: Option<&ExecSpec>,
        size: PtySpec,
    ) -> Result<ProcessEvents, EnvdError> {
        tag_selector(tag)?;
        match spec {
            Some(spec) => self.start(spec, Some(tag), Some(size), None).await,
            None => self.attach(Selector::Tag(tag.to_string())).await,
        }
    }

    /// Writes `data` to the PTY with `tag`.
    pub async fn pty_input(&self, tag: &str, data: Vec<u8>) -> Result<(), EnvdError> {
        let req = pb::SendInputRequest {
            process: tag_selector(tag)?.into(),
            input: pb::ProcessInput {
                input: Some(pb::process_input::Input::Pty(data)),
                ..Default::default()
            }
            .into(),
            ..Default::default()
        };
        self.inner
            .process
            .send_input_with_options(req, self.call_options(None, Some(UNARY_TIMEOUT))?)
            .await?;
        Ok(())
    }

    /// Resizes the PTY with `tag`.
    pub async fn pty_resize(&self, tag: &str, size: PtySpec) -> Result<(), EnvdError> {
        let req = pb::UpdateRequest {
            process: tag_selector(tag)?.into(),
            pty: Some(pty_size(size)).into(),
            ..Default::default()
        };
        self.inner
            .process
            .update_with_options(req, self.call_options(None, Some(UNARY_TIMEOUT))?)
            .await?;
        Ok(())
    }

    /// Kills the PTY's process (SIGKILL).
    pub async fn pty_kill(&self, tag: &str) -> Result<(), EnvdError> {
        tag_selector(tag)?;
        self.signal(Selector::Tag(tag.to_string()), Signal::SIGNAL_SIGKILL)
            .await
    }
}

fn append(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_caps_output() {
        let mut buf = vec![0u8; EXEC_OUTPUT_LIMIT - 2];
        let mut t = false;
        append(&mut buf, b"ab", &mut t);
        assert!(!t);
        append(&mut buf, b"c", &mut t);
        assert!(t);
        assert_eq!(buf.len(), EXEC_OUTPUT_LIMIT);
    }

    #[test]
    fn keepalives_are_dropped() {
        let ka = pb::ProcessEvent {
            event: Some(PbEvent::Keepalive(Default::default())),
            ..Default::default()
        };
        assert_eq!(convert(ka), None);
        let start = pb::ProcessEvent {
            event: Some(PbEvent::Start(Box::new(pb::process_event::StartEvent {
                pid: 7,
                ..Default::default()
            }))),
            ..Default::default()
        };
        assert_eq!(convert(start), Some(ProcessEvent::Start { pid: 7 }));
    }
}
