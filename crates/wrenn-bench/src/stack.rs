//! The whole stack on one host: a control plane in this process, a `wrenn agent` registered
//! with it (one-time token, as `wrenn up` does), real VMs under TCG, all inside a network
//! namespace standing in for the host (see [`crate::host::in_host_ns`]). Every scenario reads
//! ours against the layer below, as interleaved samples:
//!
//! - *create*: `POST /v1/sandboxes` until it answers (sandbox `running`, envd answered,
//!   `/init` done; a restore of the warm base, made by one untimed create first) vs the raw
//!   cold boot ([`Floor`]) and vs the agent's `CreateSandbox` RPC made directly, round-robin;
//!   then where the agent's time went (its `create steps` events).
//! - *pause / resume*, *clone memory* and the *idle cost curve*: see [`crate::restore`].
//! - *idle memory*: RSS and PSS of one idle 256 MiB sandbox's QEMU.
//! - *round trips* on that sandbox: a no-op (process list) and `true`, each via the API, via
//!   the agent RPC, and straight to envd at `http://<host_ip>:49983` with the sandbox's token
//!   (the same client the agent uses). All keep-alive. The E2B SDKs' path (the proxy, and
//!   create → first command): see [`crate::e2b`].
//! - *100 MiB up and down*: `PUT`/`GET /v1/sandboxes/{id}/files` vs envd's `/files` directly.
//! - *10 concurrent creates*: ten `POST /v1/sandboxes` at once until the last answers, vs ten
//!   `CreateSandbox` RPCs at once on the same agent (it boots one VM per core at a time).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use reqwest::Method;
use serde_json::json;
use wrenn_agent::envd_client::{EnvdClient, ExecSpec};
use wrenn_cp::agents::Agent;
use wrenn_proto::hostagent::v1 as pb;

use crate::Args;
use crate::cp::{Cp, str_field};
use crate::envd::count;
use crate::host::{Env, Floor, in_host_ns, qemu_memory};
use crate::report::Row;

const AGENT_PORT: u16 = 50062;
/// Sandboxes created at once by the concurrency scenario.
const CONCURRENT: usize = 10;
const MIB: usize = 1024 * 1024;
/// The guest file the transfer scenario writes and reads.
const BENCH_FILE: &str = "/home/user/bench.bin";

/// How many samples each scenario takes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Cold-create rounds (API, floor, agent RPC each).
    creates: usize,
    /// Process-list rounds.
    list_pairs: usize,
    /// `true` rounds.
    exec_pairs: usize,
    /// 100 MiB transfer rounds (up and down, API and direct each).
    transfers: usize,
    /// How long the memory sandbox idles before it is measured.
    idle: Duration,
    /// Pause + resume rounds.
    pauses: usize,
    /// Idle clones / cold boots whose memory is compared.
    clones: usize,
    /// Idle sandbox counts of the cost curve, and `exec true`s at each.
    curve: &'static [usize],
    curve_execs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                creates: 1,
                list_pairs: 300,
                exec_pairs: 50,
                transfers: 1,
                idle: Duration::from_secs(5),
                pauses: 1,
                clones: 2,
                curve: &[3],
                curve_execs: 10,
            }
        } else {
            Plan {
                creates: 15,
                list_pairs: 1000,
                exec_pairs: 1000,
                transfers: 4,
                idle: Duration::from_secs(10),
                pauses: 5,
                clones: 5,
                curve: &[10, 25, 50],
                curve_execs: 30,
            }
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let plan = Plan::new(args.quick);
    in_host_ns(args, true, move |env, images, wrenn| {
        measure(env, images, wrenn, plan)
    })
}

/// Milliseconds since `t`.
pub(crate) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn measure(
    mut env: Env,
    images: PathBuf,
    wrenn: PathBuf,
    plan: Plan,
) -> anyhow::Result<Vec<Row>> {
    for d in ["kernels", "images"] {
        std::os::unix::fs::symlink(images.join(d), env.root.path().join(d))?;
    }
    let cp = Cp::start(None).await?;
    let rows = with_cp(&mut env, &cp, &images, &wrenn, plan).await;
    // The agent goes first (with its VMs), then the control plane.
    drop(env);
    cp.stop().await?;
    rows
}

/// Starts `wrenn agent`, registered with `cp` through a one-time platform token, and waits
/// until the control plane sees it online.
pub(crate) async fn start_agent(env: &mut Env, cp: &Cp, wrenn: &Path) -> anyhow::Result<Agent> {
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
            .args(["--max-sandboxes", "64"])
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
    cp.server
        .state
        .agents
        .agent(&host)
        .map_err(|e| anyhow::anyhow!("agent client: {e}"))
}

async fn with_cp(
    env: &mut Env,
    cp: &Cp,
    images: &Path,
    wrenn: &Path,
    plan: Plan,
) -> anyhow::Result<Vec<Row>> {
    let agent = start_agent(env, cp, wrenn).await?;
    let floor = Floor::new(
        images,
        format!("{}r", env.prefix),
        env.root.path().join("floor"),
    )?;
    let mut out = Outcome::default();
    // The first create of a shape makes its warm base: not what a create costs afterwards.
    let first = crate::restore::create(cp, 256).await?;
    crate::restore::delete(cp, &first).await?;
    let mut cold = Vec::new();
    out.take(
        "create",
        cold_creates(cp, &agent, &floor, plan.creates)
            .await
            .map(|(rows, raw)| {
                cold = raw;
                rows
            }),
    );
    out.take(
        "cold create steps",
        create_steps(&env.root.path().join("agent.log")),
    );

    // One idle sandbox for memory, round trips and transfers.
    let sb = cp
        .call(
            Method::POST,
            "/v1/sandboxes",
            None,
            Some(json!({"memory_mb": 256, "timeout_sec": 3600})),
            201,
        )
        .await?;
    let id = str_field(&sb, "/id")?;
    tokio::time::sleep(plan.idle).await;
    out.take(
        "idle memory",
        memory_rows(env.root.path(), "idle 256 MiB sandbox"),
    );

    let host_ip = str_field(&sb, "/host_ip")?;
    let token = cp
        .db()
        .sandbox_envd_token(&id)
        .await?
        .context("sandbox has no envd token")?;
    let envd = EnvdClient::new(&format!("http://{host_ip}:49983"), Some(&token))?;
    let on = Sandbox {
        cp,
        agent: &agent,
        envd: &envd,
        id: &id,
    };
    out.take("process list", on.process_list(plan.list_pairs).await);
    out.take("exec `true`", on.exec_true(plan.exec_pairs).await);
    // TCG's code cache grows with every exec at a new address (ASLR): what it came to.
    out.take(
        "memory after the round trips",
        memory_rows(
            env.root.path(),
            &format!(
                "256 MiB sandbox after {} `exec`s and {} process lists",
                3 * (plan.exec_pairs + 20),
                3 * (plan.list_pairs + 20)
            ),
        ),
    );
    out.take(
        "through the proxy",
        crate::e2b::proxy_round_trips(cp, &id, &token, &envd, plan.exec_pairs).await,
    );
    out.take("100 MiB transfers", on.transfers(plan.transfers).await);
    if !out.failed.is_empty() {
        console_tails(env.root.path());
    }
    crate::restore::delete(cp, &id).await?;
    out.take(
        "SDK create → first command",
        crate::e2b::sdk_create(cp, plan.creates).await,
    );
    out.take(
        "10 concurrent creates",
        concurrent_creates(cp, &agent).await,
    );
    if !cold.is_empty() {
        out.take(
            "pause / resume",
            crate::restore::pause_resume(cp, &cold, plan.pauses).await,
        );
        out.take(
            "snapshot spawn",
            crate::restore::snapshot_spawn(cp, &agent, &cold, plan.pauses).await,
        );
    }
    out.take(
        "clone memory",
        crate::restore::clone_memory(
            cp,
            &floor,
            &env.root.path().join("sandboxes"),
            &env.root.path().join("floor"),
            plan.clones,
            plan.idle,
        )
        .await,
    );
    out.take(
        "idle cost curve",
        crate::restore::idle_curve(cp, plan.curve, plan.curve_execs).await,
    );
    Ok(out.rows)
}

/// The rows of the scenarios that ran; a failed scenario becomes a `failed` row and the
/// others still run.
#[derive(Default)]
struct Outcome {
    rows: Vec<Row>,
    failed: Vec<String>,
}

impl Outcome {
    fn take(&mut self, name: &str, r: anyhow::Result<Vec<Row>>) {
        match r {
            Ok(rows) => self.rows.extend(rows),
            Err(e) => {
                eprintln!("scenario {name:?} failed: {e:#}");
                self.failed.push(name.to_owned());
                self.rows.push(Row::failed(name, &e));
            }
        }
    }
}

/// RSS and PSS of the one QEMU under `root`.
fn memory_rows(root: &Path, what: &str) -> anyhow::Result<Vec<Row>> {
    let (rss, pss) = qemu_memory(root).context("QEMU memory")?;
    Ok(vec![
        Row::single(&format!("{what}: QEMU RSS"), "MiB", rss),
        Row::single(&format!("{what}: QEMU PSS"), "MiB", pss),
    ])
}

/// Prints the end of every guest console under `root` (after a failure: what the guest said).
fn console_tails(root: &Path) {
    let Ok(sandboxes) = std::fs::read_dir(root.join("sandboxes")) else {
        return;
    };
    for e in sandboxes.flatten() {
        let log = e.path().join("run/serial.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 20 lines)", log.display());
            for l in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{l}");
            }
        }
    }
}

pub(crate) fn create_request(id: &str, team_id: &str) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.to_owned(),
        template: "base".into(),
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 5120,
        end_at_ms: wrenn_cp::db::now_ms() + 600_000,
        team_id: team_id.to_owned(),
        ..Default::default()
    }
}

pub(crate) async fn destroy(agent: &Agent, id: &str) -> anyhow::Result<()> {
    agent
        .rpc()
        .destroy_sandbox_with_options(
            pb::DestroySandboxRequest {
                sandbox_id: id.to_owned(),
                ..Default::default()
            },
            agent.opts(),
        )
        .await
        .context("DestroySandbox")?;
    Ok(())
}

/// Cold creates, round-robin (the order rotates each round): the API, the raw floor, the
/// agent RPC alone. Each sandbox is removed before the next create.
async fn cold_creates(
    cp: &Cp,
    agent: &Agent,
    floor: &Floor,
    rounds: usize,
) -> anyhow::Result<(Vec<Row>, Vec<f64>)> {
    let body = json!({"memory_mb": 256, "timeout_sec": 600});
    let (mut api, mut raw, mut rpc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    let t = Instant::now();
                    let sb = cp
                        .call(Method::POST, "/v1/sandboxes", None, Some(body.clone()), 201)
                        .await?;
                    api.push(ms(t));
                    let path = format!("/v1/sandboxes/{}", str_field(&sb, "/id")?);
                    cp.call(Method::DELETE, &path, None, None, 204).await?;
                }
                1 => raw.push(floor.boot(i).await?),
                _ => {
                    let id = format!("benchrpc{i:012}");
                    let t = Instant::now();
                    agent
                        .rpc()
                        .create_sandbox_with_options(
                            create_request(&id, &cp.team_id),
                            agent.opts_timeout(Duration::from_secs(300)),
                        )
                        .await
                        .context("CreateSandbox")?;
                    rpc.push(ms(t));
                    destroy(agent, &id).await?;
                }
            }
        }
    }
    let rows = vec![
        Row::paired(
            "create (warm-base restore) → running via POST /v1/sandboxes (TCG)",
            "ms",
            "cold boot: same qemu argv, netns/TAP/overlay premade",
            &api,
            &raw,
        ),
        Row::paired(
            "create (warm-base restore) via agent CreateSandbox RPC (TCG)",
            "ms",
            "cold boot: same qemu argv, netns/TAP/overlay premade",
            &rpc,
            &raw,
        ),
        Row::paired(
            "create: POST /v1/sandboxes over the agent RPC (TCG)",
            "ms",
            "agent CreateSandbox RPC, same host",
            &api,
            &rpc,
        ),
    ];
    Ok((rows, raw))
}

/// One running sandbox, reachable three ways: the API, the agent RPC, envd directly.
struct Sandbox<'a> {
    cp: &'a Cp,
    agent: &'a Agent,
    envd: &'a EnvdClient,
    id: &'a str,
}

impl Sandbox<'_> {
    async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<f64> {
        let url = format!("{}/v1/sandboxes/{}{path}", self.cp.url(), self.id);
        let t = Instant::now();
        let mut req = self
            .cp
            .http
            .request(method, &url)
            .header("x-api-key", &self.cp.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "{path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(ms(t))
    }

    /// Interleaved triplets of `api`, `rpc`, `direct` after 20 warm-up rounds; rows for the
    /// API and the RPC, each against envd directly.
    async fn triplets<A, R, D, FA, FR, FD>(
        &self,
        what: &str,
        direct_name: &str,
        rounds: usize,
        api: A,
        rpc: R,
        direct: D,
    ) -> anyhow::Result<Vec<Row>>
    where
        A: Fn() -> FA,
        R: Fn() -> FR,
        D: Fn() -> FD,
        FA: Future<Output = anyhow::Result<f64>>,
        FR: Future<Output = anyhow::Result<f64>>,
        FD: Future<Output = anyhow::Result<f64>>,
    {
        for _ in 0..20 {
            api().await?;
            rpc().await?;
            direct().await?;
        }
        let (mut a, mut r, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(api().await?);
            r.push(rpc().await?);
            d.push(direct().await?);
        }
        Ok(vec![
            Row::paired(
                &format!("{what} via the API: CP → agent → envd (TCG)"),
                "ms",
                direct_name,
                &a,
                &d,
            ),
            Row::paired(
                &format!("{what} via the agent RPC → envd (TCG)"),
                "ms",
                direct_name,
                &r,
                &d,
            ),
        ])
    }

    /// A no-op: the process list.
    async fn process_list(&self, rounds: usize) -> anyhow::Result<Vec<Row>> {
        let api = || self.api(Method::GET, "/processes", None);
        let rpc = || async {
            let t = Instant::now();
            self.agent
                .rpc()
                .list_processes_with_options(
                    pb::ListProcessesRequest {
                        sandbox_id: self.id.to_owned(),
                        ..Default::default()
                    },
                    self.agent.opts(),
                )
                .await
                .context("ListProcesses")?;
            anyhow::Ok(ms(t))
        };
        let direct = || async {
            let t = Instant::now();
            self.envd
                .list_processes()
                .await
                .context("envd process list")?;
            anyhow::Ok(ms(t))
        };
        self.triplets(
            "process list",
            "process.Process/List direct to envd",
            rounds,
            api,
            rpc,
            direct,
        )
        .await
    }

    /// `true` run to its end (exit code back).
    async fn exec_true(&self, rounds: usize) -> anyhow::Result<Vec<Row>> {
        let api = || self.api(Method::POST, "/exec", Some(json!({"cmd": "true"})));
        let rpc = || async {
            let t = Instant::now();
            let out = self
                .agent
                .rpc()
                .exec_with_options(
                    pb::ExecRequest {
                        sandbox_id: self.id.to_owned(),
                        cmd: "true".into(),
                        timeout_sec: 60,
                        ..Default::default()
                    },
                    self.agent.opts_timeout(Duration::from_secs(90)),
                )
                .await
                .context("Exec")?
                .into_owned();
            anyhow::ensure!(out.exit_code == 0, "true exited {}", out.exit_code);
            anyhow::Ok(ms(t))
        };
        let spec = ExecSpec {
            cmd: "true".into(),
            user: Some("user".into()),
            ..Default::default()
        };
        let direct = || async {
            let t = Instant::now();
            let out = self
                .envd
                .exec(&spec, Some(Duration::from_secs(60)))
                .await
                .context("envd exec")?;
            anyhow::ensure!(out.exit_code == 0, "true exited {}", out.exit_code);
            anyhow::Ok(ms(t))
        };
        self.triplets(
            "exec `true`",
            "process.Process/Start of `true` direct to envd",
            rounds,
            api,
            rpc,
            direct,
        )
        .await
    }

    /// 100 MiB up and down, in MiB/s: the API vs envd's `/files` directly, interleaved.
    async fn transfers(&self, rounds: usize) -> anyhow::Result<Vec<Row>> {
        let size = 100 * MIB;
        let data = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
        let mib = (size / MIB) as f64;
        let url = format!(
            "{}/v1/sandboxes/{}/files?path={BENCH_FILE}",
            self.cp.url(),
            self.id
        );
        // 100 MiB through a TCG guest's disk outlasts the shared client's 30 s timeout.
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(600))
            .build()?;
        let (mut api_up, mut api_down, mut up, mut down) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let t = Instant::now();
            let r = http
                .put(&url)
                .header("x-api-key", &self.cp.key)
                .header("content-type", "application/octet-stream")
                .body(data.clone())
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            anyhow::ensure!(
                status.is_success(),
                "PUT files: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            api_up.push(mib / t.elapsed().as_secs_f64());

            let t = Instant::now();
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..size)
                .step_by(MIB)
                .map(|o| Ok(data.slice(o..(o + MIB).min(size))))
                .collect();
            self.envd
                .write_file(BENCH_FILE, Some("user"), futures::stream::iter(chunks))
                .await
                .context("envd upload")?;
            up.push(mib / t.elapsed().as_secs_f64());

            let t = Instant::now();
            let r = http
                .get(&url)
                .header("x-api-key", &self.cp.key)
                .send()
                .await?;
            if !r.status().is_success() {
                let status = r.status();
                anyhow::bail!(
                    "GET files: {status}: {}",
                    r.text().await.unwrap_or_default()
                );
            }
            let n = count(r.bytes_stream()).await?;
            anyhow::ensure!(n == size, "API download: {n} bytes, expected {size}");
            api_down.push(mib / t.elapsed().as_secs_f64());

            let t = Instant::now();
            let s = self
                .envd
                .read_file(BENCH_FILE, Some("user"))
                .await
                .context("envd download")?;
            let n = count(s).await?;
            anyhow::ensure!(n == size, "envd download: {n} bytes, expected {size}");
            down.push(mib / t.elapsed().as_secs_f64());
        }
        Ok(vec![
            Row::paired(
                "upload 100 MiB via PUT /v1/sandboxes/{id}/files (TCG)",
                "MiB/s",
                "POST /files direct to envd",
                &api_up,
                &up,
            ),
            Row::paired(
                "download 100 MiB via GET /v1/sandboxes/{id}/files (TCG)",
                "MiB/s",
                "GET /files direct to envd",
                &api_down,
                &down,
            ),
        ])
    }
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
async fn concurrent_creates(cp: &Cp, agent: &Agent) -> anyhow::Result<Vec<Row>> {
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
            create_request(id, &cp.team_id),
            agent.opts_timeout(Duration::from_secs(600)),
        )
    }))
    .await;
    let rpc_s = t.elapsed().as_secs_f64();
    for id in &ids {
        // Destroy every one, made or not (a failed create rolled itself back).
        let _ = destroy(agent, id).await;
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
