//! The Wrenn host agent.
//!
//! Owns everything on one host that makes a sandbox a VM: the VMM processes (`vmm`), the
//! per-sandbox network namespaces, TAPs and firewall rules (`network`), the copy-on-write root
//! disks (`storage`), the sandbox lifecycle with its rollback, deadlines and restart recovery
//! (`sandbox`), and the RPC service the control plane drives (`rpc`), relaying sandbox I/O to
//! each guest's envd (`envd_client`). It must not touch the control plane's database or know
//! about users and teams beyond the IDs it is given.

pub mod auth;
pub mod envd_client;
pub mod network;
pub mod rpc;
pub mod storage;
pub mod vmm;
