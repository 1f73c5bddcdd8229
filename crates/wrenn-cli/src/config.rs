//! The saved login: control-plane URL plus either a user session token (JWT) or an API key.
//!
//! Stored as JSON at `$WRENN_CONFIG`, else `$XDG_CONFIG_HOME/wrenn/config.json`, else
//! `~/.config/wrenn/config.json`. (JSON rather than TOML: the `toml` crate is not available
//! to this build.) The file holds secrets, so it is written 0600 (directory 0700) through a
//! temp file + rename: a crash never leaves a half-written or world-readable file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where the control plane listens by default (`wrenn server`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// User session token from `wrenn login` (email + password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Unix seconds the session token expires at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<u64>,
    /// Email of the logged-in user (shown only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// API key from `wrenn login --api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// The config file path: `WRENN_CONFIG`, else the user's config dir.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WRENN_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    use etcetera::BaseStrategy;
    let base = etcetera::choose_base_strategy()
        .context("cannot find your home directory; set WRENN_CONFIG")?;
    Ok(base.config_dir().join("wrenn").join("config.json"))
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a valid wrenn config", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Writes the file atomically with mode 0600, creating its directory (0700) if needed.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
        // NamedTempFile is created 0600 in the same directory, so the rename is atomic.
        let mut tmp = tempfile::Builder::new()
            .prefix(".config.")
            .tempfile_in(dir)
            .with_context(|| format!("create a temp file in {}", dir.display()))?;
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        tmp.write_all(&json)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(&dir.path().join("nope.json")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn round_trip_0600_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/config.json");
        let c = Config {
            url: Some("http://127.0.0.1:1".into()),
            token: Some("jwt".into()),
            token_expires_at: Some(42),
            email: Some("a@b.c".into()),
            api_key: None,
        };
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        // Overwrite: still 0600, no temp files left behind, unset fields not written.
        let c2 = Config {
            api_key: Some("wrn_x".into()),
            ..Config::default()
        };
        c2.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c2);
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            "{\n  \"api_key\": \"wrn_x\"\n}"
        );
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.json"]);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "{not json").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(format!("{e:#}").contains("config.json"), "{e:#}");
    }
}
