//! One running process: reading its output and fanning it out to followers, its stdin or
//! terminal, signals, and reporting its end exactly once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wrenn_proto::process::ProcessConfig;

use super::spawn::{Spawned, Stdio3};
use crate::reaper::Exit;

/// Largest data chunk sent in one event.
pub const CHUNK: usize = 32 * 1024;
/// Events buffered per follower before the output reader waits for it.
const FOLLOWER_QUEUE: usize = 16;
/// Chunks buffered between the pipe readers and the fan-out.
const RAW_QUEUE: usize = 4;
/// After the process exits, output still arriving is drained until the pipes close or
/// stay quiet this long (a background grandchild may hold them open indefinitely).
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(100);
/// Upper bound on output drained after exit, so a chatty grandchild cannot withhold
/// `end` forever; larger than anything the exited process itself can have left in its
/// pipes and our queues.
const MAX_DRAIN_AFTER_EXIT: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Pty(Bytes),
}

impl Output {
    fn len(&self) -> usize {
        match self {
            Output::Stdout(b) | Output::Stderr(b) | Output::Pty(b) => b.len(),
        }
    }
}

/// How the process ended, as reported in the `end` event.
#[derive(Debug, Clone)]
pub struct End {
    /// `None` when the exit status could not be collected.
    pub exit: Option<Exit>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Data(Output),
    End(End),
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("stdin is not enabled for this process (start it with stdin: true)")]
    NoStdin,
    #[error("stdin of this process is closed")]
    StdinClosed,
    #[error("process has a pty; send input as pty")]
    IsPty,
    #[error("process has no pty")]
    NotPty,
    #[error("writing to process input failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("resizing the pty failed: {0}")]
    Resize(#[from] pty_process::Error),
}

impl From<InputError> for connectrpc::ConnectError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Write(_) | InputError::Resize(_) => {
                connectrpc::ConnectError::internal(e.to_string())
            }
            _ => connectrpc::ConnectError::failed_precondition(e.to_string()),
        }
    }
}

enum Input {
    /// `None` when stdin is /dev/null or was closed; `enabled` tells which.
    Pipe {
        enabled: bool,
        sender: tokio::sync::Mutex<Option<pipe::Sender>>,
    },
    Pty(tokio::sync::Mutex<pty_process::OwnedWritePty>),
}

#[derive(Default)]
struct Followers {
    next_id: u64,
    list: Vec<(u64, mpsc::Sender<Event>)>,
    /// Set once `end` is being delivered; no one may attach after that.
    closed: bool,
}

pub struct ProcessHandle {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    input: Input,
    followers: Mutex<Followers>,
    exited: AtomicBool,
    done: CancellationToken,
}

/// The pieces of a spawned process still to be started: its output readers.
pub struct Readers {
    readers: Vec<Box<dyn AsyncRead + Send + Unpin>>,
    kinds: Vec<fn(Bytes) -> Output>,
    exit: oneshot::Receiver<Exit>,
}

impl ProcessHandle {
    /// Wraps a freshly spawned process. Returns the handle, the first follower (the
    /// starting client, attached before any output is read) and the readers to pass to
    /// [`ProcessHandle::run`].
    pub fn new(
        spawned: Spawned,
        tag: Option<String>,
        config: ProcessConfig,
    ) -> (ProcessHandle, mpsc::Receiver<Event>, Readers) {
        let Spawned { pid, exit, io } = spawned;
        let (input, readers, kinds): (Input, Vec<Box<dyn AsyncRead + Send + Unpin>>, Vec<_>) =
            match io {
                Stdio3::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => (
                    Input::Pipe {
                        enabled: stdin.is_some(),
                        sender: tokio::sync::Mutex::new(stdin),
                    },
                    vec![Box::new(stdout), Box::new(stderr)],
                    vec![Output::Stdout as fn(Bytes) -> Output, Output::Stderr],
                ),
                Stdio3::Pty(pty) => {
                    let (read, write) = pty.into_split();
                    (
                        Input::Pty(tokio::sync::Mutex::new(write)),
                        vec![Box::new(read)],
                        vec![Output::Pty as fn(Bytes) -> Output],
                    )
                }
            };
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let handle = ProcessHandle {
            pid,
            tag,
            config,
            input,
            followers: Mutex::new(Followers {
                next_id: 1,
                list: vec![(0, tx)],
                closed: false,
            }),
            exited: AtomicBool::new(false),
            done: CancellationToken::new(),
        };
        (
            handle,
            rx,
            Readers {
                readers,
                kinds,
                exit,
            },
        )
    }

    /// Cancelled once the process has ended and `end` was handed to the followers.
    pub fn done(&self) -> CancellationToken {
        self.done.clone()
    }

    /// Attaches a follower that gets output from now on, then `end`; `None` once the
    /// process has ended.
    pub fn follow(&self) -> Option<mpsc::Receiver<Event>> {
        let mut f = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        if f.closed {
            return None;
        }
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let id = f.next_id;
        f.next_id += 1;
        f.list.push((id, tx));
        Some(rx)
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), InputError> {
        match &self.input {
            Input::Pipe { enabled, sender } => {
                let mut guard = sender.lock().await;
                let Some(s) = guard.as_mut() else {
                    return Err(if *enabled {
                        InputError::StdinClosed
                    } else {
                        InputError::NoStdin
                    });
                };
                s.write_all(data).await?;
                Ok(())
            }
            Input::Pty(_) => Err(InputError::IsPty),
        }
    }

    pub async fn write_pty(&self, data: &[u8]) -> Result<(), InputError> {
        match &self.input {
            Input::Pty(w) => {
                let mut w = w.lock().await;
                w.write_all(data).await?;
                w.flush().await?;
                Ok(())
            }
            Input::Pipe { .. } => Err(InputError::NotPty),
        }
    }

    /// Closes the child's stdin pipe so it reads EOF.
    pub async fn close_stdin(&self) -> Result<(), InputError> {
        match &self.input {
            Input::Pipe { enabled, sender } => {
                if !*enabled {
                    return Err(InputError::NoStdin);
                }
                // Dropping our end is what delivers EOF; closing twice is harmless.
                sender.lock().await.take();
                Ok(())
            }
            Input::Pty(_) => Err(InputError::IsPty),
        }
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), InputError> {
        match &self.input {
            Input::Pty(w) => {
                w.lock().await.resize(pty_process::Size::new(rows, cols))?;
                Ok(())
            }
            Input::Pipe { .. } => Err(InputError::NotPty),
        }
    }

    /// Sends `signal` to the process; a no-op once it has exited (its pid may be reused).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal);
    }

    /// SIGKILLs the process and its process group (it leads its own session).
    pub fn kill_group(&self) {
        if self.exited.load(Ordering::Acquire) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }

    /// Reads the process's output until it has exited and its output is drained, then
    /// delivers `end`. `on_end` runs after no one can attach anymore and before `end` is
    /// sent (it unregisters the process).
    pub async fn run(&self, readers: Readers, on_end: impl FnOnce()) {
        let Readers {
            readers,
            kinds,
            exit,
        } = readers;
        let (raw_tx, mut raw) = mpsc::channel::<Output>(RAW_QUEUE);
        let tasks: Vec<JoinHandle<()>> = readers
            .into_iter()
            .zip(kinds)
            .map(|(r, kind)| tokio::spawn(read_output(r, kind, raw_tx.clone())))
            .collect();
        drop(raw_tx);

        let mut exit = exit;
        let mut status: Option<Result<Exit, oneshot::error::RecvError>> = None;
        let mut readers_done = false;
        let mut drained_after_exit = 0usize;
        loop {
            if readers_done && status.is_some() {
                break;
            }
            if status.is_some() {
                match tokio::time::timeout(QUIET_AFTER_EXIT, raw.recv()).await {
                    Ok(Some(chunk)) => {
                        drained_after_exit += chunk.len();
                        self.broadcast(Event::Data(chunk)).await;
                        if drained_after_exit > MAX_DRAIN_AFTER_EXIT {
                            break;
                        }
                    }
                    Ok(None) => readers_done = true,
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                chunk = raw.recv(), if !readers_done => match chunk {
                    Some(chunk) => self.broadcast(Event::Data(chunk)).await,
                    None => readers_done = true,
                },
                s = &mut exit => {
                    self.exited.store(true, Ordering::Release);
                    status = Some(s);
                }
            }
        }
        // Whatever still holds the pipes open (a background grandchild) loses them now.
        for t in &tasks {
            t.abort();
        }
        drop(raw);

        let end = match status {
            Some(Ok(exit)) => End {
                exit: Some(exit),
                error: None,
            },
            _ => End {
                exit: None,
                error: Some("exit status of the process was lost".into()),
            },
        };
        let followers = {
            let mut f = self.followers.lock().unwrap_or_else(|e| e.into_inner());
            f.closed = true;
            std::mem::take(&mut f.list)
        };
        on_end();
        futures::future::join_all(followers.into_iter().map(|(_, tx)| {
            let end = end.clone();
            async move {
                let _ = tx.send(Event::End(end)).await;
            }
        }))
        .await;
        self.done.cancel();
    }

    /// Hands `event` to every follower, waiting for slow ones (backpressure) and dropping
    /// those that went away.
    async fn broadcast(&self, event: Event) {
        let followers: Vec<(u64, mpsc::Sender<Event>)> = self
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone();
        // Concurrently, so the slowest follower sets the pace rather than the sum of all.
        let sends = followers.into_iter().map(|(id, tx)| {
            let event = event.clone();
            async move { tx.send(event).await.is_err().then_some(id) }
        });
        let gone: Vec<u64> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !gone.is_empty() {
            self.followers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .list
                .retain(|(id, _)| !gone.contains(id));
        }
    }
}

/// Copies one output stream into `tx` in chunks of at most [`CHUNK`] bytes until EOF.
async fn read_output(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    kind: fn(Bytes) -> Output,
    tx: mpsc::Sender<Output>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if tx
                    .send(kind(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO is how a pty reports that the terminal's other side is gone.
            Err(e) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    tracing::debug!(error = %e, "reading process output failed");
                }
                return;
            }
        }
    }
}
