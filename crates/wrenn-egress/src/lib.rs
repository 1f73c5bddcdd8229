//! What a sandbox's guest may reach beyond its host — shared by the control plane, which
//! decides who may open what, and the agent, which turns it into nftables rules.
//!
//! Without internet a guest reaches nothing. With it, public addresses, never [`CLOSED`]
//! (private and carrier-grade NAT ranges, link-local with the cloud metadata service, and
//! what [`NEVER_OPEN`] lists). A sandbox may also name networks to open (`allow`, E2B's
//! `allowOut`: reachable even without internet, and through the closed ranges) and to close
//! (`deny`, E2B's `denyOut`); `allow` wins where both match, as in E2B.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Entries each list may hold: every one is a rule in the sandbox's firewall.
pub const MAX_RULES: usize = 64;

/// Ranges no sandbox may open: "this network", loopback (the guest's own), multicast and
/// reserved.
pub const NEVER_OPEN: [Ipv4Net; 3] = [
    net(Ipv4Addr::new(0, 0, 0, 0), 8),
    net(Ipv4Addr::new(127, 0, 0, 0), 8),
    net(Ipv4Addr::new(224, 0, 0, 0), 3),
];

/// Closed to a guest with internet unless its sandbox opens them: networks behind the host
/// (private, carrier-grade NAT) and link-local (169.254.169.254, the cloud's metadata
/// service), plus [`NEVER_OPEN`].
pub const CLOSED: [Ipv4Net; 8] = [
    NEVER_OPEN[0],
    net(Ipv4Addr::new(10, 0, 0, 0), 8),
    net(Ipv4Addr::new(100, 64, 0, 0), 10),
    NEVER_OPEN[1],
    net(Ipv4Addr::new(169, 254, 0, 0), 16),
    net(Ipv4Addr::new(172, 16, 0, 0), 12),
    net(Ipv4Addr::new(192, 168, 0, 0), 16),
    NEVER_OPEN[2],
];

const fn net(a: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(a, len) {
        Ok(n) => n,
        Err(_) => panic!("prefix length over 32"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0:?} is not an IPv4 address or network (a.b.c.d or a.b.c.d/n)")]
    Parse(String),
    #[error("at most {MAX_RULES} networks per list")]
    TooMany,
    #[error("{0} cannot be opened for a sandbox (this network, loopback, multicast or reserved)")]
    NeverOpen(Ipv4Net),
}

/// One sandbox's egress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Public addresses (all but [`CLOSED`]).
    pub internet: bool,
    /// Opened, also through [`CLOSED`] and without `internet`.
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
    /// Closed, unless also in `allow`.
    #[serde(default)]
    pub deny: Vec<Ipv4Net>,
}

impl Egress {
    /// Parses the lists as given by a caller: each entry an address (a /32) or a network
    /// (host bits are dropped: `10.1.2.3/8` is `10.0.0.0/8`). Nothing in [`NEVER_OPEN`] may
    /// be allowed.
    pub fn parse<S: AsRef<str>>(
        internet: bool,
        allow: &[S],
        deny: &[S],
    ) -> Result<Egress, EgressError> {
        let list = |v: &[S]| -> Result<Vec<Ipv4Net>, EgressError> {
            if v.len() > MAX_RULES {
                return Err(EgressError::TooMany);
            }
            let mut out: Vec<Ipv4Net> = v
                .iter()
                .map(|s| parse_net(s.as_ref()))
                .collect::<Result<_, _>>()?;
            out.sort();
            out.dedup();
            Ok(out)
        };
        let e = Egress {
            internet,
            allow: list(allow)?,
            deny: list(deny)?,
        };
        if let Some(n) = e
            .allow
            .iter()
            .find(|n| NEVER_OPEN.iter().any(|c| overlaps(n, c)))
        {
            return Err(EgressError::NeverOpen(*n));
        }
        Ok(e)
    }

    /// Whether the guest sends anything beyond its host.
    pub fn any(&self) -> bool {
        self.internet || !self.allow.is_empty()
    }

    /// The allowed networks that reach into [`CLOSED`]: addresses behind the host, which only
    /// a sandbox on its team's own host may open (the control plane's rule).
    pub fn opens_closed(&self) -> Vec<Ipv4Net> {
        self.allow
            .iter()
            .filter(|n| CLOSED.iter().any(|c| overlaps(n, c)))
            .copied()
            .collect()
    }
}

/// `a.b.c.d` (a /32) or `a.b.c.d/n`, host bits dropped.
pub fn parse_net(s: &str) -> Result<Ipv4Net, EgressError> {
    let bad = || EgressError::Parse(s.chars().take(64).collect());
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::from(a));
    }
    let (a, len) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    // 0–32 in plain digits: `parse::<u8>` would take a sign or a leading zero.
    if len.is_empty()
        || len.len() > 2
        || (len.len() == 2 && len.starts_with('0'))
        || !len.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    Ipv4Net::new(a, len).map(|n| n.trunc()).map_err(|_| bad())
}

/// Whether two networks share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_as_addresses_or_networks() {
        assert_eq!(parse_net("1.2.3.4"), Ok(n("1.2.3.4/32")));
        assert_eq!(parse_net("10.1.2.3/8"), Ok(n("10.0.0.0/8")));
        assert_eq!(parse_net("0.0.0.0/0"), Ok(n("0.0.0.0/0")));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/08",
            " 1.2.3.4",
            "01.2.3.4",
            "1.2.3.4/+8",
            "::1",
            "a/8",
            "1.2.3.4/08x",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_may_be_opened() {
        let e = Egress::parse(
            false,
            &["10.9.0.0/16", "8.8.8.8", "8.8.8.8/32"],
            &["1.0.0.0/8"],
        )
        .unwrap();
        assert_eq!(e.allow, [n("8.8.8.8/32"), n("10.9.0.0/16")]);
        assert!(e.any());
        assert_eq!(e.opens_closed(), [n("10.9.0.0/16")]);
        // The metadata service, and a wide net that covers private ranges, reach into CLOSED.
        let meta = Egress::parse(true, &["169.254.169.254"], &[] as &[&str]).unwrap();
        assert_eq!(meta.opens_closed().len(), 1);
        let wide = Egress::parse(true, &["0.0.0.0/1"], &[] as &[&str]);
        assert!(matches!(wide, Err(EgressError::NeverOpen(_))), "{wide:?}");
        for never in ["127.0.0.1", "224.0.0.0/4", "0.0.0.0/0", "240.0.0.1"] {
            assert!(
                matches!(
                    Egress::parse(true, &[never], &[] as &[&str]),
                    Err(EgressError::NeverOpen(_))
                ),
                "{never}"
            );
        }
        // Denying anything is fine; nothing at all is no egress.
        assert!(
            !Egress::parse(false, &[] as &[&str], &["127.0.0.0/8"])
                .unwrap()
                .any()
        );
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("8.8.{i}.0/24")).collect();
        assert_eq!(Egress::parse(true, &many, &[]), Err(EgressError::TooMany));
    }
}
