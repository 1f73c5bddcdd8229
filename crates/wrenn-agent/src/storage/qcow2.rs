//! qcow2 overlays over a base image (a template's raw root, or a warm base's frozen qcow2
//! disk), made and inspected with `qemu-img` (Debian `qemu-utils`). An overlay is instant and
//! sparse: it holds only the clusters the guest wrote.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::StorageError;

const MIB: u64 = 1024 * 1024;

/// The `qemu-img` binary the agent's preflight resolved (`WRENN_QEMU_IMG` overrides it).
fn qemu_img() -> PathBuf {
    crate::preflight::path(crate::preflight::Tool::QemuImg)
}

/// Creates `overlay` as a qcow2 image backed by the raw `base`. `size_mb` grows the virtual
/// disk beyond the base (the guest sees a bigger device; growing the filesystem is the guest's
/// business); it may not shrink it.
pub async fn create_overlay(
    base: &Path,
    overlay: &Path,
    size_mb: Option<u32>,
) -> Result<(), StorageError> {
    if !base.is_file() {
        return Err(StorageError::MissingBase(base.to_path_buf()));
    }
    // qemu-img create would silently truncate an existing image: a sandbox's disk must never
    // be replaced by accident.
    if overlay.exists() {
        return Err(StorageError::AlreadyExists(overlay.to_path_buf()));
    }
    // The backing path is stored in the overlay and resolved relative to it: keep it absolute.
    let base = std::path::absolute(base)?;
    let format = if base.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let mut cmd = Command::new(qemu_img());
    cmd.args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base)
        .arg(overlay);
    if let Some(mb) = size_mb {
        let base_bytes = virtual_size(&base).await?;
        if mb == 0 || u64::from(mb) * MIB < base_bytes {
            return Err(StorageError::InvalidSize {
                requested_mb: mb,
                base_bytes,
            });
        }
        cmd.arg(format!("{mb}M"));
    }
    let out = cmd.output().await.map_err(StorageError::Spawn)?;
    if !out.status.success() {
        // Don't leave a half-written image behind.
        let _ = std::fs::remove_file(overlay);
        return Err(StorageError::QemuImg {
            command: "create",
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Hard-links `base` into `dir` (as `base.qcow2` or `base.raw`) and returns the link, so a
/// sandbox's overlay never depends on a path someone else owns: a snapshot template deleted
/// with `force`, a warm base collected or an image rebuilt leaves the sandbox its base. Falls
/// back to `base` itself when a link cannot be made (another filesystem).
pub fn pin_base(base: &Path, dir: &Path) -> PathBuf {
    let ext = if base.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let link = dir.join(format!("base.{ext}"));
    let _ = std::fs::remove_file(&link);
    match std::fs::hard_link(base, &link) {
        Ok(()) => link,
        Err(e) => {
            tracing::warn!(base = %base.display(), error = %e, "cannot hard-link the base image; the overlay uses its path");
            base.to_path_buf()
        }
    }
}

/// Writes `src` and its whole backing chain into one standalone qcow2 at `dst` (a temp name,
/// then a rename): what a snapshot template keeps, so chains never grow.
pub async fn flatten(src: &Path, dst: &Path) -> Result<(), StorageError> {
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let out = Command::new(qemu_img())
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(src)
        .arg(&tmp)
        .output()
        .await
        .map_err(StorageError::Spawn)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(StorageError::QemuImg {
            command: "convert",
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// Bytes the file really occupies on the host (`st_blocks * 512`), not its apparent size.
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// The disk size the guest sees, from `qemu-img info`. Works on images in use by a running VM
/// (`-U`: no lock taken).
pub async fn virtual_size(path: &Path) -> Result<u64, StorageError> {
    let out = Command::new(qemu_img())
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .await
        .map_err(StorageError::Spawn)?;
    if !out.status.success() {
        return Err(StorageError::QemuImg {
            command: "info",
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| StorageError::Parse(format!("qemu-img info: {e}")))?;
    info.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| StorageError::Parse("qemu-img info: no virtual-size".into()))
}
