//! The Wrenn control plane.
//!
//! A stateless server whose truth lives in the database (SQLite by default, PostgreSQL in
//! production): accounts, teams, API keys, hosts, sandboxes and templates. It owns the public
//! API and talks to host agents only through their authenticated RPC; it never touches a VM,
//! a network namespace or a disk itself.

pub mod agents;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod hostmonitor;
pub mod ids;
pub mod proxy;
pub mod scheduler;
pub mod server;
pub mod telemetry;
