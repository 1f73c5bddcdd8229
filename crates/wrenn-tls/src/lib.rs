//! TLS between the control plane and its host agents (DESIGN §11: traffic between hosts is
//! encrypted and each side knows whom it talks to).
//!
//! - [`pin`]: clients that accept exactly the certificate whose fingerprint was exchanged out
//!   of band — how the control plane trusts an agent, and how an agent may trust its control
//!   plane.
//! - [`selfsigned`]: the agent's own certificate, made once and kept under its files root.
//! - [`listener`]: a TLS listener for `axum::serve` (both sides serve HTTPS with it);
//!   [`client::connect`] the dialing side.
//!
//! Crypto is rustls with the `ring` provider, passed explicitly, so nothing depends on a
//! process-wide default.

pub mod client;
pub mod listener;
pub mod pin;
pub mod selfsigned;

pub use listener::TlsListener;
pub use pin::{PinError, client_config, fingerprint, parse_fingerprint, provider};

/// Whether `host` (a URL's host: a name or an IP literal, IPv6 with or without brackets) is
/// this machine's loopback — the only place either side speaks plain HTTP to the other.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
        ] {
            assert!(super::is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "localhost.example",
            "cp.example",
            "",
            "[::2]",
            "0.0.0.0",
        ] {
            assert!(!super::is_loopback_host(h), "{h}");
        }
    }
}
