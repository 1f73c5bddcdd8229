//! Guest users: who a request acts as, and the identity a spawned process gets.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid};

/// A resolved guest account.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (from the group database), including the primary group.
    pub groups: Vec<Gid>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user '{0}' does not exist")]
    Unknown(String),
    #[error("invalid user name")]
    InvalidName,
    #[error("user database lookup failed: {0}")]
    Lookup(#[from] nix::Error),
}

impl User {
    /// Looks a user up by name in the guest's user database.
    pub fn lookup(name: &str) -> Result<User, UserError> {
        if name.is_empty() || name.contains(['\0', ':', '/']) {
            return Err(UserError::InvalidName);
        }
        let pw = nix::unistd::User::from_name(name)?
            .ok_or_else(|| UserError::Unknown(name.to_string()))?;
        let cname = CString::new(name).map_err(|_| UserError::InvalidName)?;
        let groups = nix::unistd::getgrouplist(&cname, pw.gid).unwrap_or_else(|_| vec![pw.gid]);
        Ok(User {
            name: pw.name,
            uid: pw.uid,
            gid: pw.gid,
            groups,
            home: pw.dir,
            shell: pw.shell,
        })
    }

    /// The group name of this user's primary group, or its number.
    pub fn group_name(gid: Gid) -> String {
        nix::unistd::Group::from_gid(gid)
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_else(|| gid.to_string())
    }

    /// The user name for a uid, or its number.
    pub fn user_name(uid: Uid) -> String {
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string())
    }
}
