//! `envd` binary: parses flags and runs the guest agent (see the `envd` library).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = envd::Config::parse();
    envd::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(envd::run(config))
}
