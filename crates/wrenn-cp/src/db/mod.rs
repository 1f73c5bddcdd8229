//! The control plane's data layer: one set of runtime SQL queries over sqlx's `Any` driver,
//! running on SQLite (default, a file under the data dir) or PostgreSQL (`DATABASE_URL`).
//!
//! Any-driver rules (see `migrations/`): IDs are TEXT, timestamps BIGINT epoch-ms, JSON TEXT,
//! booleans BOOLEAN on PostgreSQL and INTEGER 0/1 on SQLite (read through [`row::Flag`]).
//!
//! Lists are newest first, cursor-paginated ([`page`]); sandbox status changes go through the
//! one transition table in [`status`]; activity timestamps are debounced ([`debounce`]); the
//! envd access token is encrypted at rest ([`crypto`]).

mod api_keys;
mod audit;
pub mod crypto;
pub mod debounce;
mod error;
mod hosts;
pub mod hot;
pub mod ids;
pub mod invitations;
pub mod page;
mod pool;
pub mod quotas;
mod row;
mod sandboxes;
pub mod status;
mod teams;
mod templates;
pub mod testing;
mod users;

pub use api_keys::{ApiKey, NewApiKey};
pub use audit::{ActorType, AuditEntry, NewAuditEntry};
pub use crypto::{EnvdTokenCipher, KEY_LEN};
pub use error::{DbError, TokenRejection};
pub use hosts::{
    Candidate, Host, HostCapacity, HostStatus, NewHost, NewRegistrationToken, REFRESH_GRACE_MS,
    RefreshToken, RegistrationToken,
};
pub use invitations::Invitation;
pub use page::{Page, PageRequest};
pub use pool::{Backend, Db, DbConfig};
pub use quotas::{Quota, QuotaOverrides, Usage};
pub use sandboxes::{NewSandbox, OnTimeout, Sandbox, SandboxFilter, SandboxPatch};
pub use status::SandboxStatus;
pub use teams::{Member, Membership, Role, Team};
pub use templates::{Template, TemplateSpec};
pub use users::{SignupGate, User};

/// Milliseconds since the Unix epoch: the one timestamp format in the database.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
