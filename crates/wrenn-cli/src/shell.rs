//! `wrenn shell ID`: an interactive terminal over the `/pty` WebSocket.
//!
//! On a terminal, stdin goes raw (restored on every exit path: return, error, panic hook,
//! SIGTERM/SIGHUP), the window size is sent at start and on SIGWINCH, keys go to the
//! remote PTY as they are typed. With piped stdin there is no raw mode: the input is sent as
//! is and end of input becomes Ctrl-D, so `echo 'ls; exit 3' | wrenn shell ID` works.
//! The PTY outlives the socket: with `--tag` it can be re-attached (`--attach`).

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Need, ws_frame};
use crate::keys::seg;
use crate::term::{self, TermGuard};
use crate::{Global, exit_code, parse_kv};

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub global: Global,
    /// Sandbox ID.
    pub id: String,
    /// Name the terminal so it can be re-attached after a disconnect.
    #[arg(long)]
    pub tag: Option<String>,
    /// Attach to the running terminal named by --tag instead of starting one.
    #[arg(long, requires = "tag")]
    pub attach: bool,
    /// Extra environment: KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    /// Program to run instead of the default shell, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

const DEFAULT_SIZE: (u16, u16) = (80, 24);

pub fn first_frame(a: &ShellArgs, (cols, rows): (u16, u16)) -> Value {
    if a.attach {
        return json!({"type": "connect", "tag": a.tag});
    }
    let mut f = Map::new();
    f.insert("type".into(), json!("start"));
    if let Some((cmd, args)) = a.command.split_first() {
        f.insert("cmd".into(), json!(cmd));
        f.insert("args".into(), json!(args));
    }
    f.insert("cols".into(), json!(cols));
    f.insert("rows".into(), json!(rows));
    if !a.env.is_empty() {
        let env: BTreeMap<_, _> = a.env.iter().cloned().collect();
        f.insert("env".into(), json!(env));
    }
    for (k, v) in [("cwd", &a.cwd), ("user", &a.user), ("tag", &a.tag)] {
        if let Some(v) = v {
            f.insert(k.into(), json!(v));
        }
    }
    Value::Object(f)
}

fn input(bytes: &[u8]) -> Message {
    Message::text(json!({"type": "input", "data": B64.encode(bytes)}).to_string())
}

fn resize((cols, rows): (u16, u16)) -> Message {
    Message::text(json!({"type": "resize", "cols": cols, "rows": rows}).to_string())
}

/// Reads stdin on a plain thread (a blocked read must not hold up exit); `None` = EOF.
fn stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

pub async fn run(args: ShellArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.global, Need::Team)?;
    let tty = term::stdin_is_tty();
    let size = term::window_size().unwrap_or(DEFAULT_SIZE);
    let mut ws = client
        .websocket(&format!("v1/sandboxes/{}/pty", seg(&args.id)))
        .await?;
    // Installed once connected, so Ctrl-C still aborts a hanging connect.
    let mut winch = signal(SignalKind::window_change()).context("SIGWINCH handler")?;
    let mut term_sig = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    ws.send(Message::text(first_frame(&args, size).to_string()))
        .await
        .context("send start")?;
    if args.attach {
        // The terminal may have been sized for another window.
        ws.send(resize(size)).await.context("send resize")?;
    }
    // Dropped on every return below, before `run` prints any error.
    let _guard = if tty { Some(TermGuard::raw()?) } else { None };
    let mut stdin = stdin_reader();
    let mut stdin_open = true;
    // Input waits for `started` so it cannot race the PTY's creation.
    let mut started = args.attach;
    let mut interrupts = 0;
    let mut out = tokio::io::stdout();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(frame) = ws_frame(msg, "terminal", "pty stream")? else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("started") => started = true,
                    Some("output") => {
                        let bytes = B64
                            .decode(frame["data"].as_str().unwrap_or(""))
                            .context("server sent output that is not base64")?;
                        out.write_all(&bytes).await?;
                        out.flush().await?;
                    }
                    Some("exit") => {
                        out.flush().await?;
                        let _ = ws.close(None).await;
                        return Ok(exit_code(frame["exit_code"].as_i64(), frame["signal"].as_i64()));
                    }
                    Some("error") => {
                        let msg = frame["message"].as_str().unwrap_or("terminal error");
                        if frame["fatal"].as_bool() != Some(false) {
                            bail!("{msg}");
                        }
                        // Raw mode: a bare \n would not return the cursor.
                        let mut e = tokio::io::stderr();
                        e.write_all(format!("wrenn: {msg}\r\n").as_bytes()).await?;
                        e.flush().await?;
                    }
                    _ => {}
                }
            }
            chunk = stdin.recv(), if started && stdin_open => match chunk.flatten() {
                Some(bytes) => ws.send(input(&bytes)).await.context("send input")?,
                None => {
                    stdin_open = false;
                    if !tty {
                        // End of piped input = Ctrl-D at the remote terminal.
                        ws.send(input(b"\x04")).await.context("send input")?;
                    }
                }
            },
            _ = winch.recv() => {
                if let Some(s) = term::window_size() {
                    ws.send(resize(s)).await.context("send resize")?;
                }
            }
            // Raw mode delivers Ctrl-C as a byte; this is the piped case.
            _ = int.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    let _ = ws.send(Message::text(json!({"type": "kill"}).to_string())).await;
                    return Ok(130);
                }
                ws.send(input(b"\x03")).await.context("send input")?;
            }
            _ = term_sig.recv() => return Ok(detached(&args, 143)),
            _ = hup.recv() => return Ok(detached(&args, 129)),
        }
    }
}

/// We were told to go; the remote terminal keeps running.
fn detached(args: &ShellArgs, code: i32) -> i32 {
    if let Some(tag) = &args.tag {
        eprintln!(
            "\r\nwrenn: detached; re-attach with `wrenn shell {} --tag {tag} --attach`\r",
            args.id
        );
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ShellArgs {
        ShellArgs {
            global: Global::default(),
            id: "x".into(),
            tag: None,
            attach: false,
            env: vec![],
            cwd: None,
            user: None,
            command: vec![],
        }
    }

    #[test]
    fn frames() {
        assert_eq!(
            first_frame(&args(), (100, 30)),
            json!({"type": "start", "cols": 100, "rows": 30})
        );
        let mut a = args();
        a.tag = Some("t1".into());
        a.command = vec!["python3".into(), "-q".into()];
        assert_eq!(
            first_frame(&a, (80, 24)),
            json!({"type": "start", "cmd": "python3", "args": ["-q"], "cols": 80, "rows": 24, "tag": "t1"})
        );
        a.attach = true;
        assert_eq!(
            first_frame(&a, (80, 24)),
            json!({"type": "connect", "tag": "t1"})
        );
        let Message::Text(t) = input(b"hi") else {
            panic!()
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v, json!({"type": "input", "data": "aGk="}));
    }
}
