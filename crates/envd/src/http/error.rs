//! Errors of the plain HTTP routes and their statuses (E2B's envd error contract).

use std::io;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::json_error;
use crate::auth::AuthError;
use crate::paths::PathError;
use crate::users::UserError;

/// A failed plain-HTTP request: the status and message of its `{"code","message"}` body.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A filesystem error on `what` (usually a path), with the status E2B's SDKs expect.
    pub fn io(what: impl std::fmt::Display, e: &io::Error) -> Self {
        Self::new(io_status(e), format!("{what}: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "request refused");
        }
        json_error(self.status, self.message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match &e {
            AuthError::User(UserError::Lookup(_)) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            _ => Self::new(StatusCode::UNAUTHORIZED, e.to_string()),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::bad_request(format!("invalid path: {e}"))
    }
}

/// Maps a filesystem error to the HTTP status of E2B's envd: 507 when the disk is full
/// (the SDK raises `NotEnoughSpaceException`), 404 for missing paths, 400 for paths that
/// cannot name a file, 500 for everything else.
pub fn io_status(e: &io::Error) -> StatusCode {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
        Some(libc::ENOENT | libc::ENOTDIR) => StatusCode::NOT_FOUND,
        Some(libc::EISDIR | libc::ENAMETOOLONG | libc::ELOOP | libc::EINVAL) => {
            StatusCode::BAD_REQUEST
        }
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => StatusCode::FORBIDDEN,
        _ => match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
            io::ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(errno: i32) -> u16 {
        io_status(&io::Error::from_raw_os_error(errno)).as_u16()
    }

    #[test]
    fn errno_to_status() {
        assert_eq!(status(libc::ENOSPC), 507);
        assert_eq!(status(libc::EDQUOT), 507);
        assert_eq!(status(libc::ENOENT), 404);
        assert_eq!(status(libc::ENOTDIR), 404);
        assert_eq!(status(libc::EISDIR), 400);
        assert_eq!(status(libc::ENAMETOOLONG), 400);
        assert_eq!(status(libc::EACCES), 403);
        assert_eq!(status(libc::EIO), 500);
        assert_eq!(
            io_status(&io::Error::new(io::ErrorKind::StorageFull, "full")).as_u16(),
            507
        );
        assert_eq!(
            io_status(&io::Error::other("boom")).as_u16(),
            500,
            "unknown errors are internal"
        );
    }

    #[test]
    fn auth_errors_are_401() {
        let e: ApiError = AuthError::User(UserError::Unknown("x".into())).into();
        assert_eq!(e.status, 401);
        let e: ApiError = AuthError::User(UserError::Lookup(nix::Error::EIO)).into();
        assert_eq!(e.status, 500);
    }
}
