//! Remembered answers of the slow parts of the up-to-date check (hashing a 100 MB envd,
//! asking apt for candidates, which rebuilds apt's package cache in memory each time),
//! keyed by a signature of what they depend on (file size, mtime, inode; the apt lists).
//! A stale or damaged memo only costs the recomputation.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Apt's downloaded package lists: `apt-get update` changes them.
const APT_LISTS: &str = "/var/lib/apt/lists";
const MAX_ENTRIES: usize = 64;

#[derive(Debug)]
pub struct Memo {
    path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Memo {
    /// Loads `<cache>/memo.json` (empty when absent or unreadable).
    pub fn load(cache: &Path) -> Self {
        let path = cache.join("memo.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self { path, entries }
    }

    /// The remembered value for `key`, or computes, remembers and saves it.
    pub fn get_or<E>(
        &mut self,
        key: String,
        compute: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        if let Some(v) = self.entries.get(&key) {
            return Ok(v.clone());
        }
        let value = compute()?;
        // Old signatures never match again; keep the file small.
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key, value.clone());
        self.save();
        Ok(value)
    }

    fn save(&self) {
        let Ok(json) = serde_json::to_vec(&self.entries) else {
            return;
        };
        if let Err(e) = crate::fsutil::write_atomic(&self.path, &json) {
            tracing::debug!(error = %e, "memo not saved");
        }
    }
}

/// Identifies a file's content without reading it: path, size, mtime, inode, ctime.
pub fn file_signature(path: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(path)?;
    let canonical = std::fs::canonicalize(path)?;
    Ok(format!(
        "file:{}:{}:{}.{}:{}:{}.{}",
        canonical.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Changes whenever apt's package lists do.
pub fn apt_lists_signature() -> String {
    let mut h = Sha256::new();
    if let Ok(entries) = std::fs::read_dir(APT_LISTS) {
        let mut names: Vec<(String, u64, i64, i64)> = entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                ))
            })
            .collect();
        names.sort();
        for n in names {
            h.update(format!("{n:?}\n"));
        }
    }
    format!("apt:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_loads_and_recomputes_on_new_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut memo = Memo::load(dir.path());
        let v: Result<String, ()> = memo.get_or("k".into(), || Ok("v1".into()));
        assert_eq!(v.unwrap(), "v1");

        let mut memo = Memo::load(dir.path());
        let v: Result<String, ()> = memo.get_or("k".into(), || panic!("must come from the memo"));
        assert_eq!(v.unwrap(), "v1");
        let v: Result<String, ()> = memo.get_or("k2".into(), || Ok("v2".into()));
        assert_eq!(v.unwrap(), "v2");
    }

    #[test]
    fn signature_changes_when_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("envd");
        std::fs::write(&p, b"one").unwrap();
        let a = file_signature(&p).unwrap();
        std::fs::write(&p, b"two!").unwrap();
        assert_ne!(a, file_signature(&p).unwrap());
    }

    #[test]
    fn damaged_memo_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memo.json"), b"{oops").unwrap();
        let mut memo = Memo::load(dir.path());
        let v: Result<String, ()> = memo.get_or("k".into(), || Ok("fresh".into()));
        assert_eq!(v.unwrap(), "fresh");
    }
}
