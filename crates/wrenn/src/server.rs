//! `wrenn server`: the control plane (see `wrenn_cp::server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use wrenn_cp::server::tls::TlsFiles;
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
    /// PEM certificate chain (leaf first): the listener serves HTTPS only. Needs --tls-key.
    #[arg(long, env = "WRENN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WRENN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert: a second, plain-HTTP listener on a loopback address, for tools on this
    /// machine (the CLI's HTTP client has no TLS).
    #[arg(long, env = "WRENN_PLAIN_LISTEN", requires = "tls_cert",
          value_parser = parse_loopback)]
    pub plain_listen: Option<std::net::SocketAddr>,
    /// The E2B SDKs' `E2B_DOMAIN`: API at `api.<domain>`, sandboxes at `<port>-<id>.<domain>`
    /// (the certificate must cover both; the SDKs use port 443).
    #[arg(long, env = "WRENN_DOMAIN")]
    pub domain: Option<String>,
    /// How new sandboxes are placed among the hosts: `least-loaded` (most free vCPUs and
    /// memory, as the hosts' heartbeats report them) or `round-robin`.
    #[arg(long, env = "WRENN_PLACEMENT", default_value = "least-loaded")]
    pub placement: wrenn_cp::scheduler::Placement,
    /// Seconds without a heartbeat after which a host is `unreachable` and its sandboxes
    /// `missing` (agents beat every 30 s by default).
    #[arg(long, env = "WRENN_HOST_STALE_SECS", default_value_t = 90,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub host_stale_secs: u64,
    /// Who may sign up: `open`, `closed` (no one; the first account aside) or `invite` (only
    /// emails a team invited).
    #[arg(long, env = "WRENN_SIGNUP", default_value = "open")]
    pub signup: wrenn_cp::db::SignupGate,
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    runtime
        .block_on(wrenn_cp::server::serve(ServerConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            database_url: args.database_url,
            tls,
            domain: args.domain,
            plain_listen: args.plain_listen,
            placement: args.placement,
            host_stale_after: std::time::Duration::from_secs(args.host_stale_secs),
            signup: args.signup,
        }))
        .context("control plane")
}

fn parse_loopback(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s.parse().map_err(|e| format!("{e}"))?;
    if a.ip().is_loopback() {
        Ok(a)
    } else {
        Err("plain HTTP is served on loopback only (e.g. 127.0.0.1:8081)".into())
    }
}
