//! Debian packages fetched without installing them on the host: apt resolves the version,
//! `apt-get download` fetches the `.deb` into the cache, `dpkg-deb -x` unpacks it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, ScratchDir};

/// A package at an exact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for PackageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.version)
    }
}

/// The fields of one `apt-cache show` stanza.
pub type Stanza = BTreeMap<String, String>;

/// The candidates (what `apt-get install` would pick) of `packages`, in order, from the
/// local apt lists. One apt-cache run: each builds apt's package cache anew (~0.6 s).
pub fn candidates(packages: &[&str]) -> Result<Vec<Stanza>> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(packages)
        .env("LC_ALL", "C")
        .output()
        .ctx(|| "run apt-cache".into())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stanzas = parse_stanzas(&text);
    packages
        .iter()
        .map(|name| {
            stanzas
                .iter()
                .find(|s| s.get("Package").is_some_and(|p| p == name) && s.contains_key("Version"))
                .cloned()
                .ok_or_else(|| ImageError::NoCandidate {
                    package: name.to_string(),
                })
        })
        .collect()
}

/// Parses `apt-cache show` output into stanzas.
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    text.split("\n\n")
        .map(parse_stanza)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses the first stanza of `apt-cache show` output (continuation lines are joined).
pub fn parse_stanza(text: &str) -> Stanza {
    let mut fields = Stanza::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.to_string(), value.trim().to_string());
            last = Some(key.to_string());
        }
    }
    fields
}

/// The dependency of `stanza` whose name starts with `prefix`, pinned to its exact version
/// (`name (= version)`), as metapackages like `linux-image-cloud-amd64` declare it.
pub fn pinned_dependency(stanza: &Stanza, prefix: &str) -> Option<PackageRef> {
    stanza
        .get("Depends")?
        .split([',', '|'])
        .map(str::trim)
        .find_map(|dep| {
            let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
            if !name.starts_with(prefix) {
                return None;
            }
            let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
            Some(PackageRef {
                name: name.to_string(),
                version: version.to_string(),
            })
        })
}

/// Returns the cached `.deb` of `package`, downloading it first when needed.
pub fn fetch(debs: &Path, package: &PackageRef) -> Result<PathBuf> {
    // `:` (an epoch) is legal in versions but awkward in file names.
    let file = debs.join(format!(
        "{}_{}.deb",
        package.name,
        package.version.replace(':', "%3a")
    ));
    if file.is_file() {
        return Ok(file);
    }
    let scratch = ScratchDir::new_in(debs, ".download-")?;
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(package.to_string())
            .current_dir(scratch.path())
            .env("LC_ALL", "C"),
    )
    .map_err(|e| ImageError::AptDownload {
        package: package.to_string(),
        detail: e.to_string(),
    })?;
    let deb = fs::read_dir(scratch.path())
        .ctx(|| format!("list {}", scratch.path().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| ImageError::AptMetadata {
            package: package.name.clone(),
            detail: "apt-get download produced no .deb".into(),
        })?;
    fsutil::rename_durable(&deb, &file)?;
    scratch.remove()?;
    Ok(file)
}

/// Unpacks the files of `deb` into `dir` (no maintainer scripts run).
pub fn extract(deb: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
Description-en: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on cloud platforms.

Package: linux-image-cloud-amd64
Version: 6.1.176-1
";

    #[test]
    fn parses_every_stanza() {
        let all = parse_stanzas(META);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1]["Version"], "6.1.176-1");
    }

    #[test]
    fn parses_first_stanza_only() {
        let s = parse_stanza(META);
        assert_eq!(s["Version"], "6.1.192-3");
        assert!(s["Description-en"].ends_with("on cloud platforms."));
    }

    #[test]
    fn finds_the_pinned_kernel_package() {
        let s = parse_stanza(META);
        assert_eq!(
            pinned_dependency(&s, "linux-image-"),
            Some(PackageRef {
                name: "linux-image-6.1.0-57-cloud-amd64".into(),
                version: "6.1.192-3".into()
            })
        );
        assert_eq!(pinned_dependency(&s, "linux-headers-"), None);
        let loose = parse_stanza("Version: 1\nDepends: libc6 (>= 2.34), linux-image-x\n");
        assert_eq!(pinned_dependency(&loose, "linux-image-"), None);
    }
}
