//! The initramfs: busybox, the virtio modules the cloud kernel lacks built in, and the
//! `/init` script that mounts the root disk and switches to the guest init. Packed as
//! cpio (newc) and gzip.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{ImageError, IoContext, Result};
use crate::inputs;

/// One line of the module list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub name: String,
    /// `name?`: skipped when the kernel lacks it.
    pub optional: bool,
}

/// Parses the module list (`#` comments, one name per line, `?` suffix for optional).
pub fn parse_modules(text: &str) -> Vec<ModuleSpec> {
    inputs::content_lines(text)
        .map(|l| match l.strip_suffix('?') {
            Some(name) => ModuleSpec {
                name: name.trim().to_string(),
                optional: true,
            },
            None => ModuleSpec {
                name: l.to_string(),
                optional: false,
            },
        })
        .collect()
}

/// The kernel treats `-` and `_` in module names as the same character.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// What a kernel has: built-in modules and module files.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    pub release: String,
    pub builtin: HashSet<String>,
    pub files: HashMap<String, PathBuf>,
}

impl ModuleIndex {
    /// Reads `modules.builtin` and finds every `.ko` below `modules_dir`.
    pub fn load(release: &str, modules_dir: &Path) -> Result<Self> {
        let builtin_file = modules_dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_file)
            .ctx(|| format!("read {}", builtin_file.display()))?
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
            .map(normalize)
            .collect();
        let mut files = HashMap::new();
        for entry in walkdir::WalkDir::new(modules_dir).into_iter().flatten() {
            let Some(name) = entry.file_name().to_str() else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(".ko") {
                files.insert(normalize(stem), entry.path().to_path_buf());
            } else if name.contains(".ko.") {
                // busybox's insmod cannot read compressed modules.
                return Err(ImageError::Kernel {
                    release: release.into(),
                    detail: format!("compressed module {name} is not supported"),
                });
            }
        }
        Ok(Self {
            release: release.into(),
            builtin,
            files,
        })
    }

    /// The module files to load, in list order: built-in entries and absent optional ones
    /// are skipped, an absent required one is an error.
    pub fn resolve(&self, specs: &[ModuleSpec]) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for spec in specs {
            let key = normalize(&spec.name);
            if self.builtin.contains(&key) {
                continue;
            }
            match self.files.get(&key) {
                Some(path) => out.push((spec.name.clone(), path.clone())),
                None if spec.optional => {}
                None => {
                    return Err(ImageError::ModuleNotFound {
                        module: spec.name.clone(),
                        release: self.release.clone(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Lays out the initramfs in `staging` and packs it into `output` (gzip'd newc cpio).
pub fn build(
    staging: &Path,
    busybox: &Path,
    init: &[u8],
    modules: &[(String, PathBuf)],
    output: &Path,
) -> Result<()> {
    for dir in ["bin", "dev", "proc", "sys", "etc", "lib/modules", "newroot"] {
        let d = staging.join(dir);
        fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
    }
    write_file(&staging.join("init"), init, 0o755)?;
    let bb = fs::read(busybox).ctx(|| format!("read {}", busybox.display()))?;
    write_file(&staging.join("bin/busybox"), &bb, 0o755)?;
    let mut order = String::new();
    for (name, path) in modules {
        let dest = staging.join("lib/modules").join(format!("{name}.ko"));
        fs::copy(path, &dest).ctx(|| format!("copy {}", path.display()))?;
        order.push_str(name);
        order.push('\n');
    }
    write_file(&staging.join("etc/modules"), order.as_bytes(), 0o644)?;
    // The kernel opens /dev/console for init before anything can mount devtmpfs.
    nix::sys::stat::mknod(
        &staging.join("dev/console"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(5, 1),
    )
    .map_err(|e| ImageError::Io {
        what: "mknod dev/console".into(),
        source: e.into(),
    })?;
    pack(staging, output)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::write(path, bytes).ctx(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

/// `cpio -o -H newc` over every entry of `staging` (sorted, owned by root), gzip'd.
fn pack(staging: &Path, output: &Path) -> Result<()> {
    let mut list = Vec::new();
    for entry in walkdir::WalkDir::new(staging)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| ImageError::Io {
            what: format!("walk {}", staging.display()),
            source: e.into(),
        })?;
        if let Ok(rel) = entry.path().strip_prefix(staging) {
            list.extend_from_slice(rel.as_os_str().as_encoded_bytes());
            list.push(0);
        }
    }
    let out = fs::File::create(output).ctx(|| format!("create {}", output.display()))?;
    let mut child = Command::new("cpio")
        .args([
            "--create",
            "--format=newc",
            "--null",
            "--owner=0:0",
            "--reproducible",
            "--quiet",
        ])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| "start cpio".into())?;
    let mut stdin = child.stdin.take();
    // The list is a few hundred bytes: it fits in the pipe, so writing it all before
    // reading the archive cannot deadlock.
    if let Some(stdin) = stdin.as_mut() {
        stdin.write_all(&list).ctx(|| "write to cpio".into())?;
    }
    drop(stdin);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    if let Some(mut stdout) = child.stdout.take() {
        std::io::copy(&mut stdout, &mut encoder).ctx(|| "read cpio's archive".into())?;
    }
    let result = child.wait_with_output().ctx(|| "wait for cpio".into())?;
    if !result.status.success() {
        return Err(ImageError::Command {
            command: "cpio --create".into(),
            status: result.status.to_string(),
            output: String::from_utf8_lossy(&result.stderr).into_owned(),
        });
    }
    let file = encoder
        .finish()
        .ctx(|| format!("write {}", output.display()))?;
    file.sync_all()
        .ctx(|| format!("fsync {}", output.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ModuleIndex {
        ModuleIndex {
            release: "6.1.0-test".into(),
            builtin: ["ext4", "jbd2", "mbcache", "crc16"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            files: ["virtio", "virtio_ring", "virtio_blk", "virtio_rng"]
                .iter()
                .map(|s| (s.to_string(), PathBuf::from(format!("/k/{s}.ko"))))
                .collect(),
        }
    }

    #[test]
    fn base_module_list_parses() {
        let specs = parse_modules(include_str!("../../../images/base/initramfs/modules"));
        let names: Vec<&str> = specs
            .iter()
            .filter(|s| !s.optional)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            &names[..7],
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert!(specs.iter().any(|s| s.name == "virtio-rng" && s.optional));
    }

    #[test]
    fn resolve_skips_builtin_and_absent_optional() {
        let specs = parse_modules("virtio_ring\nvirtio\next4\nmissing_thing?\nvirtio-rng?\n");
        let got = index().resolve(&specs).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio-rng"]);
        assert_eq!(got[2].1, PathBuf::from("/k/virtio_rng.ko"));
    }

    #[test]
    fn resolve_fails_on_absent_required_module() {
        let err = index()
            .resolve(&parse_modules("virtio\nvirtio_net\n"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel module virtio_net is neither built into kernel 6.1.0-test nor shipped with it"
        );
    }
}
