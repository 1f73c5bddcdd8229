//! `process.Process` end to end: real envd as PID 1 of its sandbox, driven through the
//! generated Connect client (and raw HTTP for malformed input).
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Envd;
use connectrpc::client::{CallOptions, HttpClient};
use connectrpc::{ConnectError, ErrorCode};
use sha2::{Digest, Sha256};
use wrenn_proto::process::process_event::Event;
use wrenn_proto::process::process_event::data_event::Output;
use wrenn_proto::process::process_selector::Selector;
use wrenn_proto::process::*;

type Client = ProcessClient<HttpClient>;
type Body = <HttpClient as connectrpc::client::ClientTransport>::ResponseBody;
type StartStream = connectrpc::client::ServerStream<Body, StartResponseView<'static>>;

const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- helpers

fn config(cmd: &str, args: &[&str]) -> ProcessConfig {
    ProcessConfig {
        cmd: cmd.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn start_req(cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        process: config(cmd, args).into(),
        ..Default::default()
    }
}

fn bash(script: &str) -> StartRequest {
    start_req("/bin/bash", &["-c", script])
}

fn pid_sel(pid: u32) -> ProcessSelector {
    ProcessSelector {
        selector: Some(Selector::Pid(pid)),
        ..Default::default()
    }
}

fn tag_sel(tag: &str) -> ProcessSelector {
    ProcessSelector {
        selector: Some(Selector::Tag(tag.into())),
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Run {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Vec<u8>,
    end: Option<process_event::EndEvent>,
    keepalives: usize,
    max_chunk: usize,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn pty_text(&self) -> String {
        String::from_utf8_lossy(&self.pty).into_owned()
    }
    fn end(&self) -> &process_event::EndEvent {
        self.end.as_ref().expect("end event")
    }
}

/// Applies one event to `run`; true once `end` arrived.
fn apply(run: &mut Run, ev: Option<Event>) -> bool {
    match ev.expect("event without a payload") {
        Event::Start(s) => panic!("second start event (pid {})", s.pid),
        Event::Data(d) => {
            let (buf, len) = match d.output.expect("data without output") {
                Output::Stdout(b) => (&mut run.stdout, b),
                Output::Stderr(b) => (&mut run.stderr, b),
                Output::Pty(b) => (&mut run.pty, b),
            };
            run.max_chunk = run.max_chunk.max(len.len());
            buf.extend_from_slice(&len);
        }
        Event::End(e) => {
            assert!(run.end.is_none(), "two end events");
            run.end = Some(*e);
            return true;
        }
        Event::Keepalive(_) => run.keepalives += 1,
    }
    false
}

/// Reads the `start` event, which must come first.
async fn first_pid(stream: &mut StartStream) -> u32 {
    let msg = stream
        .message()
        .await
        .expect("stream")
        .expect("first message");
    match msg
        .to_owned_message()
        .event
        .into_option()
        .and_then(|e| e.event)
    {
        Some(Event::Start(s)) => {
            assert!(s.pid > 0);
            s.pid
        }
        other => panic!("first event must be start, got {other:?}"),
    }
}

/// Reads a Start stream to its end and checks the end-of-stream frame is clean.
async fn collect(mut stream: StartStream) -> Run {
    let pid = first_pid(&mut stream).await;
    let mut run = Run {
        pid,
        ..Default::default()
    };
    tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = stream.message().await.expect("stream error") {
            assert!(run.end.is_none(), "event after end");
            let ev = msg
                .to_owned_message()
                .event
                .into_option()
                .and_then(|e| e.event);
            apply(&mut run, ev);
        }
    })
    .await
    .expect("stream did not finish");
    assert!(run.end.is_some(), "stream ended without end event");
    run
}

/// Reads a Start stream until `done(run)` holds (or the end arrives).
async fn read_until(stream: &mut StartStream, run: &mut Run, done: impl Fn(&Run) -> bool) {
    tokio::time::timeout(TIMEOUT, async {
        while !done(run) {
            let msg = stream
                .message()
                .await
                .expect("stream")
                .expect("stream ended early");
            let ev = msg
                .to_owned_message()
                .event
                .into_option()
                .and_then(|e| e.event);
            if apply(run, ev) {
                return;
            }
        }
    })
    .await
    .expect("expected output did not arrive");
}

async fn run(p: &Client, req: StartRequest) -> Run {
    collect(p.start(req).await.expect("start")).await
}

async fn start(p: &Client, req: StartRequest) -> (u32, StartStream) {
    let mut s = p.start(req).await.expect("start");
    let pid = first_pid(&mut s).await;
    (pid, s)
}

/// The error a failing Start reports, whether at the call or in the stream.
async fn start_err(p: &Client, req: StartRequest) -> ConnectError {
    match p.start(req).await {
        Err(e) => e,
        Ok(mut s) => loop {
            match s.message().await {
                Err(e) => break e,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("start succeeded"),
            }
        },
    }
}

async fn signal(p: &Client, pid: u32, sig: Signal) -> Result<(), ConnectError> {
    p.send_signal(SendSignalRequest {
        process: pid_sel(pid).into(),
        signal: sig.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn list(p: &Client) -> Vec<ProcessInfo> {
    p.list(ListRequest::default())
        .await
        .expect("list")
        .into_owned()
        .processes
}

fn stdin_input(data: &[u8]) -> ProcessInput {
    ProcessInput {
        input: Some(process_input::Input::Stdin(data.to_vec())),
        ..Default::default()
    }
}

fn pty_input(data: &[u8]) -> ProcessInput {
    ProcessInput {
        input: Some(process_input::Input::Pty(data.to_vec())),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- start basics

#[tokio::test]
async fn start_streams_start_data_end() {
    let envd = Envd::start().await;
    let p = envd.process();
    let r = run(&p, bash("echo hello; echo oops >&2; exit 3")).await;
    assert_eq!(r.out(), "hello\n");
    assert_eq!(r.stderr, b"oops\n");
    assert!(r.pty.is_empty());
    let end = r.end();
    assert_eq!(end.exit_code, 3);
    assert!(end.exited);
    assert_eq!(end.status, "exit status 3");
    // Like upstream envd, a failed process carries its status as `error` too.
    assert_eq!(end.error.as_deref(), Some("exit status 3"));

    let ok = run(&p, start_req("/bin/true", &[])).await;
    assert_eq!(ok.end().exit_code, 0);
    assert_eq!(ok.end().status, "exit status 0");
    assert_eq!(ok.end().error, None);
    // Finished processes are no longer listed.
    assert!(list(&p).await.iter().all(|i| i.pid != ok.pid));
}

#[tokio::test]
async fn default_user_and_root_via_basic_auth() {
    let envd = Envd::start().await;
    let r = run(&envd.process(), start_req("id", &["-un"])).await;
    assert_eq!(r.out(), "user\n");
    let r = run(
        &envd.process_as(Some("root"), None),
        start_req("id", &["-un"]),
    )
    .await;
    assert_eq!(r.out(), "root\n");

    let err = start_err(
        &envd.process_as(Some("nobody-here"), None),
        start_req("id", &[]),
    )
    .await;
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn identity_and_environment() {
    // envd gets a supplementary group of its own (nextest runs each test in its own
    // process), which must not leak into the processes it starts.
    let extra: [libc::gid_t; 2] = [0, 4242];
    // SAFETY: setgroups with a valid array; the test process is root.
    assert_eq!(unsafe { libc::setgroups(extra.len(), extra.as_ptr()) }, 0);
    let envd = Envd::start().await;
    // The process's real groups must be exactly the user's groups from the database, and
    // its uid the owner of its home.
    let script = r#"echo "uid=$(id -u) home_owner=$(stat -c %u "$HOME")"
echo "gid=$(id -g) db_gid=$(id -g "$(id -un)")"
echo "groups=$(id -G) db_groups=$(id -G "$(id -un)")""#;
    for (client, name) in [
        (envd.process(), "user"),
        (envd.process_as(Some("root"), None), "root"),
    ] {
        let r = run(&client, bash(script)).await;
        let out = r.out();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let (uid, owner) = lines[0].split_once(' ').unwrap();
        if name == "user" {
            assert_eq!(
                uid.trim_start_matches("uid="),
                owner.trim_start_matches("home_owner=")
            );
            assert_ne!(uid, "uid=0");
        } else {
            assert_eq!(uid, "uid=0");
        }
        let (gid, db_gid) = lines[1].split_once(' ').unwrap();
        assert_eq!(
            gid.trim_start_matches("gid="),
            db_gid.trim_start_matches("db_gid="),
            "{out}"
        );
        let (g, db_g) = lines[2].split_once(" db_groups=").unwrap();
        let mut g: Vec<&str> = g.trim_start_matches("groups=").split(' ').collect();
        let mut db_g: Vec<&str> = db_g.split(' ').collect();
        g.sort();
        db_g.sort();
        assert_eq!(g, db_g, "{out}");
    }

    // The environment is built from scratch: nothing of envd's own leaks through.
    let r = run(&envd.process(), start_req("/usr/bin/env", &[])).await;
    let env: BTreeMap<String, String> = r
        .out()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/home/user"),
        ("USER", "user"),
        ("LOGNAME", "user"),
        ("SHELL", "/bin/bash"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected);

    let r = run(
        &envd.process_as(Some("root"), None),
        bash("echo $HOME $USER $LOGNAME"),
    )
    .await;
    assert_eq!(r.out(), "/root root root\n");
}

#[tokio::test]
async fn envs_and_cwd() {
    let envd = Envd::start().await;
    let p = envd.process();
    let mut req = bash("echo \"$FOO|$BAR|$PWD\"");
    let mut cfg = config("/bin/bash", &["-c", "echo \"$FOO|$BAR|$(pwd)\""]);
    cfg.envs.insert("FOO".into(), "foo value".into());
    cfg.envs.insert("BAR".into(), "b=r".into());
    cfg.cwd = Some("/tmp".into());
    req.process = cfg.clone().into();
    assert_eq!(run(&p, req).await.out(), "foo value|b=r|/tmp\n");

    // Default cwd is the user's home; relative cwd resolves against it.
    assert_eq!(run(&p, start_req("pwd", &[])).await.out(), "/home/user\n");
    run(&p, start_req("mkdir", &["-p", "sub/dir"])).await;
    let mut req = start_req("pwd", &[]);
    let mut cfg = config("pwd", &[]);
    cfg.cwd = Some("sub/dir".into());
    req.process = cfg.into();
    assert_eq!(run(&p, req).await.out(), "/home/user/sub/dir\n");

    let mut req = start_req("pwd", &[]);
    let mut cfg = config("pwd", &[]);
    cfg.cwd = Some("/does/not/exist".into());
    req.process = cfg.into();
    let err = start_err(&p, req).await;
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    assert!(
        err.message
            .as_deref()
            .unwrap_or("")
            .contains("/does/not/exist"),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_start_requests() {
    let envd = Envd::start().await;
    let p = envd.process();
    let err = start_err(&p, start_req("", &[])).await;
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");

    let err = start_err(&p, start_req("/no/such/binary", &[])).await;
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    assert!(
        err.message
            .as_deref()
            .unwrap_or("")
            .contains("/no/such/binary")
    );
    let err = start_err(&p, start_req("no-such-command-anywhere", &[])).await;
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");

    // envd is still fine afterwards.
    assert_eq!(
        run(&p, start_req("echo", &["alive"])).await.out(),
        "alive\n"
    );
}

// ---------------------------------------------------------------- output

#[tokio::test]
async fn binary_output_is_byte_exact() {
    let envd = Envd::start().await;
    let script =
        "head -c 3000000 /dev/urandom > /tmp/r.bin && sha256sum /tmp/r.bin >&2 && cat /tmp/r.bin";
    let r = run(&envd.process(), bash(script)).await;
    assert_eq!(r.end().exit_code, 0);
    assert_eq!(r.stdout.len(), 3_000_000);
    let want = String::from_utf8(r.stderr.clone()).unwrap();
    let got: String = Sha256::digest(&r.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(want.split_whitespace().next(), Some(got.as_str()));
    assert!(r.max_chunk <= 32 * 1024, "chunk of {} bytes", r.max_chunk);
}

#[tokio::test]
async fn output_before_exit_arrives_before_end_even_with_background_child() {
    let envd = Envd::start().await;
    let p = envd.process();
    // Many small writes right before exit.
    let r = run(
        &p,
        bash("for i in $(seq 1 2000); do echo line $i; done; exit 7"),
    )
    .await;
    assert_eq!(r.out().lines().count(), 2000);
    assert!(r.out().ends_with("line 2000\n"));
    assert_eq!(r.end().exit_code, 7);

    // A background grandchild keeps stdout open: end must not wait for it.
    let t = Instant::now();
    let r = run(&p, bash("sleep 30 & echo started")).await;
    assert_eq!(r.out(), "started\n");
    assert_eq!(r.end().exit_code, 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "end withheld for {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn keepalives_follow_the_header_interval() {
    let envd = Envd::start().await;
    let p = envd.process();
    let opts = CallOptions::default().with_header("keepalive-ping-interval", "1");
    let s = p
        .start_with_options(start_req("sleep", &["2.5"]), opts)
        .await
        .unwrap();
    let r = collect(s).await;
    assert!(r.keepalives >= 2, "{} keepalives", r.keepalives);
    assert_eq!(r.end().exit_code, 0);
}

// ---------------------------------------------------------------- deadlines and signals

#[tokio::test]
async fn connect_timeout_kills_the_process() {
    let envd = Envd::start().await;
    let p = envd.process();
    let t = Instant::now();
    let opts = CallOptions::default().with_header("connect-timeout-ms", "1000");
    let mut s = p
        .start_with_options(start_req("sleep", &["60"]), opts)
        .await
        .unwrap();
    let pid = first_pid(&mut s).await;
    // The stream ends with deadline_exceeded (what the SDKs raise as a timeout)...
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without the deadline error"),
            Err(e) => break e,
        }
    };
    let elapsed = t.elapsed();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded, "{err:?}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    // ...and the process is gone (reaped: envd lists it no more; its pid is one of envd's
    // PID namespace, so the test's /proc cannot tell).
    let deadline = Instant::now() + Duration::from_secs(5);
    while list(&p).await.iter().any(|i| i.pid == pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_and_sigkill() {
    let envd = Envd::start().await;
    let p = envd.process();
    for (sig, status) in [
        (Signal::SIGNAL_SIGTERM, "signal: terminated"),
        (Signal::SIGNAL_SIGKILL, "signal: killed"),
    ] {
        let (pid, s) = start(&p, start_req("sleep", &["30"])).await;
        signal(&p, pid, sig).await.unwrap();
        let r = collect_rest(pid, s).await;
        assert_eq!(r.end().status, status);
        assert_eq!(r.end().exit_code, -1);
        assert!(!r.end().exited);
    }
    let err = signal(&p, 999_999, Signal::SIGNAL_SIGKILL)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");

    let (pid, s) = start(&p, start_req("sleep", &["30"])).await;
    let err = signal(&p, pid, Signal::SIGNAL_UNSPECIFIED)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    signal(&p, pid, Signal::SIGNAL_SIGKILL).await.unwrap();
    assert_eq!(collect_rest(pid, s).await.end().status, "signal: killed");
}

/// Like [`collect`] for a stream whose start event was already read.
async fn collect_rest(pid: u32, mut stream: StartStream) -> Run {
    let mut run = Run {
        pid,
        ..Default::default()
    };
    read_until(&mut stream, &mut run, |r| r.end.is_some()).await;
    assert!(
        stream
            .message()
            .await
            .expect("clean end of stream")
            .is_none()
    );
    run
}

// ---------------------------------------------------------------- input

#[tokio::test]
async fn stdin_stream_send_and_close() {
    let envd = Envd::start().await;
    let p = envd.process();
    let mut req = start_req("cat", &[]);
    req.stdin = Some(true);
    let (pid, s) = start(&p, req).await;

    use stream_input_request::{DataEvent, Event as In, StartEvent};
    let msg = |e: In| StreamInputRequest {
        event: Some(e),
        ..Default::default()
    };
    let msgs = vec![
        msg(In::Start(Box::new(StartEvent {
            process: pid_sel(pid).into(),
            ..Default::default()
        }))),
        msg(In::Data(Box::new(DataEvent {
            input: stdin_input(b"hello ").into(),
            ..Default::default()
        }))),
        msg(In::Keepalive(Box::default())),
        msg(In::Data(Box::new(DataEvent {
            input: stdin_input(b"world\n").into(),
            ..Default::default()
        }))),
    ];
    p.stream_input(connectrpc::stream_iter(msgs)).await.unwrap();
    p.send_input(SendInputRequest {
        process: pid_sel(pid).into(),
        input: stdin_input(&[0, 1, 2, 255, b'\n']).into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.close_stdin(CloseStdinRequest {
        process: pid_sel(pid).into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = collect_rest(pid, s).await;
    assert_eq!(r.stdout, b"hello world\n\x00\x01\x02\xff\n");
    assert_eq!(r.end().exit_code, 0);

    // A StreamInput that does not begin with start is refused.
    let bad = vec![msg(In::Keepalive(Box::default()))];
    let err = p
        .stream_input(connectrpc::stream_iter(bad))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");

    // Without stdin: true, stdin is /dev/null and cannot be written.
    let r = run(&p, start_req("cat", &[])).await;
    assert!(r.stdout.is_empty());
    assert_eq!(r.end().exit_code, 0);
    let (pid, s) = start(&p, start_req("sleep", &["30"])).await;
    let err = p
        .send_input(SendInputRequest {
            process: pid_sel(pid).into(),
            input: stdin_input(b"x").into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err:?}");
    signal(&p, pid, Signal::SIGNAL_SIGKILL).await.unwrap();
    collect_rest(pid, s).await;

    let err = p
        .close_stdin(CloseStdinRequest {
            process: pid_sel(424_242).into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

// ---------------------------------------------------------------- connect, list, tags

async fn connect(p: &Client, sel: ProcessSelector) -> Result<StartLike, ConnectError> {
    let mut s = p
        .connect(ConnectRequest {
            process: sel.into(),
            ..Default::default()
        })
        .await?;
    let first = s.message().await?.expect("first message");
    let pid = match first
        .to_owned_message()
        .event
        .into_option()
        .and_then(|e| e.event)
    {
        Some(Event::Start(s)) => s.pid,
        other => panic!("first event must be start, got {other:?}"),
    };
    Ok(StartLike { pid, stream: s })
}

struct StartLike {
    pid: u32,
    stream: connectrpc::client::ServerStream<Body, ConnectResponseView<'static>>,
}

impl StartLike {
    async fn collect(mut self) -> Run {
        let mut run = Run {
            pid: self.pid,
            ..Default::default()
        };
        tokio::time::timeout(TIMEOUT, async {
            while let Some(msg) = self.stream.message().await.expect("stream error") {
                let ev = msg
                    .to_owned_message()
                    .event
                    .into_option()
                    .and_then(|e| e.event);
                apply(&mut run, ev);
            }
        })
        .await
        .expect("connect stream did not finish");
        run
    }
}

#[tokio::test]
async fn two_followers_get_output_then_end() {
    let envd = Envd::start().await;
    let p = envd.process();
    let mut req = start_req("cat", &[]);
    req.stdin = Some(true);
    req.tag = Some("follow-me".into());
    let (pid, s) = start(&p, req).await;

    let a = connect(&p, pid_sel(pid)).await.unwrap();
    let b = connect(&p, tag_sel("follow-me")).await.unwrap();
    assert_eq!((a.pid, b.pid), (pid, pid));

    p.send_input(SendInputRequest {
        process: tag_sel("follow-me").into(),
        input: stdin_input(b"ping\n").into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.close_stdin(CloseStdinRequest {
        process: pid_sel(pid).into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (ra, rb, rs) = tokio::join!(a.collect(), b.collect(), collect_rest(pid, s));
    for r in [&ra, &rb, &rs] {
        assert_eq!(r.out(), "ping\n");
        assert_eq!(r.end().exit_code, 0);
    }

    // Once ended, the process can no longer be followed.
    for sel in [pid_sel(pid), tag_sel("follow-me"), tag_sel("never-used")] {
        let err = connect(&p, sel)
            .await
            .err()
            .expect("connect to a missing process");
        assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    }
}

#[tokio::test]
async fn slow_follower_gets_everything() {
    let envd = Envd::start().await;
    let p = envd.process();
    // The process waits for a line so the second follower is attached before any output.
    let mut req = bash("read _; seq 1 100000");
    req.stdin = Some(true);
    let (pid, mut slow) = start(&p, req).await;
    let fast = connect(&p, pid_sel(pid)).await.unwrap();
    p.send_input(SendInputRequest {
        process: pid_sel(pid).into(),
        input: stdin_input(b"go\n").into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let slow_reader = async {
        let mut r = Run {
            pid,
            ..Default::default()
        };
        // Stall for a while: the output must wait for this follower, not be dropped.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let msg = slow.message().await.unwrap().expect("message");
            let ev = msg
                .to_owned_message()
                .event
                .into_option()
                .and_then(|e| e.event);
            if apply(&mut r, ev) {
                break;
            }
        }
        read_until(&mut slow, &mut r, |r| r.end.is_some()).await;
        r
    };
    let (slow, fast) = tokio::join!(slow_reader, fast.collect());
    let want: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(slow.out(), want);
    assert_eq!(fast.out(), want);
    assert_eq!(slow.end().exit_code, 0);
}

#[tokio::test]
async fn list_shows_background_process_with_tag_and_survives_disconnect() {
    let envd = Envd::start().await;
    let p = envd.process();
    let mut req = start_req("sleep", &["30"]);
    req.tag = Some("bg".into());
    let (pid, s) = start(&p, req).await;
    // The starting client goes away; the process must keep running.
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let procs = list(&p).await;
    let info = procs.iter().find(|i| i.pid == pid).expect("listed");
    assert_eq!(info.tag.as_deref(), Some("bg"));
    let cfg = info.config.as_option().expect("config");
    assert_eq!(cfg.cmd, "sleep");
    assert_eq!(cfg.args, vec!["30".to_string()]);

    // Tags are unique among running processes.
    let mut dup = start_req("true", &[]);
    dup.tag = Some("bg".into());
    let err = start_err(&p, dup).await;
    assert_eq!(err.code, ErrorCode::AlreadyExists, "{err:?}");

    // A Connect deadline ends that follower's stream, not the process.
    let opts = CallOptions::default().with_header("connect-timeout-ms", "500");
    let mut timed = p
        .connect_with_options(
            ConnectRequest {
                process: pid_sel(pid).into(),
                ..Default::default()
            },
            opts,
        )
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(TIMEOUT, timed.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("connect stream ended without the deadline error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code, ErrorCode::DeadlineExceeded, "{err:?}");
    assert!(list(&p).await.iter().any(|i| i.pid == pid));

    let follower = connect(&p, tag_sel("bg")).await.unwrap();
    p.send_signal(SendSignalRequest {
        process: tag_sel("bg").into(),
        signal: Signal::SIGNAL_SIGKILL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(follower.collect().await.end().status, "signal: killed");
    assert!(list(&p).await.iter().all(|i| i.pid != pid));
}

#[tokio::test]
async fn process_keeps_running_and_draining_without_followers() {
    let envd = Envd::start().await;
    let p = envd.process();
    // Far more output than a pipe holds: it only finishes if envd keeps reading.
    let (pid, s) = start(&p, bash("seq 1 300000; echo done > /tmp/marker")).await;
    drop(s);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = run(&p, bash("cat /tmp/marker 2>/dev/null || true")).await;
        if r.out() == "done\n" {
            break;
        }
        assert!(Instant::now() < deadline, "process {pid} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- pty

#[tokio::test]
async fn pty_tty_size_echo_resize_and_kill() {
    let envd = Envd::start().await;
    let p = envd.process();
    let mut req = bash("tty; stty size; read line; echo \"got:$line\"; stty size");
    req.pty = PTY {
        size: pty::Size {
            cols: 100,
            rows: 30,
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
    .into();
    let (pid, mut s) = start(&p, req).await;
    let mut r = Run {
        pid,
        ..Default::default()
    };
    read_until(&mut s, &mut r, |r| r.pty_text().contains("30 100\r\n")).await;
    assert!(r.pty_text().starts_with("/dev/pts/"), "{:?}", r.pty_text());

    p.update(UpdateRequest {
        process: pid_sel(pid).into(),
        pty: PTY {
            size: pty::Size {
                cols: 120,
                rows: 50,
                ..Default::default()
            }
            .into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.send_input(SendInputRequest {
        process: pid_sel(pid).into(),
        input: pty_input(b"hello\n").into(),
        ..Default::default()
    })
    .await
    .unwrap();
    read_until(&mut s, &mut r, |r| r.end.is_some()).await;
    let text = r.pty_text();
    // The terminal echoes the input, then the script reports it and the new size.
    assert!(text.contains("hello\r\n"), "{text:?}");
    assert!(text.contains("got:hello\r\n"), "{text:?}");
    assert!(text.ends_with("50 120\r\n"), "{text:?}");
    assert!(r.stdout.is_empty() && r.stderr.is_empty());
    assert_eq!(r.end().exit_code, 0);

    // Stdin-only operations do not apply to a pty.
    let (pid, s) = start(
        &p,
        StartRequest {
            pty: PTY::default().into(),
            ..start_req("sleep", &["30"])
        },
    )
    .await;
    let err = p
        .close_stdin(CloseStdinRequest {
            process: pid_sel(pid).into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err:?}");
    signal(&p, pid, Signal::SIGNAL_SIGKILL).await.unwrap();
    assert_eq!(collect_rest(pid, s).await.end().status, "signal: killed");
}

// ---------------------------------------------------------------- zombies

#[tokio::test]
async fn a_thousand_commands_leave_no_zombies() {
    let envd = Envd::start().await;
    let p = envd.process();
    let reqs: Vec<StartRequest> = (0..1000)
        .map(|i| match i % 4 {
            0 => start_req("/bin/true", &[]),
            1 => bash("sleep 0.05 & exit 0"),
            2 => bash("echo $$; exit 1"),
            _ => start_req("/bin/false", &[]),
        })
        .collect();
    use futures::StreamExt;
    let ends: Vec<i32> = futures::stream::iter(reqs)
        .map(|req| {
            let p = &p;
            async move { run(p, req).await.end().exit_code }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(ends.len(), 1000);
    assert_eq!(ends.iter().filter(|c| **c == 0).count(), 500);

    // Count zombies in the sandbox (the reaper's periodic tick is 1 s).
    let count =
        "cat /proc/[0-9]*/stat 2>/dev/null | sed -E 's/^.*\\) //' | awk '$1 == \"Z\"' | wc -l";
    let mut zombies = String::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        zombies = run(&p, bash(count)).await.out();
        if zombies.trim() == "0" {
            break;
        }
    }
    assert_eq!(zombies.trim(), "0", "zombie processes remain");
}

// ---------------------------------------------------------------- malformed input (raw HTTP)

fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Decodes a Connect streaming response body into (flags, json) frames.
fn frames(mut body: &[u8]) -> Vec<(u8, serde_json::Value)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let json = serde_json::from_slice(&body[5..5 + len]).unwrap();
        out.push((body[0], json));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes");
    out
}

/// The Connect error code of a streaming response (from its end-of-stream frame or, for
/// errors before the stream began, the JSON error body).
async fn stream_error_code(resp: reqwest::Response) -> String {
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    if ct.starts_with("application/connect+json") {
        let f = frames(&body);
        let (flags, end) = f.last().expect("end frame");
        assert_eq!(*flags, 2, "{f:?}");
        end["error"]["code"]
            .as_str()
            .expect("error code")
            .to_string()
    } else {
        assert!(!status.is_success(), "{status}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["code"].as_str().expect("code").to_string()
    }
}

#[tokio::test]
async fn malformed_requests_get_connect_errors() {
    let envd = Envd::start().await;
    // No connection reuse: envd closes a connection whose oversized body it refused, and a
    // pooled client could race that close with its next request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let unary = |path: &str, body: Vec<u8>| {
        http.post(envd.url(path))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .body(body)
            .send()
    };

    // Malformed JSON.
    let r = unary("/process.Process/SendSignal", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_argument", "{v}");

    // Unknown process and missing selector.
    let r = unary(
        "/process.Process/SendSignal",
        br#"{"process":{"pid":987654},"signal":"SIGNAL_SIGTERM"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );
    let r = unary("/process.Process/CloseStdin", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Oversized message (> 4 MiB).
    let big = format!(
        r#"{{"process":{{"pid":1}},"input":{{"stdin":"{}"}}}}"#,
        "A".repeat(5 * 1024 * 1024)
    );
    let r = unary("/process.Process/SendInput", big.into_bytes())
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "resource_exhausted", "{status} {v}");

    // Streaming: malformed JSON inside a well-formed envelope.
    let stream = |body: Vec<u8>| {
        http.post(envd.url("/process.Process/Start"))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(body)
            .send()
    };
    let r = stream(envelope(0, b"{\"process\":")).await.unwrap();
    assert_eq!(stream_error_code(r).await, "invalid_argument");

    // Truncated frame: the header promises more bytes than follow.
    let mut truncated = envelope(0, br#"{"process":{"cmd":"true"}}"#);
    truncated[4] = 200;
    let r = stream(truncated).await.unwrap();
    assert_eq!(stream_error_code(r).await, "invalid_argument");

    // Oversized frame.
    let big = format!(
        r#"{{"process":{{"cmd":"echo","args":["{}"]}}}}"#,
        "A".repeat(5 * 1024 * 1024)
    );
    let r = stream(envelope(0, big.as_bytes())).await.unwrap();
    assert_eq!(stream_error_code(r).await, "resource_exhausted");

    // A well-formed raw Start streams start, data and end frames, then a clean end.
    let r = stream(envelope(
        0,
        br#"{"process":{"cmd":"/bin/bash","args":["-c","printf hi; exit 2"]}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let f = frames(&r.bytes().await.unwrap());
    assert!(
        f.first().unwrap().1["event"]["start"]["pid"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        f.iter()
            .any(|(_, v)| v["event"]["data"]["stdout"] == "aGk="),
        "{f:?}"
    );
    let n = f.len();
    assert_eq!(f[n - 2].1["event"]["end"]["exitCode"], 2, "{f:?}");
    assert_eq!(f[n - 2].1["event"]["end"]["status"], "exit status 2");
    assert_eq!(f[n - 1], (2, serde_json::json!({})));
}
