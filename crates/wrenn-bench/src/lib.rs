//! Benchmarks. Every scenario measures ours and a raw baseline as interleaved pairs
//! (ours, baseline, ours, ...) in one run, so machine noise hits both; the report gives
//! medians, p95 and the spread of the per-pair ratio. Timing thresholds never live in
//! tests: this command is where performance is read.

pub mod cp;
pub mod e2b;
pub mod envd;
pub mod host;
pub mod interrupt;
pub mod load;
pub mod report;
pub mod restore;
pub mod stack;
pub mod stats;

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "wrenn-bench", about = "Measure Wrenn against raw baselines")]
pub struct Args {
    /// Fewer samples (finishes in well under 3 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub json: PathBuf,
    /// Skip the scenarios that boot VMs.
    #[arg(long)]
    pub skip_vm: bool,
    /// The envd binary (default: `envd` next to this executable).
    #[arg(long)]
    pub envd: Option<PathBuf>,
    /// Run only these scenario groups (repeatable): envd (envd alone), cp (control plane
    /// with 10,000 rows), stack (control plane + agent + VMs), load (200 API clients on 10
    /// sandboxes). Default: all.
    #[arg(long, value_parser = ["envd", "cp", "stack", "load"])]
    pub only: Vec<String>,
    /// Seconds of load through the API in the load group (default 60; 20 with --quick).
    #[arg(long)]
    pub load_secs: Option<u64>,
    /// The `wrenn` binary (default: `wrenn` next to this executable).
    #[arg(long)]
    pub wrenn: Option<PathBuf>,
}

impl Args {
    pub fn load_secs(&self) -> u64 {
        self.load_secs.unwrap_or(if self.quick { 20 } else { 60 })
    }

    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    interrupt::install();
    let args = std::sync::Arc::new(args);
    let mut rows = Vec::new();
    // A failed group becomes a `failed` row; the other groups still run (and Ctrl-C stops
    // everything, after cleaning up).
    let mut take = |group: &str, r: anyhow::Result<Vec<report::Row>>| match r {
        Ok(r) => rows.extend(r),
        Err(e) => {
            eprintln!("{group} scenarios failed: {e:#}");
            rows.push(report::Row::failed(group, &e));
        }
    };
    if args.wants("envd") {
        take("envd", interrupt::guarded(envd::run(&args)).await);
    }
    let stop = || {
        anyhow::ensure!(!interrupt::is_set(), "interrupted");
        Ok(())
    };
    stop()?;
    if args.wants("cp") {
        take("control plane", interrupt::guarded(cp::run(&args)).await);
    }
    stop()?;
    if !args.skip_vm && args.wants("stack") {
        // The VM scenarios run on a thread of their own (inside a network namespace).
        let a = args.clone();
        let r = match tokio::task::spawn_blocking(move || stack::run(&a)).await {
            Ok(r) => r,
            Err(e) => Err(e.into()),
        };
        take("stack", r);
    }
    stop()?;
    if !args.skip_vm && args.wants("load") {
        let a = args.clone();
        let r = match tokio::task::spawn_blocking(move || load::run(&a)).await {
            Ok(r) => r,
            Err(e) => Err(e.into()),
        };
        take("load", r);
    }
    stop()?;
    let table = report::markdown(&rows);
    println!("{table}");
    std::fs::write(&args.json, serde_json::to_vec_pretty(&rows)?)?;
    eprintln!("results written to {}", args.json.display());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.scenario.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}
