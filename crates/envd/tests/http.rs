//! envd's plain HTTP routes end to end: `/files` download and upload, `/init`, `/envs`,
//! `/metrics`, access-token enforcement and signed URLs.
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::Envd;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A path inside the sandbox, seen from the host through envd's root (which shows its
/// mount namespace: the private /tmp and /home).
fn sandbox_path(envd: &Envd, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", envd.host_pid()))
}

fn read_sandbox(envd: &Envd, path: &str) -> Option<Vec<u8>> {
    std::fs::read(sandbox_path(envd, path)).ok()
}

/// uid of the sandbox's `user` (owner of its home).
fn user_uid(envd: &Envd) -> u32 {
    std::fs::metadata(sandbox_path(envd, "/home/user"))
        .unwrap()
        .uid()
}

/// Names in a sandbox directory (to spot leftover temporary files).
fn list(envd: &Envd, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sandbox_path(envd, dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn files_url(envd: &Envd, query: &[(&str, &str)]) -> String {
    let q: String = query
        .iter()
        .map(|(k, v)| format!("{k}={}", pct(v)))
        .collect::<Vec<_>>()
        .join("&");
    envd.url(&format!("/files?{q}"))
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Part<'a> {
    name: &'a str,
    filename: Option<&'a str>,
    content_type: &'a str,
    data: &'a [u8],
}

fn file_part<'a>(filename: &'a str, content_type: &'a str, data: &'a [u8]) -> Part<'a> {
    Part {
        name: "file",
        filename: Some(filename),
        content_type,
        data,
    }
}

const BOUNDARY: &str = "wrenn-test-boundary-7f3a";

fn multipart_ct() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{}\"",
            p.name
        )
        .unwrap();
        if let Some(f) = p.filename {
            write!(body, "; filename=\"{f}\"").unwrap();
        }
        write!(body, "\r\nContent-Type: {}\r\n\r\n", p.content_type).unwrap();
        body.extend_from_slice(p.data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    body
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

async fn upload_raw(envd: &Envd, path: &str, data: &[u8]) -> Response {
    Client::new()
        .post(files_url(envd, &[("path", path)]))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Asserts an E2B envd JSON error with `status` and returns its message.
async fn expect_error(r: Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], json!(status), "body {body}");
    let msg = body["message"].as_str().expect("message").to_string();
    assert!(!msg.is_empty());
    msg
}

async fn assert_healthy(envd: &Envd) {
    let r = reqwest::get(envd.url("/health")).await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn download_streams_raw_bytes_with_headers() {
    let envd = Envd::start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = upload_raw(&envd, "/home/user/data.bin", &data).await;
    assert_eq!(r.status(), 200);

    let r = reqwest::get(files_url(&envd, &[("path", "/home/user/data.bin")]))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"data.bin\""
    );
    assert_eq!(r.headers()["content-length"], "200000");
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.bytes().await.unwrap(), data);

    // Relative paths are relative to the user's home; `~` works too.
    for p in ["data.bin", "~/data.bin"] {
        let r = reqwest::get(files_url(&envd, &[("path", p)]))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(r.bytes().await.unwrap(), data);
    }
}

#[tokio::test]
async fn download_gzip_when_accepted() {
    let envd = Envd::start().await;
    let data = b"hello gzip ".repeat(10_000);
    assert_eq!(upload_raw(&envd, "/tmp/g.txt", &data).await.status(), 200);

    let r = Client::new()
        .get(files_url(&envd, &[("path", "/tmp/g.txt")]))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let body = r.bytes().await.unwrap();
    assert!(body.len() < data.len() / 10, "compressed: {}", body.len());
    assert_eq!(gunzip(&body), data);

    // Identity when gzip is refused; 406 when nothing we can produce is acceptable.
    let r = Client::new()
        .get(files_url(&envd, &[("path", "/tmp/g.txt")]))
        .header("accept-encoding", "gzip;q=0, identity")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.bytes().await.unwrap(), data);
    let r = Client::new()
        .get(files_url(&envd, &[("path", "/tmp/g.txt")]))
        .header("accept-encoding", "br, identity;q=0")
        .send()
        .await
        .unwrap();
    expect_error(r, 406).await;
}

#[tokio::test]
async fn download_errors_are_json() {
    let envd = Envd::start().await;
    let get = |q: Vec<(&'static str, &'static str)>| {
        let url = files_url(&envd, &q);
        async move { reqwest::get(url).await.unwrap() }
    };
    expect_error(get(vec![]).await, 400).await;
    expect_error(get(vec![("path", "/home/user")]).await, 400).await;
    expect_error(get(vec![("path", "/home/user/a\0b")]).await, 400).await;
    expect_error(get(vec![("path", "")]).await, 400).await;
    let msg = expect_error(get(vec![("path", "/home/user/missing.txt")]).await, 404).await;
    assert!(msg.contains("missing.txt"), "{msg}");
    expect_error(
        get(vec![("path", "/etc/hostname"), ("username", "nobody-here")]).await,
        401,
    )
    .await;
    // Special files are refused; opening a FIFO must not hang.
    let fifo = std::ffi::CString::new(
        sandbox_path(&envd, "/tmp/fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mkfifo on a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    expect_error(get(vec![("path", "/tmp/fifo")]).await, 400).await;
    expect_error(get(vec![("path", "/dev/null")]).await, 400).await;
    let r = Client::new()
        .get(files_url(&envd, &[("path", "/etc/hostname")]))
        .header("authorization", common::basic("nobody-here"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    assert_healthy(&envd).await;
}

#[tokio::test]
async fn multipart_upload_python_style_to_home() {
    let envd = Envd::start().await;
    // The Python SDK sends str data as text/plain parts with the path as filename, plus
    // ?path= for a single file.
    let body = multipart(&[file_part(
        "notes/today/hello.txt",
        "text/plain",
        b"hi there",
    )]);
    let r = Client::new()
        .post(files_url(
            &envd,
            &[("path", "notes/today/hello.txt"), ("username", "user")],
        ))
        .header("content-type", multipart_ct())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!([{"name": "hello.txt", "type": "file", "path": "/home/user/notes/today/hello.txt"}])
    );
    assert_eq!(
        read_sandbox(&envd, "/home/user/notes/today/hello.txt").unwrap(),
        b"hi there"
    );
    // The file and the directories created for it belong to the user.
    let uid = user_uid(&envd);
    assert_ne!(uid, 0);
    for p in [
        "/home/user/notes",
        "/home/user/notes/today",
        "/home/user/notes/today/hello.txt",
    ] {
        let m = std::fs::metadata(sandbox_path(&envd, p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, uid), "{p}");
    }
    let m = std::fs::metadata(sandbox_path(&envd, "/home/user/notes/today/hello.txt")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o644);
    assert_eq!(list(&envd, "/home/user/notes/today"), vec!["hello.txt"]);

    // The SDK reads it back.
    let r = reqwest::get(files_url(&envd, &[("path", "notes/today/hello.txt")]))
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), "hi there");
}

#[tokio::test]
async fn multipart_upload_several_files_js_style() {
    let envd = Envd::start().await;
    let body = multipart(&[
        file_part("/tmp/multi/a.bin", "application/octet-stream", b"AAA"),
        Part {
            name: "other",
            filename: None,
            content_type: "text/plain",
            data: b"ignored",
        },
        file_part("b.bin", "application/octet-stream", &[0u8, 1, 2, 255]),
    ]);
    let r = Client::new()
        .post(files_url(&envd, &[]))
        .header("content-type", multipart_ct())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!([
            {"name": "a.bin", "type": "file", "path": "/tmp/multi/a.bin"},
            {"name": "b.bin", "type": "file", "path": "/home/user/b.bin"},
        ])
    );
    assert_eq!(read_sandbox(&envd, "/tmp/multi/a.bin").unwrap(), b"AAA");
    assert_eq!(
        read_sandbox(&envd, "/home/user/b.bin").unwrap(),
        [0u8, 1, 2, 255]
    );
    assert_eq!(list(&envd, "/tmp/multi"), vec!["a.bin"]);
}

#[tokio::test]
async fn upload_overwrites_and_selects_user() {
    let envd = Envd::start().await;
    assert_eq!(
        upload_raw(&envd, "/tmp/over.txt", b"a much longer first version")
            .await
            .status(),
        200
    );
    assert_eq!(
        upload_raw(&envd, "/tmp/over.txt", b"v2").await.status(),
        200
    );
    assert_eq!(read_sandbox(&envd, "/tmp/over.txt").unwrap(), b"v2");
    assert_eq!(list(&envd, "/tmp"), vec!["over.txt"]);
    let uid = user_uid(&envd);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/over.txt"))
            .unwrap()
            .uid(),
        uid
    );

    // username=root → owned by root; Basic auth selects the user the same way.
    let r = Client::new()
        .post(files_url(
            &envd,
            &[("path", "/tmp/root.txt"), ("username", "root")],
        ))
        .header("content-type", "application/octet-stream")
        .body("r")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/root.txt"))
            .unwrap()
            .uid(),
        0
    );
    let r = Client::new()
        .post(files_url(&envd, &[("path", "/tmp/basic.txt")]))
        .header("authorization", common::basic("root"))
        .header("content-type", "application/octet-stream")
        .body("r")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/basic.txt"))
            .unwrap()
            .uid(),
        0
    );

    // Uploading to a symlink writes through it.
    std::os::unix::fs::symlink("/tmp/over.txt", sandbox_path(&envd, "/tmp/link")).unwrap();
    assert_eq!(upload_raw(&envd, "/tmp/link", b"v3").await.status(), 200);
    assert_eq!(read_sandbox(&envd, "/tmp/over.txt").unwrap(), b"v3");
    assert!(
        std::fs::symlink_metadata(sandbox_path(&envd, "/tmp/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn gzip_request_bodies_are_decoded() {
    let envd = Envd::start().await;
    let data = b"compressible ".repeat(5000);
    let r = Client::new()
        .post(files_url(&envd, &[("path", "/tmp/raw.gz.txt")]))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(gzip(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read_sandbox(&envd, "/tmp/raw.gz.txt").unwrap(), data);

    let body = multipart(&[file_part(
        "/tmp/mp.gz.txt",
        "application/octet-stream",
        &data,
    )]);
    let r = Client::new()
        .post(files_url(&envd, &[]))
        .header("content-type", multipart_ct())
        .header("content-encoding", "gzip")
        .body(gzip(&body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read_sandbox(&envd, "/tmp/mp.gz.txt").unwrap(), data);
}

#[tokio::test]
async fn metadata_headers_become_xattrs() {
    let envd = Envd::start().await;
    let r = Client::new()
        .post(files_url(&envd, &[("path", "/home/user/meta.txt")]))
        .header("content-type", "application/octet-stream")
        .header("X-Metadata-Owner", "alice")
        .header("x-metadata-purpose", "test run")
        .body("m")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!([{
            "name": "meta.txt", "type": "file", "path": "/home/user/meta.txt",
            "metadata": {"owner": "alice", "purpose": "test run"}
        }])
    );
    let p = sandbox_path(&envd, "/home/user/meta.txt");
    assert_eq!(
        xattr::get(&p, "user.e2b.owner").unwrap().as_deref(),
        Some(&b"alice"[..])
    );
    assert_eq!(
        xattr::get(&p, "user.e2b.purpose").unwrap().as_deref(),
        Some(&b"test run"[..])
    );

    // Multipart uploads carry metadata too.
    let r = Client::new()
        .post(files_url(&envd, &[]))
        .header("content-type", multipart_ct())
        .header("x-metadata-k", "v")
        .body(multipart(&[file_part("/tmp/m2.txt", "text/plain", b"x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["metadata"], json!({"k": "v"}));
    assert_eq!(
        xattr::get(sandbox_path(&envd, "/tmp/m2.txt"), "user.e2b.k")
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let envd = Envd::start().await;
    let post = |query: Vec<(&'static str, &'static str)>, ct: &'static str, body: Vec<u8>| {
        let url = files_url(&envd, &query);
        async move {
            Client::new()
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let octet = "application/octet-stream";
    // Raw upload without ?path=.
    expect_error(post(vec![], octet, b"x".to_vec()).await, 400).await;
    // NUL in the path.
    expect_error(
        post(vec![("path", "/tmp/a\0b")], octet, b"x".to_vec()).await,
        400,
    )
    .await;
    // Unknown user.
    expect_error(
        post(
            vec![("path", "/tmp/u.txt"), ("username", "nobody-here")],
            octet,
            b"x".to_vec(),
        )
        .await,
        401,
    )
    .await;
    // Target is a directory.
    std::fs::create_dir(sandbox_path(&envd, "/tmp/dir")).unwrap();
    expect_error(
        post(vec![("path", "/tmp/dir")], octet, b"x".to_vec()).await,
        400,
    )
    .await;
    // A parent is a file.
    assert_eq!(upload_raw(&envd, "/tmp/plain", b"p").await.status(), 200);
    expect_error(
        post(vec![("path", "/tmp/plain/child")], octet, b"x".to_vec()).await,
        400,
    )
    .await;
    // Unsupported request coding / content type.
    let r = Client::new()
        .post(files_url(&envd, &[("path", "/tmp/br.txt")]))
        .header("content-type", octet)
        .header("content-encoding", "br")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 415).await;
    expect_error(
        post(
            vec![("path", "/tmp/j.txt")],
            "application/json",
            b"{}".to_vec(),
        )
        .await,
        415,
    )
    .await;

    // Multipart without a `file` part.
    let body = multipart(&[Part {
        name: "other",
        filename: Some("/tmp/nofile.txt"),
        content_type: "text/plain",
        data: b"x",
    }]);
    let ct = "multipart/form-data; boundary=wrenn-test-boundary-7f3a";
    expect_error(post(vec![], ct, body).await, 400).await;
    // Multipart with no boundary.
    expect_error(
        post(vec![], "multipart/form-data", b"x".to_vec()).await,
        400,
    )
    .await;
    // A file part with neither filename nor ?path=.
    let body = multipart(&[Part {
        name: "file",
        filename: None,
        content_type: "text/plain",
        data: b"x",
    }]);
    expect_error(post(vec![], ct, body).await, 400).await;
    // ?path= with several file parts.
    let body = multipart(&[
        file_part("/tmp/p1.txt", "text/plain", b"1"),
        file_part("/tmp/p2.txt", "text/plain", b"2"),
    ]);
    expect_error(post(vec![("path", "/tmp/p.txt")], ct, body).await, 400).await;
    // Truncated multipart: the first file is complete, the second is cut off; neither
    // may appear.
    let mut body = multipart(&[
        file_part("/tmp/t1.txt", "text/plain", b"first"),
        file_part("/tmp/t2.txt", "text/plain", &[b'z'; 100_000]),
    ]);
    body.truncate(body.len() - 5_000);
    expect_error(post(vec![], ct, body).await, 400).await;
    // Invalid gzip, raw and multipart.
    let mut bad_gz = gzip(&[b'q'; 100_000]);
    let n = bad_gz.len();
    bad_gz[n / 2..].fill(0xAB);
    for (query, ct) in [(vec![("path", "/tmp/gz.txt")], octet), (vec![], ct)] {
        let r = Client::new()
            .post(files_url(&envd, &query))
            .header("content-type", ct)
            .header("content-encoding", "gzip")
            .body(bad_gz.clone())
            .send()
            .await
            .unwrap();
        expect_error(r, 400).await;
    }
    let r = Client::new()
        .post(files_url(&envd, &[("path", "/tmp/gz.txt")]))
        .header("content-type", octet)
        .header("content-encoding", "gzip")
        .body(b"not gzip at all".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400).await;

    // Nothing but the deliberately created entries exists: no targets, no temporaries.
    assert_eq!(list(&envd, "/tmp"), vec!["dir", "plain"]);
    assert_eq!(list(&envd, "/tmp/dir"), Vec::<String>::new());
    assert_healthy(&envd).await;
}

#[tokio::test]
async fn truncated_raw_body_leaves_no_target() {
    use tokio::io::AsyncWriteExt;
    let envd = Envd::start().await;
    assert_eq!(
        upload_raw(&envd, "/tmp/keep.txt", b"old").await.status(),
        200
    );
    // Promise 1 MB, send 1 KB, hang up: for a new file and over an existing one.
    for path in ["/tmp/cut.txt", "/tmp/keep.txt"] {
        let mut s2 = tokio::net::TcpStream::connect(("127.0.0.1", envd.port))
            .await
            .unwrap();
        let head = format!(
            "POST /files?path={path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
        );
        s2.write_all(head.as_bytes()).await.unwrap();
        s2.write_all(&[b'x'; 1024]).await.unwrap();
        s2.shutdown().await.unwrap();
        drop(s2);
    }
    // Give envd a moment to notice and clean up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let names = list(&envd, "/tmp");
        if names == vec!["keep.txt"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left over: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(read_sandbox(&envd, "/tmp/keep.txt").unwrap(), b"old");
    assert_healthy(&envd).await;
}

#[tokio::test]
async fn full_disk_is_507() {
    let envd = Envd::start().await;
    // A 1 MiB tmpfs inside the sandbox's own mount namespace (private propagation).
    let pid = envd.host_pid().to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "--", "sh", "-c"])
        .arg("mkdir -p /tmp/small && mount -t tmpfs -o size=1m tmpfs /tmp/small")
        .output()
        .expect("run nsenter");
    assert!(out.status.success(), "mount tmpfs: {out:?}");

    let big = vec![7u8; 3 * 1024 * 1024];
    let msg = expect_error(upload_raw(&envd, "/tmp/small/big.bin", &big).await, 507).await;
    assert!(msg.contains("big.bin"), "{msg}");
    let body = multipart(&[file_part(
        "/tmp/small/mp.bin",
        "application/octet-stream",
        &big,
    )]);
    let r = Client::new()
        .post(files_url(&envd, &[]))
        .header("content-type", multipart_ct())
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(r, 507).await;
    assert_eq!(list(&envd, "/tmp/small"), Vec::<String>::new());
    // Small files still fit afterwards.
    assert_eq!(
        upload_raw(&envd, "/tmp/small/ok.txt", b"ok").await.status(),
        200
    );
    assert_healthy(&envd).await;
}

async fn init(envd: &Envd, body: Value, token: Option<&str>) -> Response {
    let mut r = Client::new().post(envd.url("/init")).json(&body);
    if let Some(t) = token {
        r = r.header("x-access-token", t);
    }
    r.send().await.unwrap()
}

async fn envs(envd: &Envd) -> Value {
    let r = reqwest::get(envd.url("/envs")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn init_applies_env_user_and_respects_timestamps() {
    let envd = Envd::start().await;
    assert_eq!(envs(&envd).await, json!({}));
    let r = init(
        &envd,
        json!({
            "envVars": {"A": "1", "B": "2"},
            "timestamp": "2026-01-01T00:00:10Z",
            "volumeMounts": [{"nfs_target": "x", "path": "/mnt"}],
            "hyperloopIP": "10.0.0.1", "lifecycleID": "l", "caBundle": "", "somethingNew": 1
        }),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(envs(&envd).await, json!({"A": "1", "B": "2"}));

    // Merged, not replaced; the default user changes who owns uploads.
    let r = init(
        &envd,
        json!({"envVars": {"B": "3", "C": "4"}, "defaultUser": "root",
               "defaultWorkdir": "/tmp", "timestamp": "2026-01-01T00:00:20.5+00:00"}),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(envs(&envd).await, json!({"A": "1", "B": "3", "C": "4"}));
    assert_eq!(upload_raw(&envd, "/tmp/o.txt", b"x").await.status(), 200);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/o.txt"))
            .unwrap()
            .uid(),
        0
    );

    // An older init is ignored entirely.
    let r = init(
        &envd,
        json!({"envVars": {"A": "old"}, "defaultUser": "user",
               "timestamp": "2026-01-01T00:00:15Z"}),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(envs(&envd).await["A"], "1");
    assert_eq!(upload_raw(&envd, "/tmp/o2.txt", b"x").await.status(), 200);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/o2.txt"))
            .unwrap()
            .uid(),
        0,
        "default user unchanged"
    );

    // Refused inits change nothing.
    let r = init(
        &envd,
        json!({"defaultUser": "nobody-here", "envVars": {"A": "bad"}}),
        None,
    )
    .await;
    expect_error(r, 400).await;
    let r = init(&envd, json!({"timestamp": "yesterday"}), None).await;
    expect_error(r, 400).await;
    let r = Client::new()
        .post(envd.url("/init"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(r, 400).await;
    let r = init(&envd, json!({"envVars": {"A": 5}}), None).await;
    expect_error(r, 400).await;
    assert_eq!(envs(&envd).await["A"], "1");

    // Back to `user` with a newer timestamp.
    let r = init(&envd, json!({"defaultUser": "user"}), None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(upload_raw(&envd, "/tmp/o3.txt", b"x").await.status(), 200);
    assert_eq!(
        std::fs::metadata(sandbox_path(&envd, "/tmp/o3.txt"))
            .unwrap()
            .uid(),
        user_uid(&envd)
    );
}

#[tokio::test]
async fn metrics_report_sane_values() {
    let envd = Envd::start().await;
    for _ in 0..2 {
        let r = reqwest::get(envd.url("/metrics")).await.unwrap();
        assert_eq!(r.status(), 200);
        let m: Value = r.json().await.unwrap();
        let u = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(u("ts").abs_diff(now) < 60);
        assert!(u("cpu_count") >= 1);
        let cpu = m["cpu_used_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        assert!(u("mem_total") > u("mem_used") && u("mem_used") > 0);
        assert_eq!(u("mem_total_mib"), u("mem_total") / 1024 / 1024);
        assert_eq!(u("mem_used_mib"), u("mem_used") / 1024 / 1024);
        assert!(u("mem_cache") < u("mem_total"));
        assert!(u("disk_total") >= u("disk_used") && u("disk_used") > 0);
    }
}

/// Status of a request with an optional access token.
async fn status_with(req: reqwest::RequestBuilder, token: Option<&str>) -> Response {
    let req = match token {
        Some(t) => req.header("x-access-token", t),
        None => req,
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn access_token_guards_every_route_but_health() {
    let envd = Envd::start().await;
    let c = Client::new();
    assert_eq!(upload_raw(&envd, "/tmp/t.txt", b"t").await.status(), 200);
    let list_processes = || {
        c.post(envd.url("/process.Process/List"))
            .header("content-type", "application/json")
            .body("{}")
    };
    // Before any token every route is open.
    let r = list_processes().send().await.unwrap();
    assert_ne!(r.status(), 401);
    assert_eq!(envs(&envd).await, json!({}));

    let r = init(&envd, json!({"accessToken": "secret-1"}), None).await;
    assert_eq!(r.status(), 204);

    let health = c.get(envd.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 204, "/health needs no token");

    let requests = || {
        vec![
            (
                "GET /files",
                c.get(files_url(&envd, &[("path", "/tmp/t.txt")])),
            ),
            (
                "POST /files",
                c.post(files_url(&envd, &[("path", "/tmp/t2.txt")]))
                    .header("content-type", "application/octet-stream")
                    .body("x"),
            ),
            ("GET /envs", c.get(envd.url("/envs"))),
            ("GET /metrics", c.get(envd.url("/metrics"))),
            ("POST /init", c.post(envd.url("/init")).json(&json!({}))),
        ]
    };
    for token in [None, Some("wrong")] {
        for (name, req) in requests() {
            let r = status_with(req, token).await;
            assert_eq!(r.status(), 401, "{name} with {token:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], 401, "{name}");
        }
        let r = status_with(list_processes(), token).await;
        assert_eq!(r.status(), 401, "Connect route with {token:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "unauthenticated", "{v}");
    }
    for (name, req) in requests() {
        let r = status_with(req, Some("secret-1")).await;
        assert!(r.status().is_success(), "{name}: {}", r.status());
    }
    let r = status_with(list_processes(), Some("secret-1")).await;
    assert_ne!(r.status(), StatusCode::UNAUTHORIZED);

    // Replacing the token needs the old one.
    let r = init(&envd, json!({"accessToken": "secret-2"}), None).await;
    expect_error(r, 401).await;
    let r = init(&envd, json!({"accessToken": "secret-2"}), Some("secret-2")).await;
    expect_error(r, 401).await;
    let r = init(&envd, json!({"accessToken": "secret-2"}), Some("secret-1")).await;
    assert_eq!(r.status(), 204);
    let r = status_with(c.get(envd.url("/envs")), Some("secret-1")).await;
    assert_eq!(r.status(), 401, "old token no longer works");
    let r = status_with(c.get(envd.url("/envs")), Some("secret-2")).await;
    assert_eq!(r.status(), 200);
}

fn signed(path: &str, op: &str, user: &str, token: &str, exp: Option<i64>) -> String {
    envd::auth::file_signature(path, op, user, token, exp)
}

#[tokio::test]
async fn signed_urls_allow_files_without_token() {
    let envd = Envd::start().await;
    let c = Client::new();
    let token = "sig-token";
    assert_eq!(
        init(&envd, json!({"accessToken": token}), None)
            .await
            .status(),
        204
    );
    let path = "/home/user/signed.txt";

    // Upload with a write signature (default user: user = "").
    let sig = signed(path, "write", "", token, None);
    let r = c
        .post(files_url(&envd, &[("path", path), ("signature", &sig)]))
        .header("content-type", "application/octet-stream")
        .body("signed data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Download with a read signature, with user and expiration.
    let exp = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300) as i64;
    let sig = signed(path, "read", "user", token, Some(exp));
    let exp_s = exp.to_string();
    let r = c
        .get(files_url(
            &envd,
            &[
                ("path", path),
                ("username", "user"),
                ("signature", &sig),
                ("signature_expiration", &exp_s),
            ],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "signed data");

    // Refused: wrong signature, wrong op, tampered path, expired, wrong token, tampered
    // expiration.
    let get = |q: Vec<(&str, String)>| {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        c.get(files_url(&envd, &q))
    };
    let past = (exp - 1000).to_string();
    let cases = vec![
        (
            "garbage",
            vec![("path", path.into()), ("signature", "v1_nope".into())],
        ),
        (
            "write signature for read",
            vec![
                ("path", path.into()),
                ("signature", signed(path, "write", "", token, None)),
            ],
        ),
        (
            "tampered path",
            vec![
                ("path", "/home/user/other.txt".into()),
                ("signature", signed(path, "read", "", token, None)),
            ],
        ),
        (
            "expired",
            vec![
                ("path", path.into()),
                (
                    "signature",
                    signed(path, "read", "", token, Some(exp - 1000)),
                ),
                ("signature_expiration", past.clone()),
            ],
        ),
        (
            "tampered expiration",
            vec![
                ("path", path.into()),
                (
                    "signature",
                    signed(path, "read", "", token, Some(exp - 1000)),
                ),
                ("signature_expiration", exp_s.clone()),
            ],
        ),
        (
            "other token",
            vec![
                ("path", path.into()),
                ("signature", signed(path, "read", "", "other", None)),
            ],
        ),
        (
            "other user",
            vec![
                ("path", path.into()),
                ("username", "root".into()),
                ("signature", signed(path, "read", "user", token, None)),
            ],
        ),
    ];
    for (name, q) in cases {
        let r = get(q).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 401, "{name}");
    }
    // A read signature does not allow an upload.
    let r = c
        .post(files_url(
            &envd,
            &[
                ("path", path),
                ("signature", &signed(path, "read", "", token, None)),
            ],
        ))
        .header("content-type", "application/octet-stream")
        .body("overwrite")
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    assert_eq!(read_sandbox(&envd, path).unwrap(), b"signed data");
    // Signatures only work on /files.
    let r = c
        .get(format!(
            "{}?path={path}&signature={}",
            envd.url("/envs"),
            signed(path, "read", "", token, None)
        ))
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
}
