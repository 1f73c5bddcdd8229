//! Per-sandbox networking: a slot index derives every name and address; each sandbox gets a
//! network namespace with a veth pair to the host and a TAP for the VM, with nftables NAT so
//! the host reaches envd at the sandbox's host IP, and egress off unless asked.
//!
//! Layout of slot `s` (prefix `p`):
//! ```text
//!  host ns                         netns p-ns-s                         VM
//!  p-vs 10.12.x.y/31  <──veth──>  p-ps 10.12.x.y+1/31
//!  route 10.11.s/32 via x.y+1      DNAT 10.11.s → 169.254.0.21
//!  nft table inet p-sbx-s          tap0 169.254.0.22/30  <──TAP──>  eth0 169.254.0.21/30
//! ```
//! Every guest has the same address and MAC; the namespaces keep them apart, and a snapshot
//! taken in one slot can be restored into another.

mod link;
pub mod netns;
mod nft;
pub mod slots;
mod tap;

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tracing::{Instrument, debug, info, info_span, warn};

pub use slots::SlotAllocator;
pub use wrenn_egress::Egress;

/// Address of every guest's eth0.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The guest's gateway: the TAP's address inside the sandbox namespace.
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
pub const GUEST_PREFIX: u8 = 30;
/// MAC of every guest's NIC (locally administered).
pub const GUEST_MAC: &str = "02:fc:00:00:00:05";
/// Name of the TAP inside each sandbox namespace.
pub const TAP_NAME: &str = "tap0";
/// Highest slot: the veth /31s of all slots must fit in 10.12.0.0/16.
pub const MAX_SLOTS_LIMIT: u32 = 32767;
/// Longest prefix: `<prefix>-v<slot>` must fit in an interface name (15 bytes).
pub const MAX_PREFIX_LEN: usize = 8;

/// Names and addresses of one sandbox's network, all derived from its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNet {
    pub slot: u32,
    /// Network namespace (`<prefix>-ns-<slot>`), holding the TAP.
    pub netns: String,
    /// Host side of the veth pair.
    pub host_veth: String,
    /// TAP device inside `netns` the VM attaches to.
    pub tap: String,
    /// Address the host uses to reach the guest (envd on port 49983).
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub guest_gateway: Ipv4Addr,
    pub guest_prefix: u8,
    pub guest_mac: String,
}

impl SandboxNet {
    /// Kernel command-line parameter the guest init reads to configure eth0.
    pub fn kernel_param(&self) -> String {
        format!(
            "wrenn.net={}/{},{}",
            self.guest_ip, self.guest_prefix, self.guest_gateway
        )
    }
}

/// Configuration of the host's sandbox networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Starts every name this module creates (`<prefix>-ns-<slot>`, `<prefix>-v<slot>`,
    /// `<prefix>-p<slot>`, nft table `<prefix>-sbx-<slot>`): 1 to 8 ASCII letters or digits.
    pub prefix: String,
    /// Slots are `1..=max_slots` (at most [`MAX_SLOTS_LIMIT`]).
    pub max_slots: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            prefix: "wrenn".into(),
            max_slots: 1024,
        }
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), NetError> {
        let p = &self.prefix;
        if p.is_empty() || p.len() > MAX_PREFIX_LEN || !p.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(NetError::InvalidConfig(format!(
                "prefix {p:?} must be 1 to {MAX_PREFIX_LEN} ASCII letters or digits"
            )));
        }
        if self.max_slots == 0 || self.max_slots > MAX_SLOTS_LIMIT {
            return Err(NetError::InvalidConfig(format!(
                "max_slots {} must be in 1..={MAX_SLOTS_LIMIT}",
                self.max_slots
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("slot {slot} is outside 1..={max}")]
    InvalidSlot { slot: u32, max: u32 },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("network namespace {name}: {op}: {source}")]
    Netns {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("TAP {name}: {op}: {source}")]
    Tap {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nft(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Worker(String),
}

/// Everything derived from one slot, including what [`SandboxNet`] does not expose.
#[derive(Debug, Clone)]
pub(crate) struct SlotLayout {
    pub slot: u32,
    pub netns: String,
    pub host_veth: String,
    /// The veth end inside the namespace.
    pub ns_veth: String,
    pub tap: String,
    pub host_ip: Ipv4Addr,
    pub host_veth_ip: Ipv4Addr,
    pub ns_veth_ip: Ipv4Addr,
}

const VETH_PREFIX: u8 = 31;

impl SlotLayout {
    fn new(prefix: &str, slot: u32) -> Self {
        // The /31 of slot s is 10.12.0.0 + 2s; validation keeps 2s + 1 below 2^16.
        let pair = (slot.wrapping_mul(2) & 0xffff) as u16;
        let [hi, lo] = pair.to_be_bytes();
        let [shi, slo] = ((slot & 0xffff) as u16).to_be_bytes();
        Self {
            slot,
            netns: format!("{prefix}-ns-{slot}"),
            host_veth: format!("{prefix}-v{slot}"),
            ns_veth: format!("{prefix}-p{slot}"),
            tap: TAP_NAME.to_owned(),
            host_ip: Ipv4Addr::new(10, 11, shi, slo),
            host_veth_ip: Ipv4Addr::new(10, 12, hi, lo),
            ns_veth_ip: Ipv4Addr::new(10, 12, hi, lo | 1),
        }
    }
}

/// What a setup made so far, so a failed setup removes exactly that (and nothing that was
/// there before, e.g. a colliding name).
#[derive(Debug, Default)]
struct Made {
    netns: bool,
    host_veth: bool,
    host_table: bool,
}

/// Creates and removes the per-sandbox network plumbing on this host.
///
/// "The host" is the network namespace of the thread that called [`Network::new`]; every
/// host-side change is made there, whichever thread later awaits the calls.
#[derive(Debug, Clone)]
pub struct Network {
    cfg: NetworkConfig,
    host_ns: Result<Arc<OwnedFd>, Arc<str>>,
}

impl Network {
    pub fn new(cfg: NetworkConfig) -> Self {
        let host_ns = netns::open_current()
            .map(Arc::new)
            .map_err(|e| Arc::from(e.to_string()));
        Self { cfg, host_ns }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// Names and addresses of `slot` (pure derivation; nothing is checked or created).
    pub fn describe(&self, slot: u32) -> SandboxNet {
        let l = self.layout(slot);
        SandboxNet {
            slot,
            netns: l.netns,
            host_veth: l.host_veth,
            tap: l.tap,
            host_ip: l.host_ip,
            guest_ip: GUEST_IP,
            guest_gateway: GUEST_GATEWAY,
            guest_prefix: GUEST_PREFIX,
            guest_mac: GUEST_MAC.to_owned(),
        }
    }

    fn layout(&self, slot: u32) -> SlotLayout {
        SlotLayout::new(&self.cfg.prefix, slot)
    }

    fn check(&self, slot: u32) -> Result<(), NetError> {
        self.cfg.validate()?;
        if slot == 0 || slot > self.cfg.max_slots {
            return Err(NetError::InvalidSlot {
                slot,
                max: self.cfg.max_slots,
            });
        }
        Ok(())
    }

    fn host(&self) -> Result<netns::Target, NetError> {
        match &self.host_ns {
            Ok(fd) => Ok(netns::Target::Fd(fd.clone())),
            Err(e) => Err(NetError::Worker(format!("host network namespace: {e}"))),
        }
    }

    /// Creates the network of `slot`. On failure everything it made is removed again.
    pub async fn setup(&self, slot: u32, egress: &Egress) -> Result<SandboxNet, NetError> {
        self.check(slot)?;
        let l = self.layout(slot);
        let span = info_span!(
            "net_setup",
            slot,
            netns = %l.netns,
            allow_internet = egress.internet,
            allow_out = egress.allow.len(),
            deny_out = egress.deny.len()
        );
        async {
            let mut made = Made::default();
            match self.setup_steps(&l, egress, &mut made).await {
                Ok(()) => {
                    info!(host_ip = %l.host_ip, "sandbox network up");
                    Ok(self.describe(slot))
                }
                Err(e) => {
                    warn!(error = %e, ?made, "sandbox network setup failed; rolling back");
                    self.rollback(&l, &made).await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn setup_steps(
        &self,
        l: &SlotLayout,
        egress: &Egress,
        made: &mut Made,
    ) -> Result<(), NetError> {
        netns::create(&l.netns).await?;
        made.netns = true;
        debug!("namespace created");

        // Host side: the veth pair, its namespace end moved into the sandbox namespace.
        let ns_fd = netns::open(&l.netns)?;
        let hl = l.clone();
        let veth_made = netns::run_in(self.host()?, move || async move {
            let h = link::connect()?;
            link::add_veth(&h, &hl.host_veth, &hl.ns_veth).await?;
            let rest = async {
                link::move_to_netns(&h, &hl.ns_veth, ns_fd.as_raw_fd()).await?;
                link::add_addr(&h, &hl.host_veth, hl.host_veth_ip, VETH_PREFIX).await?;
                link::up(&h, &hl.host_veth).await?;
                Ok(())
            }
            .await;
            Ok((true, rest))
        })
        .await?;
        made.host_veth = veth_made.0;
        veth_made.1?;
        debug!("veth pair created");

        // Inside the sandbox namespace: addresses, TAP, routes, forwarding, NAT and filter.
        let sl = l.clone();
        let prefix = self.cfg.prefix.clone();
        let rules = nft::sandbox_ruleset(&prefix, l, egress);
        netns::run_in(netns::Target::Named(l.netns.clone()), move || async move {
            let h = link::connect()?;
            link::up(&h, "lo").await?;
            link::add_addr(&h, &sl.ns_veth, sl.ns_veth_ip, VETH_PREFIX).await?;
            link::up(&h, &sl.ns_veth).await?;
            tap::create_persistent(&sl.tap)?;
            link::add_addr(&h, &sl.tap, GUEST_GATEWAY, GUEST_PREFIX).await?;
            link::up(&h, &sl.tap).await?;
            link::add_route(&h, Ipv4Addr::UNSPECIFIED, 0, sl.host_veth_ip).await?;
            // Per-namespace sysctl: /proc/sys/net follows the opening thread's namespace.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetError::Io {
                context: "enable ip_forward in the sandbox namespace".into(),
                source: e,
            })?;
            nft::apply(&rules)
        })
        .await?;
        debug!("sandbox namespace configured");

        // Host side: the route to the sandbox's host IP and the host firewall rules.
        made.host_table = true;
        let hl = l.clone();
        let rules = nft::host_ruleset(&self.cfg.prefix, l, egress);
        netns::run_in(self.host()?, move || async move {
            let h = link::connect()?;
            link::add_route(&h, hl.host_ip, 32, hl.ns_veth_ip).await?;
            nft::apply(&rules)
        })
        .await?;
        Ok(())
    }

    async fn rollback(&self, l: &SlotLayout, made: &Made) {
        if (made.host_table || made.host_veth)
            && let Err(e) = self
                .remove_host_side(l, made.host_table, made.host_veth)
                .await
        {
            warn!(error = %e, "rollback: host side not fully removed");
        }
        if made.netns
            && let Err(e) = self.remove_netns(l).await
        {
            warn!(error = %e, "rollback: namespace not removed");
        }
    }

    /// Removes the network of `slot`: host rules, veth pair (and with it the host route), TAP
    /// and namespace. Idempotent: what is already gone is skipped.
    pub async fn teardown(&self, slot: u32) -> Result<(), NetError> {
        self.check(slot)?;
        let l = self.layout(slot);
        let span = info_span!("net_teardown", slot, netns = %l.netns);
        async {
            // Try every part even if one fails, so a retry has less left to do.
            let host = self.remove_host_side(&l, true, true).await;
            let ns = self.remove_netns(&l).await;
            host.and(ns)?;
            info!("sandbox network removed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn remove_host_side(
        &self,
        l: &SlotLayout,
        table: bool,
        veth: bool,
    ) -> Result<(), NetError> {
        let hl = l.clone();
        let prefix = self.cfg.prefix.clone();
        netns::run_in(self.host()?, move || async move {
            let t = if table {
                nft::apply(&nft::delete_table_cmds(&nft::host_table(&prefix, hl.slot)))
            } else {
                Ok(())
            };
            let v = if veth {
                let h = link::connect()?;
                link::delete(&h, &hl.host_veth).await.map(drop)
            } else {
                Ok(())
            };
            t.and(v)
        })
        .await
    }

    async fn remove_netns(&self, l: &SlotLayout) -> Result<(), NetError> {
        if !netns::exists(&l.netns) {
            return Ok(());
        }
        // A persistent TAP would otherwise linger until the kernel reaps the namespace.
        let tap = l.tap.clone();
        let tap_removed =
            netns::run_in(netns::Target::Named(l.netns.clone()), move || async move {
                let h = link::connect()?;
                link::delete(&h, &tap).await.map(drop)
            })
            .await;
        if let Err(e) = &tap_removed {
            warn!(error = %e, "could not delete the TAP; deleting the namespace anyway");
        }
        netns::delete(&l.netns).await.map(drop)
    }

    /// Removes every namespace, host link and host nft table of this prefix whose slot is not in
    /// `keep` (leftovers of a crash). Returns the slots removed, ascending; if some could not be
    /// removed, the others still are and the first error is returned.
    pub async fn cleanup_stale(&self, keep: &HashSet<u32>) -> Result<Vec<u32>, NetError> {
        self.cfg.validate()?;
        let prefix = self.cfg.prefix.clone();
        let mut found = BTreeSet::new();
        for name in netns::list()? {
            found.extend(parse_slot(&name, &format!("{prefix}-ns-")));
        }
        let p = prefix.clone();
        let host_found = netns::run_in(self.host()?, move || async move {
            let h = link::connect()?;
            let mut slots = Vec::new();
            for name in link::names(&h).await? {
                // Both veth ends: the namespace end is still on the host if a setup died
                // between creating the pair and moving it.
                slots.extend(parse_slot(&name, &format!("{p}-v")));
                slots.extend(parse_slot(&name, &format!("{p}-p")));
            }
            for table in nft::inet_tables()? {
                slots.extend(parse_slot(&table, &format!("{p}-sbx-")));
            }
            Ok(slots)
        })
        .await?;
        found.extend(host_found);

        let mut removed = Vec::new();
        let mut first_err = None;
        for slot in found.into_iter().filter(|s| !keep.contains(s)) {
            if slot == 0 || slot > MAX_SLOTS_LIMIT {
                warn!(
                    slot,
                    "ignoring leftover with a slot outside the valid range"
                );
                continue;
            }
            info!(slot, "removing stale sandbox network");
            // Keep going past a failing slot so one bad leftover does not keep the rest.
            match self.remove_stale(slot).await {
                Ok(()) => removed.push(slot),
                Err(e) => {
                    warn!(slot, error = %e, "could not remove stale sandbox network");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    async fn remove_stale(&self, slot: u32) -> Result<(), NetError> {
        let l = self.layout(slot);
        self.remove_host_side(&l, true, true).await?;
        // A stray namespace end of the veth (see above) goes with its host end; delete it too
        // in case the host end was already gone.
        let stray = l.ns_veth.clone();
        netns::run_in(self.host()?, move || async move {
            let h = link::connect()?;
            link::delete(&h, &stray).await.map(drop)
        })
        .await?;
        self.remove_netns(&l).await
    }

    /// Whether the namespace of `slot` exists.
    pub async fn exists(&self, slot: u32) -> bool {
        netns::exists(&self.layout(slot).netns)
    }

    /// Makes one sandbox's network, both sides, inside a throwaway namespace: a veth pair, a
    /// TAP and the real host and sandbox rulesets (filter, DNAT, SNAT, masquerade). Proves at
    /// start that the kernel and `nft` can do everything a create needs, without touching the
    /// host; the namespace and all it holds vanish with its thread.
    pub async fn selftest(&self) -> Result<(), SelftestError> {
        let l = self.layout(1);
        let prefix = self.cfg.prefix.clone();
        // Every rule shape a sandbox's egress can need: internet, opened and closed networks.
        let egress = Egress {
            internet: true,
            allow: vec![ipnet::Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).unwrap_or_default()],
            deny: vec![ipnet::Ipv4Net::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap_or_default()],
        };
        let step = |feature: &'static str| move |source| SelftestError { feature, source };
        netns::run_in(netns::Target::Scratch, move || async move {
            let tried = async {
                let h = link::connect().map_err(step("netlink"))?;
                link::add_veth(&h, &l.host_veth, &l.ns_veth)
                    .await
                    .map_err(step("veth pairs"))?;
                tap::create_persistent(&l.tap).map_err(step("TUN/TAP devices"))?;
                nft::apply(&nft::sandbox_ruleset(&prefix, &l, &egress))
                    .map_err(step("nftables"))?;
                nft::apply(&nft::host_ruleset(&prefix, &l, &egress)).map_err(step("nftables"))
            };
            Ok(tried.await)
        })
        .await
        .map_err(step("network namespaces"))?
    }
}

/// Which kernel feature the network selftest found missing, and why.
#[derive(Debug, thiserror::Error)]
#[error("{feature}: {source}")]
pub struct SelftestError {
    pub feature: &'static str,
    #[source]
    pub source: NetError,
}

/// The slot in `name` if it is exactly `prefix` followed by a decimal number.
fn parse_slot(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_derives_names_and_addresses() {
        let n = Network::new(NetworkConfig::default());
        let s = n.describe(5);
        assert_eq!(s.netns, "wrenn-ns-5");
        assert_eq!(s.host_veth, "wrenn-v5");
        assert_eq!(s.tap, "tap0");
        assert_eq!(s.host_ip, Ipv4Addr::new(10, 11, 0, 5));
        assert_eq!(s.kernel_param(), "wrenn.net=169.254.0.21/30,169.254.0.22");
        assert_eq!(s.guest_mac, "02:fc:00:00:00:05");
        assert_eq!(n.describe(300).host_ip, Ipv4Addr::new(10, 11, 1, 44));

        let l = SlotLayout::new("wrenn", 5);
        assert_eq!(l.host_veth_ip, Ipv4Addr::new(10, 12, 0, 10));
        assert_eq!(l.ns_veth_ip, Ipv4Addr::new(10, 12, 0, 11));
        assert_eq!(l.ns_veth, "wrenn-p5");
        let l = SlotLayout::new("wrenn", 200);
        assert_eq!(l.host_veth_ip, Ipv4Addr::new(10, 12, 1, 144));
        assert_eq!(l.ns_veth_ip, Ipv4Addr::new(10, 12, 1, 145));
        let l = SlotLayout::new("wrenn", MAX_SLOTS_LIMIT);
        assert_eq!(l.ns_veth_ip, Ipv4Addr::new(10, 12, 255, 255));
        assert!(l.host_veth.len() <= 15 && "abcdefgh-v32767".len() == 15);
    }

    #[test]
    fn config_validation() {
        assert!(NetworkConfig::default().validate().is_ok());
        let bad = |prefix: &str, max_slots| NetworkConfig {
            prefix: prefix.into(),
            max_slots,
        };
        assert!(bad("", 10).validate().is_err());
        assert!(bad("toolongpf", 10).validate().is_err());
        assert!(bad("a-b", 10).validate().is_err());
        assert!(bad("ok", 0).validate().is_err());
        assert!(bad("ok", MAX_SLOTS_LIMIT + 1).validate().is_err());
        assert!(bad("abcdefgh", MAX_SLOTS_LIMIT).validate().is_ok());
    }

    #[test]
    fn parse_slot_is_strict() {
        assert_eq!(parse_slot("wrenn-ns-12", "wrenn-ns-"), Some(12));
        assert_eq!(parse_slot("wrenn-ns-", "wrenn-ns-"), None);
        assert_eq!(parse_slot("wrenn-ns-+1", "wrenn-ns-"), None);
        assert_eq!(parse_slot("wrenn-ns-1x", "wrenn-ns-"), None);
        assert_eq!(parse_slot("wrenn2-ns-1", "wrenn-ns-"), None);
        assert_eq!(parse_slot("wrenn-v7", "wrenn-v"), Some(7));
        assert_eq!(parse_slot("wrenn-ns-99999999999", "wrenn-ns-"), None);
    }
}
