//! A QMP client: JSON lines over the VM's Unix socket, one persistent connection per VM that
//! both runs commands and turns events into a `VmEvent` broadcast.
//!
//! Hand-rolled rather than the `qapi` crate: qapi's types come from the QEMU 9.1 schema, and
//! one event or reply that doesn't match it (we run Debian's 7.2) ends its whole stream; here
//! unknown events stay `VmEvent::Other` and replies are plain JSON the caller interprets.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::VmEvent;

/// How long one command may take before we give up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP connection closed")]
    Disconnected,
    #[error("QMP command {0} timed out")]
    Timeout(String),
}

type Reply = Result<Value, QmpError>;
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Commands awaiting a reply, by id; `None` once the connection is gone.
    pending: Pending,
    next_id: AtomicU64,
    /// Weak: the reader task owns the only strong sender, so subscribers see the channel
    /// close when the connection ends (QEMU exited).
    events: broadcast::WeakSender<VmEvent>,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let handshake = async {
            let greeting = next_message(&mut lines).await?;
            if greeting.get("QMP").is_none() {
                return Err(QmpError::Protocol(format!(
                    "unexpected greeting {greeting}"
                )));
            }
            write
                .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                .await?;
            // No events are sent before negotiation ends, so the next message is the reply.
            let reply = next_message(&mut lines).await?;
            parse_reply("qmp_capabilities", reply).map(|_| ())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, handshake)
            .await
            .map_err(|_| QmpError::Timeout("qmp_capabilities".into()))??;

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(64);
        let weak = events.downgrade();
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events));
        Ok(QmpClient {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events: weak,
            reader,
        })
    }

    /// Connects, retrying until `deadline` while the socket is not there or not listening yet.
    pub async fn connect_within(path: &Path, deadline: Duration) -> Result<Self, QmpError> {
        let start = tokio::time::Instant::now();
        loop {
            match Self::connect(path).await {
                Ok(c) => return Ok(c),
                Err(e @ QmpError::Connect { .. }) => {
                    if start.elapsed() >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.pending).is_none()
    }

    /// Events from now on; the receiver reports `Closed` once the connection has ended.
    pub fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        match self.events.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Reply {
        self.run(command, arguments, None).await
    }

    /// Hands `file` to QEMU under `name` (`getfd`, the descriptor passed with SCM_RIGHTS), for
    /// a later `fd:<name>` URI. The agent opens the files; QEMU, running as its own
    /// unprivileged user, could not.
    pub async fn pass_fd(&self, name: &str, file: &std::fs::File) -> Result<(), QmpError> {
        use std::os::fd::AsRawFd;
        self.run(
            "getfd",
            Some(json!({ "fdname": name })),
            Some(file.as_raw_fd()),
        )
        .await
        .map(|_| ())
    }

    async fn run(&self, command: &str, arguments: Option<Value>, fd: Option<RawFd>) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(map) => map.insert(id, tx),
            None => return Err(QmpError::Disconnected),
        };
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let sent = async {
            let mut w = self.writer.lock().await;
            let mut rest = line.as_bytes();
            if let Some(fd) = fd {
                // The descriptor rides with the first bytes of the command.
                let n = send_with_fd(&w, rest, fd).await?;
                rest = &rest[n..];
            }
            w.write_all(rest).await
        };
        if let Err(e) = sent.await {
            if let Some(map) = lock(&self.pending).as_mut() {
                map.remove(&id);
            }
            return Err(e.into());
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply.and_then(|v| parse_reply(command, v)),
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                if let Some(map) = lock(&self.pending).as_mut() {
                    map.remove(&id);
                }
                Err(QmpError::Timeout(command.to_string()))
            }
        }
    }
}

/// Sends a prefix of `bytes` with `fd` attached; returns how many bytes went.
async fn send_with_fd(w: &OwnedWriteHalf, bytes: &[u8], fd: RawFd) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let stream: &UnixStream = w.as_ref();
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let fds = [fd];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves only a map behind: keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn next_message(
    lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
) -> Result<Value, QmpError> {
    let line = lines.next_line().await?.ok_or(QmpError::Disconnected)?;
    serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))
}

fn parse_reply(command: &str, v: Value) -> Reply {
    if let Some(ret) = v.get("return") {
        return Ok(ret.clone());
    }
    if let Some(err) = v.get("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return Err(QmpError::Command {
            command: command.to_string(),
            class: field("class"),
            desc: field("desc"),
        });
    }
    Err(QmpError::Protocol(format!("unexpected reply {v}")))
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<VmEvent>,
) {
    loop {
        let msg = match next_message(&mut lines).await {
            Ok(m) => m,
            Err(QmpError::Protocol(e)) => {
                tracing::warn!("ignoring malformed QMP message: {e}");
                continue;
            }
            Err(e) => {
                tracing::debug!("QMP connection ended: {e}");
                break;
            }
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let event = to_event(name, msg.get("data").unwrap_or(&Value::Null));
            tracing::debug!(?event, "QMP event");
            // No receivers is fine: nobody is listening right now.
            let _ = events.send(event);
            continue;
        }
        let id = msg.get("id").and_then(Value::as_u64);
        let waiter = id.and_then(|id| lock(&pending).as_mut().and_then(|m| m.remove(&id)));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(msg));
            }
            None => tracing::warn!("QMP reply nobody waits for: {msg}"),
        }
    }
    // Dropping the senders wakes every waiter with `Disconnected`.
    lock(&pending).take();
}

/// Maps a QMP event to `VmEvent`.
pub(crate) fn to_event(name: &str, data: &Value) -> VmEvent {
    let s = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match name {
        "BLOCK_IO_ERROR" => VmEvent::BlockIoError {
            // With `-drive id=root` QEMU names the device "root"; with -blockdev only the node.
            device: Some(s("device"))
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| s("node-name")),
            operation: s("operation"),
            // QEMU sends `nospace` only when iostatus is enabled (werror=enospc/stop), not
            // with our werror=report: fall back to the errno text, which it always sends.
            nospace: data
                .get("nospace")
                .and_then(Value::as_bool)
                .unwrap_or_else(|| s("reason") == "No space left on device"),
            reason: s("reason"),
        },
        "SHUTDOWN" => VmEvent::Shutdown {
            guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
        },
        "STOP" => VmEvent::Stop,
        "RESUME" => VmEvent::Resume,
        other => VmEvent::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_io_error_event() {
        let data = json!({"device": "root", "node-name": "#block123", "operation": "write",
            "action": "report", "nospace": true, "reason": "No space left on device"});
        assert_eq!(
            to_event("BLOCK_IO_ERROR", &data),
            VmEvent::BlockIoError {
                device: "root".into(),
                operation: "write".into(),
                nospace: true,
                reason: "No space left on device".into()
            }
        );
    }

    #[test]
    fn nospace_without_iostatus() {
        let data = json!({"device": "root", "operation": "write", "action": "report",
            "reason": "No space left on device"});
        assert!(matches!(
            to_event("BLOCK_IO_ERROR", &data),
            VmEvent::BlockIoError { nospace: true, .. }
        ));
        let data = json!({"device": "root", "operation": "read", "action": "report",
            "reason": "Input/output error"});
        assert!(matches!(
            to_event("BLOCK_IO_ERROR", &data),
            VmEvent::BlockIoError { nospace: false, .. }
        ));
    }

    #[test]
    fn other_events() {
        assert_eq!(
            to_event(
                "SHUTDOWN",
                &json!({"guest": true, "reason": "guest-shutdown"})
            ),
            VmEvent::Shutdown { guest: true }
        );
        assert_eq!(to_event("STOP", &Value::Null), VmEvent::Stop);
        assert_eq!(
            to_event("RTC_CHANGE", &json!({})),
            VmEvent::Other("RTC_CHANGE".into())
        );
    }

    #[test]
    fn error_reply() {
        let err = parse_reply(
            "cont",
            json!({"error": {"class": "GenericError", "desc": "nope"}}),
        )
        .unwrap_err();
        assert!(matches!(err, QmpError::Command { ref desc, .. } if desc == "nope"));
    }
}
