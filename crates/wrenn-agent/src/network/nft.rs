//! nftables rulesets, applied with `nft -f -` as one atomic transaction each. Host-side rules
//! live in one table per sandbox (`inet <prefix>-sbx-<slot>`), so a slot's rules are created and
//! removed as a unit and are found by name after a crash. Inside the sandbox namespace the
//! table belongs to the namespace and goes away with it.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{Egress, GUEST_IP, NetError, SlotLayout};

/// The host-side table name of `slot`.
pub(crate) fn host_table(prefix: &str, slot: u32) -> String {
    format!("{prefix}-sbx-{slot}")
}

/// Host-side rules of one sandbox. They isolate by themselves: whatever the host's own forward
/// policy, a sandbox reaches no other sandbox, receives no forwarded connection and cannot open
/// connections to the host; it reaches beyond the host only with internet or networks opened
/// for it (and then, without internet, only those). Of the host's own processes only root's
/// (the agent) may connect to the sandbox's address: envd answers there before `/init` has
/// set its token.
pub(crate) fn host_ruleset(prefix: &str, l: &SlotLayout, e: &Egress) -> String {
    let t = host_table(prefix, l.slot);
    let v = &l.host_veth;
    let any_sbx = format!("{prefix}-v*");
    let egress = if e.internet {
        String::new()
    } else if e.allow.is_empty() {
        format!("\t\tiifname \"{v}\" drop\n")
    } else {
        format!(
            "\t\tiifname \"{v}\" ip daddr {{ {} }} accept\n\t\tiifname \"{v}\" drop\n",
            set(&e.allow)
        )
    };
    let nat = if e.any() {
        format!(
            "\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {ns_ip} oifname != \"{any_sbx}\" masquerade\n\
             \t}}\n",
            ns_ip = l.ns_veth_ip
        )
    } else {
        String::new()
    };
    // Priority filter - 10 runs before the usual filter chains; a drop here is final.
    format!(
        "{reset}\
         table inet {t} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname \"{v}\" oifname \"{any_sbx}\" drop\n\
         \t\toifname \"{v}\" ct state established,related accept\n\
         \t\toifname \"{v}\" drop\n\
         {egress}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tiifname \"{v}\" ct state established,related accept\n\
         \t\tiifname \"{v}\" drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter - 10; policy accept;\n\
         \t\tip daddr {host_ip} meta skuid != 0 drop\n\
         \t}}\n\
         {nat}\
         }}\n",
        reset = delete_table_cmds(&t),
        host_ip = l.host_ip,
    )
}

/// An nftables set's elements.
fn set(nets: &[ipnet::Ipv4Net]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rules inside the sandbox namespace: nothing from the tap but the guest's own IPv4 address
/// (no spoofed sources, no IPv6); the host's connections to `host_ip` are DNATed to the
/// guest; the guest may only answer, unless its egress lets it out through the veth (SNATed
/// to the namespace's veth address): first to the networks opened for it, then — with
/// internet — anywhere but the networks closed for it and [`wrenn_egress::CLOSED`].
pub(crate) fn sandbox_ruleset(prefix: &str, l: &SlotLayout, e: &Egress) -> String {
    let p = &l.ns_veth;
    let tap = &l.tap;
    let mut egress = String::new();
    if !e.allow.is_empty() {
        egress += &format!(
            "\t\tiifname \"{tap}\" oifname \"{p}\" ip daddr {{ {} }} accept\n",
            set(&e.allow)
        );
    }
    if e.internet {
        if !e.deny.is_empty() {
            egress += &format!(
                "\t\tiifname \"{tap}\" ip daddr {{ {} }} drop\n",
                set(&e.deny)
            );
        }
        egress += &format!(
            "\t\tiifname \"{tap}\" ip daddr {{ {} }} drop\n\
             \t\tiifname \"{tap}\" oifname \"{p}\" accept\n",
            set(&wrenn_egress::CLOSED)
        );
    }
    let snat = if e.any() {
        format!(
            "\t\toifname \"{p}\" ip saddr {GUEST_IP} snat ip to {}\n",
            l.ns_veth_ip
        )
    } else {
        String::new()
    };
    format!(
        "{reset}\
         table inet {prefix} {{\n\
         \tchain guard {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname \"{tap}\" ip saddr != {GUEST_IP} drop\n\
         \t\tiifname \"{tap}\" meta nfproto ipv6 drop\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tiifname \"{p}\" ip daddr {host_ip} dnat ip to {GUEST_IP}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {snat}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{p}\" oifname \"{tap}\" ip daddr {GUEST_IP} ct status dnat accept\n\
         {egress}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{tap}\" ct state established,related accept\n\
         \t\tiifname \"{tap}\" drop\n\
         \t}}\n\
         }}\n",
        reset = delete_table_cmds(prefix),
        host_ip = l.host_ip,
    )
}

/// Commands that delete table `t` whether or not it exists (nft 1.0.6 has no `destroy`):
/// declaring a table is a no-op if it exists, then it is deleted, all in one transaction.
pub(crate) fn delete_table_cmds(t: &str) -> String {
    format!("table inet {t} {{}}\ndelete table inet {t}\n")
}

/// Applies `ruleset` atomically in the calling thread's namespace.
pub(crate) fn apply(ruleset: &str) -> Result<(), NetError> {
    let mut child = Command::new(crate::preflight::path(crate::preflight::Tool::Nft))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| NetError::Nft(format!("write ruleset to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(format!(
            "nft -f failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Names of the `inet` tables in the calling thread's namespace.
pub(crate) fn inet_tables() -> Result<Vec<String>, NetError> {
    let out = Command::new(crate::preflight::path(crate::preflight::Tool::Nft))
        .args(["-j", "list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Nft(format!("run nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(format!(
            "nft list tables failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_inet_tables(&out.stdout)
}

fn parse_inet_tables(json: &[u8]) -> Result<Vec<String>, NetError> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| NetError::Nft(format!("parse `nft -j list tables`: {e}")))?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(items
        .iter()
        .filter_map(|item| item.get("table"))
        .filter(|t| t.get("family").and_then(|f| f.as_str()) == Some("inet"))
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inet_tables_only() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "wrenn-sbx-3", "handle": 1}},
            {"table": {"family": "ip", "name": "nat", "handle": 2}},
            {"table": {"family": "inet", "name": "filter", "handle": 3}}]}"#;
        assert_eq!(
            parse_inet_tables(json).expect("parse"),
            vec!["wrenn-sbx-3".to_owned(), "filter".to_owned()]
        );
        assert!(
            parse_inet_tables(br#"{"nftables": []}"#)
                .expect("parse")
                .is_empty()
        );
        assert!(parse_inet_tables(b"not json").is_err());
    }

    /// The forward rules from the guest's TAP, in order.
    fn from_tap(rules: &str) -> Vec<&str> {
        rules
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.starts_with("iifname \"tap0\"")
                    && !l.contains("saddr")
                    && !l.contains("nfproto")
                    && !l.contains("ct state")
                    && !l.ends_with("iifname \"tap0\" drop")
            })
            .collect()
    }

    #[test]
    fn egress_rules_open_before_they_close() {
        let l = SlotLayout::new("w", 2);
        let eg =
            |internet, allow: &[&str], deny: &[&str]| Egress::parse(internet, allow, deny).unwrap();
        // No egress: nothing leaves, no SNAT, the host side drops the veth's traffic.
        let none = eg(false, &[], &[]);
        assert!(from_tap(&sandbox_ruleset("w", &l, &none)).is_empty());
        assert!(!sandbox_ruleset("w", &l, &none).contains("snat"));
        assert!(
            host_ruleset("w", &l, &none).contains(&format!("iifname \"{}\" drop", l.host_veth))
        );
        // Internet: closed ranges dropped, then out.
        let net = from_tap(&sandbox_ruleset("w", &l, &eg(true, &[], &[]))).join("\n");
        assert!(
            net.starts_with("iifname \"tap0\" ip daddr { 0.0.0.0/8, 10.0.0.0/8,"),
            "{net}"
        );
        assert!(
            net.ends_with(&format!("oifname \"{}\" accept", l.ns_veth)),
            "{net}"
        );
        // Opened networks first (through the closed ranges), then the caller's closed ones.
        let both = sandbox_ruleset("w", &l, &eg(true, &["10.9.0.0/16"], &["8.8.8.8"]));
        let rules = from_tap(&both);
        assert_eq!(rules.len(), 4, "{rules:?}");
        assert!(
            rules[0].contains("ip daddr { 10.9.0.0/16 } accept"),
            "{rules:?}"
        );
        assert!(
            rules[1].contains("ip daddr { 8.8.8.8/32 } drop"),
            "{rules:?}"
        );
        // Only opened networks: those and nothing else, on both sides.
        let only = eg(false, &["10.9.0.0/16", "1.1.1.1"], &[]);
        let only_rules = sandbox_ruleset("w", &l, &only);
        let rules = from_tap(&only_rules);
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert!(
            rules[0].contains("{ 1.1.1.1/32, 10.9.0.0/16 } accept"),
            "{rules:?}"
        );
        assert!(sandbox_ruleset("w", &l, &only).contains("snat"));
        let host = host_ruleset("w", &l, &only);
        assert!(
            host.contains("ip daddr { 1.1.1.1/32, 10.9.0.0/16 } accept"),
            "{host}"
        );
        assert!(host.contains("masquerade"), "{host}");
    }
}
