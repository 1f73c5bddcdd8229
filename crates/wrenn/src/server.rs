//! `wrenn server`: the control plane (see `wrenn_cp::server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use wrenn_cp::server::{DEFAULT_LISTEN, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "WRENN_CP_LISTEN_ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where the SQLite database (unless --database-url) and the generated secrets live.
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://...`); SQLite under the data dir when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(wrenn_cp::server::serve(ServerConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            database_url: args.database_url,
        }))
        .context("control plane")
}
