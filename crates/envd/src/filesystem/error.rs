//! Filesystem errors and their Connect codes.

use std::io;
use std::path::PathBuf;

use connectrpc::ConnectError;

use crate::paths::PathError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("{}: already exists", .0.display())]
    Exists(PathBuf),
    #[error(
        "{}: is on a network filesystem; set allow_network_mounts to watch it",
        .0.display()
    )]
    NetworkMount(PathBuf),
    #[error("watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("watcher '{0}' not found")]
    UnknownWatcher(String),
    #[error("watcher stopped: {0}")]
    WatcherFailed(String),
    #[error("filesystem task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FsError {
    /// An I/O error of operation `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> FsError {
        let path = path.into();
        move |source| FsError::Io { op, path, source }
    }

    /// True when the error is a missing path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The Connect code for an OS error; anything unexpected is `internal`.
fn io_error(e: &io::Error, message: String) -> ConnectError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => ConnectError::not_found(message),
        Some(libc::EEXIST) => ConnectError::already_exists(message),
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => ConnectError::permission_denied(message),
        Some(libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP) => {
            ConnectError::invalid_argument(message)
        }
        Some(libc::ENOTEMPTY | libc::EXDEV | libc::EBUSY) => {
            ConnectError::failed_precondition(message)
        }
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE) => {
            ConnectError::resource_exhausted(message)
        }
        _ => match e.kind() {
            io::ErrorKind::NotFound => ConnectError::not_found(message),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                ConnectError::invalid_argument(message)
            }
            io::ErrorKind::Unsupported => ConnectError::failed_precondition(message),
            _ => ConnectError::internal(message),
        },
    }
}

impl From<FsError> for ConnectError {
    fn from(e: FsError) -> Self {
        let message = e.to_string();
        match &e {
            FsError::Path(_) | FsError::NotDir(_) | FsError::NetworkMount(_) => {
                ConnectError::invalid_argument(message)
            }
            FsError::Exists(_) => ConnectError::already_exists(message),
            FsError::UnknownWatcher(_) => ConnectError::not_found(message),
            // The only failure reported while watching: the inotify watch limit.
            FsError::WatcherFailed(_) => ConnectError::resource_exhausted(message),
            FsError::Io { source, .. } => io_error(source, message),
            FsError::Watch { source, .. } => match &source.kind {
                notify::ErrorKind::Io(io) => io_error(io, message),
                notify::ErrorKind::PathNotFound => ConnectError::not_found(message),
                notify::ErrorKind::MaxFilesWatch => ConnectError::resource_exhausted(message),
                _ => ConnectError::internal(message),
            },
            FsError::Task(_) => {
                tracing::error!(error = %e, "filesystem task failed");
                ConnectError::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectrpc::ErrorCode;

    fn code(errno: i32) -> ErrorCode {
        ConnectError::from(FsError::Io {
            op: "stat",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(errno),
        })
        .code
    }

    #[test]
    fn errno_codes() {
        assert_eq!(code(libc::ENOENT), ErrorCode::NotFound);
        assert_eq!(code(libc::EEXIST), ErrorCode::AlreadyExists);
        assert_eq!(code(libc::EACCES), ErrorCode::PermissionDenied);
        assert_eq!(code(libc::EPERM), ErrorCode::PermissionDenied);
        assert_eq!(code(libc::ENOTDIR), ErrorCode::InvalidArgument);
        assert_eq!(code(libc::EISDIR), ErrorCode::InvalidArgument);
        assert_eq!(code(libc::EIO), ErrorCode::Internal);
    }

    #[test]
    fn message_names_the_path() {
        let e = ConnectError::from(FsError::Io {
            op: "stat",
            path: "/some/where".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(e.message.unwrap_or_default().contains("/some/where"));
    }
}
