//! Agent configuration: flags, environment, and a `.env` file in the working directory
//! (loaded by the binary before parsing). `AGENT_FILES_ROOTDIR` is the one root every path
//! derives from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::vmm::Accel;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Root of all agent state: kernels/, images/, sandboxes/, cache/.
    #[arg(
        long = "root",
        env = "AGENT_FILES_ROOTDIR",
        default_value = "/var/lib/wrenn"
    )]
    pub root: PathBuf,
    /// Address the RPC service listens on.
    #[arg(long, env = "AGENT_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// This host's ID (the audience of control-plane tokens).
    #[arg(long, env = "AGENT_HOST_ID")]
    pub host_id: String,
    /// The control plane's Ed25519 public key (PEM file) that signs RPC tokens.
    #[arg(long, env = "AGENT_CP_PUBLIC_KEY")]
    pub cp_public_key: PathBuf,
    /// Force the accelerator instead of probing (`kvm` or `tcg`).
    #[arg(long, env = "AGENT_ACCEL", value_parser = parse_accel)]
    pub accel: Option<Accel>,
    /// Boots allowed at once (default: the number of cores).
    #[arg(long, env = "AGENT_MAX_CONCURRENT_BOOTS")]
    pub max_concurrent_boots: Option<usize>,
    /// How long a new VM's envd may take to answer /health (TCG boots are slow).
    #[arg(long, env = "AGENT_ENVD_HEALTH_TIMEOUT_SECS", default_value_t = 180)]
    pub envd_health_timeout_secs: u64,
    /// Prefix of every network namespace, link and nftables table this agent owns.
    #[arg(long, env = "AGENT_NET_PREFIX", default_value = "wrenn")]
    pub net_prefix: String,
    /// Network slots (sandboxes at once).
    #[arg(long, env = "AGENT_MAX_SANDBOXES", default_value_t = 1024)]
    pub max_sandboxes: u32,
    /// Test hook: fail create at the named step (overlay, slot, network, boot, health, init).
    #[arg(long, env = "AGENT_FAILPOINT", hide = true)]
    pub failpoint: Option<String>,
}

fn parse_accel(s: &str) -> Result<Accel, String> {
    match s {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => Err(format!("unknown accelerator '{s}' (kvm or tcg)")),
    }
}

impl AgentConfig {
    pub fn envd_health_timeout(&self) -> Duration {
        Duration::from_secs(self.envd_health_timeout_secs)
    }

    pub fn boots(&self) -> usize {
        self.max_concurrent_boots.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
}
