//! The whole stack on one host: a control plane in this process, a `wrenn agent` registered
//! with it (one-time token, as `wrenn up` does), real VMs under TCG, all inside a network
//! namespace standing in for the host (see [`crate::agent::in_host_ns`]).
//!
//! - *relay overhead*: `GET /v1/sandboxes/{id}/processes` (control plane → agent
//!   `ListProcesses` → envd `process.Process/List`) vs the same Connect call made directly to
//!   the sandbox's envd at `http://<host_ip>:49983` with its access token (read from the
//!   database), as interleaved pairs. Both on keep-alive connections.
//! - *cold create via the API*: `POST /v1/sandboxes` until it answers (the sandbox is
//!   `running`, envd answered) vs the agent's `CreateSandbox` RPC made directly, interleaved.
//! - *10 concurrent creates*: ten `POST /v1/sandboxes` at once until the last answers, vs ten
//!   `CreateSandbox` RPCs at once on the same agent (the agent boots one VM per core at a time).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use connectrpc::client::{ClientConfig, HttpClient};
use reqwest::Method;
use serde_json::json;
use wrenn_proto::hostagent::v1 as pb;
use wrenn_proto::process::{ListRequest, ProcessClient};

use crate::Args;
use crate::agent::{Env, in_host_ns};
use crate::cp::{Cp, str_field};
use crate::report::Row;

const AGENT_PORT: u16 = 50062;
/// Sandboxes created at once by the concurrency scenario.
const CONCURRENT: usize = 10;

pub fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let pairs = if args.quick { 300 } else { 1000 };
    let creates = if args.quick { 2 } else { 5 };
    in_host_ns(args, true, move |env, images, wrenn| {
        measure(env, images, wrenn, pairs, creates)
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn measure(
    mut env: Env,
    images: PathBuf,
    wrenn: PathBuf,
    pairs: usize,
    creates: usize,
) -> anyhow::Result<Vec<Row>> {
    for d in ["kernels", "images"] {
        std::os::unix::fs::symlink(images.join(d), env.root.path().join(d))?;
    }
    let cp = Cp::start(None).await?;
    let rows = with_cp(&mut env, &cp, &wrenn, pairs, creates).await;
    // The agent goes first (with its VMs), then the control plane.
    drop(env);
    cp.stop().await?;
    rows
}

async fn with_cp(
    env: &mut Env,
    cp: &Cp,
    wrenn: &std::path::Path,
    pairs: usize,
    creates: usize,
) -> anyhow::Result<Vec<Row>> {
    let bearer = format!("Bearer {}", cp.jwt);
    let tok = cp
        .call(
            Method::POST,
            "/v1/hosts/registration-tokens",
            Some(&bearer),
            Some(json!({"platform": true, "name": "bench"})),
            201,
        )
        .await?;
    let host_id = str_field(&tok, "/host/id")?;
    let log = std::fs::File::create(env.root.path().join("agent.log"))?;
    env.agent = Some(
        Command::new(wrenn)
            .arg("agent")
            .arg("--root")
            .arg(env.root.path())
            .args(["--listen", &format!("127.0.0.1:{AGENT_PORT}")])
            .args(["--cp-url", &cp.url()])
            .args(["--net-prefix", &env.prefix, "--accel", "tcg"])
            .args(["--max-sandboxes", "32"])
            .env(
                "AGENT_REGISTER_TOKEN",
                str_field(&tok, "/registration_token")?,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn wrenn agent")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = cp
            .call(
                Method::GET,
                &format!("/v1/hosts/{host_id}"),
                Some(&bearer),
                None,
                200,
            )
            .await?;
        if h["status"] == "online" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "agent did not register (log: {})",
            env.root.path().join("agent.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = cp.db().host_by_id(&host_id).await?;
    let agent = cp
        .server
        .state
        .agents
        .agent(&host)
        .map_err(|e| anyhow::anyhow!("agent client: {e}"))?;

    // Cold create: the API (validation, scheduler, rows, agent RPC, audit) vs the RPC alone.
    let body = json!({"memory_mb": 256, "timeout_sec": 600});
    let (mut api, mut rpc) = (Vec::new(), Vec::new());
    for i in 0..creates {
        let t = Instant::now();
        let sb = cp
            .call(Method::POST, "/v1/sandboxes", None, Some(body.clone()), 201)
            .await?;
        api.push(ms(t));
        let id = str_field(&sb, "/id")?;
        cp.call(
            Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
            None,
            204,
        )
        .await?;

        let id = format!("benchrpc{i:012}");
        let t = Instant::now();
        agent
            .rpc()
            .create_sandbox_with_options(
                pb::CreateSandboxRequest {
                    sandbox_id: id.clone(),
                    template: "base".into(),
                    vcpus: 1,
                    memory_mb: 256,
                    disk_size_mb: 5120,
                    end_at_ms: wrenn_cp::db::now_ms() + 600_000,
                    team_id: cp.team_id.clone(),
                    ..Default::default()
                },
                agent.opts_timeout(Duration::from_secs(300)),
            )
            .await
            .context("CreateSandbox")?;
        rpc.push(ms(t));
        agent
            .rpc()
            .destroy_sandbox_with_options(
                pb::DestroySandboxRequest {
                    sandbox_id: id,
                    ..Default::default()
                },
                agent.opts(),
            )
            .await
            .context("DestroySandbox")?;
    }
    let mut rows = vec![Row::paired(
        "cold create → running via POST /v1/sandboxes (TCG)",
        "ms",
        "agent CreateSandbox RPC, same host",
        &api,
        &rpc,
    )];
    rows.extend(create_steps(&env.root.path().join("agent.log"))?);

    // Relay: the process list through the control plane vs straight to envd.
    let sb = cp
        .call(
            Method::POST,
            "/v1/sandboxes",
            None,
            Some(json!({"memory_mb": 256, "timeout_sec": 0})),
            201,
        )
        .await?;
    let id = str_field(&sb, "/id")?;
    let host_ip = str_field(&sb, "/host_ip")?;
    let token = cp
        .db()
        .sandbox_envd_token(&id)
        .await?
        .context("sandbox has no envd token")?;
    let envd = ProcessClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(format!("http://{host_ip}:49983").parse()?)
            .json()
            .with_default_header("x-access-token", token),
    );
    let url = format!("{}/v1/sandboxes/{id}/processes", cp.url());
    let via_cp = || async {
        let t = Instant::now();
        let r = cp
            .http
            .get(&url)
            .header("x-api-key", &cp.key)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "GET processes: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        anyhow::Ok(ms(t))
    };
    let direct = || async {
        let t = Instant::now();
        envd.list(ListRequest::default())
            .await
            .context("envd process.Process/List")?;
        anyhow::Ok(ms(t))
    };
    for _ in 0..50 {
        via_cp().await?;
        direct().await?;
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        ours.push(via_cp().await?);
        base.push(direct().await?);
    }
    rows.push(Row::paired(
        "process list via CP → agent → envd (TCG)",
        "ms",
        "process.Process/List direct to envd",
        &ours,
        &base,
    ));
    cp.call(
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        None,
        None,
        204,
    )
    .await?;
    rows.extend(concurrent_creates(cp, &agent).await?);
    Ok(rows)
}

/// Where a cold create's time goes: the agent's `create steps` events (one per create, inside
/// its `create` span) from the sequential creates above, median per step, slowest first, each
/// with its share of the median total.
fn create_steps(log: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(log).context("agent log")?;
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    let mut totals = Vec::new();
    for line in text
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("create steps"))
    {
        let Some(rest) = line.split_once("steps=").map(|(_, r)| r) else {
            continue;
        };
        let (steps, total) = rest.split_once(" total_ms=").unwrap_or((rest, ""));
        if let Ok(t) = total.trim().parse::<f64>() {
            totals.push(t);
        }
        for kv in steps.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            match per_step.iter_mut().find(|(n, _)| n == k) {
                Some((_, vs)) => vs.push(v),
                None => per_step.push((k.to_owned(), vec![v])),
            }
        }
    }
    anyhow::ensure!(
        !totals.is_empty(),
        "no `create steps` events in {}",
        log.display()
    );
    let total = crate::stats::summarize(&totals).p50;
    let mut medians: Vec<(String, f64)> = per_step
        .into_iter()
        .map(|(k, vs)| (k, crate::stats::summarize(&vs).p50))
        .collect();
    medians.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(medians
        .into_iter()
        .map(|(k, v)| {
            let share = if total > 0.0 { 100.0 * v / total } else { 0.0 };
            Row::single(
                &format!(
                    "agent create step `{k}`: {share:.0}% of the create (median of {} creates)",
                    totals.len()
                ),
                "ms",
                v,
            )
        })
        .collect())
}

/// Drops terminal colour codes (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Ten creates at once through the API, then ten agent RPCs at once: wall time until the last
/// is running, and creates per second.
async fn concurrent_creates(cp: &Cp, agent: &wrenn_cp::agents::Agent) -> anyhow::Result<Vec<Row>> {
    let body = json!({"memory_mb": 256, "timeout_sec": 600});
    // Ten TCG boots, two at a time, outlast the shared client's 30 s request timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;
    let url = format!("{}/v1/sandboxes", cp.url());
    let create = || async {
        let r = http
            .post(&url)
            .header("x-api-key", &cp.key)
            .json(&body)
            .send()
            .await
            .context("POST /v1/sandboxes")?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.context("create response")?;
        anyhow::ensure!(status.as_u16() == 201, "POST /v1/sandboxes: {status}: {v}");
        anyhow::Ok(v)
    };
    let t = Instant::now();
    let made = futures::future::join_all((0..CONCURRENT).map(|_| create())).await;
    let api_s = t.elapsed().as_secs_f64();
    let mut first_err = None;
    for r in made {
        match r.and_then(|sb| str_field(&sb, "/id")) {
            Ok(id) => {
                let path = format!("/v1/sandboxes/{id}");
                cp.call(Method::DELETE, &path, None, None, 204).await?;
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if let Some(e) = first_err {
        return Err(e.context("a concurrent API create failed"));
    }

    let ids: Vec<String> = (0..CONCURRENT)
        .map(|i| format!("benchpar{i:012}"))
        .collect();
    let t = Instant::now();
    let made = futures::future::join_all(ids.iter().map(|id| {
        agent.rpc().create_sandbox_with_options(
            pb::CreateSandboxRequest {
                sandbox_id: id.clone(),
                template: "base".into(),
                vcpus: 1,
                memory_mb: 256,
                disk_size_mb: 5120,
                end_at_ms: wrenn_cp::db::now_ms() + 600_000,
                team_id: cp.team_id.clone(),
                ..Default::default()
            },
            agent.opts_timeout(Duration::from_secs(600)),
        )
    }))
    .await;
    let rpc_s = t.elapsed().as_secs_f64();
    for id in &ids {
        // Destroy every one, made or not (a failed create rolled itself back).
        let _ = agent
            .rpc()
            .destroy_sandbox_with_options(
                pb::DestroySandboxRequest {
                    sandbox_id: id.clone(),
                    ..Default::default()
                },
                agent.opts(),
            )
            .await;
    }
    for r in made {
        r.context("a concurrent CreateSandbox failed")?;
    }
    let n = CONCURRENT as f64;
    Ok(vec![
        Row::paired(
            "10 concurrent creates via the API: wall time (TCG)",
            "s",
            "10 concurrent agent CreateSandbox RPCs",
            &[api_s],
            &[rpc_s],
        ),
        Row::paired(
            "10 concurrent creates via the API: creates/s (TCG)",
            "creates/s",
            "10 concurrent agent CreateSandbox RPCs",
            &[n / api_s],
            &[n / rpc_s],
        ),
    ])
}
