//! The E2B SDKs' path, beside ours:
//!
//! - *through the proxy*: the calls an SDK makes to envd (`process.Process/List`, and `Start`
//!   of `true` followed to its end, as `commands.run("true")` does) sent to the control
//!   plane's port with `E2b-Sandbox-Id` / `E2b-Sandbox-Port` (proxy → agent tunnel → envd),
//!   interleaved with the same call straight to envd at `http://<host_ip>:49983`.
//! - *SDK create → first command*: `POST /sandboxes` (E2B's body) then `true` through the
//!   proxy with the returned `envdAccessToken`, as `Sandbox.create()` + `commands.run("true")`
//!   do, beside `POST /v1/sandboxes` of the same default shape alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;
use wrenn_agent::envd_client::{EnvdClient, ExecSpec};

use crate::cp::{Cp, str_field};
use crate::report::Row;
use crate::stack::ms;

/// envd's port in the guest: what the SDKs name in `E2b-Sandbox-Port`.
const ENVD_PORT: &str = "49983";
const WARMUP: usize = 20;

/// An envd client that reaches sandbox `id` through the control plane's proxy.
fn proxied(cp: &Cp, id: &str, token: &str) -> anyhow::Result<EnvdClient> {
    let mut route = HeaderMap::new();
    route.insert("e2b-sandbox-id", HeaderValue::from_str(id)?);
    route.insert("e2b-sandbox-port", HeaderValue::from_static(ENVD_PORT));
    Ok(EnvdClient::routed(&cp.url(), Some(token), route)?)
}

fn true_spec() -> ExecSpec {
    ExecSpec {
        cmd: "true".into(),
        user: Some("user".into()),
        ..Default::default()
    }
}

async fn run_true(envd: &EnvdClient) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = envd
        .exec(&true_spec(), Some(Duration::from_secs(60)))
        .await
        .context("`true`")?;
    anyhow::ensure!(out.exit_code == 0, "true exited {}", out.exit_code);
    Ok(ms(t))
}

async fn list(envd: &EnvdClient) -> anyhow::Result<f64> {
    let t = Instant::now();
    envd.list_processes().await.context("process list")?;
    Ok(ms(t))
}

/// Process list and `true` on the running sandbox `id`: through the proxy vs direct.
pub(crate) async fn proxy_round_trips(
    cp: &Cp,
    id: &str,
    token: &str,
    direct: &EnvdClient,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let via = proxied(cp, id, token)?;
    let mut rows = Vec::new();
    for (what, direct_name, is_list) in [
        (
            "process list through the proxy: CP → agent tunnel → envd (TCG)",
            "process.Process/List direct to envd",
            true,
        ),
        (
            "commands.run(\"true\") through the proxy: CP → agent tunnel → envd (TCG)",
            "process.Process/Start of `true` direct to envd",
            false,
        ),
    ] {
        let call = |c: &EnvdClient| {
            let c = c.clone();
            async move {
                if is_list {
                    list(&c).await
                } else {
                    run_true(&c).await
                }
            }
        };
        for _ in 0..WARMUP {
            call(&via).await?;
            call(direct).await?;
        }
        let (mut p, mut d) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(call(&via).await?);
            d.push(call(direct).await?);
        }
        rows.push(Row::paired(what, "ms", direct_name, &p, &d));
    }
    Ok(rows)
}

/// `rounds` interleaved pairs: E2B create + first command vs the `/v1` create alone.
pub(crate) async fn sdk_create(cp: &Cp, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let (mut sdk, mut api) = (Vec::new(), Vec::new());
    // Untimed: the first create of the default shape makes its warm base (a cold boot).
    for round in 0..=rounds {
        let t = Instant::now();
        let sb = cp
            .call(
                Method::POST,
                "/sandboxes",
                None,
                Some(json!({"templateID": "base", "timeout": 300})),
                201,
            )
            .await?;
        let id = str_field(&sb, "/sandboxID")?;
        let token = str_field(&sb, "/envdAccessToken")?;
        let first = run_true(&proxied(cp, &id, &token)?).await;
        let sdk_ms = ms(t);
        crate::restore::delete(cp, &id).await?;
        first?;

        let t = Instant::now();
        let sb = cp
            .call(
                Method::POST,
                "/v1/sandboxes",
                None,
                Some(json!({"timeout_sec": 300})),
                201,
            )
            .await?;
        let api_ms = ms(t);
        crate::restore::delete(cp, &str_field(&sb, "/id")?).await?;
        if round > 0 {
            sdk.push(sdk_ms);
            api.push(api_ms);
        }
    }
    Ok(vec![Row::paired(
        "SDK create → first command: POST /sandboxes, then `true` through the proxy",
        "ms",
        "POST /v1/sandboxes alone (same shape)",
        &sdk,
        &api,
    )])
}
