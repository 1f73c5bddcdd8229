//! Server secrets kept in the data dir: generated once (mode 0600), reused on every start.
//!
//! A new file is written to a temp name, fsynced, then linked into place with `hard_link`,
//! which (unlike `rename`) fails when the target exists: two servers starting at once on one
//! data dir can never end up with different secrets. The loser re-reads the winner's file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ids::random_bytes;

/// JWT signing secret (HS256).
pub const JWT_SECRET_FILE: &str = "jwt.secret";
/// AES-256 key for envd tokens at rest.
pub const ENVD_KEY_FILE: &str = "envd.key";
/// Seed of the Ed25519 key that signs control-plane → agent tokens.
pub const AGENT_SIGNING_KEY_FILE: &str = "agent-signing.key";
const SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not {SECRET_LEN} bytes of hex; delete it to generate a new one")]
    Malformed { path: PathBuf },
    #[error("OS random number generator: {0}")]
    Rng(#[from] crate::ids::RngError),
}

/// The secrets a server needs.
pub struct Secrets {
    pub jwt_secret: Vec<u8>,
    pub envd_key: Vec<u8>,
    pub agent_signing_seed: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// Loads the secrets from `data_dir`, creating the dir (0700: it also holds the SQLite file
/// with password hashes) and any missing secret.
pub fn load_or_create(data_dir: &Path) -> Result<Secrets, SecretError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io_at(data_dir))?;
    Ok(Secrets {
        jwt_secret: load_or_create_one(&data_dir.join(JWT_SECRET_FILE))?,
        envd_key: load_or_create_one(&data_dir.join(ENVD_KEY_FILE))?,
        agent_signing_seed: {
            let path = data_dir.join(AGENT_SIGNING_KEY_FILE);
            load_or_create_one(&path)?
                .try_into()
                .map_err(|_| SecretError::Malformed { path })?
        },
    })
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let mode = fs::metadata(path)
        .map_err(io_at(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "secret file is readable by others; tightening to 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_at(path))?;
    }
    match hex::decode(text.trim()) {
        Ok(b) if b.len() == SECRET_LEN => Ok(Some(b)),
        _ => Err(SecretError::Malformed {
            path: path.to_owned(),
        }),
    }
}

fn load_or_create_one(path: &Path) -> Result<Vec<u8>, SecretError> {
    if let Some(b) = read(path)? {
        return Ok(b);
    }
    let mut secret = vec![0u8; SECRET_LEN];
    random_bytes(&mut secret)?;
    let mut suffix = [0u8; 8];
    random_bytes(&mut suffix)?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(suffix)));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(hex::encode(&secret).as_bytes())?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            // The new name must survive a crash too.
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_at(dir))?;
            }
            tracing::info!(path = %path.display(), "generated secret");
            Ok(secret)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| SecretError::Malformed {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(io_at(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_and_reused() {
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("wrenn-secrets-{}", crate::ids::UserId::generate()));
        let _cleanup = Cleanup(dir.clone());
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.jwt_secret, b.jwt_secret);
        assert_eq!(a.envd_key, b.envd_key);
        assert_ne!(a.jwt_secret, a.envd_key);
        assert_eq!(a.agent_signing_seed, b.agent_signing_seed);
        for f in [JWT_SECRET_FILE, ENVD_KEY_FILE, AGENT_SIGNING_KEY_FILE] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // No temp files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 3);
        fs::write(dir.join(JWT_SECRET_FILE), "zz").unwrap();
        assert!(matches!(
            load_or_create(&dir),
            Err(SecretError::Malformed { .. })
        ));
    }
}
