use super::status::SandboxStatus;

/// Why a host registration or refresh token was refused. The API answers 401 for all of them;
/// the reason is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
    AlreadyUsed,
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The row does not exist, or belongs to another team (the API answers 404 for both).
    #[error("not found")]
    NotFound,
    /// A sandbox status change that the transition table does not allow from the row's
    /// current status (the API answers 409).
    #[error("sandbox is {current}, cannot become {requested}")]
    Conflict {
        current: SandboxStatus,
        requested: SandboxStatus,
    },
    /// A unique constraint refused the row (duplicate email, slug, name ...).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Signup is closed, or needs an invitation this email does not have.
    #[error("signup refused: {0}")]
    SignupRefused(&'static str),
    /// The change would leave a team without an owner.
    #[error("a team must keep at least one owner")]
    LastOwner,
    #[error("token rejected: {0:?}")]
    TokenRejected(TokenRejection),
    #[error("invalid pagination cursor")]
    InvalidCursor,
    #[error("invalid page limit {0}: must be 1..={max}", max = super::page::MAX_LIMIT)]
    InvalidLimit(u32),
    /// The stored envd token does not decrypt with this key (wrong key or tampered value).
    #[error("stored secret does not decrypt with the configured key")]
    Decrypt,
    #[error("encryption key must be {len} bytes, got {0}", len = super::crypto::KEY_LEN)]
    BadKey(usize),
    /// A value in the database that the code does not know (e.g. an unknown status string).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sqlx(sqlx::Error),
}

impl DbError {
    /// The database could not be reached or dropped the connection (a restart, a failover):
    /// the same request may well work in a moment. Not a bug in the request or the data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Sqlx(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // PostgreSQL's "connection exception" (08) and "operator intervention" (57:
                // admin shutdown, crash shutdown, cannot connect now) classes.
                sqlx::Error::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => DbError::NotFound,
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                DbError::AlreadyExists(d.constraint().unwrap_or(d.message()).to_owned())
            }
            _ => DbError::Sqlx(e),
        }
    }
}
