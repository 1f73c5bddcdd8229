//! Authentication primitives: password hashing, user and host JWTs, opaque tokens, API keys,
//! and the axum extractors that tie them to a request. Nothing here touches the database;
//! the server state provides that through the traits in [`extract`].

pub mod api_key;
pub mod cache;
pub mod extract;
pub mod jwt;
pub mod limits;
pub mod password;
pub mod token;

use sha2::{Digest, Sha256};

/// SHA-256 of a secret as 64 lowercase hex digits: how API keys and opaque tokens are stored.
/// A fast hash is right here (unlike passwords): the secrets are 128+ random bits, so there
/// is nothing to brute-force, and lookups happen on every request.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
