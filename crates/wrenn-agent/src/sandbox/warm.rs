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
