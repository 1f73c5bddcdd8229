//! The repo-kept inputs of a template (`images/<template>/`): the package list, the
//! initramfs script and module list, and the files laid over the root filesystem. They are
//! compiled into the binary, so `wrenn image build` works from any directory; `--inputs`
//! reads the same layout from a directory instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::error::{ImageError, IoContext, Result};

/// Package list: one Debian package per line, `#` comments.
pub const PACKAGES: &str = "packages";
/// The initramfs's `/init`.
pub const INITRAMFS_INIT: &str = "initramfs/init";
/// Kernel modules the initramfs loads, in order.
pub const INITRAMFS_MODULES: &str = "initramfs/modules";
/// Files below this prefix are copied into the root filesystem at the same relative path.
pub const ROOTFS_PREFIX: &str = "rootfs/";
/// The guest init every template must provide.
pub const GUEST_INIT: &str = "usr/local/sbin/wrenn-init";

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub bytes: Vec<u8>,
    pub executable: bool,
}

/// All input files of a template, by path relative to its input directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub files: BTreeMap<String, InputFile>,
}

macro_rules! embedded {
    ($($path:literal => $exec:literal),* $(,)?) => {
        [$(($path, include_bytes!(concat!("../../../images/base/", $path)).as_slice(), $exec)),*]
    };
}

/// The `base` template's inputs as compiled in. A test checks this list against the
/// directory, so a file added there and forgotten here fails CI.
const BASE: [(&str, &[u8], bool); 8] = embedded![
    "packages" => false,
    "initramfs/init" => true,
    "initramfs/modules" => false,
    "rootfs/etc/hostname" => false,
    "rootfs/etc/hosts" => false,
    "rootfs/etc/resolv.conf" => false,
    "rootfs/etc/sudoers.d/90-wrenn-user" => false,
    "rootfs/usr/local/sbin/wrenn-init" => true,
];

impl Inputs {
    /// The `base` template's inputs compiled into this binary.
    pub fn embedded_base() -> Self {
        let files = BASE
            .iter()
            .map(|(path, bytes, executable)| {
                (
                    path.to_string(),
                    InputFile {
                        bytes: bytes.to_vec(),
                        executable: *executable,
                    },
                )
            })
            .collect();
        Self { files }
    }

    /// Reads every regular file below `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = BTreeMap::new();
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry =
                entry.map_err(|e| ImageError::BadInputs(format!("{}: {e}", dir.display())))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(dir)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| {
                    ImageError::BadInputs(format!("unusable file name {}", entry.path().display()))
                })?
                .to_string();
            let bytes =
                fs::read(entry.path()).ctx(|| format!("read {}", entry.path().display()))?;
            let mode = entry
                .metadata()
                .map_err(|e| ImageError::BadInputs(format!("{}: {e}", entry.path().display())))?
                .permissions()
                .mode();
            files.insert(
                rel,
                InputFile {
                    bytes,
                    executable: mode & 0o111 != 0,
                },
            );
        }
        let inputs = Self { files };
        inputs.validate()?;
        Ok(inputs)
    }

    /// Checks that the required files are present and the package list is usable.
    pub fn validate(&self) -> Result<()> {
        for required in [PACKAGES, INITRAMFS_INIT, INITRAMFS_MODULES] {
            self.text(required)?;
        }
        let init = format!("{ROOTFS_PREFIX}{GUEST_INIT}");
        match self.files.get(&init) {
            Some(f) if f.executable => {}
            Some(_) => return Err(ImageError::BadInputs(format!("{init} must be executable"))),
            None => return Err(ImageError::BadInputs(format!("{init} is missing"))),
        }
        self.packages().map(|_| ())
    }

    /// An input file as text.
    pub fn text(&self, rel: &str) -> Result<&str> {
        let file = self
            .files
            .get(rel)
            .ok_or_else(|| ImageError::BadInputs(format!("{rel} is missing")))?;
        std::str::from_utf8(&file.bytes)
            .map_err(|_| ImageError::BadInputs(format!("{rel} is not UTF-8")))
    }

    /// The package list, sorted and deduplicated (order and comments don't change the
    /// result, so they don't change the cache key either).
    pub fn packages(&self) -> Result<Vec<String>> {
        let mut packages = Vec::new();
        for word in content_lines(self.text(PACKAGES)?) {
            if !is_package_name(word) {
                return Err(ImageError::BadInputs(format!(
                    "{PACKAGES}: `{word}` is not a Debian package name"
                )));
            }
            packages.push(word.to_string());
        }
        if packages.is_empty() {
            return Err(ImageError::BadInputs(format!(
                "{PACKAGES} lists no package"
            )));
        }
        packages.sort();
        packages.dedup();
        Ok(packages)
    }

    /// Files laid over the root filesystem: (path inside the guest, file).
    pub fn rootfs_files(&self) -> impl Iterator<Item = (&str, &InputFile)> {
        self.files
            .iter()
            .filter_map(|(rel, f)| rel.strip_prefix(ROOTFS_PREFIX).map(|p| (p, f)))
    }
}

/// Non-empty lines with `#` comments and surrounding blanks removed.
pub fn content_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// Debian policy 5.6.7: lower case letters, digits, `+`, `-`, `.`; at least two characters,
/// starting with an alphanumeric.
fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_base() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/base")
    }

    #[test]
    fn embedded_inputs_match_the_repo_directory() {
        assert_eq!(
            Inputs::embedded_base(),
            Inputs::from_dir(&repo_base()).unwrap()
        );
    }

    #[test]
    fn scripts_parse() {
        // dash is the guest's /bin/sh; busybox ash accepts the same POSIX syntax.
        for script in [INITRAMFS_INIT, "rootfs/usr/local/sbin/wrenn-init"] {
            let out = std::process::Command::new("sh")
                .arg("-n")
                .arg(repo_base().join(script))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn base_package_list() {
        let packages = Inputs::embedded_base().packages().unwrap();
        for p in [
            "bash",
            "sudo",
            "ca-certificates",
            "curl",
            "python3",
            "procps",
            "iproute2",
        ] {
            assert!(
                packages.iter().any(|x| x == p),
                "{p} missing from {packages:?}"
            );
        }
    }

    fn with_packages(text: &str) -> Inputs {
        let mut inputs = Inputs::embedded_base();
        inputs.files.insert(
            PACKAGES.into(),
            InputFile {
                bytes: text.as_bytes().to_vec(),
                executable: false,
            },
        );
        inputs
    }

    #[test]
    fn package_list_is_normalised() {
        let a = with_packages("curl\nbash # shell\n\n# comment\nbash\n")
            .packages()
            .unwrap();
        assert_eq!(a, ["bash", "curl"]);
    }

    #[test]
    fn bad_package_lists_are_refused() {
        assert!(with_packages("# nothing\n").packages().is_err());
        let err = with_packages("bash\ncurl; rm -rf /\n")
            .packages()
            .unwrap_err();
        assert!(
            err.to_string().contains("not a Debian package name"),
            "{err}"
        );
        assert!(with_packages("--option\n").packages().is_err());
    }

    #[test]
    fn guest_init_must_be_executable() {
        let mut inputs = Inputs::embedded_base();
        let key = format!("{ROOTFS_PREFIX}{GUEST_INIT}");
        inputs.files.get_mut(&key).unwrap().executable = false;
        assert!(
            inputs
                .validate()
                .unwrap_err()
                .to_string()
                .contains("executable")
        );
        inputs.files.remove(&key);
        assert!(
            inputs
                .validate()
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}
