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
