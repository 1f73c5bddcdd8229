//! `process.Process`: starting, following, feeding and signalling processes.
//!
//! - [`spawn`] builds the command (user, environment, cwd, pipes or PTY) and spawns it
//!   through the reaper;
//! - [`handle`] owns one running process: output fan-out, input, signals, its end;
//! - [`manager`] is the registry by pid and tag;
//! - [`service`] implements the Connect service on top.

pub mod handle;
pub mod manager;
pub mod service;
pub mod spawn;

pub use manager::ProcessManager;
pub use service::ProcessService;
