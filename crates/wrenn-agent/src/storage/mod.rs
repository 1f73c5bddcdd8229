//! Root disks: per-sandbox copy-on-write overlays over a shared read-only base image.
//!
//! The qemu driver uses qcow2 overlays whose backing file is the raw base image (`qcow2`).
//! Disk usage is always allocated blocks, never apparent size.

pub mod qcow2;

pub use qcow2::{allocated_bytes, create_overlay, flatten, pin_base, virtual_size};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("disk size {requested_mb} MiB is smaller than the base image ({base_bytes} bytes)")]
    InvalidSize { requested_mb: u32, base_bytes: u64 },
    #[error("base image {0} does not exist")]
    MissingBase(PathBuf),
    #[error("overlay {0} already exists")]
    AlreadyExists(PathBuf),
    #[error("cannot run qemu-img: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("qemu-img {command} failed ({status}): {stderr}")]
    QemuImg {
        command: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("unexpected qemu-img output: {0}")]
    Parse(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
