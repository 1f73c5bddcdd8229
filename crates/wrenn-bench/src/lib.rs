//! Benchmarks. Every scenario measures ours and a raw baseline as interleaved pairs
//! (ours, baseline, ours, ...) in one run, so machine noise hits both; the report gives
//! medians, p95 and the spread of the per-pair ratio. Timing thresholds never live in
//! tests: this command is where performance is read.

pub mod cp;
pub mod envd;
pub mod host;
pub mod interrupt;
pub mod report;
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
    /// with 10,000 rows), stack (control plane + agent + VMs). Default: all.
    #[arg(long, value_parser = ["envd", "cp", "stack"])]
    pub only: Vec<String>,
}

impl Args {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    interrupt::install();
    let args = std::sync::Arc::new(args);
    let mut rows = Vec::new();
    if args.wants("envd") {
        rows.extend(interrupt::guarded(envd::run(&args)).await?);
    }
    if args.wants("cp") {
        rows.extend(interrupt::guarded(cp::run(&args)).await?);
    }
    if !args.skip_vm && args.wants("stack") {
        // The VM scenarios run on a thread of their own (inside a network namespace).
        let args = args.clone();
        rows.extend(tokio::task::spawn_blocking(move || stack::run(&args)).await??);
    }
    for name in report::NOT_YET {
        rows.push(report::Row::not_available(name));
    }
    let table = report::markdown(&rows);
    println!("{table}");
    std::fs::write(&args.json, serde_json::to_vec_pretty(&rows)?)?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}
