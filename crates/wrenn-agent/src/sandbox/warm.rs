//! Warm bases: every create is a restore. Per template and machine shape (and per envd,
//! kernel and QEMU, through the template's content-hashed files and QEMU's version), the agent
//! keeps a snapshot of that template booted until envd answers, made once by the first create
//! of that shape and cached by content hash under `cache/warm/<key>/`:
//!
//! - `memory`: guest RAM, written through a shared file mapping while the base ran;
//! - `vm.state`: device state only (QEMU's `x-ignore-shared`: RAM stays in `memory`);
//! - `disk.qcow2`: the root disk as the base left it, frozen; each clone's overlay sits on it;
//! - `base.json`: what it was made from, written last (a directory without it is unfinished).
//!
//! A clone maps `memory` copy-on-write (clones share every page none of them wrote), loads the
//! device state into a QEMU started with `-incoming defer` in its own network namespace (every
//! guest keeps the same address and MAC), and is then made its own machine through envd's
//! `/init`: a fresh token, its environment and user, the wall clock, and fresh entropy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::template::Template;
use crate::vmm::{Accel, VmSpec};

/// Bumped when what a warm base holds or how it is made changes.
const FORMAT: u32 = 1;

/// Warm bases kept at most (each is about its memory size on disk). Shapes are chosen by
/// tenants, so without a bound they could fill the files root with bases; the least recently
/// used goes first.
pub(crate) const MAX_BASES: usize = 8;

pub(crate) const MEMORY: &str = "memory";
pub(crate) const STATE: &str = "vm.state";
pub(crate) const DISK: &str = "disk.qcow2";
const INFO: &str = "base.json";

/// The machine a warm base is for: a clone must have exactly this shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Shape {
    pub vcpus: u32,
    pub memory_mb: u32,
    /// 0: the template's own disk size.
    pub disk_size_mb: u32,
}

/// What `base.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BaseInfo {
    pub key: String,
    pub template: String,
    pub shape: Shape,
    pub envd_version: String,
    pub made_at_ms: i64,
    /// The spec the base ran with (its paths are the build's; clones keep the machine).
    pub spec: VmSpec,
    /// A snapshot template's envd already has a token (its source sandbox's): a clone's
    /// `/init` must present it to set its own.
    #[serde(default)]
    pub envd_token: Option<String>,
    #[serde(default)]
    pub default_user: Option<String>,
}

/// A finished warm base.
#[derive(Debug, Clone)]
pub(crate) struct WarmBase {
    pub dir: PathBuf,
    pub info: BaseInfo,
}

impl WarmBase {
    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY)
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
}

/// The cache of warm bases under one directory.
pub(crate) struct WarmBases {
    dir: PathBuf,
    qemu_version: String,
    /// One build per key at a time; a create that finds a build running waits for it.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl WarmBases {
    pub fn new(dir: PathBuf, qemu: &Path) -> Self {
        let qemu_version = std::process::Command::new(qemu)
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default();
        WarmBases {
            dir,
            qemu_version,
            locks: Mutex::default(),
        }
    }

    /// The content key of `template` booted with `shape` under `accel`: any change to the
    /// root image (and so envd), kernel, initramfs or QEMU gives a new key.
    pub fn key(&self, template: &Template, shape: Shape, accel: Accel) -> String {
        let mut h = Sha256::new();
        for part in [
            format!("format={FORMAT}"),
            format!("rootfs={}", template.rootfs.display()),
            format!("kernel={}", template.kernel.display()),
            format!("initrd={}", template.initrd.display()),
            format!("envd={}", template.envd_version),
            format!("qemu={}", self.qemu_version),
            format!("accel={accel}"),
            format!(
                "shape={},{},{}",
                shape.vcpus, shape.memory_mb, shape.disk_size_mb
            ),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The VM run dirs of builds in progress (or cut short by a crash).
    pub fn building_run_dirs(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".building"))
            .map(|e| e.path().join("run"))
            .collect()
    }

    /// Where a build of `key` assembles its files before the rename that publishes them.
    pub fn building_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.building"))
    }

    /// The finished base of `key`, if there is one with all its files.
    pub fn get(&self, key: &str) -> Option<WarmBase> {
        load(&self.path(key))
    }

    /// The lock a build of `key` holds.
    pub async fn lock(&self, key: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .await
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Removes what no create will use again: unfinished builds, bases whose key is no longer
    /// the current one for their template and shape (`current` gives it; `None`: the template
    /// is gone), e.g. after an image rebuild or a QEMU upgrade. Safe while clones of them run
    /// or are paused: each clone holds its base's disk by a hard link, its RAM by a mapping
    /// or its own saved state. Returns the keys removed.
    pub fn collect(&self, current: impl Fn(&BaseInfo) -> Option<String>) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return removed;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = !name.ends_with(".building")
                && load(&e.path()).is_some_and(|b| current(&b.info).as_deref() == Some(&name));
            if !keep && std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    /// Keeps at most `max` finished bases, `keep` among them, removing the least recently
    /// used (by [`WarmBases::touch`]). Returns the keys removed.
    pub fn evict(&self, max: usize, keep: &str) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut bases: Vec<(std::time::SystemTime, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let used = std::fs::metadata(e.path().join(INFO))
                    .and_then(|m| m.modified())
                    .ok()?;
                (!name.ends_with(".building")).then_some((used, name))
            })
            .collect();
        bases.sort();
        let excess = bases.len().saturating_sub(max);
        bases
            .into_iter()
            .filter(|(_, name)| name != keep)
            .take(excess)
            .filter(|(_, name)| std::fs::remove_dir_all(self.path(name)).is_ok())
            .map(|(_, name)| name)
            .collect()
    }

    /// Records a use of `base` (its `base.json`'s modification time), for [`WarmBases::evict`].
    pub fn touch(&self, base: &WarmBase) {
        let _ = std::fs::File::options()
            .write(true)
            .open(base.dir.join(INFO))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }

    /// Publishes a finished build: `base.json` written and synced, then the directory renamed
    /// into place (a crash leaves only a `.building` directory, removed by the next build).
    pub fn publish(&self, key: &str, info: &BaseInfo) -> std::io::Result<WarmBase> {
        publish(&self.building_path(key), &self.path(key), info)
    }
}

/// The base in `dir` (a warm base or a snapshot template), if it has all its files.
pub(crate) fn load(dir: &Path) -> Option<WarmBase> {
    let info: BaseInfo = serde_json::from_slice(&std::fs::read(dir.join(INFO)).ok()?).ok()?;
    let base = WarmBase {
        dir: dir.to_path_buf(),
        info,
    };
    [base.memory(), base.state(), base.disk()]
        .iter()
        .all(|p| p.is_file())
        .then_some(base)
}

/// Syncs the files `building` holds, writes `info` last and renames the directory to `dest`.
pub(crate) fn publish(building: &Path, dest: &Path, info: &BaseInfo) -> std::io::Result<WarmBase> {
    for f in [MEMORY, STATE, DISK] {
        std::fs::File::open(building.join(f))?.sync_all()?;
    }
    let bytes = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    std::fs::write(building.join(INFO), bytes)?;
    std::fs::File::open(building.join(INFO))?.sync_all()?;
    let _ = std::fs::remove_dir_all(building.join("run"));
    std::fs::rename(building, dest)?;
    if let Some(parent) = dest.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(WarmBase {
        dir: dest.to_path_buf(),
        info: info.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key: &str, template: &str) -> BaseInfo {
        BaseInfo {
            key: key.into(),
            template: template.into(),
            shape: Shape {
                vcpus: 1,
                memory_mb: 256,
                disk_size_mb: 0,
            },
            envd_version: "1".into(),
            made_at_ms: 0,
            spec: VmSpec {
                sandbox_id: "warm".into(),
                vcpus: 1,
                memory_mb: 256,
                kernel: "/k".into(),
                initrd: "/i".into(),
                kernel_args: String::new(),
                root_disk: "/d".into(),
                netns: None,
                tap: None,
                guest_mac: None,
                run_dir: "/r".into(),
                accel: Accel::Tcg,
                memory_file: None,
                uid: None,
            },
            envd_token: None,
            default_user: None,
        }
    }

    fn make(w: &WarmBases, key: &str, template: &str) {
        let b = w.building_path(key);
        std::fs::create_dir_all(&b).unwrap();
        for f in [MEMORY, STATE, DISK] {
            std::fs::write(b.join(f), b"x").unwrap();
        }
        w.publish(key, &info(key, template)).unwrap();
    }

    fn keys(w: &WarmBases) -> Vec<String> {
        let mut k: Vec<String> = std::fs::read_dir(&w.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn collect_keeps_only_current_finished_bases() {
        let tmp = tempfile::tempdir().unwrap();
        let w = WarmBases::new(tmp.path().to_owned(), Path::new("/nonexistent-qemu"));
        make(&w, "aaa", "base");
        make(&w, "old", "base");
        make(&w, "gone", "removed-template");
        std::fs::create_dir_all(w.building_path("half")).unwrap();
        std::fs::create_dir_all(w.path("broken")).unwrap();
        let mut removed = w.collect(|i| (i.template == "base").then(|| "aaa".to_owned()));
        removed.sort();
        assert_eq!(removed, ["broken", "gone", "half.building", "old"]);
        assert_eq!(keys(&w), ["aaa"]);
        assert!(w.get("aaa").is_some());
    }

    #[test]
    fn evict_removes_the_least_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let w = WarmBases::new(tmp.path().to_owned(), Path::new("/nonexistent-qemu"));
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (n, k) in ["a", "b", "c", "d"].iter().enumerate() {
            make(&w, k, "base");
            let f = std::fs::File::options()
                .write(true)
                .open(w.path(k).join(INFO))
                .unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(n as u64))
                .unwrap();
        }
        // "a" is the oldest but just used; "b" is kept whatever its age (the new base).
        w.touch(&w.get("a").unwrap());
        let mut removed = w.evict(2, "b");
        removed.sort();
        assert_eq!(removed, ["c", "d"]);
        assert_eq!(keys(&w), ["a", "b"]);
        assert!(w.evict(2, "a").is_empty());
    }
}
