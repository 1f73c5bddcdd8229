//! Control-plane read throughput: `GET /v1/sandboxes/{id}` and a 100-row list page with
//! 10,000 sandbox rows, on SQLite and on PostgreSQL, beside the HTTP floor of the same server
//! and client (`GET /health`: same listener, middleware and connection pool, no auth, no
//! database).
//!
//! The control plane runs in this process (`wrenn_cp::server::start`) on a temp data dir. One
//! user signs up over HTTP and makes an API key; the rows go in through `wrenn_cp::db`
//! (`running`, deadline a day away, three metadata keys each) on a host row that is not online,
//! so neither a GET nor the reconciler ever calls an agent. The load is [`IN_FLIGHT`] requests
//! in flight on keep-alive HTTP/1.1 connections for windows of [`WINDOW`], interleaved
//! GET, floor, list, GET, floor, list, ...; each window gives one req/s sample, and the
//! per-window ratios give the spread.
//!
//! PostgreSQL: `WRENN_BENCH_PG_URL` (a server URL the benchmark may `CREATE DATABASE` on; a
//! fresh database is made and dropped) or else a throwaway cluster started and removed with
//! `scripts/lib.sh`'s `start_test_postgres` / `stop_test_postgres`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use wrenn_cp::db::testing::TestDatabase;
use wrenn_cp::db::{Db, NewHost, NewSandbox, OnTimeout, SandboxStatus, now_ms};
use wrenn_cp::server::{RunningServer, ServerConfig};

use crate::Args;
use crate::report::Row;
use crate::stats::{percentile, summarize};

/// Sandbox rows in the database during the measurement.
pub const ROWS: usize = 10_000;
/// Requests in flight at any time (one keep-alive connection each).
pub const IN_FLIGHT: usize = 32;
/// One req/s sample.
pub const WINDOW: Duration = Duration::from_millis(500);
pub const PG_URL_VAR: &str = "WRENN_BENCH_PG_URL";

const PASSWORD: &str = "correct horse battery";

/// A control plane serving in this process, with a signed-up user and an API key of their
/// team. The data dir goes with it; [`Cp::stop`] stops the server gracefully (a dropped `Cp`
/// leaves its task to die with the runtime).
pub(crate) struct Cp {
    pub server: RunningServer,
    pub http: reqwest::Client,
    pub jwt: String,
    pub key: String,
    pub team_id: String,
    _data_dir: tempfile::TempDir,
}

impl Cp {
    pub async fn start(database_url: Option<String>) -> anyhow::Result<Cp> {
        let data_dir = tempfile::Builder::new()
            .prefix("wrenn-bench-cp")
            .tempdir()?;
        let server = wrenn_cp::server::start(ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: data_dir.path().to_path_buf(),
            database_url,
            ..Default::default()
        })
        .await
        .context("start the control plane")?;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(IN_FLIGHT * 2)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut cp = Cp {
            server,
            http,
            jwt: String::new(),
            key: String::new(),
            team_id: String::new(),
            _data_dir: data_dir,
        };
        let v = cp
            .call(
                reqwest::Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({"email": "bench@example.com", "password": PASSWORD, "name": "Bench"})),
                201,
            )
            .await?;
        cp.jwt = str_field(&v, "/token")?;
        cp.team_id = str_field(&v, "/team/id")?;
        let jwt = cp.jwt.clone();
        let v = cp
            .call(
                reqwest::Method::POST,
                "/v1/api-keys",
                Some(&format!("Bearer {jwt}")),
                Some(json!({"name": "bench"})),
                201,
            )
            .await?;
        cp.key = str_field(&v, "/key")?;
        Ok(cp)
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn db(&self) -> &Db {
        &self.server.state.db
    }

    /// One JSON call; `auth` is an `Authorization` value (default: the API key).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.url()));
        rb = match auth {
            Some(a) => rb.header("authorization", a),
            None if !self.key.is_empty() => rb.header("x-api-key", &self.key),
            None => rb,
        };
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = r.status();
        let text = r.text().await?;
        if status.as_u16() != expect {
            bail!("{method} {path}: {status} (expected {expect}): {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.stop().await?;
        Ok(())
    }
}

pub(crate) fn str_field(v: &Value, pointer: &str) -> anyhow::Result<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {pointer} in {v}"))
}

/// [`ROWS`] running sandboxes of `team_id`, through the same repository calls a create makes.
async fn seed(db: &Db, team_id: &str) -> anyhow::Result<Arc<Vec<String>>> {
    // A host row that never comes online: the rows have a host, but nobody calls it.
    let host = db
        .create_host(NewHost {
            team_id: None,
            name: "bench-offline",
            address: "127.0.0.1:1",
            specs: json!({}),
            created_by: None,
        })
        .await?;
    let end_at = now_ms() + 86_400_000;
    let one = |i: usize| {
        let host_id = host.id.clone();
        async move {
            let metadata = BTreeMap::from([
                ("owner".to_owned(), "bench".to_owned()),
                ("batch".to_owned(), (i % 10).to_string()),
                ("index".to_owned(), i.to_string()),
            ]);
            let sb = db
                .insert_pending_sandbox(NewSandbox {
                    team_id,
                    host_id: Some(&host_id),
                    template: "base",
                    vcpus: 1,
                    memory_mb: 512,
                    disk_size_mb: 5120,
                    timeout_sec: 86_400,
                    end_at: Some(end_at),
                    on_timeout: OnTimeout::Kill,
                    metadata,
                    envd_token: Some("bench-envd-token"),
                    auto_resume: false,
                    idempotency_key: None,
                })
                .await?;
            db.transition_sandbox(&sb.id, SandboxStatus::Running, None)
                .await?;
            anyhow::Ok(sb.id)
        }
    };
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..ROWS)
        .map(one)
        .buffer_unordered(8)
        .collect()
        .await;
    Ok(Arc::new(ids.into_iter().collect::<Result<_, _>>()?))
}

#[derive(Clone)]
enum Target {
    Get(Arc<Vec<String>>),
    List,
    Health,
}

/// One window: [`IN_FLIGHT`] loops sending requests until `dur` is over. Returns req/s (all
/// completed requests over the time until the last one completed) and every latency (ms).
async fn window(
    cp: &Cp,
    target: &Target,
    dur: Duration,
    seed: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..IN_FLIGHT {
        let (http, base, key, target) = (cp.http.clone(), cp.url(), cp.key.clone(), target.clone());
        let mut rng = (seed ^ ((t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1;
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < end {
                let url = match &target {
                    Target::Get(ids) => {
                        // xorshift64: cheap, and good enough to spread reads over the rows.
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let id = &ids[(rng % ids.len() as u64) as usize];
                        format!("{base}/v1/sandboxes/{id}")
                    }
                    Target::List => format!("{base}/v1/sandboxes?limit=100"),
                    Target::Health => format!("{base}/health"),
                };
                let t0 = Instant::now();
                let r = http.get(&url).header("x-api-key", &key).send().await?;
                let status = r.status();
                let body = r.bytes().await?;
                if !status.is_success() {
                    bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
                }
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, all))
}

/// Per-window results of one target.
#[derive(Default)]
struct Series {
    rps: Vec<f64>,
    p50s: Vec<f64>,
    latencies: Vec<f64>,
}

impl Series {
    fn push(&mut self, (rps, mut lat): (f64, Vec<f64>)) {
        lat.sort_by(f64::total_cmp);
        self.rps.push(rps);
        self.p50s.push(percentile(&lat, 50.0));
        self.latencies.extend(lat);
    }
}

async fn measure(cp: &Cp, backend: &str, windows: usize) -> anyhow::Result<Vec<Row>> {
    let t = Instant::now();
    let ids = seed(cp.db(), &cp.team_id)
        .await
        .context("seed sandbox rows")?;
    eprintln!(
        "control plane ({backend}): {ROWS} sandbox rows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The rows are what the API shows.
    let one = cp
        .call(
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{}", ids[0]),
            None,
            None,
            200,
        )
        .await?;
    anyhow::ensure!(
        one["status"] == "running" && one["metadata"]["owner"] == "bench",
        "unexpected sandbox: {one}"
    );
    let page = cp
        .call(
            reqwest::Method::GET,
            "/v1/sandboxes?limit=100",
            None,
            None,
            200,
        )
        .await?;
    anyhow::ensure!(
        page["sandboxes"].as_array().map(Vec::len) == Some(100),
        "list page is not 100 rows"
    );

    let targets = [Target::Get(ids), Target::Health, Target::List];
    // Warm-up: connections open, key cached, pages in memory.
    for (i, target) in targets.iter().enumerate() {
        window(cp, target, WINDOW, i as u64).await?;
    }
    let mut series: [Series; 3] = Default::default();
    let mut seed = 0x5eed_u64;
    for _ in 0..windows {
        for (s, target) in series.iter_mut().zip(&targets) {
            seed = seed.wrapping_add(0x1234_5678_9abc);
            s.push(window(cp, target, WINDOW, seed).await?);
        }
    }
    let [get, health, list] = series;
    let floor = "GET /health, same server and client";
    let mut rows = Vec::new();
    for (name, s) in [
        (
            format!("CP GET /v1/sandboxes/{{id}}, {ROWS} rows, {backend}"),
            &get,
        ),
        (format!("CP list 100 of {ROWS} rows, {backend}"), &list),
    ] {
        rows.push(Row::paired(
            &format!("{name}: throughput ({IN_FLIGHT} in flight)"),
            "req/s",
            floor,
            &s.rps,
            &health.rps,
        ));
        rows.push(Row::spread(
            &format!("{name}: latency"),
            "ms",
            floor,
            summarize(&s.latencies),
            summarize(&health.latencies),
            &s.p50s,
            &health.p50s,
        ));
    }
    Ok(rows)
}

async fn backend_rows(
    backend: &str,
    database_url: Option<String>,
    windows: usize,
) -> anyhow::Result<Vec<Row>> {
    let cp = Cp::start(database_url).await?;
    let rows = measure(&cp, backend, windows).await;
    cp.stop().await?;
    rows
}

/// Row names when a backend could not be measured.
fn unavailable(backend: &str) -> Vec<Row> {
    vec![Row::not_available(&format!(
        "CP GET/list with {ROWS} rows, {backend}"
    ))]
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    let windows = if args.quick { 4 } else { 10 };
    let mut rows = backend_rows("SQLite", None, windows).await?;
    match PgCluster::start() {
        Ok(cluster) => {
            let db = PgDatabase(Some(
                TestDatabase::create_postgres(&cluster.admin_url).await,
            ));
            let url = db.0.as_ref().and_then(|d| d.config.database_url.clone());
            let r = backend_rows("PostgreSQL", url, windows).await;
            db.cleanup().await;
            drop(cluster);
            rows.extend(r?);
        }
        Err(e) => {
            eprintln!("PostgreSQL scenario skipped: {e:#}");
            rows.extend(unavailable("PostgreSQL"));
        }
    }
    Ok(rows)
}

/// A PostgreSQL server to make the benchmark database on: `WRENN_BENCH_PG_URL`, or a
/// throwaway cluster (stopped and removed on drop).
struct PgCluster {
    admin_url: String,
    /// `WRENN_PG_DIR`, `WRENN_PG_BIN` of the cluster we started.
    started: Option<(String, String)>,
}

impl PgCluster {
    fn start() -> anyhow::Result<PgCluster> {
        if let Ok(url) = std::env::var(PG_URL_VAR)
            && !url.trim().is_empty()
        {
            return Ok(PgCluster {
                admin_url: url,
                started: None,
            });
        }
        let lib = crate::envd::repo_root().join("scripts/lib.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(
                // A start that fails or is interrupted halfway removes what it made.
                "source \"$1\" || exit 1; trap 'stop_test_postgres; exit 130' INT TERM; \
                 start_test_postgres || { stop_test_postgres; exit 1; }; \
                 printf '%s\\n%s\\n%s\\n' \"$WRENN_TEST_PG_URL\" \"$WRENN_PG_DIR\" \"$WRENN_PG_BIN\"",
            )
            .arg("bash")
            .arg(&lib)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("run start_test_postgres")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let &[url, dir, bin] = &lines[lines.len().saturating_sub(3)..] else {
            bail!("start_test_postgres failed ({})", out.status);
        };
        let cluster = PgCluster {
            admin_url: url.to_owned(),
            started: Some((dir.to_owned(), bin.to_owned())),
        };
        anyhow::ensure!(
            out.status.success(),
            "start_test_postgres failed ({})",
            out.status
        );
        Ok(cluster)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let Some((dir, bin)) = self.started.take() else {
            return;
        };
        let lib = crate::envd::repo_root().join("scripts/lib.sh");
        let st = Command::new("bash")
            .arg("-c")
            .arg("source \"$1\"; stop_test_postgres")
            .arg("bash")
            .arg(&lib)
            .env("WRENN_PG_DIR", &dir)
            .env("WRENN_PG_BIN", &bin)
            .stdin(Stdio::null())
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not stop the PostgreSQL cluster in {dir}");
        }
    }
}

/// The benchmark's database on the cluster; dropped at the end, also on Ctrl-C.
struct PgDatabase(Option<TestDatabase>);

impl PgDatabase {
    async fn cleanup(mut self) {
        if let Some(db) = self.0.take() {
            db.cleanup().await;
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Only after an interruption: the normal path awaited `cleanup`.
        if let Some(db) = self.0.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(db.cleanup());
                }
            })
            .join();
        }
    }
}
