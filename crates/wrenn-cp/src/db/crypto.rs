//! Encryption at rest for the envd access tokens (AES-256-GCM).
//!
//! Stored form: base64 (standard, padded) of `nonce (12 bytes) || ciphertext || tag`. A fresh
//! random nonce per value; the sandbox ID is the associated data, so a value copied onto
//! another row does not decrypt.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::DbError;

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

pub struct EnvdTokenCipher {
    cipher: Aes256Gcm,
}

impl EnvdTokenCipher {
    /// `key` must be exactly 32 bytes.
    pub fn new(key: &[u8]) -> Result<Self, DbError> {
        let key: [u8; KEY_LEN] = key.try_into().map_err(|_| DbError::BadKey(key.len()))?;
        Ok(Self {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)),
        })
    }

    /// A new random key, for the server's first start (it stores it 0600) and for tests.
    pub fn generate_key() -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        fill_random(&mut key);
        key
    }

    pub fn encrypt(&self, sandbox_id: &str, token: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let payload = Payload {
            msg: token.as_bytes(),
            aad: sandbox_id.as_bytes(),
        };
        // AES-GCM only fails for messages beyond 64 GiB; a token is a few dozen bytes.
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .expect("AES-GCM encryption of a short token cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    pub fn decrypt(&self, sandbox_id: &str, stored: &str) -> Result<String, DbError> {
        let raw = STANDARD.decode(stored).map_err(|_| DbError::Decrypt)?;
        if raw.len() < NONCE_LEN {
            return Err(DbError::Decrypt);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| DbError::Decrypt)?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: sandbox_id.as_bytes(),
                },
            )
            .map_err(|_| DbError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| DbError::Decrypt)
    }
}

/// The OS random source; its failure means the machine cannot make secrets at all.
pub(super) fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("OS random number generator unavailable");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonce() {
        let c = EnvdTokenCipher::new(&EnvdTokenCipher::generate_key()).unwrap();
        let a = c.encrypt("sb1", "secret-token");
        let b = c.encrypt("sb1", "secret-token");
        assert_ne!(a, b, "each value gets its own nonce");
        assert!(!a.contains("secret"));
        assert_eq!(c.decrypt("sb1", &a).unwrap(), "secret-token");
        assert_eq!(c.decrypt("sb1", &b).unwrap(), "secret-token");
    }

    #[test]
    fn wrong_key_wrong_row_and_garbage_are_typed_errors() {
        let c = EnvdTokenCipher::new(&EnvdTokenCipher::generate_key()).unwrap();
        let other = EnvdTokenCipher::new(&EnvdTokenCipher::generate_key()).unwrap();
        let v = c.encrypt("sb1", "t");
        assert!(matches!(other.decrypt("sb1", &v), Err(DbError::Decrypt)));
        assert!(matches!(c.decrypt("sb2", &v), Err(DbError::Decrypt)));
        assert!(matches!(
            c.decrypt("sb1", "!!notbase64"),
            Err(DbError::Decrypt)
        ));
        assert!(matches!(c.decrypt("sb1", "AAAA"), Err(DbError::Decrypt)));
        let mut tampered = STANDARD.decode(&v).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            c.decrypt("sb1", &STANDARD.encode(tampered)),
            Err(DbError::Decrypt)
        ));
    }

    #[test]
    fn key_length_is_checked() {
        assert!(matches!(
            EnvdTokenCipher::new(&[0u8; 16]),
            Err(DbError::BadKey(16))
        ));
    }
}
