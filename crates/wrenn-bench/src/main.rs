//! `wrenn-bench`: runs the benchmark scenarios and prints a markdown table (and JSON).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = wrenn_bench::Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wrenn_bench::run(args))
}
