//! Filesystem helpers: scratch directories that are safe to delete, atomic replacement.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext, Result};

/// A scratch directory removed on drop, but only once nothing is mounted below it:
/// debootstrap mounts /proc and /sys in its target (and may bind /dev), and a recursive
/// delete through a bind mount would delete the host's files.
#[derive(Debug)]
pub struct ScratchDir {
    path: Option<PathBuf>,
}

impl ScratchDir {
    /// Creates a fresh directory `<parent>/<prefix>XXXXXX`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .ctx(|| format!("create a scratch directory in {}", parent.display()))?;
        Ok(Self {
            path: Some(dir.keep()),
        })
    }

    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Unmounts everything below the directory and deletes it.
    pub fn remove(mut self) -> Result<()> {
        match self.path.take() {
            Some(path) => remove_tree(&path),
            None => Ok(()),
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = remove_tree(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "scratch directory left behind");
        }
    }
}

/// Unmounts everything at or below `dir`, then deletes it; refuses when a mount survives.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    fs::remove_dir_all(dir).ctx(|| format!("remove {}", dir.display()))
}

/// Unmounts (lazily) every mount point at or below `dir`, deepest first; fails when one
/// survives.
pub fn unmount_under(dir: &Path) -> Result<()> {
    for mount in mounts_under(dir)?.iter().rev() {
        if let Err(e) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %mount.display(), error = %e, "umount failed");
        }
    }
    if mounts_under(dir)?.is_empty() {
        Ok(())
    } else {
        Err(ImageError::StillMounted(dir.to_path_buf()))
    }
}

/// Mount points at or below `dir`, in mount order (parents before children).
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = fs::canonicalize(dir).ctx(|| format!("resolve {}", dir.display()))?;
    let table =
        fs::read_to_string("/proc/self/mountinfo").ctx(|| "read /proc/self/mountinfo".into())?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(&dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && let Ok(octal) = std::str::from_utf8(octal)
            && let Ok(v) = u8::from_str_radix(octal, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .ctx(|| format!("create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .ctx(|| format!("write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .ctx(|| format!("rename into {}", path.display()))?;
    fsync_dir(dir)
}

/// Renames `from` over `to` (same filesystem) and makes the rename durable.
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    File::open(from)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync {}", from.display()))?;
    fs::rename(from, to).ctx(|| format!("rename {} to {}", from.display(), to.display()))?;
    fsync_dir(to.parent().unwrap_or(Path::new(".")))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync {}", dir.display()))
}

/// Bytes allocated on disk (`st_blocks * 512`), not the apparent size.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ctx(|| format!("stat {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/x\134"), r"/x\");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn scratch_dir_is_removed() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = ScratchDir::new_in(parent.path(), ".t-").unwrap();
        let p = scratch.path().to_path_buf();
        fs::write(p.join("f"), b"x").unwrap();
        drop(scratch);
        assert!(!p.exists());
    }
}
