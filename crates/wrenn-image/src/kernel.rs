//! The guest kernel: Debian's cloud kernel, taken from its package without installing it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::apt::{self, PackageRef};
use crate::error::{ImageError, IoContext, Result};

/// The metapackage that names the current cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";

/// Kernel arguments every guest of this kernel needs besides its VMM-specific ones:
/// root disk, serial console, and the TSC settings without which TCG boots hang at random.
pub const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw panic=-1 \
    tsc_early_khz=2000000 tsc=reliable no_timer_check lpj=4000000";

/// The versioned kernel package the metapackage's candidate (`meta`, from
/// [`apt::candidates`]) depends on.
pub fn resolve(meta: &apt::Stanza) -> Result<PackageRef> {
    apt::pinned_dependency(meta, "linux-image-").ok_or_else(|| ImageError::AptMetadata {
        package: KERNEL_META.into(),
        detail: "no `linux-image-* (= version)` dependency".into(),
    })
}

/// An unpacked kernel package.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of this kernel.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the unpacked package.
    pub modules: PathBuf,
}

/// Unpacks `deb` into `dir` and finds the kernel image and its modules.
pub fn unpack(deb: &Path, dir: &Path) -> Result<Kernel> {
    apt::extract(deb, dir)?;
    let boot = dir.join("boot");
    let mut found = fs::read_dir(&boot)
        .ctx(|| format!("list {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            Some((name.strip_prefix("vmlinuz-")?.to_string(), e.path()))
        });
    let (release, vmlinuz) = found.next().ok_or_else(|| ImageError::Kernel {
        release: deb.display().to_string(),
        detail: "package has no boot/vmlinuz-*".into(),
    })?;
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| dir.join(d).join(&release))
        .find(|p| p.is_dir())
        .ok_or_else(|| ImageError::Kernel {
            release: release.clone(),
            detail: "package has no lib/modules/<release>".into(),
        })?;
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}
