//! The tunnel route end to end against the fake backend, whose "guest" is loopback: the
//! upgrade, bytes both ways, refusals, the per-sandbox limit, and destroy ending tunnels.
mod common;

use std::time::Duration;

use common::{Agent, HOST_ID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wrenn_agent::rpc::tunnel::MAX_TUNNELS_PER_SANDBOX;

const WAIT: Duration = Duration::from_secs(10);

/// An echo server on loopback; its port.
async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn request(agent: &Agent, path: &str, upgrade: bool) -> reqwest::RequestBuilder {
    let token = agent.signer.sign(HOST_ID, Duration::from_secs(120));
    let mut b = reqwest::Client::new()
        .get(format!("{}{path}", agent.base()))
        .bearer_auth(token);
    if upgrade {
        b = b
            .header("connection", "upgrade")
            .header("upgrade", "wrenn-tunnel");
    }
    b
}

async fn refused(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    (
        status,
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn open(agent: &Agent, id: &str, port: u16) -> reqwest::Upgraded {
    let r = request(agent, &format!("/v1/tunnel/{id}/{port}"), true)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 101);
    assert_eq!(r.headers()["upgrade"], "wrenn-tunnel");
    r.upgrade().await.expect("upgraded")
}

#[tokio::test]
async fn tunnel_relays_refuses_limits_and_ends_on_destroy() {
    let agent = Agent::start().await;
    agent.create("tun").await;
    let port = echo_server().await;

    let mut t = open(&agent, "tun", port).await;
    t.write_all(b"hello through the tunnel").await.unwrap();
    let mut got = [0u8; 24];
    tokio::time::timeout(WAIT, t.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&got, b"hello through the tunnel");

    // Refusals, each with its code.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (format!("/v1/tunnel/tun/{closed}"), true, 502, "unavailable"),
        ("/v1/tunnel/nope/80".to_string(), true, 404, "not_found"),
        (
            "/v1/tunnel/tun/0".to_string(),
            true,
            400,
            "invalid_argument",
        ),
        (
            "/v1/tunnel/tun/65536".to_string(),
            true,
            400,
            "invalid_argument",
        ),
        (
            "/v1/tunnel/tun/http".to_string(),
            true,
            400,
            "invalid_argument",
        ),
        (
            format!("/v1/tunnel/tun/{port}"),
            false,
            400,
            "invalid_argument",
        ),
    ];
    for (path, upgrade, status, code) in cases {
        let r = request(&agent, &path, upgrade).send().await.unwrap();
        let (s, c, m) = refused(r).await;
        assert_eq!((s, c.as_str()), (status, code), "{path}: {m}");
    }
    let r = request(&agent, &format!("/v1/tunnel/tun/{closed}"), true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused(r).await.2,
        format!("port {closed} is not open in sandbox tun")
    );
    let r = request(&agent, "/v1/tunnel/nope/80", true)
        .send()
        .await
        .unwrap();
    assert_eq!(refused(r).await.2, "sandbox nope was not found");
    let r = reqwest::Client::new()
        .get(format!("{}/v1/tunnel/tun/{port}", agent.base()))
        .header("connection", "upgrade")
        .header("upgrade", "wrenn-tunnel")
        .send()
        .await
        .unwrap();
    let (s, c, _) = refused(r).await;
    assert_eq!((s, c.as_str()), (401, "unauthenticated"));

    // The limit counts open tunnels of one sandbox: one more is refused, a closed one frees
    // its place.
    let mut held = vec![t];
    for _ in 1..MAX_TUNNELS_PER_SANDBOX {
        held.push(open(&agent, "tun", port).await);
    }
    let r = request(&agent, &format!("/v1/tunnel/tun/{port}"), true)
        .send()
        .await
        .unwrap();
    let (s, c, _) = refused(r).await;
    assert_eq!((s, c.as_str()), (429, "resource_exhausted"));
    let mut last = held.pop().unwrap();
    last.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, last.read_to_end(&mut rest))
        .await
        .expect("the echo side closes too")
        .unwrap();
    drop(last);
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        let r = request(&agent, &format!("/v1/tunnel/tun/{port}"), true)
            .send()
            .await
            .unwrap();
        if r.status() == 101 {
            break r.upgrade().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    held.push(again);

    // Destroy ends every open tunnel: reads see EOF (or an error), none hangs.
    agent
        .client()
        .destroy_sandbox(wrenn_proto::hostagent::v1::DestroySandboxRequest {
            sandbox_id: "tun".into(),
            ..Default::default()
        })
        .await
        .expect("destroy");
    for mut t in held {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf))
            .await
            .expect("the tunnel ends with its sandbox");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}
