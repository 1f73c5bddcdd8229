//! Opaque bearer secrets that live in the database only as SHA-256: host refresh tokens
//! (60 days, rotated) and one-time host registration tokens (1 hour). Both are 32 random
//! bytes as 64 lowercase hex digits; the plaintext is shown once and never stored.

use std::time::Duration;

use subtle::ConstantTimeEq;

use super::sha256_hex;
use crate::ids::{RngError, random_bytes};

/// Lifetime of a host refresh token.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(60 * 24 * 3600);
/// Lifetime of a host registration token.
pub const REGISTRATION_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Length of a token's text form.
pub const TOKEN_LEN: usize = 2 * TOKEN_BYTES;

/// A new token: the plaintext for the client, the hash for the database.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueToken {
    pub plaintext: String,
    /// SHA-256 of `plaintext`, lowercase hex.
    pub hash: String,
    /// How long the row stays valid.
    pub ttl: Duration,
}

impl std::fmt::Debug for OpaqueToken {
    // Never print the secret (tracing of a struct holding one must not leak it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpaqueToken")
            .field("hash", &self.hash)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn generate(ttl: Duration) -> Result<OpaqueToken, RngError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    random_bytes(&mut bytes)?;
    let plaintext = hex::encode(bytes);
    Ok(OpaqueToken {
        hash: sha256_hex(&plaintext),
        plaintext,
        ttl,
    })
}

/// A new host refresh token.
pub fn generate_refresh_token() -> Result<OpaqueToken, RngError> {
    generate(REFRESH_TOKEN_TTL)
}

/// A new one-time host registration token.
pub fn generate_registration_token() -> Result<OpaqueToken, RngError> {
    generate(REGISTRATION_TOKEN_TTL)
}

/// Whether `s` has a token's shape; anything else is refused before a database lookup.
pub fn is_well_formed(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stored hash of a presented token, or `None` if it is malformed.
pub fn hash_presented(s: &str) -> Option<String> {
    is_well_formed(s).then(|| sha256_hex(s))
}

/// Constant-time comparison of two stored hashes, for callers that compare a presented
/// token's hash with a row they already loaded rather than looking up by hash.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_hash_to_their_digest() {
        let a = generate_refresh_token().unwrap();
        let b = generate_refresh_token().unwrap();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(is_well_formed(&a.plaintext));
        assert_eq!(a.hash.len(), 64);
        assert_eq!(
            hash_presented(&a.plaintext).as_deref(),
            Some(a.hash.as_str())
        );
        assert_ne!(a.hash, a.plaintext);
        assert_eq!(a.ttl, Duration::from_secs(60 * 86400));
        assert_eq!(
            generate_registration_token().unwrap().ttl,
            Duration::from_secs(3600)
        );
        assert!(!format!("{a:?}").contains(&a.plaintext));
        // Known vector: SHA-256 of the empty string is not what a token hashes to, but the
        // helper is plain SHA-256.
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = generate_registration_token().unwrap().plaintext;
        for bad in [
            String::new(),
            t[..63].to_owned(),
            format!("{t}0"),
            t.to_uppercase(),
            format!("wrn_{}", &t[..32]),
            t.replacen(&t[..1], "g", 1),
        ] {
            assert!(hash_presented(&bad).is_none(), "{bad:?}");
        }
        assert!(hashes_equal("abc", "abc"));
        assert!(!hashes_equal("abc", "abd"));
        assert!(!hashes_equal("abc", "abcd"));
    }
}
