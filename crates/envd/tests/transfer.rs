//! Large transfers through `/files` stream: a 1 GiB upload and a 1 GiB download each grow
//! envd's resident memory by less than 32 MiB, and the bytes arrive intact.
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Envd;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const CHUNK: usize = 1024 * 1024;
const CHUNKS: u64 = 1024; // 1 GiB
const RSS_BUDGET: u64 = 32 * 1024 * 1024;

/// Chunk `i` of the test data: a fixed pseudo-random MiB with `i` stamped at its start, so
/// lost, repeated or reordered chunks change the hash.
fn chunk(base: &[u8], i: u64) -> Bytes {
    let mut c = base.to_vec();
    c[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(c)
}

fn base_block() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..CHUNK / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Samples envd's RSS every 100 ms on its own thread until dropped; reports the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(common::rss_bytes(pid)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(common::rss_bytes(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak
            .fetch_max(common::rss_bytes(pid), Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// A `sha256sum` child fed through stdin (the test binary is unoptimised; hashing a GiB
/// in it would dominate the test's time).
fn sha256sum_child() -> tokio::process::Child {
    tokio::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sha256sum")
}

async fn sha256sum_result(child: tokio::process::Child) -> String {
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn sha256sum_file(path: &PathBuf) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn sandbox_path(envd: &Envd, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", envd.host_pid()))
}

/// Warms envd up (connection handling, blocking pool) so the baseline is comparable.
async fn warm_up(envd: &Envd) {
    let c = reqwest::Client::new();
    let url = envd.url("/files?path=/tmp/warm.bin");
    let r = c
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 4 * CHUNK])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 4 * CHUNK);
}

#[tokio::test]
async fn upload_1gib_streams_to_disk() {
    let envd = Envd::start().await;
    let pid = envd.host_pid();
    warm_up(&envd).await;
    let baseline = common::rss_bytes(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();

    let base = Arc::new(base_block());
    let mut hasher = sha256sum_child();
    let stdin = hasher.stdin.take().unwrap();
    let body = futures::stream::unfold((0u64, stdin), move |(i, mut stdin)| {
        let base = base.clone();
        async move {
            if i == CHUNKS {
                drop(stdin);
                return None;
            }
            let c = chunk(&base, i);
            stdin.write_all(&c).await.unwrap();
            Some((Ok::<_, std::io::Error>(c), (i + 1, stdin)))
        }
    });
    let r = reqwest::Client::new()
        .post(envd.url("/files?path=/home/user/big.bin"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let peak = sampler.finish(pid);
    let elapsed = started.elapsed();

    let sent = sha256sum_result(hasher).await;
    let path = sandbox_path(&envd, "/home/user/big.bin");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        CHUNKS * CHUNK as u64
    );
    assert_eq!(
        sha256sum_file(&path),
        sent,
        "file on disk differs from upload"
    );
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "upload: {elapsed:?}, RSS baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        growth < RSS_BUDGET,
        "envd RSS grew by {} MiB during a 1 GiB upload",
        growth >> 20
    );
}

#[tokio::test]
async fn download_1gib_streams_from_disk() {
    let envd = Envd::start().await;
    let pid = envd.host_pid();
    // Write the file straight into the sandbox's /home.
    let path = sandbox_path(&envd, "/home/user/big.bin");
    {
        let base = base_block();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..CHUNKS {
            f.write_all(&chunk(&base, i)).unwrap();
        }
        f.flush().unwrap();
    }
    let on_disk = sha256sum_file(&path);
    warm_up(&envd).await;
    let baseline = common::rss_bytes(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();

    let r = reqwest::get(envd.url("/files?path=/home/user/big.bin"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        (CHUNKS * CHUNK as u64).to_string().as_str()
    );
    let mut hasher = sha256sum_child();
    let mut stdin = hasher.stdin.take().unwrap();
    let mut received = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        received += c.len() as u64;
        stdin.write_all(&c).await.unwrap();
    }
    drop(stdin);
    let peak = sampler.finish(pid);
    let elapsed = started.elapsed();

    assert_eq!(received, CHUNKS * CHUNK as u64);
    assert_eq!(sha256sum_result(hasher).await, on_disk, "download differs");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "download: {elapsed:?}, RSS baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        growth < RSS_BUDGET,
        "envd RSS grew by {} MiB during a 1 GiB download",
        growth >> 20
    );
}
