//! `wrenn exec ID -- CMD ARGS...`: runs a command over the exec-stream WebSocket, copying its
//! output to ours as it arrives; our exit code becomes the command's. Ctrl-C asks the
//! sandbox to stop the command (a second Ctrl-C gives up waiting).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWriteExt, stderr, stdout};
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Need, ws_frame};
use crate::keys::seg;
use crate::{Global, exit_code, parse_kv};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub global: Global,
    /// Sandbox ID.
    pub id: String,
    /// Extra environment: KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory in the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
    /// User to run as (default: the sandbox's default user).
    #[arg(long)]
    pub user: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The first frame: `{"type":"start","cmd","args","env"?,"cwd"?,"user"?}`.
pub fn start_frame(a: &ExecArgs) -> Value {
    let mut f = Map::new();
    f.insert("type".into(), json!("start"));
    f.insert("cmd".into(), json!(a.command[0]));
    f.insert("args".into(), json!(a.command[1..]));
    if !a.env.is_empty() {
        let env: BTreeMap<_, _> = a.env.iter().cloned().collect();
        f.insert("env".into(), json!(env));
    }
    if let Some(c) = &a.cwd {
        f.insert("cwd".into(), json!(c));
    }
    if let Some(u) = &a.user {
        f.insert("user".into(), json!(u));
    }
    Value::Object(f)
}

pub async fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.global, Need::Team)?;
    let mut ws = client
        .websocket(&format!("v1/sandboxes/{}/exec/stream", seg(&args.id)))
        .await?;
    // From here on Ctrl-C means "stop the command" rather than "kill this process".
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    ws.send(Message::text(start_frame(&args).to_string()))
        .await
        .context("send start")?;
    let (mut out, mut err) = (stdout(), stderr());
    let mut interrupts = 0;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(frame) = ws_frame(msg, "command", "exec stream")? else {
                    continue;
                };
                match frame["type"].as_str() {
                    Some("stdout") => write_data(&mut out, &frame).await?,
                    Some("stderr") => write_data(&mut err, &frame).await?,
                    Some("exit") => {
                        out.flush().await?;
                        err.flush().await?;
                        let _ = ws.close(None).await;
                        return Ok(exit_code(frame["exit_code"].as_i64(), frame["signal"].as_i64()));
                    }
                    Some("error") => bail!(
                        "{}",
                        frame["message"].as_str().unwrap_or("the sandbox reported an error")
                    ),
                    // "start" {pid} and anything newer than this client.
                    _ => {}
                }
            }
            _ = sigint.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    return Ok(130);
                }
                ws.send(Message::text(json!({"type": "stop"}).to_string()))
                    .await
                    .context("send stop")?;
            }
        }
    }
}

async fn write_data(w: &mut (impl AsyncWriteExt + Unpin), frame: &Value) -> anyhow::Result<()> {
    let data = frame["data"].as_str().unwrap_or("");
    let bytes = B64
        .decode(data)
        .context("server sent output that is not base64")?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_frame_shape() {
        let a = ExecArgs {
            global: Global::default(),
            id: "x".into(),
            env: vec![("A".into(), "1".into())],
            cwd: None,
            user: Some("root".into()),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        };
        assert_eq!(
            start_frame(&a),
            json!({"type": "start", "cmd": "sh", "args": ["-c", "exit 3"],
                   "env": {"A": "1"}, "user": "root"})
        );
    }
}
