//! The guest root filesystem: a copy of the debootstrap tree with the default user, the
//! repo's files, the guest init and envd added, packed into a sparse raw ext4 image with
//! `mkfs.ext4 -d` (nothing is mounted).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::{ImageError, IoContext, Result};
use crate::inputs::Inputs;

/// Where envd lives in the guest.
pub const ENVD_PATH: &str = "usr/local/bin/envd";

/// The sandbox's default user.
#[derive(Debug, Clone)]
pub struct User<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub home: &'a str,
    pub shell: &'a str,
}

/// Copies the debootstrap tree to `dest` (reflinks where the filesystem can).
pub fn copy_tree(tree: &Path, dest: &Path) -> Result<()> {
    cmd::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(tree)
            .arg(dest),
    )
    .map(|_| ())
}

/// Adds the user, the input files and envd to the tree at `root`; returns envd's
/// `--version` as run inside the tree (proof that the binary works against the guest's
/// libc).
pub fn customise(root: &Path, inputs: &Inputs, user: &User, envd: &Path) -> Result<String> {
    add_user(root, user)?;
    for (rel, file) in inputs.rootfs_files() {
        let dest = guest_path(root, rel)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
        }
        // Never write through a symlink the tree put there (e.g. /etc/resolv.conf).
        if dest.symlink_metadata().is_ok() {
            fs::remove_file(&dest).ctx(|| format!("replace {}", dest.display()))?;
        }
        fs::write(&dest, &file.bytes).ctx(|| format!("write {}", dest.display()))?;
        set_mode(&dest, mode_for(rel, file.executable))?;
    }
    let dest = root.join(ENVD_PATH);
    fs::copy(envd, &dest).ctx(|| format!("copy {} to {}", envd.display(), dest.display()))?;
    set_mode(&dest, 0o755)?;
    let version = cmd::stdout(
        Command::new("chroot")
            .arg(root)
            .arg(format!("/{ENVD_PATH}"))
            .arg("--version"),
    )
    .map_err(|e| ImageError::EnvdUnusable {
        path: envd.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(version.trim().to_string())
}

/// The guest's own tools create the account, so passwd, shadow, group and the home's
/// skeleton are exactly what Debian would make.
fn add_user(root: &Path, user: &User) -> Result<()> {
    cmd::run(
        Command::new("chroot")
            .arg(root)
            .args([
                "useradd",
                "--uid",
                &user.uid.to_string(),
                "--user-group",
                "--create-home",
            ])
            .args(["--home-dir", user.home, "--shell", user.shell, user.name])
            .env("LC_ALL", "C"),
    )
    .map(|_| ())
}

/// `rel` below `root`, refusing paths that would escape it.
fn guest_path(root: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel);
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(root.join(rel))
    } else {
        Err(ImageError::BadInputs(format!(
            "{} is not a plain relative path",
            rel.display()
        )))
    }
}

/// sudo ignores drop-ins that are writable by anyone but root; 0440 is what Debian uses.
fn mode_for(rel: &str, executable: bool) -> u32 {
    if rel.starts_with("etc/sudoers.d/") {
        0o440
    } else if executable {
        0o755
    } else {
        0o644
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

/// Apparent bytes of every file below `root` (an estimate of what the image must hold).
pub fn content_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Makes a sparse raw ext4 image of `size` bytes at `image` holding the tree at `root`.
pub fn make_ext4(root: &Path, image: &Path, size: u64) -> Result<()> {
    // Inodes, directories and the journal need room beyond the file bytes.
    let needed = content_bytes(root) + content_bytes(root) / 10 + (64 << 20);
    if needed > size {
        return Err(ImageError::ImageTooSmall {
            content: needed,
            size,
        });
    }
    let file = fs::File::create(image).ctx(|| format!("create {}", image.display()))?;
    file.set_len(size)
        .ctx(|| format!("size {}", image.display()))?;
    drop(file);
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "wrenn-root", "-m", "0"])
            // The file is fresh and sparse, so it reads as zeros: no need to write zeroed
            // inode tables (which would un-sparse it) or to have every guest boot zero them
            // lazily (which would grow each sandbox's overlay).
            .args(["-E", "assume_storage_prezeroed=1"])
            .arg("-d")
            .arg(root)
            .arg(image)
            .env("LC_ALL", "C"),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_for("etc/sudoers.d/90-wrenn-user", false), 0o440);
        assert_eq!(mode_for("usr/local/sbin/wrenn-init", true), 0o755);
        assert_eq!(mode_for("etc/hosts", false), 0o644);
    }

    #[test]
    fn input_paths_stay_inside_the_tree() {
        let root = Path::new("/r");
        assert_eq!(
            guest_path(root, "etc/hosts").unwrap(),
            Path::new("/r/etc/hosts")
        );
        assert!(guest_path(root, "../etc/passwd").is_err());
        assert!(guest_path(root, "/etc/passwd").is_err());
        assert!(guest_path(root, "etc/../../x").is_err());
    }
}
