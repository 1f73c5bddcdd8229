//! Bounded load through the public API: [`CLIENTS`] concurrent clients for a fixed time (60 s
//! by default) mixing `GET /v1/sandboxes/{id}`, `GET /v1/sandboxes` and
//! `POST /v1/sandboxes/{id}/exec` of `true` on [`SANDBOXES`] running sandboxes, on the whole
//! stack (control plane in this process on SQLite, a registered `wrenn agent`, real VMs under
//! TCG, loopback inside the host namespace).
//!
//! The floor is the same clients and the same mix one layer down, in alternating windows of
//! the same run: `GET /health` of the same server for the two reads (same listener,
//! middleware and connection pool; no auth, no database) and `process.Process/Start` of
//! `true` straight to the sandbox's envd for the exec.
//!
//! The sandboxes belong to ten teams, one each, twenty clients per team: a team may run 8
//! buffered execs at once (`EXECS_PER_TEAM`), beyond that the API answers 429 with
//! `Retry-After`. A client takes that as back-pressure: it waits as told and tries again;
//! those 429s are counted apart (`throttled`) and the exec's latency runs from its first
//! attempt to its answer. Errors are everything else that is not a success: transport
//! failures, 5xx, any other status, a wrong exit code. The load test asserts there are none;
//! timing is only reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::json;
use wrenn_agent::envd_client::{EnvdClient, ExecSpec};

use crate::Args;
use crate::cp::{Cp, str_field};
use crate::host::{Env, in_host_ns};
use crate::report::Row;
use crate::stack::{ms, start_agent};

pub const CLIENTS: usize = 200;
pub const SANDBOXES: usize = 10;
/// One side of the alternation (ours, floor, ours, ...).
const WINDOW: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery";

/// What a load run measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub sandboxes: usize,
    /// Seconds of load through the API (the floor got as many).
    pub secs: u64,
    /// Requests answered through the API, by operation (`get`, `list`, `exec`); retries of a
    /// throttled exec not included.
    pub requests: BTreeMap<String, u64>,
    /// 429 answers to execs (retried after `Retry-After`).
    pub throttled: u64,
    /// Everything else that was not a success, by kind (e.g. `exec 502`, `get transport`).
    pub errors: BTreeMap<String, u64>,
    /// Latency percentiles in ms by operation: `(p50, p99)`, ours and floor.
    pub ours: BTreeMap<String, (f64, f64)>,
    pub floor: BTreeMap<String, (f64, f64)>,
    /// Requests the floor answered, and its failures.
    pub floor_requests: u64,
    pub floor_errors: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.floor_errors.values().sum::<u64>()
    }

    /// A markdown table of the run.
    pub fn markdown(&self) -> String {
        let total: u64 = self.requests.values().sum();
        let mut out = format!(
            "{} clients, {} s through the API, {} sandboxes in {} teams: {total} requests \
             ({:.0}/s), {} errors, {} execs throttled (429, retried); floor: {} requests, {} \
             errors\n\n| operation | requests | p50 ms | p99 ms | floor | floor p50 ms | floor p99 ms |\n|---|---|---|---|---|---|---|\n",
            self.clients,
            self.secs,
            self.sandboxes,
            self.sandboxes,
            total as f64 / self.secs.max(1) as f64,
            self.errors.values().sum::<u64>(),
            self.throttled,
            self.floor_requests,
            self.floor_errors.values().sum::<u64>(),
        );
        for (op, floor) in [
            ("get", "GET /health"),
            ("list", "GET /health"),
            ("exec", "Process/Start `true` to envd"),
        ] {
            let (o50, o99) = self.ours.get(op).copied().unwrap_or((f64::NAN, f64::NAN));
            let (f50, f99) = self.floor.get(op).copied().unwrap_or((f64::NAN, f64::NAN));
            out.push_str(&format!(
                "| {op} | {} | {o50:.1} | {o99:.1} | {floor} | {f50:.1} | {f99:.1} |\n",
                self.requests.get(op).copied().unwrap_or(0)
            ));
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for op in ["get", "list", "exec"] {
            let (Some(o), Some(f)) = (self.ours.get(op), self.floor.get(op)) else {
                continue;
            };
            // p50 and p99 side by side, as a two-sample summary each (the table's p95 column
            // carries the p99 here; the scenario name says so).
            rows.push(Row::spread(
                &format!("load: {} clients, {op} (p50, p99)", self.clients),
                "ms",
                if op == "exec" {
                    "Process/Start `true` to envd"
                } else {
                    "GET /health"
                },
                crate::stats::Summary {
                    n: self.requests.get(op).copied().unwrap_or(0) as usize,
                    p50: o.0,
                    p95: o.1,
                    min: o.0,
                    max: o.1,
                },
                crate::stats::Summary {
                    n: 0,
                    p50: f.0,
                    p95: f.1,
                    min: f.0,
                    max: f.1,
                },
                &[o.0, o.1],
                &[f.0, f.1],
            ));
        }
        rows
    }
}

/// `--only load` of `wrenn-bench`: the run, as result rows (its table printed on stderr).
pub fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let r = run_report(args, Duration::from_secs(args.load_secs()))?;
    eprintln!("{}", r.markdown());
    anyhow::ensure!(
        r.error_count() == 0,
        "{} errors under load: {:?} {:?}",
        r.error_count(),
        r.errors,
        r.floor_errors
    );
    Ok(r.rows())
}

/// The load run itself, for the test that asserts it has no errors.
pub fn run_report(args: &Args, secs: Duration) -> anyhow::Result<LoadReport> {
    in_host_ns(args, true, move |mut env, images, wrenn| async move {
        for d in ["kernels", "images"] {
            std::os::unix::fs::symlink(images.join(d), env.root.path().join(d))?;
        }
        let cp = Cp::start(None).await?;
        let r = with_cp(&mut env, &cp, &wrenn, secs).await;
        drop(env);
        cp.stop().await?;
        r
    })
}

/// One sandbox under load: who may use it and how to reach its envd directly.
struct Target {
    id: String,
    key: String,
    envd: EnvdClient,
}

async fn with_cp(
    env: &mut Env,
    cp: &Cp,
    wrenn: &std::path::Path,
    secs: Duration,
) -> anyhow::Result<LoadReport> {
    start_agent(env, cp, wrenn).await?;
    // One sandbox per team, each team its own user and API key.
    let mut keys = vec![cp.key.clone()];
    for i in 1..SANDBOXES {
        let r = cp
            .http
            .post(format!("{}/v1/auth/signup", cp.url()))
            .json(&json!({"email": format!("load{i}@example.com"), "password": PASSWORD, "name": "Load"}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::CREATED, "signup: {}", r.status());
        let v: serde_json::Value = r.json().await?;
        let jwt = str_field(&v, "/token")?;
        let k = cp
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(&format!("Bearer {jwt}")),
                Some(json!({"name": "load"})),
                201,
            )
            .await?;
        keys.push(str_field(&k, "/key")?);
    }
    // The first create makes the warm base; the rest are restores of it.
    let mut targets = Vec::new();
    for key in keys {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/v1/sandboxes", cp.url()))
            .header("x-api-key", &key)
            .json(&json!({"memory_mb": 256, "timeout_sec": 3600}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::CREATED, "create: {}", r.status());
        let sb: serde_json::Value = r.json().await?;
        let id = str_field(&sb, "/id")?;
        let host_ip = str_field(&sb, "/host_ip")?;
        let token = cp
            .db()
            .sandbox_envd_token(&id)
            .await?
            .context("sandbox has no envd token")?;
        let envd = EnvdClient::new(&format!("http://{host_ip}:49983"), Some(&token))?;
        targets.push(Target { id, key, envd });
    }
    let targets = Arc::new(targets);
    let url = cp.url();

    let rounds = secs.as_secs().div_ceil(WINDOW.as_secs()).max(1);
    let (mut ours, mut floor) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        anyhow::ensure!(!crate::interrupt::is_set(), "interrupted");
        let window = WINDOW.min(secs.saturating_sub(WINDOW * round as u32));
        ours.merge(drive(&url, &targets, window, false).await);
        floor.merge(drive(&url, &targets, window, true).await);
    }
    let pct = |s: &BTreeMap<String, Vec<f64>>| {
        s.iter()
            .map(|(op, v)| {
                let mut v = v.clone();
                v.sort_by(|a, b| a.total_cmp(b));
                let p = |q: f64| crate::stats::percentile(&v, q);
                (op.clone(), (p(50.0), p(99.0)))
            })
            .collect::<BTreeMap<_, _>>()
    };
    Ok(LoadReport {
        clients: CLIENTS,
        sandboxes: SANDBOXES,
        secs: secs.as_secs(),
        requests: ours
            .latency
            .iter()
            .map(|(op, v)| (op.clone(), v.len() as u64))
            .collect(),
        throttled: ours.throttled,
        errors: ours.errors.clone(),
        ours: pct(&ours.latency),
        floor: pct(&floor.latency),
        floor_requests: floor.latency.values().map(|v| v.len() as u64).sum(),
        floor_errors: floor.errors.clone(),
    })
}

#[derive(Default)]
struct Samples {
    /// Milliseconds per successful request, by operation.
    latency: BTreeMap<String, Vec<f64>>,
    errors: BTreeMap<String, u64>,
    throttled: u64,
}

impl Samples {
    fn merge(&mut self, o: Samples) {
        for (op, v) in o.latency {
            self.latency.entry(op).or_default().extend(v);
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.throttled += o.throttled;
    }
}

/// [`CLIENTS`] clients for `window`, through the API or (`floor`) one layer down. Client `c`
/// uses sandbox `c % SANDBOXES` (so twenty per team) and cycles get, list, exec.
async fn drive(url: &str, targets: &Arc<Vec<Target>>, window: Duration, floor: bool) -> Samples {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (targets, stop, url) = (targets.clone(), stop.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per client, as 200 separate API users would have.
            let http = match reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(120))
                .build()
            {
                Ok(h) => h,
                Err(e) => {
                    let mut s = Samples::default();
                    s.errors.insert(format!("client: {e}"), 1);
                    return s;
                }
            };
            let t = &targets[c % targets.len()];
            let mut s = Samples::default();
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let op = ["get", "list", "exec"][i % 3];
                let r = if floor {
                    one_floor(&http, &url, t, op).await
                } else {
                    one(&http, &url, t, op, &mut s.throttled).await
                };
                match r {
                    Ok(ms) => s.latency.entry(op.to_owned()).or_default().push(ms),
                    Err(kind) => *s.errors.entry(format!("{op} {kind}")).or_default() += 1,
                }
            }
            s
        }));
    }
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Samples::default();
    for t in tasks {
        match t.await {
            Ok(s) => all.merge(s),
            Err(e) => *all.errors.entry(format!("client task: {e}")).or_default() += 1,
        }
    }
    all
}

/// One request through the API; its latency in ms, or what went wrong.
async fn one(
    http: &reqwest::Client,
    url: &str,
    t: &Target,
    op: &str,
    throttled: &mut u64,
) -> Result<f64, String> {
    let start = Instant::now();
    loop {
        let req = match op {
            "get" => http.get(format!("{url}/v1/sandboxes/{}", t.id)),
            "list" => http.get(format!("{url}/v1/sandboxes")),
            _ => http
                .post(format!("{url}/v1/sandboxes/{}/exec", t.id))
                .json(&json!({"cmd": "true"})),
        };
        let r = req
            .header("x-api-key", &t.key)
            .send()
            .await
            .map_err(|_| "transport".to_owned())?;
        let status = r.status();
        if status == StatusCode::TOO_MANY_REQUESTS && op == "exec" {
            // Back-pressure: the team's exec slots are full. Come back when told.
            let after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| "429 without Retry-After".to_owned())?;
            *throttled += 1;
            tokio::time::sleep(Duration::from_secs(after)).await;
            continue;
        }
        let body = r.bytes().await.map_err(|_| "transport".to_owned())?;
        if !status.is_success() {
            return Err(status.as_u16().to_string());
        }
        if op == "exec" {
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| "bad body".to_owned())?;
            if v["exit_code"] != 0 {
                return Err(format!("exit {}", v["exit_code"]));
            }
        }
        return Ok(ms(start));
    }
}

/// One request of the floor: `/health` for the reads, envd directly for the exec.
async fn one_floor(http: &reqwest::Client, url: &str, t: &Target, op: &str) -> Result<f64, String> {
    let start = Instant::now();
    if op == "exec" {
        let spec = ExecSpec {
            cmd: "true".into(),
            user: Some("user".into()),
            ..Default::default()
        };
        let out = t
            .envd
            .exec(&spec, Some(Duration::from_secs(60)))
            .await
            .map_err(|e| format!("envd: {e}"))?;
        if out.exit_code != 0 {
            return Err(format!("exit {}", out.exit_code));
        }
        return Ok(ms(start));
    }
    let r = http
        .get(format!("{url}/health"))
        .send()
        .await
        .map_err(|_| "transport".to_owned())?;
    let status = r.status();
    r.bytes().await.map_err(|_| "transport".to_owned())?;
    if !status.is_success() {
        return Err(status.as_u16().to_string());
    }
    Ok(ms(start))
}
