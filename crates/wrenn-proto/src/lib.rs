//! Protocol types shared by all Wrenn components.
//!
//! Owns the code generated from `proto/` (buffa messages with proto3-JSON, Connect service
//! traits and clients). It must not contain behaviour: servers and clients live in the
//! component crates.

connectrpc::include_generated!();
