//! Conversions between the agent's process messages and the envd client's.

use connectrpc::ConnectError;
use futures::{Stream, StreamExt};
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::hostagent::v1::exec_event::data::Output;

use super::errors::envd_error;
use crate::envd_client::{
    EnvdClient, EnvdError, ExecOutput, ExecSpec, ProcessEvent, ProcessEvents, ProcessInfo, PtySpec,
    Selector, Signal,
};

/// Terminal size when a PTY request gives none.
const DEFAULT_PTY: PtySpec = PtySpec { cols: 80, rows: 24 };

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The command of an `Exec`/`StartBackground`/`PtyAttach` request.
pub fn exec_spec<'a>(
    cmd: &str,
    args: &[String],
    envs: impl IntoIterator<Item = (&'a String, &'a String)>,
    cwd: &str,
    user: &str,
) -> Result<ExecSpec, ConnectError> {
    if cmd.is_empty() {
        return Err(ConnectError::invalid_argument("cmd is required"));
    }
    Ok(ExecSpec {
        cmd: cmd.to_string(),
        args: args.to_vec(),
        envs: envs
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: non_empty(cwd),
        user: non_empty(user),
    })
}

pub fn pty_size(cols: u32, rows: u32) -> PtySpec {
    if cols == 0 || rows == 0 {
        DEFAULT_PTY
    } else {
        PtySpec { cols, rows }
    }
}

pub fn exec_response(out: ExecOutput) -> pb::ExecResponse {
    let mut error = out.error.unwrap_or_default();
    if out.truncated {
        let note = format!(
            "output truncated at {} bytes per stream",
            crate::envd_client::EXEC_OUTPUT_LIMIT
        );
        error = if error.is_empty() {
            note
        } else {
            format!("{error}; {note}")
        };
    }
    pb::ExecResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
        status: out.status,
        error,
        ..Default::default()
    }
}

fn exec_event(ev: ProcessEvent) -> pb::ExecEvent {
    use pb::exec_event::{Data, End, Event, Start};
    let data = |o: Output| -> Event {
        Data {
            output: Some(o),
            ..Default::default()
        }
        .into()
    };
    let event: Event = match ev {
        ProcessEvent::Start { pid } => Start {
            pid,
            ..Default::default()
        }
        .into(),
        ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => data(Output::Stdout(b)),
        ProcessEvent::Stderr(b) => data(Output::Stderr(b)),
        ProcessEvent::End {
            exit_code,
            status,
            error,
            ..
        } => End {
            exit_code,
            status,
            error: error.unwrap_or_default(),
            ..Default::default()
        }
        .into(),
    };
    pb::ExecEvent {
        event: Some(event),
        ..Default::default()
    }
}

/// envd's process events as `ExecEvent`s.
/// `events` until they end, or until the sandbox's VM is gone on purpose (paused), which
/// ends the stream with that reason: a stopped VM never closes its connections.
fn until_gone(
    sandbox_id: String,
    envd: EnvdClient,
    events: ProcessEvents,
) -> impl Stream<Item = Result<ProcessEvent, ConnectError>> + Send + 'static {
    async_stream::stream! {
        let mut events = events;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(r) => yield r.map_err(|e| envd_error(&sandbox_id, envd.explain(e))),
                    None => break,
                },
                () = envd.gone() => {
                    let cut = EnvdError::Transport("the VM is gone".into());
                    yield Err(envd_error(&sandbox_id, envd.explain(cut)));
                    break;
                }
            }
        }
    }
}

/// envd's process events as `ExecEvent`s.
pub fn exec_events(
    sandbox_id: String,
    envd: EnvdClient,
    events: ProcessEvents,
) -> impl Stream<Item = Result<pb::ExecEvent, ConnectError>> + Send + 'static {
    until_gone(sandbox_id, envd, events).map(|r| r.map(exec_event))
}

/// envd's PTY process events as `PtyEvent`s: `started{pid,tag}`, `output`, `exited`.
pub fn pty_events(
    sandbox_id: String,
    envd: EnvdClient,
    tag: String,
    events: ProcessEvents,
) -> impl Stream<Item = Result<pb::PtyEvent, ConnectError>> + Send + 'static {
    use pb::pty_event::{Event, Exited, Started};
    until_gone(sandbox_id, envd, events).map(move |r| {
        let ev = r?;
        let event: Event = match ev {
            ProcessEvent::Start { pid } => Started {
                pid,
                tag: tag.clone(),
                ..Default::default()
            }
            .into(),
            ProcessEvent::Pty(b) | ProcessEvent::Stdout(b) | ProcessEvent::Stderr(b) => {
                Event::Output(b)
            }
            ProcessEvent::End {
                exit_code, status, ..
            } => Exited {
                exit_code,
                status,
                ..Default::default()
            }
            .into(),
        };
        Ok(pb::PtyEvent {
            event: Some(event),
            ..Default::default()
        })
    })
}

pub fn selector(sel: Option<&pb::ProcessSelector>) -> Result<Selector, ConnectError> {
    use pb::process_selector::Selector as S;
    match sel.and_then(|s| s.selector.as_ref()) {
        Some(S::Pid(pid)) if *pid > 0 => Ok(Selector::Pid(*pid)),
        Some(S::Tag(tag)) if !tag.is_empty() => Ok(Selector::Tag(tag.clone())),
        _ => Err(ConnectError::invalid_argument(
            "process selector (pid or tag) is required",
        )),
    }
}

pub fn signal(sig: buffa::EnumValue<pb::Signal>) -> Result<Signal, ConnectError> {
    match sig.as_known() {
        Some(pb::Signal::SIGNAL_UNSPECIFIED | pb::Signal::SIGNAL_SIGKILL) => {
            Ok(Signal::SIGNAL_SIGKILL)
        }
        Some(pb::Signal::SIGNAL_SIGTERM) => Ok(Signal::SIGNAL_SIGTERM),
        None => Err(ConnectError::invalid_argument(
            "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL",
        )),
    }
}

pub fn process_info(p: ProcessInfo) -> pb::ProcessInfo {
    pb::ProcessInfo {
        pid: p.pid,
        tag: p.tag.unwrap_or_default(),
        cmd: p.cmd,
        args: p.args,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_size_defaults() {
        assert_eq!(pty_size(0, 0), DEFAULT_PTY);
        assert_eq!(pty_size(100, 0), DEFAULT_PTY);
        assert_eq!(
            pty_size(100, 30),
            PtySpec {
                cols: 100,
                rows: 30
            }
        );
    }

    #[test]
    fn selector_requires_pid_or_tag() {
        assert!(selector(None).is_err());
        let s = pb::ProcessSelector {
            selector: Some(pb::process_selector::Selector::Tag(String::new())),
            ..Default::default()
        };
        assert!(selector(Some(&s)).is_err());
        let s = pb::ProcessSelector {
            selector: Some(pb::process_selector::Selector::Pid(5)),
            ..Default::default()
        };
        assert_eq!(selector(Some(&s)).unwrap(), Selector::Pid(5));
    }

    #[test]
    fn unspecified_signal_is_kill() {
        assert_eq!(
            signal(pb::Signal::SIGNAL_UNSPECIFIED.into()).unwrap(),
            Signal::SIGNAL_SIGKILL
        );
        assert_eq!(
            signal(pb::Signal::SIGNAL_SIGTERM.into()).unwrap(),
            Signal::SIGNAL_SIGTERM
        );
        assert!(signal(buffa::EnumValue::from(3)).is_err());
    }

    #[test]
    fn truncation_is_reported() {
        let r = exec_response(ExecOutput {
            truncated: true,
            ..Default::default()
        });
        assert!(r.error.contains("truncated"), "{}", r.error);
    }
}
