//! Password hashing: argon2id with argon2 0.6's defaults (m = 19 MiB, t = 2, p = 1, the
//! OWASP minimum), stored as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//! Verification compares in constant time (argon2's `Output` uses `subtle`).
//!
//! Hashing costs tens of milliseconds of CPU: async callers use the `*_async` variants,
//! which run on tokio's blocking pool instead of stalling the executor.

use argon2::password_hash::Error as HashError;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

use crate::error::ApiError;

/// Shortest accepted new password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters (as the API document's `maxLength` counts them;
/// at most 4 KiB): bounds the work an unauthenticated request can cause.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A PHC string with the default parameters and a random salt and output (no password is
/// known to match it), verified when the user
/// does not exist so that "no such user" costs the same time as "wrong password".
/// `dummy_hash_uses_default_params` keeps it in step with the crate's defaults.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$CSAwRy9vPn8a+A8HGJI3Tg$fd87IHwlo8Fno6RV9GOlbJL7yePCiH6K1ZYwCnUeSmI";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("password must be at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    /// The stored hash is not a PHC string argon2 understands (a data bug, not user input).
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(argon2::password_hash::phc::Error),
    #[error("password hashing failed: {0}")]
    Hash(HashError),
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::TooShort | PasswordError::TooLong => {
                ApiError::invalid_request(e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// Checks a new password's length (signup, password change).
pub fn validate_new_password(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Hashes a new password (validated first) with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    validate_new_password(password)?;
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// `Ok(true)` if `password` matches the stored PHC hash, `Ok(false)` if not.
pub fn verify_password(password: &str, stored_phc: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(stored_phc).map_err(PasswordError::MalformedHash)?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(HashError::PasswordInvalid) => Ok(false),
        Err(e) => Err(PasswordError::Hash(e)),
    }
}

/// Login check that does not reveal whether the account exists: with `stored_phc == None`
/// (unknown user, or an OAuth-only user without a password) it still runs one full
/// verification against [`DUMMY_HASH`] and answers `false`. Over-long passwords and
/// malformed stored hashes also answer `false` after the same amount of work.
pub fn verify_or_dummy(password: &str, stored_phc: Option<&str>) -> bool {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        // Never hash attacker-sized input; burn the same time and refuse.
        let _ = verify_password("", DUMMY_HASH);
        return false;
    }
    match stored_phc {
        Some(phc) => match verify_password(password, phc) {
            Ok(ok) => ok,
            Err(e) => {
                tracing::error!(error = %e, "password verification failed");
                let _ = verify_password(password, DUMMY_HASH);
                false
            }
        },
        None => {
            let _ = verify_password(password, DUMMY_HASH);
            false
        }
    }
}

/// [`hash_password`] on the blocking pool.
pub async fn hash_password_async(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_password(&password)).await?
}

/// [`verify_or_dummy`] on the blocking pool. A failed task counts as a mismatch.
pub async fn verify_or_dummy_async(password: String, stored_phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || verify_or_dummy(&password, stored_phc.as_deref()))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "password verification task failed");
            false
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn hash_is_argon2id_phc_and_verifies() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h).unwrap());
        assert!(!verify_password("correct horse batterY", &h).unwrap());
        assert!(!verify_password("", &h).unwrap());
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn length_rules() {
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
        // Counted in characters, not bytes: 8 multi-byte characters are enough.
        assert!(validate_new_password("éééééééé").is_ok());
        assert!(matches!(
            validate_new_password(&"a".repeat(MAX_PASSWORD_CHARS + 1)),
            Err(PasswordError::TooLong)
        ));
        let e: ApiError = PasswordError::TooShort.into();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn malformed_stored_hash_is_an_error_not_a_match() {
        assert!(matches!(
            verify_password("whatever1", "not-a-phc-string"),
            Err(PasswordError::MalformedHash(_))
        ));
        assert!(!verify_or_dummy("whatever1", Some("not-a-phc-string")));
    }

    #[test]
    fn dummy_hash_uses_default_params() {
        let real = hash_password("some password").unwrap();
        let params = |s: &str| s.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(DUMMY_HASH), params(&real));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    fn time(f: impl Fn()) -> Duration {
        // Best of a few runs: robust against a noisy neighbour.
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    }

    #[test]
    fn unknown_user_costs_a_full_verification() {
        let h = hash_password("the real password").unwrap();
        assert!(verify_or_dummy("the real password", Some(&h)));
        assert!(!verify_or_dummy("a wrong password", Some(&h)));
        assert!(!verify_or_dummy("the real password", None));
        assert!(!verify_or_dummy(&"x".repeat(5000), Some(&h)));

        // Not a benchmark: only that the dummy path does the argon2 work at all (a skipped
        // verification would be orders of magnitude faster).
        let known = time(|| {
            verify_or_dummy("a wrong password", Some(&h));
        });
        let unknown = time(|| {
            verify_or_dummy("a wrong password", None);
        });
        let too_long = time(|| {
            verify_or_dummy(&"x".repeat(5000), Some(&h));
        });
        for (name, t) in [("unknown user", unknown), ("over-long password", too_long)] {
            assert!(t * 4 > known, "{name}: {t:?} vs known user {known:?}");
        }
    }

    #[tokio::test]
    async fn async_variants() {
        let h = hash_password_async("async password".into()).await.unwrap();
        assert!(verify_or_dummy_async("async password".into(), Some(h.clone())).await);
        assert!(!verify_or_dummy_async("nope nope".into(), Some(h)).await);
        assert!(!verify_or_dummy_async("nope nope".into(), None).await);
    }
}
