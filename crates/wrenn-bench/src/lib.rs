//! Benchmarks. Every scenario measures ours and a raw baseline as interleaved pairs
//! (ours, baseline, ours, ...) in one run, so machine noise hits both; the report gives
//! medians, p95 and the spread of the per-pair ratio. Timing thresholds never live in
//! tests: this command is where performance is read.

pub mod agent;
pub mod envd;
pub mod report;
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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    rows.extend(envd::run(&args).await?);
    if !args.skip_vm {
        rows.extend(agent::run(&args)?);
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
