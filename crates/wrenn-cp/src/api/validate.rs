//! Field validation shared by the routes: each check names the field in its 400 message.

use crate::error::ApiError;

pub const MAX_NAME_CHARS: usize = 100;
/// RFC 5321's path limit.
pub const MAX_EMAIL_LEN: usize = 254;

/// A display name (user, team, key): trimmed, 1–100 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<String, ApiError> {
    let v = value.trim();
    let n = v.chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        return Err(ApiError::invalid_request(format!(
            "{field} must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid_request(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}

/// An email address, lower-cased: one `@`, non-empty parts, a dot in the domain, no spaces.
/// Deliverability is not checked (there is no activation mail yet).
pub fn email(value: &str) -> Result<String, ApiError> {
    let v = value.trim().to_lowercase();
    let ok = v.len() <= MAX_EMAIL_LEN
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && match v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if ok {
        Ok(v)
    } else {
        Err(ApiError::invalid_request("email is not a valid address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_emails() {
        assert_eq!(name("name", "  Ada ").unwrap(), "Ada");
        assert!(name("name", "   ").is_err());
        assert!(name("name", &"x".repeat(101)).is_err());
        assert!(name("name", "a\nb").is_err());
        assert_eq!(name("name", &"é".repeat(100)).unwrap().chars().count(), 100);
        assert_eq!(email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "", "ada", "@x.io", "a@b", "a@@b.io", "a b@c.io", "a@.io", "a@io.",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert!(email(&format!("{}@x.io", "a".repeat(250))).is_err());
    }
}
