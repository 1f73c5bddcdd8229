//! envd starts as PID 1 in its sandbox and answers /health.
mod common;

#[tokio::test]
async fn health_is_204() {
    let envd = common::Envd::start().await;
    let r = reqwest::get(envd.url("/health")).await.unwrap();
    assert_eq!(r.status(), 204);
}
