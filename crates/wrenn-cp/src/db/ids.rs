//! Random identifiers.
//!
//! Sandbox IDs are 20 characters of `[a-z0-9]` (DESIGN §10: valid DNS labels for the proxy's
//! `<port>-<id>.<domain>` routing; ~103 bits). Other rows use the typed IDs of
//! [`crate::ids`] (`usr-<uuidv7 hex>` ...), so the database and the API share one format.

use super::crypto::fill_random;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
pub const SANDBOX_ID_LEN: usize = 20;

fn random_base36(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        fill_random(&mut buf);
        for b in buf {
            // 252 = 7 * 36: rejecting the rest keeps every character equally likely.
            if b < 252 && out.len() < len {
                out.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    out
}

pub fn sandbox_id() -> String {
    random_base36(SANDBOX_ID_LEN)
}

/// Whether `s` has the sandbox ID shape; the API rejects anything else with 400 before any
/// query.
pub fn is_sandbox_id(s: &str) -> bool {
    s.len() == SANDBOX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        for _ in 0..200 {
            let id = sandbox_id();
            assert!(is_sandbox_id(&id), "{id}");
        }
        assert_ne!(sandbox_id(), sandbox_id());
        assert!(!is_sandbox_id("ABCDEFGHIJ0123456789"));
        assert!(!is_sandbox_id("abc"));
    }
}
