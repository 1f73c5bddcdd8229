//! Host tools the build (and booting its result) needs, each named with the Debian package
//! that provides it, checked before any work starts.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::error::{ImageError, Result};

/// A command and the Debian package that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prerequisite {
    pub command: &'static str,
    pub package: &'static str,
}

const fn req(command: &'static str, package: &'static str) -> Prerequisite {
    Prerequisite { command, package }
}

/// What `wrenn image build` runs.
pub const BUILD: &[Prerequisite] = &[
    req("debootstrap", "debootstrap"),
    req("mkfs.ext4", "e2fsprogs"),
    req("cpio", "cpio"),
    req("dpkg-deb", "dpkg"),
    req("apt-get", "apt"),
    req("apt-cache", "apt"),
    req("chroot", "coreutils"),
    req("cp", "coreutils"),
];

/// What booting a built image under QEMU needs (the agent, the boot test).
pub const BOOT: &[Prerequisite] = &[
    req("qemu-system-x86_64", "qemu-system-x86"),
    req("qemu-img", "qemu-utils"),
];

/// Directories searched besides `$PATH`: a non-login root shell often lacks the sbin ones,
/// where debootstrap and mkfs.ext4 live.
const SBIN_DIRS: &str = "/usr/local/sbin:/usr/sbin:/sbin";

/// Fails with every missing command and its package named, or succeeds when all are there.
pub fn check(required: &[Prerequisite]) -> Result<()> {
    let missing = missing(required, &search_path(std::env::var_os("PATH")));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImageError::MissingPrerequisites(missing))
    }
}

/// The prerequisites whose command is not found on `search_path`.
pub fn missing(required: &[Prerequisite], search_path: &OsStr) -> Vec<Prerequisite> {
    required
        .iter()
        .filter(|p| which::which_in(p.command, Some(search_path), Path::new("/")).is_err())
        .copied()
        .collect()
}

/// `$PATH` with the sbin directories appended.
pub fn search_path(path: Option<OsString>) -> OsString {
    let mut joined = path.unwrap_or_default();
    if !joined.is_empty() {
        joined.push(":");
    }
    joined.push(SBIN_DIRS);
    joined
}

/// The distinct packages providing `prereqs`, in order.
pub fn packages(prereqs: &[Prerequisite]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for p in prereqs {
        if !out.contains(&p.package) {
            out.push(p.package);
        }
    }
    out
}

/// Fails unless the process runs as root.
pub fn check_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ImageError::NotRoot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn reports_only_missing_commands_with_their_packages() {
        let dir = tempfile::tempdir().unwrap();
        fake_bin(dir.path(), "debootstrap");
        fake_bin(dir.path(), "cpio");
        // Present but not executable: not usable, so missing.
        std::fs::write(dir.path().join("dpkg-deb"), "").unwrap();
        let wanted = [
            req("debootstrap", "debootstrap"),
            req("mkfs.ext4", "e2fsprogs"),
            req("cpio", "cpio"),
            req("dpkg-deb", "dpkg"),
        ];
        let missing = missing(&wanted, dir.path().as_os_str());
        assert_eq!(
            missing,
            vec![req("mkfs.ext4", "e2fsprogs"), req("dpkg-deb", "dpkg")]
        );

        let msg = ImageError::MissingPrerequisites(missing).to_string();
        assert_eq!(
            msg,
            "missing prerequisites: mkfs.ext4 (package e2fsprogs), dpkg-deb (package dpkg); \
             install them with `apt-get install e2fsprogs dpkg`"
        );
    }

    #[test]
    fn nothing_missing_when_all_present() {
        let dir = tempfile::tempdir().unwrap();
        fake_bin(dir.path(), "qemu-img");
        let missing = missing(&[req("qemu-img", "qemu-utils")], dir.path().as_os_str());
        assert!(missing.is_empty());
    }

    #[test]
    fn packages_are_deduplicated() {
        assert_eq!(
            packages(BUILD),
            [
                "debootstrap",
                "e2fsprogs",
                "cpio",
                "dpkg",
                "apt",
                "coreutils"
            ]
        );
    }

    #[test]
    fn sbin_is_always_searched() {
        assert_eq!(search_path(None), "/usr/local/sbin:/usr/sbin:/sbin");
        assert_eq!(
            search_path(Some("/bin".into())),
            "/bin:/usr/local/sbin:/usr/sbin:/sbin"
        );
    }
}
