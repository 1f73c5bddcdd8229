//! Where a build's outputs live below the files root (`AGENT_FILES_ROOTDIR`).

use std::path::{Path, PathBuf};

/// Default files root.
pub const DEFAULT_ROOT: &str = "/var/lib/wrenn";
/// Default cache directory (debootstrap trees, downloaded packages, logs).
pub const DEFAULT_CACHE: &str = "/var/cache/wrenn";

pub const VMLINUZ: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS: &str = "rootfs.ext4";

/// File name of a build's root image, unique per inputs hash (`rootfs-<hash12>.ext4`).
pub fn rootfs_name(inputs_hash: &str) -> String {
    let short: String = inputs_hash.chars().take(12).collect();
    format!("rootfs-{short}.ext4")
}
pub const MANIFEST: &str = "manifest.json";

/// Paths below one files root. Everything the manifest records is relative to it.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `kernels/<name>/`, relative.
    pub fn kernel_dir(name: &str) -> PathBuf {
        Path::new("kernels").join(name)
    }

    /// `images/<template>/`, relative.
    pub fn template_dir(template: &str) -> PathBuf {
        Path::new("images").join(template)
    }

    pub fn manifest(&self, template: &str) -> PathBuf {
        self.root.join(Self::template_dir(template)).join(MANIFEST)
    }

    pub fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }
}
