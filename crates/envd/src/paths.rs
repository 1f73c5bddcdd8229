//! Resolving request paths: relative paths and `~` are relative to the user's home.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path contains a NUL byte")]
    Nul,
}

/// Resolves `raw` for `user`: `~`, `~/x` and relative paths are joined to the user's home
/// (or `workdir` when given). The result is absolute and lexically normalised (`.` and `..`
/// removed); symlinks are left for the kernel to follow.
pub fn resolve(raw: &str, user: &User, workdir: Option<&Path>) -> Result<PathBuf, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    let base = workdir.unwrap_or(&user.home);
    let joined = if raw == "~" {
        user.home.clone()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        user.home.join(rest)
    } else if Path::new(raw).is_absolute() {
        PathBuf::from(raw)
    } else {
        base.join(raw)
    };
    Ok(normalize(&joined))
}

/// Lexical normalisation of an absolute path.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};

    fn user() -> User {
        User {
            name: "user".into(),
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1000),
            groups: vec![],
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn relative_paths_resolve_against_home() {
        let u = user();
        assert_eq!(
            resolve("a/b", &u, None).unwrap(),
            PathBuf::from("/home/user/a/b")
        );
        assert_eq!(resolve("~", &u, None).unwrap(), PathBuf::from("/home/user"));
        assert_eq!(
            resolve("~/x", &u, None).unwrap(),
            PathBuf::from("/home/user/x")
        );
        assert_eq!(
            resolve("/etc/../tmp/./x", &u, None).unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(
            resolve("x", &u, Some(Path::new("/work"))).unwrap(),
            PathBuf::from("/work/x")
        );
        assert!(resolve("", &u, None).is_err());
    }
}
