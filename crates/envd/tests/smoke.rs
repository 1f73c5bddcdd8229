//! envd starts as PID 1 of its sandbox, answers /health, and is the process that reaps.
mod common;

use wrenn_proto::process::process_event::{Event, data_event::Output};
use wrenn_proto::process::{ProcessConfig, StartRequest};

#[tokio::test]
async fn health_is_204() {
    let envd = common::Envd::start().await;
    let r = reqwest::get(envd.url("/health")).await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn envd_is_pid_1_of_its_sandbox() {
    let envd = common::Envd::start().await;
    let req = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/cat".into(),
            args: vec!["/proc/1/comm".into()],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut stream = envd.process().start(req).await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        let msg = msg.to_owned_message();
        if let Some(Event::Data(d)) = msg.event.as_option().and_then(|e| e.event.clone())
            && let Some(Output::Stdout(b)) = d.output
        {
            out.extend_from_slice(&b);
        }
    }
    assert_eq!(String::from_utf8_lossy(&out), "envd\n");
}
