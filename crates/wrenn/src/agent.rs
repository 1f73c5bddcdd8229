//! `wrenn agent`: the host agent (see the `wrenn-agent` crate).

use wrenn_agent::config::AgentConfig;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub config: AgentConfig,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wrenn_agent::run(args.config))
}
