//! End to end, sandbox I/O: exec (plain and over WebSocket), background processes, PTY
//! sessions and streamed files, through the real control plane and agent to a real microVM.
mod agent;
#[path = "e2e/mod.rs"]
mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use harness::{SERVER_PORT, System};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const FRAME_WAIT: Duration = Duration::from_secs(60);

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id in {v}"))
        .to_owned()
}

/// A WebSocket to `path` with the API key in the query string (as a browser would).
async fn ws_query(sys: &System, path: &str) -> Ws {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!(
        "ws://127.0.0.1:{SERVER_PORT}{path}{sep}api_key={}",
        sys.api_key()
    );
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket {path}: {e}"))
        .0
}

/// A WebSocket to `path` with the API key as a header.
async fn ws_header(sys: &System, path: &str) -> Ws {
    let mut req = format!("ws://127.0.0.1:{SERVER_PORT}{path}")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", sys.api_key().parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("WebSocket {path}: {e}"))
        .0
}

/// The HTTP status a refused upgrade answered with.
async fn ws_refused(url: String) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let v: Value = serde_json::from_slice(body).expect("a JSON envelope");
            assert!(v["error"]["code"].is_string(), "{v}");
            resp.status().as_u16()
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send frame");
}

/// The next JSON frame; `None` once the server closed.
async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a frame within a minute");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.as_str()).expect("JSON frame"));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Collects stdout/stderr until the exit frame; asserts the server closes after it.
async fn run_stream(ws: &mut Ws) -> (Option<u32>, Vec<u8>, Vec<u8>, i64) {
    let (mut pid, mut out, mut err) = (None, Vec::new(), Vec::new());
    loop {
        let f = recv(ws).await.expect("an exit frame before the close");
        match f["type"].as_str() {
            Some("start") => pid = f["pid"].as_u64().map(|p| p as u32),
            Some("stdout") => out.extend(B64.decode(f["data"].as_str().unwrap()).unwrap()),
            Some("stderr") => err.extend(B64.decode(f["data"].as_str().unwrap()).unwrap()),
            Some("exit") => {
                let code = f["exit_code"].as_i64().expect("exit_code");
                assert!(recv(ws).await.is_none(), "the server closes after exit");
                return (pid, out, err, code);
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
}

async fn exec(sys: &System, id: &str, body: Value) -> (StatusCode, Value) {
    sys.call(
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        Some(sys.api_key()),
        Some(body),
    )
    .await
}

e2e_test! {
    fn exec_and_processes(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let id = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);

            // Foreground exec.
            let (s, v) = exec(sys, &id, json!({"cmd": "echo", "args": ["hi"]})).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!((v["stdout"].as_str(), v["stderr"].as_str()), (Some("hi\n"), Some("")));
            assert_eq!((v["exit_code"].as_i64(), v["encoding"].as_str()), (Some(0), Some("utf-8")));
            assert!(v["duration_ms"].is_u64(), "{v}");
            let (_, v) = exec(sys, &id, json!({"cmd": "sh", "args": ["-c", "exit 3"]})).await;
            assert_eq!(v["exit_code"], 3, "{v}");
            let (_, v) = exec(sys, &id, json!({
                "cmd": "sh", "args": ["-c", "printf '\\377\\376'; echo err >&2"],
            })).await;
            assert_eq!(v["encoding"], "base64", "{v}");
            assert_eq!((v["stdout"].as_str(), v["stderr"].as_str()), (Some("//4="), Some("ZXJyCg==")));
            let (_, v) = exec(sys, &id, json!({
                "cmd": "sh", "args": ["-c", "echo $A; pwd; id -un"],
                "env": {"A": "b"}, "cwd": "/tmp", "user": "root",
            })).await;
            assert_eq!(v["stdout"], "b\n/tmp\nroot\n", "{v}");
            let t = Instant::now();
            let (s, v) = exec(sys, &id, json!({"cmd": "sleep", "args": ["30"], "timeout_sec": 1})).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::GATEWAY_TIMEOUT, Some("timeout")), "{v}");
            assert!(t.elapsed() < Duration::from_secs(20), "killed at its timeout");

            // Bad input is refused before it reaches the guest; other teams see nothing.
            for body in [
                json!({"cmd": ""}),
                json!({"cmd": "ls", "cwd": "relative"}),
                json!({"cmd": "ls", "user": "Root"}),
                json!({"cmd": "ls", "timeout_sec": 0}),
                json!({"cmd": "ls", "timeout_sec": 3601}),
                json!({"cmd": "ls", "env": {"A=B": "c"}}),
                json!({"cmd": "ls", "bogus": 1}),
            ] {
                let (s, v) = exec(sys, &id, body.clone()).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            }
            let (_, key_b, _) = sys.signup("eve@example.com").await;
            let (s, _) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/exec"), Some(&key_b), Some(json!({"cmd": "ls"}))).await;
            assert_eq!(s, StatusCode::NOT_FOUND);

            // Exec stream: query-string credentials.
            let mut ws = ws_query(sys, &format!("/v1/sandboxes/{id}/exec/stream")).await;
            send(&mut ws, json!({"type": "start", "cmd": "sh", "args": ["-c", "echo hi; echo oops >&2; exit 4"]})).await;
            let (pid, out, err, code) = run_stream(&mut ws).await;
            assert!(pid.is_some_and(|p| p > 0));
            assert_eq!((out.as_slice(), err.as_slice(), code), (&b"hi\n"[..], &b"oops\n"[..], 4));

            // Header credentials; `stop` kills the command.
            let mut ws = ws_header(sys, &format!("/v1/sandboxes/{id}/exec/stream")).await;
            send(&mut ws, json!({"type": "start", "cmd": "sleep", "args": ["600"]})).await;
            assert_eq!(recv(&mut ws).await.expect("start")["type"], "start");
            send(&mut ws, json!({"type": "stop"})).await;
            let (_, _, _, code) = run_stream(&mut ws).await;
            assert_ne!(code, 0, "killed");

            // Closing the socket kills the command too.
            let mut ws = ws_query(sys, &format!("/v1/sandboxes/{id}/exec/stream")).await;
            send(&mut ws, json!({"type": "start", "cmd": "sleep", "args": ["601"]})).await;
            let pid = recv(&mut ws).await.expect("start")["pid"].as_u64().expect("pid");
            ws.close(None).await.expect("close");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}/processes"), Some(&key), None).await;
                if !v["processes"].as_array().unwrap().iter().any(|p| p["pid"] == pid) {
                    break;
                }
                assert!(Instant::now() < deadline, "process {pid} survived its socket: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // A bad first frame: an error frame, then the close.
            let mut ws = ws_query(sys, &format!("/v1/sandboxes/{id}/exec/stream")).await;
            send(&mut ws, json!({"type": "stop"})).await;
            let f = recv(&mut ws).await.expect("error frame");
            assert_eq!(f["type"], "error", "{f}");
            assert!(recv(&mut ws).await.is_none(), "closed after the error");
            // Refused upgrades are ordinary JSON errors.
            let base = format!("ws://127.0.0.1:{SERVER_PORT}/v1/sandboxes/{id}/exec/stream");
            assert_eq!(ws_refused(base.clone()).await, 401);
            assert_eq!(ws_refused(format!("{base}?api_key={key_b}")).await, 404);
            assert_eq!(ws_refused(format!("{base}?api_key={key}&x=1")).await, 400);
            let (s, _) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}/exec/stream"), Some(&key), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "plain GET on a WebSocket route");

            // Background processes: start, list, follow, kill by tag and by pid.
            let procs = format!("/v1/sandboxes/{id}/processes");
            let (s, a) = sys.call(Method::POST, &procs, Some(&key), Some(json!({"cmd": "sleep", "args": ["300"]}))).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{a}");
            let tag_a = a["tag"].as_str().unwrap().to_owned();
            assert!(tag_a.starts_with("proc-") && tag_a.len() == 13, "{tag_a}");
            let (s, b) = sys.call(Method::POST, &procs, Some(&key), Some(json!({
                "cmd": "sh", "args": ["-c", "while true; do echo tick; sleep 1; done"], "tag": "ticker",
            }))).await;
            assert_eq!((s, b["tag"].as_str()), (StatusCode::ACCEPTED, Some("ticker")), "{b}");
            let (_, list) = sys.call(Method::GET, &procs, Some(&key), None).await;
            let tags: Vec<&str> = list["processes"].as_array().unwrap().iter().filter_map(|p| p["tag"].as_str()).collect();
            assert!(tags.contains(&tag_a.as_str()) && tags.contains(&"ticker"), "{list}");

            let mut follow = ws_query(sys, &format!("{procs}/ticker/stream")).await;
            assert_eq!(recv(&mut follow).await.expect("start")["pid"], b["pid"]);
            let f = recv(&mut follow).await.expect("output");
            assert_eq!((f["type"].as_str(), f["data"].as_str()), (Some("stdout"), Some("dGljawo=")), "{f}");
            let (s, v) = sys.call(Method::DELETE, &format!("{procs}/ticker"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            let (_, _, _, code) = run_stream(&mut follow).await;
            assert_ne!(code, 0, "killed");

            let (s, v) = sys.call(Method::DELETE, &format!("{procs}/{}?signal=SIGHUP", a["pid"]), Some(&key), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
            let (s, v) = sys.call(Method::DELETE, &format!("{procs}/{}?signal=SIGTERM", a["pid"]), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            let (s, v) = sys.call(Method::DELETE, &format!("{procs}/no-such-tag"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
            let (s, _) = sys.call(Method::DELETE, &format!("{procs}/a%20b"), Some(&key), None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, list) = sys.call(Method::GET, &procs, Some(&key), None).await;
                let left: Vec<&Value> = list["processes"].as_array().unwrap().iter()
                    .filter(|p| p["tag"] == "ticker" || p["tag"] == tag_a.as_str()).collect();
                if left.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "signalled processes still listed: {list}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            let (s, _) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
            let (s, v) = exec(sys, &id, json!({"cmd": "ls"})).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("invalid_state")));
        });
    }
}

/// PTY output until `pred` holds for everything received so far (or the exit frame).
async fn pty_until(ws: &mut Ws, pred: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = match tokio::time::timeout(left, recv(ws)).await {
            Ok(f) => f.expect("PTY frame"),
            Err(_) => panic!("PTY output so far: {:?}", String::from_utf8_lossy(&seen)),
        };
        match f["type"].as_str() {
            Some("output") => seen.extend(B64.decode(f["data"].as_str().unwrap()).unwrap()),
            Some("error") if f["fatal"] == false => continue,
            _ => panic!(
                "unexpected frame {f} after {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if pred(&text) {
            return text;
        }
    }
}

fn input(s: &str) -> Value {
    json!({"type": "input", "data": B64.encode(s)})
}

e2e_test! {
    fn websocket_sessions_end_when_their_key_is_revoked(sys) {
        sys.block_on(async {
            let id = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
            // A second key of the team, used only by these sockets.
            let (s, k) = sys
                .call(Method::POST, "/v1/api-keys", Some(sys.user_jwt()), Some(json!({"name": "ws"})))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{k}");
            let key = k["key"].as_str().expect("key").to_owned();
            let open = |path: String| {
                let key = key.clone();
                async move {
                    let url = format!("ws://127.0.0.1:{SERVER_PORT}{path}?api_key={key}");
                    tokio_tungstenite::connect_async(url).await.expect("WebSocket").0
                }
            };
            let mut exec = open(format!("/v1/sandboxes/{id}/exec/stream")).await;
            send(&mut exec, json!({"type": "start", "cmd": "sleep", "args": ["300"]})).await;
            assert_eq!(recv(&mut exec).await.expect("start")["type"], "start");
            let mut pty = open(format!("/v1/sandboxes/{id}/pty")).await;
            send(&mut pty, json!({"type": "start", "cols": 80, "rows": 24})).await;
            assert_eq!(recv(&mut pty).await.expect("started")["type"], "started");

            let t = Instant::now();
            let (s, v) = sys
                .call(Method::DELETE, &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()), Some(sys.user_jwt()), None)
                .await;
            assert!(s.is_success(), "{v}");
            for (what, ws) in [("exec stream", &mut exec), ("pty", &mut pty)] {
                let f = loop {
                    let f = recv(ws).await.unwrap_or_else(|| panic!("{what}: an error frame before the close"));
                    if f["type"] == "error" {
                        break f;
                    }
                };
                assert_eq!(f["message"], "credentials revoked", "{what}: {f}");
                assert!(recv(ws).await.is_none(), "{what}: closed after the error");
                eprintln!("{what} ended {} ms after the key was revoked", t.elapsed().as_millis());
            }
            assert!(t.elapsed() < Duration::from_secs(15), "sessions ended within seconds");
        });
    }
}

e2e_test! {
    fn pty_outlives_its_socket(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let id = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
            let path = format!("/v1/sandboxes/{id}/pty");

            let mut ws = ws_query(sys, &path).await;
            send(&mut ws, json!({"type": "start", "cols": 100, "rows": 30})).await;
            let started = recv(&mut ws).await.expect("started");
            assert_eq!(started["type"], "started", "{started}");
            let tag = started["tag"].as_str().unwrap().to_owned();
            assert!(tag.starts_with("pty-"), "{tag}");
            let pid = started["pid"].clone();
            // Typed in two frames: the server may merge them into one input call.
            send(&mut ws, input("echo pty-")).await;
            send(&mut ws, input("ok; stty size\n")).await;
            // The command's output, not the terminal's echo of the typed line.
            pty_until(&mut ws, |t| t.contains("pty-ok\r\n") && t.contains("30 100")).await;
            send(&mut ws, json!({"type": "input", "data": "%%%"})).await;
            // The shell's output may still be arriving (the rest of a line, the prompt).
            let f = loop {
                let f = recv(&mut ws).await.expect("error frame");
                if f["type"] != "output" {
                    break f;
                }
            };
            assert_eq!((f["type"].as_str(), f["fatal"].as_bool()), (Some("error"), Some(false)), "{f}");
            ws.close(None).await.expect("close");

            // Still running without a socket; re-attach by tag.
            let (_, list) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}/processes"), Some(&key), None).await;
            assert!(list["processes"].as_array().unwrap().iter().any(|p| p["tag"] == tag.as_str()), "{list}");
            let mut ws = ws_header(sys, &path).await;
            send(&mut ws, json!({"type": "connect", "tag": tag})).await;
            let again = recv(&mut ws).await.expect("started");
            assert_eq!((again["type"].as_str(), &again["pid"]), (Some("started"), &pid), "{again}");
            send(&mut ws, json!({"type": "resize", "cols": 120, "rows": 40})).await;
            send(&mut ws, input("stty size\n")).await;
            pty_until(&mut ws, |t| t.contains("40 120")).await;
            send(&mut ws, input("exit 7\n")).await;
            loop {
                let f = recv(&mut ws).await.expect("exit frame");
                if f["type"] == "exit" {
                    assert_eq!(f["exit_code"], 7, "{f}");
                    break;
                }
                assert_eq!(f["type"], "output", "{f}");
            }
            assert!(recv(&mut ws).await.is_none(), "closed after exit");

            // Bad first frames and unknown tags: a fatal error, then the close.
            for first in [
                input("ls\n"),
                json!({"type": "connect", "tag": tag}),
                json!({"type": "start", "cols": 0}),
                json!({"type": "bogus"}),
            ] {
                let mut ws = ws_query(sys, &path).await;
                send(&mut ws, first.clone()).await;
                let f = recv(&mut ws).await.expect("error frame");
                assert_eq!((f["type"].as_str(), f["fatal"].as_bool()), (Some("error"), Some(true)), "{first}: {f}");
                assert!(recv(&mut ws).await.is_none(), "{first}: closed after a fatal error");
            }

            // kill ends a PTY.
            let mut ws = ws_query(sys, &path).await;
            send(&mut ws, json!({"type": "start", "cmd": "/bin/sh", "tag": "killme"})).await;
            assert_eq!(recv(&mut ws).await.expect("started")["tag"], "killme");
            send(&mut ws, json!({"type": "kill"})).await;
            loop {
                let f = recv(&mut ws).await.expect("exit frame");
                if f["type"] == "exit" {
                    break;
                }
            }
        });
    }
}

/// `n` MiB of incompressible bytes, one MiB at a time, hashed as they are made.
fn generator(
    n: usize,
    hasher: Arc<std::sync::Mutex<Sha256>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut block = vec![0u8; 1 << 20];
    getrandom::fill(&mut block).expect("random");
    futures::stream::iter(0..n).map(move |i| {
        let mut chunk = block.clone();
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        hasher.lock().unwrap().update(&chunk);
        Ok(Bytes::from(chunk))
    })
}

async fn upload(sys: &System, id: &str, path: &str, body: reqwest::Body) -> StatusCode {
    upload_full(sys, id, path, body).await.0
}

/// Uploads; returns the status and the body (the error envelope on failure).
async fn upload_full(
    sys: &System,
    id: &str,
    path: &str,
    body: reqwest::Body,
) -> (StatusCode, String) {
    let r = sys
        .http
        .put(format!("{}/v1/sandboxes/{id}/files?path={path}", sys.url()))
        .header("x-api-key", sys.api_key())
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

/// Downloads `path`, hashing as it arrives; returns (status, bytes, sha256).
async fn download(sys: &System, id: &str, path: &str) -> (StatusCode, u64, Vec<u8>) {
    let r = sys
        .http
        .get(format!("{}/v1/sandboxes/{id}/files?path={path}", sys.url()))
        .header("x-api-key", sys.api_key())
        .send()
        .await
        .expect("download");
    let status = r.status();
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("download body");
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (status, n, h.finalize().to_vec())
}

e2e_test! {
    fn files_round_trip(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let id = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
            let files = format!("/v1/sandboxes/{id}/files");

            let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
            let body = reqwest::Body::wrap_stream(generator(10, hasher.clone()));
            assert_eq!(upload(sys, &id, "/home/user/data/r.bin", body).await, StatusCode::NO_CONTENT);
            let sent = hasher.lock().unwrap().clone().finalize().to_vec();
            let (s, n, got) = download(sys, &id, "/home/user/data/r.bin").await;
            assert_eq!((s, n), (StatusCode::OK, 10 << 20));
            assert_eq!(got, sent, "same bytes back");

            let (s, list) = sys.call(Method::GET, &format!("{files}/list?path=/home/user/data"), Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{list}");
            let e = &list["entries"][0];
            assert_eq!((e["name"].as_str(), e["type"].as_str(), e["size"].as_i64()), (Some("r.bin"), Some("file"), Some(10 << 20)), "{list}");
            assert_eq!((e["owner"].as_str(), e["path"].as_str()), (Some("user"), Some("/home/user/data/r.bin")));
            assert!(e["modified_at"].as_i64().unwrap() > 1_600_000_000_000, "ms: {e}");

            let (s, v) = sys.call(Method::POST, &format!("{files}/mkdir"), Some(&key), Some(json!({"path": "/home/user/new/sub"}))).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            assert_eq!(v["entry"]["type"], "directory", "{v}");
            let (_, list) = sys.call(Method::GET, &format!("{files}/list?path=/home/user&depth=2"), Some(&key), None).await;
            let paths: Vec<&str> = list["entries"].as_array().unwrap().iter().filter_map(|e| e["path"].as_str()).collect();
            assert!(paths.contains(&"/home/user/new/sub") && paths.contains(&"/home/user/data/r.bin"), "{list}");
            for p in ["/home/user/new", "/home/user/data/r.bin"] {
                let (s, v) = sys.call(Method::DELETE, &format!("{files}?path={p}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{p}: {v}");
            }
            let (s, _, _) = download(sys, &id, "/home/user/data/r.bin").await;
            assert_eq!(s, StatusCode::NOT_FOUND);
            let (_, list) = sys.call(Method::GET, &format!("{files}/list?path=/home/user"), Some(&key), None).await;
            assert!(!list.to_string().contains("/home/user/new"), "{list}");

            // Files belong to `user` unless ?user= says otherwise.
            let r = sys.http.put(format!("{}{files}?path=/home/user/by-root&user=root", sys.url()))
                .header("x-api-key", &key).body("root's").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            let (_, list) = sys.call(Method::GET, &format!("{files}/list?path=/home/user"), Some(&key), None).await;
            let owner = |name: &str| list["entries"].as_array().unwrap().iter()
                .find(|e| e["name"] == name).map(|e| e["owner"].clone());
            assert_eq!(owner("by-root"), Some(json!("root")), "{list}");
            assert_eq!(owner("data"), Some(json!("user")), "{list}");

            // Bad paths and users: 400 before anything reaches the guest.
            for q in ["path=relative", "path=/a%00b", "path=/x&user=Bad", "path=/x&bogus=1", "", &format!("path=/{}", "a".repeat(4096))] {
                let (s, v) = sys.call(Method::GET, &format!("{files}?{q}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
                let (s, _) = sys.raw(Method::PUT, &format!("{files}?{q}"), Some(&key), Some("x".into()), None).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "PUT {q}");
            }
            for q in ["path=/home&depth=0", "path=/home&depth=17"] {
                let (s, _) = sys.call(Method::GET, &format!("{files}/list?{q}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
            }
            let (s, _) = sys.call(Method::POST, &format!("{files}/mkdir"), Some(&key), Some(json!({"path": "rel"}))).await;
            assert_eq!(s, StatusCode::BAD_REQUEST);
        });
    }
}

/// Sets the flag when dropped, so the RSS sampler stops even when the transfer panicked.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// 1 GiB up and down through `/v1`: same bytes back, and neither the control plane nor the
/// agent buffers the file (their RSS together grows by less than 64 MiB). SQLite only: the
/// database plays no part in a transfer.
#[test]
fn one_gib_up_and_down() {
    const MIB: usize = 1024;
    let sys = System::new(harness::Backend::Sqlite);
    // The guest has 512 MiB of RAM and /tmp is tmpfs: the file goes to the (grown) disk.
    let id =
        id_of(&sys.block_on(sys.create_sandbox(json!({"memory_mb": 512, "disk_size_mb": 8192}))));
    let (s0, a0) = (sys.server_rss_kib(), sys.agent_rss_kib());
    let stop = AtomicBool::new(false);
    let ((up, down), (s_max, a_max)) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let (mut s, mut a) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                s = s.max(sys.server_rss_kib());
                a = a.max(sys.agent_rss_kib());
                std::thread::sleep(Duration::from_millis(50));
            }
            (s, a)
        });
        let guard = StopOnDrop(&stop);
        let times = sys.block_on(async {
            let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
            let t = Instant::now();
            let body = reqwest::Body::wrap_stream(generator(MIB, hasher.clone()));
            let s = upload(&sys, &id, "/home/user/big.bin", body).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
            let up = t.elapsed();
            let sent = hasher.lock().unwrap().clone().finalize().to_vec();
            let t = Instant::now();
            let (s, n, got) = download(&sys, &id, "/home/user/big.bin").await;
            let down = t.elapsed();
            assert_eq!((s, n), (StatusCode::OK, 1 << 30));
            assert_eq!(got, sent, "same bytes back");
            (up, down)
        });
        drop(guard);
        (times, sampler.join().expect("sampler"))
    });
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rate = |d: Duration| 1024.0 / d.as_secs_f64();
    let (gs, ga) = (s_max.saturating_sub(s0), a_max.saturating_sub(a0));
    eprintln!(
        "1 GiB: up {:.1} s ({:.1} MiB/s), down {:.1} s ({:.1} MiB/s); RSS growth: control \
         plane {:.1} MiB ({:.1} -> {:.1}), agent {:.1} MiB ({:.1} -> {:.1})",
        up.as_secs_f64(),
        rate(up),
        down.as_secs_f64(),
        rate(down),
        mib(gs),
        mib(s0),
        mib(s_max),
        mib(ga),
        mib(a0),
        mib(a_max),
    );
    assert!(
        gs + ga < 64 * 1024,
        "CP + agent RSS grew by {:.1} MiB",
        mib(gs + ga)
    );
    let (st, _) = sys.block_on(sys.call(
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        Some(sys.api_key()),
        None,
    ));
    assert_eq!(st, StatusCode::NO_CONTENT);
}
