//! The agent's Connect service end to end: a signed control-plane token, the generated
//! client over real HTTP, the relay, and a real envd (in its namespace sandbox) behind a
//! fake backend.
mod common;

use std::time::{Duration, Instant};

use common::{Agent, Client, FAKE_DISK_ALLOCATED, HOST_ID};
use connectrpc::{ConnectError, ErrorCode};
use sha2::{Digest, Sha256};
use wrenn_agent::auth::{Claims, CpSigner, ISSUER, SUBJECT};
use wrenn_proto::hostagent::v1::exec_event::Event as ExecEv;
use wrenn_proto::hostagent::v1::exec_event::data::Output;
use wrenn_proto::hostagent::v1::process_selector::Selector;
use wrenn_proto::hostagent::v1::pty_event::Event as PtyEv;
use wrenn_proto::hostagent::v1::write_file_request::{Meta, Msg};
use wrenn_proto::hostagent::v1::*;

type Body = <connectrpc::client::HttpClient as connectrpc::client::ClientTransport>::ResponseBody;
type PtyStream = connectrpc::client::ServerStream<Body, PtyEventView<'static>>;
type ExecStream = connectrpc::client::ServerStream<Body, ExecEventView<'static>>;

const WAIT: Duration = Duration::from_secs(20);

fn exec_req(id: &str, cmd: &str, args: &[&str]) -> ExecRequest {
    ExecRequest {
        sandbox_id: id.into(),
        cmd: cmd.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn bash(id: &str, script: &str) -> ExecRequest {
    exec_req(id, "/bin/bash", &["-c", script])
}

fn tag_sel(tag: &str) -> ProcessSelector {
    ProcessSelector {
        selector: Some(Selector::Tag(tag.into())),
        ..Default::default()
    }
}

fn pid_sel(pid: u32) -> ProcessSelector {
    ProcessSelector {
        selector: Some(Selector::Pid(pid)),
        ..Default::default()
    }
}

async fn exec(c: &Client, req: ExecRequest) -> ExecResponse {
    c.exec(req).await.expect("exec").into_owned()
}

/// Collected output of an exec-event stream.
#[derive(Default, Debug)]
struct Run {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Option<exec_event::End>,
}

async fn collect(mut s: ExecStream) -> Run {
    let mut run = Run::default();
    let mut first = true;
    while let Some(m) = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("stream stalled")
        .expect("stream error")
    {
        match m.to_owned_message().event.expect("event") {
            ExecEv::Start(st) => {
                assert!(first, "start must come first");
                run.pid = st.pid;
            }
            ExecEv::Data(d) => match d.output.expect("output") {
                Output::Stdout(b) => run.stdout.extend(b),
                Output::Stderr(b) => run.stderr.extend(b),
            },
            ExecEv::End(e) => run.end = Some(*e),
        }
        first = false;
    }
    run
}

/// The first error of a streaming call, whether it comes with the call or the first read.
async fn stream_error<V, M>(
    call: Result<connectrpc::client::ServerStream<Body, V>, ConnectError>,
) -> ConnectError
where
    V: buffa::view::MessageView<'static, Owned = M> + Send,
    M: buffa::view::HasMessageView<View<'static> = V>
        + buffa::Message
        + connectrpc::codec::JsonDeserialize,
{
    match call {
        Err(e) => e,
        Ok(mut s) => match s.message().await {
            Err(e) => e,
            Ok(_) => panic!("stream call succeeded"),
        },
    }
}

// ---------------------------------------------------------------- exec

#[tokio::test]
async fn exec_runs_commands_in_the_sandbox() {
    let agent = Agent::start().await;
    let id = "exec0000000000000001";
    agent.create(id).await;
    let c = agent.client();

    let r = exec(&c, exec_req(id, "echo", &["hi"])).await;
    assert_eq!(r.stdout, b"hi\n");
    assert_eq!(r.exit_code, 0);

    // The namespace sandbox shares the host kernel.
    let host = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    let r = exec(&c, exec_req(id, "uname", &["-r"])).await;
    assert_eq!(r.stdout, host.stdout);

    let r = exec(&c, bash(id, "echo out; echo err >&2; exit 3")).await;
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 3);
    assert!(!r.status.is_empty());

    // Default user and env from /init; envs, cwd and user per request.
    let r = exec(&c, bash(id, "whoami; echo $WRENN_TEST_ENV")).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "user\nfrom-init\n");
    let mut req = bash(id, "whoami; pwd; echo $FOO");
    req.user = "root".into();
    req.cwd = "/tmp".into();
    req.envs.insert("FOO".into(), "bar".into());
    let r = exec(&c, req).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "root\n/tmp\nbar\n");

    // A missing command is the caller's problem, not the agent's.
    let e = c.exec(exec_req(id, "", &[])).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn exec_timeout_kills_the_command() {
    let agent = Agent::start().await;
    let id = "exectimeout000000001";
    agent.create(id).await;
    let c = agent.client();

    let mut req = bash(id, "echo started; sleep 30");
    req.timeout_sec = 1;
    let t = Instant::now();
    let e = c.exec(req).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // envd killed it: no `sleep 30` left (the kill lands as the deadline answer goes out).
    let r = exec(
        &c,
        bash(
            id,
            "for i in $(seq 50); do pgrep -fx 'sleep 30' >/dev/null || { echo none; exit; }; sleep 0.1; done; pgrep -fax 'sleep 30'",
        ),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "none\n");
}

#[tokio::test]
async fn exec_stream_relays_events_in_order() {
    let agent = Agent::start().await;
    let id = "execstream0000000001";
    agent.create(id).await;
    let c = agent.client();

    let s = c
        .exec_stream(bash(
            id,
            "for i in 1 2 3; do echo line $i; sleep 0.05; done; echo e >&2; exit 4",
        ))
        .await
        .unwrap();
    let run = collect(s).await;
    assert!(run.pid > 0);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "line 1\nline 2\nline 3\n"
    );
    assert_eq!(run.stderr, b"e\n");
    assert_eq!(run.end.expect("end").exit_code, 4);
}

// ---------------------------------------------------------------- background processes

#[tokio::test]
async fn background_list_attach_and_signal() {
    let agent = Agent::start().await;
    let id = "background0000000001";
    agent.create(id).await;
    let c = agent.client();

    let r = c
        .start_background(StartBackgroundRequest {
            sandbox_id: id.into(),
            cmd: "/bin/bash".into(),
            args: vec![
                "-c".into(),
                "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done".into(),
            ],
            tag: "ticker".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(r.pid > 0);
    assert_eq!(r.tag, "ticker");

    // Still running after StartBackground returned.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = c
        .list_processes(ListProcessesRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    let p = list
        .processes
        .iter()
        .find(|p| p.tag == "ticker")
        .expect("ticker listed");
    assert_eq!(p.pid, r.pid);
    assert_eq!(p.cmd, "/bin/bash");

    // Attach by tag: start (same pid) first, then live output.
    let mut s = c
        .attach_process(AttachProcessRequest {
            sandbox_id: id.into(),
            process: tag_sel("ticker").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = s.message().await.unwrap().unwrap().to_owned_message();
    match first.event.expect("event") {
        ExecEv::Start(st) => assert_eq!(st.pid, r.pid),
        other => panic!("expected start, got {other:?}"),
    }
    let second = tokio::time::timeout(WAIT, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .to_owned_message();
    match second.event.expect("event") {
        ExecEv::Data(d) => match d.output.expect("output") {
            Output::Stdout(b) => assert!(b.starts_with(b"tick "), "{b:?}"),
            other => panic!("expected stdout, got {other:?}"),
        },
        other => panic!("expected data, got {other:?}"),
    }

    // SIGTERM by pid ends the attached stream with the signal status.
    c.signal_process(SignalProcessRequest {
        sandbox_id: id.into(),
        process: pid_sel(r.pid).into(),
        signal: Signal::SIGNAL_SIGTERM.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let rest = collect(s).await;
    let end = rest.end.expect("end after SIGTERM");
    assert!(end.status.contains("terminated"), "{end:?}");

    // Gone from the list; signalling it again is not_found.
    let list = c
        .list_processes(ListProcessesRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(list.processes.iter().all(|p| p.tag != "ticker"));
    let e = c
        .signal_process(SignalProcessRequest {
            sandbox_id: id.into(),
            process: tag_sel("ticker").into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    let e = stream_error(
        c.attach_process(AttachProcessRequest {
            sandbox_id: id.into(),
            process: pid_sel(r.pid).into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
}

// ---------------------------------------------------------------- PTY

/// Reads PTY output until it contains `needle`; returns everything read.
async fn pty_until(s: &mut PtyStream, needle: &str) -> String {
    let mut out = String::new();
    let deadline = Instant::now() + WAIT;
    while !out.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, s.message())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in PTY output: {out:?}"))
            .expect("pty stream")
            .expect("pty stream ended");
        match m.to_owned_message().event.expect("event") {
            PtyEv::Output(b) => out.push_str(&String::from_utf8_lossy(&b)),
            PtyEv::Exited(e) => panic!("PTY exited early: {e:?}; output {out:?}"),
            PtyEv::Started(_) => panic!("second started event"),
        }
    }
    out
}

async fn pty_started(s: &mut PtyStream) -> pty_event::Started {
    let m = tokio::time::timeout(WAIT, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .to_owned_message();
    match m.event.expect("event") {
        PtyEv::Started(st) => *st,
        other => panic!("expected started first, got {other:?}"),
    }
}

async fn pty_input(c: &Client, id: &str, tag: &str, data: &str) {
    c.pty_input(PtyInputRequest {
        sandbox_id: id.into(),
        tag: tag.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pty_start_input_resize_reattach_and_kill() {
    let agent = Agent::start().await;
    let id = "ptysandbox0000000001";
    agent.create(id).await;
    let c = agent.client();
    let tag = "term-1";

    let mut s = c
        .pty_attach(PtyAttachRequest {
            sandbox_id: id.into(),
            tag: tag.into(),
            cmd: "/bin/bash".into(),
            args: vec!["-i".into()],
            cols: 100,
            rows: 30,
            envs: [("PTY_VAR".to_string(), "pty-env".to_string())]
                .into_iter()
                .collect(),
            cwd: "/tmp".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = pty_started(&mut s).await;
    assert!(started.pid > 0);
    assert_eq!(started.tag, tag);

    pty_input(&c, id, tag, "stty size; echo \"$PTY_VAR:$(pwd)\"\n").await;
    let out = pty_until(&mut s, "pty-env:/tmp").await;
    assert!(out.contains("30 100"), "{out:?}");

    c.pty_resize(PtyResizeRequest {
        sandbox_id: id.into(),
        tag: tag.into(),
        cols: 120,
        rows: 40,
        ..Default::default()
    })
    .await
    .unwrap();
    pty_input(&c, id, tag, "stty size\n").await;
    pty_until(&mut s, "40 120").await;

    // Drop the stream; the PTY keeps running and is re-attached by tag.
    drop(s);
    let mut s = c
        .pty_attach(PtyAttachRequest {
            sandbox_id: id.into(),
            tag: tag.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = pty_started(&mut s).await;
    assert_eq!(again.pid, started.pid);
    assert_eq!(again.tag, tag);
    pty_input(&c, id, tag, "echo re$((1+1))attached\n").await;
    pty_until(&mut s, "re2attached").await;

    // Kill: the stream reports the exit.
    c.pty_kill(PtyKillRequest {
        sandbox_id: id.into(),
        tag: tag.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let exited = loop {
        let m = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
            .expect("exited before the end");
        if let PtyEv::Exited(e) = m.to_owned_message().event.expect("event") {
            break *e;
        }
    };
    assert!(exited.status.contains("killed"), "{exited:?}");
    assert!(
        s.message().await.unwrap().is_none(),
        "stream ends after exited"
    );

    // Nothing left to re-attach to.
    let e = stream_error(
        c.pty_attach(PtyAttachRequest {
            sandbox_id: id.into(),
            tag: tag.into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    let e = c
        .pty_input(PtyInputRequest {
            sandbox_id: id.into(),
            tag: tag.into(),
            data: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
}

// ---------------------------------------------------------------- files

const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = 40; // 10 MiB

/// Deterministic pseudo-random chunk `i` (xorshift), so the test never holds the file.
fn chunk(i: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
    let mut out = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn write_stream(
    id: &str,
    path: &str,
) -> impl futures::Stream<Item = WriteFileRequest> + Send + 'static {
    let meta = WriteFileRequest {
        msg: Some(Msg::Meta(Box::new(Meta {
            sandbox_id: id.into(),
            path: path.into(),
            ..Default::default()
        }))),
        ..Default::default()
    };
    let chunks = (0..CHUNKS).map(|i| WriteFileRequest {
        msg: Some(Msg::Chunk(chunk(i))),
        ..Default::default()
    });
    futures::stream::iter(std::iter::once(meta).chain(chunks))
}

#[tokio::test]
async fn files_write_read_list_mkdir_remove() {
    let agent = Agent::start().await;
    let id = "filessandbox00000001";
    agent.create(id).await;
    let c = agent.client();

    let mut expected = Sha256::new();
    for i in 0..CHUNKS {
        expected.update(chunk(i));
    }
    let expected = expected.finalize();

    // 10 MiB streamed in, relative path resolved against the default user's home.
    let w = c
        .write_file(write_stream(id, "data/big.bin"))
        .await
        .expect("write file")
        .into_owned();
    assert_eq!(w.path, "/home/user/data/big.bin");
    assert_eq!(w.size, (CHUNK * CHUNKS) as u64);

    let mut s = c
        .read_file(ReadFileRequest {
            sandbox_id: id.into(),
            path: w.path.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Sha256::new();
    let mut total = 0usize;
    while let Some(m) = s.message().await.expect("read stream") {
        let chunk = m.to_owned_message().chunk;
        assert!(chunk.len() <= 64 * 1024, "chunk of {}", chunk.len());
        total += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(total, CHUNK * CHUNKS);
    assert_eq!(got.finalize(), expected);

    // mkdir, list, remove.
    let d = c
        .make_dir(MakeDirRequest {
            sandbox_id: id.into(),
            path: "/home/user/d1/d2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    let entry = d.entry.into_option().expect("entry");
    assert_eq!(entry.r#type, "dir");
    assert_eq!(entry.path, "/home/user/d1/d2");
    assert_eq!(entry.owner, "user");

    let l = c
        .list_dir(ListDirRequest {
            sandbox_id: id.into(),
            path: "/home/user".into(),
            depth: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    let by_path = |p: &str| l.entries.iter().find(|e| e.path == p).cloned();
    let big = by_path("/home/user/data/big.bin").expect("big.bin listed");
    assert_eq!(big.r#type, "file");
    assert_eq!(big.size, (CHUNK * CHUNKS) as i64);
    assert!(big.modified_ms > 0);
    assert_eq!(
        by_path("/home/user/d1/d2").expect("d2 listed").r#type,
        "dir"
    );

    c.remove_path(RemovePathRequest {
        sandbox_id: id.into(),
        path: "/home/user/d1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = c
        .list_dir(ListDirRequest {
            sandbox_id: id.into(),
            path: "/home/user/d1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");

    // Missing file: not_found, not internal.
    let e = stream_error(
        c.read_file(ReadFileRequest {
            sandbox_id: id.into(),
            path: "/home/user/nope".into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");

    // The acting user is relayed: directories belong to whoever made them.
    let mk = |path: &str, user: &str| MakeDirRequest {
        sandbox_id: id.into(),
        path: path.into(),
        user: user.into(),
        ..Default::default()
    };
    let owner = |r: MakeDirResponse| r.entry.into_option().expect("entry").owner;
    let as_root = c
        .make_dir(mk("/tmp/as-root", "root"))
        .await
        .unwrap()
        .into_owned();
    assert_eq!(owner(as_root), "root");
    let as_user = c
        .make_dir(mk("/tmp/as-user", ""))
        .await
        .unwrap()
        .into_owned();
    assert_eq!(owner(as_user), "user");
    let e = c.make_dir(mk("/tmp/x", "nosuchuser")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e:?}");
}

#[tokio::test]
async fn write_file_needs_meta_first_and_only_first() {
    let agent = Agent::start().await;
    let c = agent.client();
    let id = "writemeta00000000001";
    agent.create(id).await;

    // A second meta aborts the upload with the client's error; no partial file is left.
    let meta = WriteFileRequest {
        msg: Some(Msg::Meta(Box::new(Meta {
            sandbox_id: id.into(),
            path: "/tmp/partial".into(),
            ..Default::default()
        }))),
        ..Default::default()
    };
    let reqs = [
        meta.clone(),
        WriteFileRequest {
            msg: Some(Msg::Chunk(vec![7u8; 1024 * 1024])),
            ..Default::default()
        },
        meta,
    ];
    let e = c.write_file(futures::stream::iter(reqs)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
    let e = stream_error(
        c.read_file(ReadFileRequest {
            sandbox_id: id.into(),
            path: "/tmp/partial".into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");

    let e = c
        .write_file(futures::stream::iter([WriteFileRequest {
            msg: Some(Msg::Chunk(b"x".to_vec())),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e:?}");
}

// ---------------------------------------------------------------- lifecycle, metrics

#[tokio::test]
async fn lifecycle_metrics_and_ping() {
    let agent = Agent::start().await;
    let id = "lifecycle00000000001";
    let info = agent.create(id).await;
    assert_eq!(info.sandbox_id, id);
    let c = agent.client();

    let ping = c.ping(PingRequest::default()).await.unwrap().into_owned();
    assert_eq!(ping.host_id, HOST_ID);
    assert_eq!(ping.sandboxes_running, 1);

    c.ping_sandbox(PingSandboxRequest {
        sandbox_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let m = c
        .get_metrics(GetMetricsRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(m.cpu_count > 0);
    assert!(m.mem_total_bytes > 0 && m.mem_used_bytes <= m.mem_total_bytes);
    assert!(m.disk_total_bytes > 0);
    assert_eq!(m.disk_allocated_bytes, FAKE_DISK_ALLOCATED);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - m.timestamp_ms).abs() < 60_000,
        "{}",
        m.timestamp_ms
    );

    let t = c
        .set_timeout(SetTimeoutRequest {
            sandbox_id: id.into(),
            end_at_ms: 4_000_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert_eq!(
        t.sandbox.into_option().unwrap().end_at_ms,
        4_000_000_000_000
    );
    let g = c
        .get_sandbox(GetSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert_eq!(
        g.sandbox.into_option().unwrap().end_at_ms,
        4_000_000_000_000
    );

    c.destroy_sandbox(DestroySandboxRequest {
        sandbox_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let l = c
        .list_sandboxes(ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert!(l.sandboxes.is_empty());
    assert_eq!(l.reaped_ids, vec![id.to_string()]);
    let e = c.exec(exec_req(id, "true", &[])).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
}

#[tokio::test]
async fn unknown_sandbox_is_not_found() {
    let agent = Agent::start().await;
    let c = agent.client();
    let id = "doesnotexist00000001";
    let e = c.exec(exec_req(id, "true", &[])).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = stream_error(c.exec_stream(exec_req(id, "true", &[])).await).await;
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = stream_error(
        c.pty_attach(PtyAttachRequest {
            sandbox_id: id.into(),
            tag: "t".into(),
            cmd: "/bin/bash".into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = stream_error(
        c.read_file(ReadFileRequest {
            sandbox_id: id.into(),
            path: "/x".into(),
            ..Default::default()
        })
        .await,
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = c.write_file(write_stream(id, "/tmp/x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    for e in [
        c.get_sandbox(GetSandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        c.destroy_sandbox(DestroySandboxRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        c.get_metrics(GetMetricsRequest {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    }
}

// ---------------------------------------------------------------- authentication

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let agent = Agent::start().await;
    let other = CpSigner::generate().unwrap();
    let expired = agent.signer.sign_claims(&Claims {
        iss: ISSUER.into(),
        aud: HOST_ID.into(),
        sub: SUBJECT.into(),
        iat: now() - 600,
        exp: now() - 300,
        generation: None,
    });
    let cases = [
        ("no token", None),
        ("garbage", Some("not-a-jwt".to_string())),
        ("expired", Some(expired)),
        (
            "other key",
            Some(other.sign(HOST_ID, Duration::from_secs(60))),
        ),
        (
            "other audience",
            Some(agent.signer.sign("host-other", Duration::from_secs(60))),
        ),
    ];
    for (what, token) in cases {
        let c = agent.client_with(token.clone());
        let e = c.ping(PingRequest::default()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{what}: {e:?}");
        let e = stream_error(c.exec_stream(exec_req("any", "true", &[])).await).await;
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{what} (stream): {e:?}");

        // The raw HTTP answer is 401 with a Connect error body.
        let mut req = reqwest::Client::new()
            .post(format!(
                "{}/hostagent.v1.HostAgentService/Ping",
                agent.base()
            ))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(t) = &token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated", "{what}");
    }
    // Nothing was created by refused calls.
    assert!(agent.backend.list().await.unwrap().sandboxes.is_empty());

    // The same raw call with a valid token works (JSON codec too).
    let r = reqwest::Client::new()
        .post(format!(
            "{}/hostagent.v1.HostAgentService/Ping",
            agent.base()
        ))
        .header("content-type", "application/json")
        .header(
            "authorization",
            format!(
                "Bearer {}",
                agent.signer.sign(HOST_ID, Duration::from_secs(60))
            ),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["hostId"], HOST_ID);
}

// Keep the backend trait in scope for `agent.backend.list()`.
use wrenn_agent::rpc::SandboxBackend as _;
