//! Errors of the backend and of envd, as Connect codes the control plane can act on.

use connectrpc::{ConnectError, ErrorCode};

use crate::envd_client::EnvdError;

/// A failed sandbox-manager operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
}

impl From<BackendError> for ConnectError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => ConnectError::not_found(m),
            BackendError::InvalidArgument(m) => ConnectError::invalid_argument(m),
            BackendError::AlreadyExists(m) => ConnectError::already_exists(m),
            BackendError::FailedPrecondition(m) => ConnectError::failed_precondition(m),
            BackendError::ResourceExhausted(m) => ConnectError::resource_exhausted(m),
            BackendError::Internal(m) => ConnectError::internal(m),
        }
    }
}

/// The Connect code for an envd failure. envd's own codes pass through, except
/// `unauthenticated`: at the agent that code means "the control plane's token was refused",
/// so envd refusing a guest user or token becomes `permission_denied`.
fn code_of(e: &EnvdError) -> ErrorCode {
    match e {
        EnvdError::Rpc(c) => match c.code {
            ErrorCode::Unauthenticated => ErrorCode::PermissionDenied,
            code => code,
        },
        EnvdError::Http { status, .. } => match status {
            400 => ErrorCode::InvalidArgument,
            401 | 403 => ErrorCode::PermissionDenied,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::AlreadyExists,
            413 | 507 => ErrorCode::ResourceExhausted,
            502..=504 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        },
        EnvdError::Transport(_) | EnvdError::NotHealthy(_) => ErrorCode::Unavailable,
        EnvdError::Timeout(_) => ErrorCode::DeadlineExceeded,
        EnvdError::Protocol(_) => ErrorCode::Internal,
        EnvdError::Source(_) => ErrorCode::Aborted,
        EnvdError::Gone(_) => ErrorCode::Aborted,
    }
}

/// Maps an envd failure of sandbox `id` to a Connect error (and logs it).
pub fn envd_error(id: &str, e: EnvdError) -> ConnectError {
    let code = code_of(&e);
    let message = match &e {
        EnvdError::Rpc(c) => format!("envd: {}", c.message.as_deref().unwrap_or("")),
        other => other.to_string(),
    };
    if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
        tracing::warn!(sandbox_id = %id, error = %e, "envd call failed");
    } else {
        tracing::debug!(sandbox_id = %id, error = %e, "envd call refused");
    }
    ConnectError::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn http(status: u16) -> ErrorCode {
        code_of(&EnvdError::Http {
            status,
            message: String::new(),
        })
    }

    #[test]
    fn envd_codes() {
        assert_eq!(
            code_of(&EnvdError::Rpc(ConnectError::not_found("x"))),
            ErrorCode::NotFound
        );
        assert_eq!(
            code_of(&EnvdError::Rpc(ConnectError::unauthenticated("x"))),
            ErrorCode::PermissionDenied
        );
        assert_eq!(http(404), ErrorCode::NotFound);
        assert_eq!(http(400), ErrorCode::InvalidArgument);
        assert_eq!(http(401), ErrorCode::PermissionDenied);
        assert_eq!(http(507), ErrorCode::ResourceExhausted);
        assert_eq!(http(500), ErrorCode::Internal);
        assert_eq!(
            code_of(&EnvdError::Transport("refused".into())),
            ErrorCode::Unavailable
        );
        assert_eq!(
            code_of(&EnvdError::Timeout(Duration::from_secs(1))),
            ErrorCode::DeadlineExceeded
        );
    }

    #[test]
    fn backend_codes() {
        let c: ConnectError = BackendError::NotFound("no such sandbox".into()).into();
        assert_eq!(c.code, ErrorCode::NotFound);
        let c: ConnectError = BackendError::ResourceExhausted("full".into()).into();
        assert_eq!(c.code, ErrorCode::ResourceExhausted);
    }
}
