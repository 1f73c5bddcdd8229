//! Command-line and environment configuration.

use clap::Parser;

/// Largest single Connect message envd accepts (request JSON). File bodies go through
/// `/files`, which streams, so this only bounds RPC payloads.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(name = "envd", version = crate::ENVD_VERSION, about = "Wrenn in-sandbox agent (E2B envd protocol)")]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "ENVD_PORT", default_value_t = 49983)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "ENVD_ADDR", default_value = "0.0.0.0")]
    pub addr: String,
    /// User that runs commands and owns files when a request names none; `/init` can change it.
    #[arg(long, env = "ENVD_DEFAULT_USER", default_value = "user")]
    pub default_user: String,
    /// Default working directory (defaults to the user's home).
    #[arg(long, env = "ENVD_DEFAULT_WORKDIR")]
    pub default_workdir: Option<std::path::PathBuf>,
    /// Seconds between keepalive events on streams when the client sends no
    /// `Keepalive-Ping-Interval` header.
    #[arg(long, default_value_t = 90)]
    pub keepalive_secs: u64,
    /// envd runs as a VM guest's PID 1 (the image's init passes it): `/init` may then set the
    /// wall clock from its `timestamp` and reseed the kernel's random generator from its
    /// `entropy`, which a restored snapshot needs. Off elsewhere, where the clock is the host's.
    #[arg(long, env = "ENVD_GUEST")]
    pub guest: bool,
}

/// Limits applied to every Connect request: malformed or oversized input is refused, never
/// buffered without bound.
pub fn connect_limits() -> connectrpc::Limits {
    connectrpc::Limits::default()
        .with_max_request_body_size(MAX_MESSAGE_BYTES)
        .with_max_message_size(MAX_MESSAGE_BYTES)
}
