//! envd scenarios: process round trip and `/files` throughput, against envd running as PID 1
//! of its namespace sandbox (as the tests run it), beside in-process baselines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use connectrpc::client::{ClientConfig, HttpClient};
use futures::StreamExt;
use wrenn_proto::process::{ProcessClient, ProcessConfig, StartRequest};

use crate::Args;
use crate::report::Row;

const MIB: usize = 1024 * 1024;

/// envd in `scripts/envd-sandbox`; killed (with everything in its namespace) on drop.
struct Sandbox {
    child: Child,
    port: u16,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn envd_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.envd {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("envd");
    if !p.exists() {
        bail!(
            "no envd next to {} (build it: cargo build -p envd, or pass --envd)",
            exe.display()
        );
    }
    Ok(p)
}

async fn start_sandbox(envd: &Path) -> anyhow::Result<Sandbox> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(repo_root().join("scripts/envd-sandbox"))
        .arg(envd)
        .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start scripts/envd-sandbox (needs root)")?;
    let sandbox = Sandbox { child, port };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(sandbox);
        }
        if Instant::now() > deadline {
            bail!("envd did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn envd_true(client: &ProcessClient<HttpClient>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let req = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/true".into(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut stream = client.start(req).await?;
    while stream.message().await?.is_some() {}
    Ok(t.elapsed())
}

async fn local_true() -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(|| {
        let t = Instant::now();
        let status = Command::new("/bin/true").status()?;
        anyhow::ensure!(status.success(), "true failed");
        Ok(t.elapsed())
    })
    .await?
}

async fn upload(http: &reqwest::Client, base: &str, body: Bytes) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = http
        .post(format!("{base}/files?path=/home/user/bench.bin"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "upload answered {}", r.status());
    r.bytes().await?;
    Ok(t.elapsed())
}

async fn download(http: &reqwest::Client, base: &str, expect: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = http
        .get(format!("{base}/files?path=/home/user/bench.bin"))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "download answered {}", r.status());
    let n = count(r.bytes_stream()).await?;
    anyhow::ensure!(n == expect, "downloaded {n} bytes, expected {expect}");
    Ok(t.elapsed())
}

/// Bytes in a stream of chunks (a download read to its end).
pub(crate) async fn count<S, E>(mut s: S) -> anyhow::Result<usize>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut n = 0;
    while let Some(chunk) = s.next().await {
        n += chunk?.len();
    }
    Ok(n)
}

/// A plain file copy on tmpfs (the sandbox's /home is tmpfs too).
async fn copy_file(src: PathBuf, dst: PathBuf) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        std::fs::copy(&src, &dst)?;
        let f = std::fs::File::open(&dst)?;
        f.sync_all()?;
        Ok(t.elapsed())
    })
    .await?
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let envd = envd_binary(args)?;
    let sandbox = start_sandbox(&envd).await?;
    let base = format!("http://127.0.0.1:{}", sandbox.port);
    let client = ProcessClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(base.parse()?).json(),
    );
    let mut rows = Vec::new();

    // Round trip of `true`: Start → start, end, end-of-stream, vs fork+exec+wait in-process.
    let pairs = if args.quick { 200 } else { 1000 };
    for _ in 0..20 {
        envd_true(&client).await?;
    }
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        ours.push(ms(envd_true(&client).await?));
        baseline.push(ms(local_true().await?));
    }
    rows.push(Row::paired(
        "envd Start→end of `true` (direct)",
        "ms",
        "fork+exec `true` in-process",
        &ours,
        &baseline,
    ));

    // 100 MiB upload and download vs a plain copy, in MiB/s.
    let size = 100 * MIB;
    let body = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let shm = tempfile::tempdir_in("/dev/shm").context("tempdir in /dev/shm")?;
    let src = shm.path().join("src.bin");
    std::fs::write(&src, &body)?;
    let http = reqwest::Client::new();
    let rounds = if args.quick { 3 } else { 8 };
    let (mut up, mut down, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    let mib = (size / MIB) as f64;
    for i in 0..rounds {
        up.push(mib / upload(&http, &base, body.clone()).await?.as_secs_f64());
        copy.push(
            mib / copy_file(src.clone(), shm.path().join(format!("dst{i}.bin")))
                .await?
                .as_secs_f64(),
        );
        down.push(mib / download(&http, &base, size).await?.as_secs_f64());
        std::fs::remove_file(shm.path().join(format!("dst{i}.bin")))?;
    }
    rows.push(Row::paired(
        "envd /files upload 100 MiB",
        "MiB/s",
        "plain file copy",
        &up,
        &copy,
    ));
    rows.push(Row::paired(
        "envd /files download 100 MiB",
        "MiB/s",
        "plain file copy",
        &down,
        &copy,
    ));
    drop(sandbox);
    Ok(rows)
}
