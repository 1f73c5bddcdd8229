//! The control plane's listener with a certificate: HTTPS only, `http/1.1` by ALPN, the API
//! and the sandbox proxy (by `Host`) on the same port, a plain loopback listener beside it
//! when asked, and a clear start-up error for a bad key file.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wrenn_cp::server::tls::{TlsFiles, ensure_local_certs, load_certs};
use wrenn_cp::server::{RunningServer, ServerConfig, ServerError};

const DOMAIN: &str = "wrenn.test";
const SANDBOX: &str = "abcdefghij0123456789";

async fn start(data: &std::path::Path, tls: TlsFiles) -> Result<RunningServer, ServerError> {
    wrenn_cp::server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data.to_owned(),
        database_url: None,
        tls: Some(tls),
        domain: Some(DOMAIN.into()),
        plain_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await
}

fn client(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca).expect("ca") {
        roots.add(c).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One HTTP/1.1 request over TLS to `host`; the response's status line and body text.
async fn get(
    tls: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    host: &str,
) -> (String, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(host.to_owned()).expect("name");
    let mut s = tls.connect(name, tcp).await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // A close_notify-less close is fine: the whole response came before it.
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn https_serves_the_api_and_the_proxy_on_one_port() {
    let data = tempfile::tempdir().expect("tempdir");
    let certs = ensure_local_certs(&data.path().join("tls"), DOMAIN).expect("certs");
    let server = start(data.path(), certs.files.clone())
        .await
        .expect("start");
    assert_eq!(
        server.url(),
        format!("https://api.{DOMAIN}:{}", server.addr.port())
    );
    assert_eq!(server.state.domain.as_deref(), Some(DOMAIN));
    let tls = client(&certs.ca);

    let (status, _) = get(&tls, server.addr, &format!("api.{DOMAIN}")).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // A sandbox's name goes to the proxy, which does not know this one.
    let (status, body) = get(&tls, server.addr, &format!("49983-{SANDBOX}.{DOMAIN}")).await;
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    assert!(body.contains("was not found"), "{body}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut out),
    )
    .await;
    assert!(!out.starts_with(b"HTTP/"), "{out:?}");

    // The loopback listener speaks plain HTTP.
    let plain = server.plain_url().expect("plain listener");
    let addr = plain.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.expect("connect plain");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.expect("read");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_bad_key_file_stops_the_start_with_its_name() {
    let data = tempfile::tempdir().expect("tempdir");
    let certs = ensure_local_certs(&data.path().join("tls"), DOMAIN).expect("certs");
    let missing = data.path().join("nope.pem");
    let garbled = data.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    for key in [missing, garbled] {
        let files = TlsFiles {
            cert: certs.files.cert.clone(),
            key: key.clone(),
        };
        match start(data.path(), files).await {
            Ok(s) => {
                s.stop().await.expect("stop");
                panic!("started with {}", key.display());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    matches!(e, ServerError::Tls(_)) && msg.contains(&*key.to_string_lossy()),
                    "{msg}"
                );
            }
        }
    }
}
