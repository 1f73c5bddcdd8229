//! `images/<template>/manifest.json`: what a built template is made of. Written last (and
//! atomically), so its presence with a matching inputs hash means the whole build landed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apt::PackageRef;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil;

/// Bumped when the manifest's shape changes incompatibly.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub template: String,
    /// Content hash of everything the build consumed (see `cache::BuildKey`).
    pub inputs_hash: String,
    /// RFC 3339, UTC.
    pub built_at: String,
    pub default_user: String,
    pub kernel: KernelInfo,
    pub envd: EnvdInfo,
    pub rootfs: RootfsInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Hash of what the kernel files depend on (`cache::kernel_key`).
    pub key: String,
    /// `uname -r` inside the guest.
    pub release: String,
    pub package: PackageRef,
    /// Relative to the files root.
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub vmlinuz_bytes: u64,
    pub initrd_bytes: u64,
    /// Modules the initramfs loads, in order.
    pub initrd_modules: Vec<String>,
    /// Arguments the guest needs on its kernel command line (besides the VMM-specific ones).
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvdInfo {
    pub version: String,
    pub sha256: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    /// Relative to the files root.
    pub path: PathBuf,
    pub format: String,
    pub size_bytes: u64,
    /// Blocks actually allocated (the image is sparse).
    pub allocated_bytes: u64,
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
}

/// What is on disk where a manifest should be.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Unreadable(String),
    Present(Box<Manifest>),
}

impl Manifest {
    pub fn load(path: &Path) -> Loaded {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => Loaded::Unreadable(e.to_string()),
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) if m.format == MANIFEST_FORMAT => Loaded::Present(Box::new(m)),
                Ok(m) => {
                    Loaded::Unreadable(format!("format {} (expected {MANIFEST_FORMAT})", m.format))
                }
                Err(e) => Loaded::Unreadable(e.to_string()),
            },
        }
    }

    /// Writes the manifest atomically (temp file, fsync, rename, fsync of the directory).
    pub fn store(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
        json.push(b'\n');
        fsutil::write_atomic(path, &json)
    }

    /// Removes a manifest (before replacing the files it describes).
    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx(|| format!("remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}
