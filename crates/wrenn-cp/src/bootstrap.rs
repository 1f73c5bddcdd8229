//! First-run setup for a single machine (`wrenn up`): the admin account, its team and first
//! API key, and the local host's registration — all idempotent, so running `wrenn up` again
//! reuses what exists instead of piling up users, keys or hosts.
//!
//! The generated admin password and API key are kept in the data dir (0600) because the
//! database stores only their hashes; they are what `wrenn up` prints on every start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::auth::{api_key, password, token};
use crate::db::{Db, DbError, HostStatus, NewApiKey, NewHost, NewRegistrationToken, now_ms};

/// File (under the data dir) holding the admin's generated password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// File (under the data dir) holding the admin team's first API key.
pub const ADMIN_API_KEY_FILE: &str = "admin-api-key";
/// Name of the host `wrenn up` registers.
pub const LOCAL_HOST_NAME: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password hashing: {0}")]
    Password(#[from] password::PasswordError),
    #[error("randomness: {0}")]
    Rng(#[from] crate::ids::RngError),
    #[error("user {0} exists but belongs to no team")]
    NoTeam(String),
}

/// The admin account as `wrenn up` prints it.
#[derive(Debug)]
pub struct Admin {
    pub email: String,
    pub user_id: String,
    pub team_id: String,
    /// `None` when the account existed before `wrenn up` made a password for it.
    pub password: Option<String>,
    pub api_key: String,
}

/// Makes sure the admin user (platform admin), its team and an API key exist.
pub async fn ensure_admin(db: &Db, data_dir: &Path, email: &str) -> Result<Admin, BootstrapError> {
    let pw_path = data_dir.join(ADMIN_PASSWORD_FILE);
    let (user, team_id) = match db.user_by_email(email).await {
        Ok(u) => {
            let team = db
                .teams_for_user(&u.id)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| BootstrapError::NoTeam(u.email.clone()))?;
            (u, team.team.id)
        }
        Err(DbError::NotFound) => {
            let pw = random_secret()?;
            // Written before the account so a crash between the two never leaves an
            // account whose password nobody knows.
            write_secret(&pw_path, &pw)?;
            let hash = password::hash_password_async(pw).await?;
            let (u, t) = db
                .create_account(email, Some(&hash), "Admin", "Admin's team")
                .await?;
            if !u.is_admin {
                // Only the first account becomes platform admin on its own; `wrenn up`'s
                // admin is one by definition.
                db.set_user_admin(&u.id, true).await?;
            }
            tracing::info!(user_id = %u.id, "created the admin account");
            (u, t.id)
        }
        Err(e) => return Err(e.into()),
    };
    let password = read_secret(&pw_path)?;
    let api_key = ensure_key(db, data_dir, &team_id, &user.id).await?;
    Ok(Admin {
        email: user.email,
        user_id: user.id,
        team_id,
        password,
        api_key,
    })
}

async fn ensure_key(
    db: &Db,
    data_dir: &Path,
    team_id: &str,
    user_id: &str,
) -> Result<String, BootstrapError> {
    let path = data_dir.join(ADMIN_API_KEY_FILE);
    if let Some(k) = read_secret(&path)? {
        // Reuse it while it is still a live key of this team.
        if let Ok(hash) = api_key::hash_presented(&k) {
            match db.api_key_by_hash(&hash).await {
                Ok(row) if row.team_id == team_id => return Ok(k),
                Ok(_) | Err(DbError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let generated = api_key::generate()?;
    db.create_api_key(NewApiKey {
        team_id,
        created_by: Some(user_id),
        name: "wrenn up",
        prefix: &generated.display_prefix,
        key_hash: &generated.hash,
    })
    .await?;
    write_secret(&path, &generated.plaintext)?;
    Ok(generated.plaintext)
}

/// Whether `host_id` (from the agent's credentials file) is a live host of this control plane:
/// if so the agent starts without registering again.
pub async fn host_is_registered(db: &Db, host_id: &str) -> Result<bool, BootstrapError> {
    match db.host_by_id(host_id).await {
        Ok(h) => Ok(h.status != HostStatus::Pending),
        Err(DbError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A new platform host row and its one-time registration token (plaintext).
pub async fn local_host_token(db: &Db, created_by: &str) -> Result<String, BootstrapError> {
    let generated = token::generate_registration_token()?;
    let host = db
        .create_host(NewHost {
            team_id: None,
            name: LOCAL_HOST_NAME,
            address: "",
            specs: serde_json::json!({}),
            created_by: Some(created_by),
        })
        .await?;
    let ttl = i64::try_from(generated.ttl.as_millis()).unwrap_or(i64::MAX);
    db.create_registration_token(NewRegistrationToken {
        token_hash: &generated.hash,
        team_id: None,
        host_id: Some(&host.id),
        created_by: Some(created_by),
        expires_at: now_ms().saturating_add(ttl),
    })
    .await?;
    Ok(generated.plaintext)
}

fn random_secret() -> Result<String, BootstrapError> {
    let mut b = [0u8; 16];
    crate::ids::random_bytes(&mut b)?;
    Ok(hex::encode(b))
}

fn read_secret(path: &Path) -> Result<Option<String>, BootstrapError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// temp (0600) → fsync → rename.
fn write_secret(path: &Path, value: &str) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(value.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::db::DbConfig;

    #[tokio::test]
    async fn admin_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(DbConfig::new(dir.path(), None, &[7u8; 32]))
            .await
            .unwrap();
        let a = ensure_admin(&db, dir.path(), "admin@wrenn.local")
            .await
            .unwrap();
        assert!(a.api_key.starts_with("wrn_"));
        assert!(a.password.is_some());
        let b = ensure_admin(&db, dir.path(), "admin@wrenn.local")
            .await
            .unwrap();
        assert_eq!(
            (a.user_id, a.team_id, a.api_key.clone()),
            (b.user_id.clone(), b.team_id, b.api_key)
        );
        assert_eq!(db.count_users().await.unwrap(), 1);
        assert!(db.user_by_id(&b.user_id).await.unwrap().is_admin);
        for f in [ADMIN_PASSWORD_FILE, ADMIN_API_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // A key revoked since is replaced, not reused.
        let key = db
            .api_key_by_hash(&api_key::hash_presented(&a.api_key).unwrap())
            .await
            .unwrap();
        db.revoke_api_key(&key.team_id, &key.id).await.unwrap();
        let c = ensure_admin(&db, dir.path(), "admin@wrenn.local")
            .await
            .unwrap();
        assert_ne!(c.api_key, a.api_key);
        // The local host: a token registers a pending host; unknown hosts are not registered.
        let tok = local_host_token(&db, &c.user_id).await.unwrap();
        assert_eq!(tok.len(), 64);
        assert!(!host_is_registered(&db, "host-nope").await.unwrap());
        db.close().await;
    }
}
