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
    /// The control plane's URL (registration, heartbeats, token refresh).
    #[arg(long, env = "AGENT_CP_URL")]
    pub cp_url: Option<String>,
    /// The SHA-256 fingerprint of the control plane's HTTPS certificate (`sha256:…`, given
    /// with the registration token): the only certificate this agent accepts from it.
    #[arg(long, env = "AGENT_CP_FINGERPRINT")]
    pub cp_fingerprint: Option<String>,
    /// CA certificates (PEM file) that sign the control plane's HTTPS certificate for the
    /// host name in `--cp-url` (instead of `--cp-fingerprint`).
    #[arg(long, env = "AGENT_CP_CA")]
    pub cp_ca: Option<PathBuf>,
    /// Serve the RPC listener over TLS even on a loopback address (off loopback it always is:
    /// plain HTTP between hosts is never offered).
    #[arg(long, env = "AGENT_RPC_TLS")]
    pub rpc_tls: bool,
    /// A one-time registration token: register with the control plane at `--cp-url` and
    /// keep the credentials in `host-credentials.json` under the root.
    #[arg(long, env = "AGENT_REGISTER_TOKEN")]
    pub register: Option<String>,
    /// The address the control plane reaches this agent at (default: the listen address).
    #[arg(long, env = "AGENT_ADVERTISE_ADDR")]
    pub advertise_addr: Option<SocketAddr>,
    /// Seconds between heartbeats of a registered host.
    #[arg(long, env = "AGENT_HEARTBEAT_SECS", default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// After this many heartbeats in a row fail (or once the control plane refuses this
    /// host's refresh), every running sandbox is paused to disk once, so none runs on with
    /// nobody able to reach or bill it; the reconciler settles their rows when the control
    /// plane is back. 0 = never.
    #[arg(
        long,
        env = "AGENT_PAUSE_AFTER_MISSED_HEARTBEATS",
        default_value_t = 10
    )]
    pub pause_after_missed_heartbeats: u32,
    /// This host's ID, for a host that does not register (with `--cp-public-key`).
    #[arg(long, env = "AGENT_HOST_ID")]
    pub host_id: Option<String>,
    /// The control plane's Ed25519 public key (PEM file), for a host that does not register.
    #[arg(long, env = "AGENT_CP_PUBLIC_KEY")]
    pub cp_public_key: Option<PathBuf>,
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
    /// QEMU of network slot N runs as user and group `vm-uid-base + N` (no account needed):
    /// each VM its own unprivileged user. The range must belong to no one else on the host;
    /// agents sharing a machine need ranges of their own.
    #[arg(long, env = "AGENT_VM_UID_BASE", default_value_t = 2_000_000_000, value_parser = parse_uid_base)]
    pub vm_uid_base: u32,
    /// vCPUs admitted per host CPU: sandboxes are created or resumed only while the sum of
    /// their vCPUs stays within CPUs × this.
    #[arg(long, env = "AGENT_CPU_OVERCOMMIT", default_value_t = 8.0, value_parser = parse_factor)]
    pub cpu_overcommit: f64,
    /// Guest memory admitted per MiB of host memory (above 1, guests that touch all their
    /// memory can drive the host into swapping or the OOM killer).
    #[arg(long, env = "AGENT_MEMORY_OVERCOMMIT", default_value_t = 1.0, value_parser = parse_factor)]
    pub memory_overcommit: f64,
    /// MiB kept free on the files root: below it no sandbox is created or resumed.
    #[arg(long, env = "AGENT_MIN_FREE_DISK_MIB", default_value_t = 2048)]
    pub min_free_disk_mib: u64,
    /// Create sandboxes by restoring a snapshot of their template booted to envd-ready (made
    /// by the first create of each template and machine shape, cached under `cache/warm/`),
    /// instead of booting each one.
    #[arg(long, env = "AGENT_WARM_BASES", default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_bases: bool,
    /// Test hook: fail create at the named step (overlay, slot, network, boot, health, init).
    #[arg(long, env = "AGENT_FAILPOINT", hide = true)]
    pub failpoint: Option<String>,
}

fn parse_uid_base(s: &str) -> Result<u32, String> {
    // Above the system and login ranges, and room for every slot below 2^31 (some tools
    // treat larger IDs as negative).
    let max = (1u32 << 31) - 1 - crate::network::MAX_SLOTS_LIMIT;
    match s.parse::<u32>() {
        Ok(b) if (100_000..=max).contains(&b) => Ok(b),
        _ => Err(format!("'{s}' is not a user ID between 100000 and {max}")),
    }
}

fn parse_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Ok(f),
        _ => Err(format!("'{s}' is not a factor between 0 and 1000")),
    }
}

fn parse_accel(s: &str) -> Result<Accel, String> {
    match s {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        _ => Err(format!("unknown accelerator '{s}' (kvm or tcg)")),
    }
}

impl AgentConfig {
    pub fn network(&self) -> crate::network::NetworkConfig {
        crate::network::NetworkConfig {
            prefix: self.net_prefix.clone(),
            max_slots: self.max_sandboxes,
        }
    }

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

    /// Whether the RPC listener serves TLS: always off loopback.
    pub fn serves_tls(&self) -> bool {
        self.rpc_tls || !self.listen.ip().is_loopback()
    }

    /// The agent's own certificate and key.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn warm_dir(&self) -> PathBuf {
        self.cache_dir().join("warm")
    }
}
