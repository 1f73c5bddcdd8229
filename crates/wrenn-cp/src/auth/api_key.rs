//! API keys: `wrn_` + 32 lowercase hex digits (16 random bytes). The database keeps only the
//! SHA-256 (hex) of the whole key, for lookup, and a display prefix (`wrn_` + 8 hex) so a
//! user can tell keys apart. A malformed key is refused before any lookup.
//!
//! Lookups go through an [`ApiKeyCache`] (5 s): a revoked key stops working at once in the
//! process that revoked it (it invalidates the entry) and within 5 s everywhere else.

use std::time::Duration;

use super::cache::TtlCache;
use super::sha256_hex;
use crate::error::ApiError;
use crate::ids::{ApiKeyId, RngError, TeamId, random_bytes};

/// Every API key starts with this.
pub const API_KEY_PREFIX: &str = "wrn_";
/// Hex digits after the prefix.
pub const API_KEY_HEX_LEN: usize = 32;
/// Total length of a key.
pub const API_KEY_LEN: usize = API_KEY_PREFIX.len() + API_KEY_HEX_LEN;
/// Length of the display prefix (`wrn_` + 8 hex): 32 of the 128 random bits, so showing it
/// leaves 96 unknown.
pub const DISPLAY_PREFIX_LEN: usize = API_KEY_PREFIX.len() + 8;
/// How long a looked-up key stays cached.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most keys cached at once.
pub const KEY_CACHE_CAPACITY: usize = 10_000;

/// The text of a malformed key is never echoed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed API key")]
pub struct MalformedApiKey;

impl From<MalformedApiKey> for ApiError {
    fn from(e: MalformedApiKey) -> Self {
        ApiError::unauthorized(e.to_string())
    }
}

/// A new key: `plaintext` is shown to the user once; the rest goes to the database.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedApiKey {
    pub plaintext: String,
    /// SHA-256 of `plaintext`, lowercase hex (the `key_hash` column, unique).
    pub hash: String,
    /// `wrn_` + 8 hex (the `key_prefix` column).
    pub display_prefix: String,
}

impl std::fmt::Debug for GeneratedApiKey {
    // Keeps the secret out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedApiKey")
            .field("hash", &self.hash)
            .field("display_prefix", &self.display_prefix)
            .finish_non_exhaustive()
    }
}

/// A fresh random key.
pub fn generate() -> Result<GeneratedApiKey, RngError> {
    let mut bytes = [0u8; API_KEY_HEX_LEN / 2];
    random_bytes(&mut bytes)?;
    let plaintext = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
    Ok(GeneratedApiKey {
        hash: sha256_hex(&plaintext),
        display_prefix: plaintext[..DISPLAY_PREFIX_LEN].to_owned(),
        plaintext,
    })
}

/// Whether a credential is meant as an API key (so a `Bearer wrn_…` goes down the key path,
/// even when malformed, instead of being tried as a JWT).
pub fn looks_like_api_key(s: &str) -> bool {
    s.starts_with(API_KEY_PREFIX)
}

/// Whether `s` is exactly `wrn_` + 32 lowercase hex.
pub fn is_well_formed(s: &str) -> bool {
    s.len() == API_KEY_LEN
        && s.strip_prefix(API_KEY_PREFIX)
            .is_some_and(|hex| hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The lookup hash of a presented key, after checking its format.
pub fn hash_presented(s: &str) -> Result<String, MalformedApiKey> {
    if is_well_formed(s) {
        Ok(sha256_hex(s))
    } else {
        Err(MalformedApiKey)
    }
}

/// Who an API key acts for: a team, no user, no role (spec §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrincipal {
    /// The key's row, for `last_used` and the audit log.
    pub key_id: ApiKeyId,
    pub team_id: TeamId,
}

/// Key hash → principal. Generic over the value so the server can cache a richer principal.
/// Only found keys are cached: a key created a moment ago must work at once.
pub type ApiKeyCache<P = KeyPrincipal> = TtlCache<String, P>;

/// A cache with [`KEY_CACHE_TTL`] and [`KEY_CACHE_CAPACITY`].
pub fn new_key_cache<P: Clone>() -> ApiKeyCache<P> {
    TtlCache::new(KEY_CACHE_TTL, KEY_CACHE_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_format() {
        let k = generate().unwrap();
        assert!(k.plaintext.starts_with("wrn_"));
        assert_eq!(k.plaintext.len(), 36);
        assert!(is_well_formed(&k.plaintext));
        assert_eq!(k.display_prefix.len(), 12);
        assert!(k.plaintext.starts_with(&k.display_prefix));
        assert_eq!(hash_presented(&k.plaintext).unwrap(), k.hash);
        assert_eq!(k.hash, sha256_hex(&k.plaintext));
        assert_ne!(generate().unwrap().plaintext, k.plaintext);
        assert!(
            !format!("{k:?}").contains(&k.plaintext),
            "Debug leaks the key"
        );
    }

    #[test]
    fn known_hash() {
        // SHA-256 of the whole key including the `wrn_` prefix.
        assert_eq!(
            hash_presented("wrn_00000000000000000000000000000000").unwrap(),
            sha256_hex("wrn_00000000000000000000000000000000")
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = generate().unwrap().plaintext;
        for bad in [
            String::new(),
            "wrn_".into(),
            good[..35].to_owned(),
            format!("{good}0"),
            good.to_uppercase(),
            good.replacen("wrn_", "WRN_", 1),
            good.replacen("wrn_", "wrk_", 1),
            format!("wrn_{}", "g".repeat(32)),
            format!(" {}", &good[..35]),
            format!("wrn_{}é", &"0".repeat(30)),
        ] {
            assert_eq!(hash_presented(&bad), Err(MalformedApiKey), "{bad:?}");
        }
        assert!(looks_like_api_key("wrn_nope"));
        assert!(!looks_like_api_key("eyJhbGciOi"));
        let e: ApiError = MalformedApiKey.into();
        assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn cache_round_trip() {
        let c: ApiKeyCache = new_key_cache();
        assert_eq!(c.ttl(), Duration::from_secs(5));
        let p = KeyPrincipal {
            key_id: ApiKeyId::generate(),
            team_id: TeamId::generate(),
        };
        let k = generate().unwrap();
        c.insert(k.hash.clone(), p.clone());
        assert_eq!(c.get(k.hash.as_str()), Some(p.clone()));
        c.invalidate_if(|v: &KeyPrincipal| v.key_id == p.key_id);
        assert_eq!(c.get(k.hash.as_str()), None);
    }
}
