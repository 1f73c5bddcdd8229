//! Per-sandbox networking: a slot index derives every name and address; each sandbox gets a
//! network namespace with a veth pair to the host and a TAP for the VM, with nftables NAT so
//! the host reaches envd at the sandbox's host IP, and egress off unless asked.

use std::net::Ipv4Addr;

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
