//! Identifiers on the wire and in the database (TEXT primary keys).
//!
//! - Sandboxes: 20 characters of `[a-z0-9]` from the OS CSPRNG (DESIGN §10): a valid DNS
//!   label part, so the proxy can route `<port>-<id>.<domain>`; ~103 bits, unguessable.
//! - Everything else: `<prefix>-` + a UUIDv7 as 32 lowercase hex digits. The leading 48 bits
//!   are the creation time in ms, so IDs sort by creation (index-friendly, cursor pagination
//!   by ID); they are not secrets.
//!
//! Each kind is a newtype that can only hold a well-formed ID: parsing (`FromStr`, serde,
//! [`crate::error::ApiPath`]) rejects anything else, so a bad ID gets a 400 before any
//! database access.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;

/// Length of a sandbox ID.
pub const SANDBOX_ID_LEN: usize = 20;
/// Length of the random part of a prefixed ID (a UUID in hex).
pub const PREFIXED_BODY_LEN: usize = 32;

const SANDBOX_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// An ID that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id")]
pub struct InvalidId {
    /// The kind expected (`"sandbox"`, `"user"` ...). The rejected value is not kept: it is
    /// client input and may be anything.
    pub kind: &'static str,
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        ApiError::invalid_request(e.to_string())
    }
}

/// The OS CSPRNG failed (no entropy source): nothing sensible can continue.
#[derive(Debug, thiserror::Error)]
#[error("OS random number generator failed: {0}")]
pub struct RngError(#[from] getrandom::Error);

impl From<RngError> for ApiError {
    fn from(e: RngError) -> Self {
        ApiError::internal(e)
    }
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), RngError> {
    getrandom::fill(buf)?;
    Ok(())
}

fn is_sandbox_id(s: &str) -> bool {
    s.len() == SANDBOX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A sandbox ID: 20 characters of `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SandboxId(String);

impl SandboxId {
    pub const KIND: &'static str = "sandbox";
    /// What [`Self::is_valid`] accepts, as a regular expression.
    pub const PATTERN: &'static str = "^[a-z0-9]{20}$";

    /// A fresh random ID. Each character is drawn uniformly: bytes ≥ 252 (= 7 × 36) are
    /// discarded so `b % 36` has no modulo bias.
    pub fn generate() -> Result<Self, RngError> {
        let mut out = String::with_capacity(SANDBOX_ID_LEN);
        let mut buf = [0u8; 32];
        while out.len() < SANDBOX_ID_LEN {
            random_bytes(&mut buf)?;
            for &b in buf.iter().filter(|&&b| b < 252) {
                if out.len() == SANDBOX_ID_LEN {
                    break;
                }
                out.push(char::from(SANDBOX_ALPHABET[usize::from(b % 36)]));
            }
        }
        Ok(SandboxId(out))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if is_sandbox_id(s) {
            Ok(SandboxId(s.to_owned()))
        } else {
            Err(InvalidId { kind: Self::KIND })
        }
    }

    pub fn is_valid(s: &str) -> bool {
        is_sandbox_id(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Shared trait impls for the ID newtypes.
macro_rules! id_common {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        // The document states the exact shape `parse` accepts, so a client (or a generated
        // test) knows which strings are IDs before the server answers 400.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(Self::PATTERN))
                    .description(Some(format!("A {} ID", Self::KIND)))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

id_common!(SandboxId);

/// Defines a `<prefix>-<uuidv7 hex>` ID type.
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix including its dash.
            pub const PREFIX: &'static str = concat!($prefix, "-");
            pub const KIND: &'static str = $kind;
            /// What [`Self::is_valid`] accepts, as a regular expression.
            pub const PATTERN: &'static str = concat!("^", $prefix, "-[0-9a-f]{32}$");

            /// A fresh, time-ordered ID.
            pub fn generate() -> Self {
                $name(format!("{}{}", Self::PREFIX, uuid::Uuid::now_v7().simple()))
            }

            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if Self::is_valid(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(InvalidId { kind: Self::KIND })
                }
            }

            pub fn is_valid(s: &str) -> bool {
                s.strip_prefix(Self::PREFIX)
                    .is_some_and(|body| body.len() == PREFIXED_BODY_LEN && is_lower_hex(body))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        id_common!($name);
    };
}

prefixed_id!(
    /// A user (`usr-…`).
    UserId,
    "usr",
    "user"
);
prefixed_id!(
    /// A team (`team-…`).
    TeamId,
    "team",
    "team"
);
prefixed_id!(
    /// An API key's row (`key-…`); not the key itself.
    ApiKeyId,
    "key",
    "api key"
);
prefixed_id!(
    /// A host (`host-…`).
    HostId,
    "host",
    "host"
);
prefixed_id!(
    /// A template (`tmpl-…`).
    TemplateId,
    "tmpl",
    "template"
);
prefixed_id!(
    /// A row of a stored token (host registration or refresh token; `tok-…`); not the token.
    TokenId,
    "tok",
    "token"
);
prefixed_id!(
    /// A team invitation (`inv-…`).
    InvitationId,
    "inv",
    "invitation"
);
prefixed_id!(
    /// An audit-log entry (`log-…`).
    AuditLogId,
    "log",
    "audit log"
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sandbox_ids_have_the_shape_and_are_distinct() {
        let ids: Vec<SandboxId> = (0..2000).map(|_| SandboxId::generate().unwrap()).collect();
        for id in &ids {
            assert!(SandboxId::is_valid(id.as_str()), "{id}");
            assert_eq!(id.as_str().len(), 20);
        }
        let set: HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        // Every character of the alphabet shows up in 40,000 draws (a stuck or biased
        // generator would miss some).
        let seen: HashSet<char> = ids.iter().flat_map(|i| i.as_str().chars()).collect();
        assert_eq!(seen.len(), 36, "{seen:?}");
    }

    #[test]
    fn sandbox_id_validation() {
        assert!(SandboxId::parse("abcdefghij0123456789").is_ok());
        for bad in [
            "",
            "abcdefghij012345678",   // 19
            "abcdefghij01234567890", // 21
            "ABCDEFGHIJ0123456789",
            "abcdefghij-123456789",
            "abcdefghij012345678é",
            "cl-abcdefghij0123456",
            "abcdefghij012345678\n",
        ] {
            assert_eq!(
                SandboxId::parse(bad),
                Err(InvalidId { kind: "sandbox" }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefixed_ids_have_the_shape_and_sort_by_time() {
        let a = UserId::generate();
        assert!(a.as_str().starts_with("usr-"));
        assert_eq!(a.as_str().len(), 4 + 32);
        assert!(UserId::is_valid(a.as_str()));
        let mut prev = HostId::generate();
        for _ in 0..1000 {
            let next = HostId::generate();
            assert!(next > prev, "{next} after {prev}");
            prev = next;
        }
        for id in [
            TeamId::generate().into_string(),
            ApiKeyId::generate().into_string(),
            TemplateId::generate().into_string(),
            TokenId::generate().into_string(),
            AuditLogId::generate().into_string(),
        ] {
            let (prefix, body) = id.split_once('-').unwrap();
            assert!(
                ["team", "key", "tmpl", "tok", "log"].contains(&prefix),
                "{id}"
            );
            assert_eq!(body.len(), 32);
            assert!(is_lower_hex(body));
        }
    }

    #[test]
    fn prefixed_id_validation() {
        let good = "team-0190f5a3c2b17e3a9d4f5b6c7d8e9f00";
        assert!(TeamId::parse(good).is_ok());
        for bad in [
            "team-",
            "team-0190F5A3C2B17E3A9D4F5B6C7D8E9F00",
            "team-0190f5a3-c2b1-7e3a-9d4f-5b6c7d8e9f00",
            "team-0190f5a3c2b17e3a9d4f5b6c7d8e9f0",
            "team-0190f5a3c2b17e3a9d4f5b6c7d8e9f000",
            "team-0190f5a3c2b17e3a9d4f5b6c7d8e9fzz",
            "usr-0190f5a3c2b17e3a9d4f5b6c7d8e9f00",
            "TEAM-0190f5a3c2b17e3a9d4f5b6c7d8e9f00",
            " team-0190f5a3c2b17e3a9d4f5b6c7d8e9f00",
        ] {
            assert!(TeamId::parse(bad).is_err(), "{bad:?}");
        }
        // A host ID is not a user ID.
        let h = HostId::generate();
        assert_eq!(UserId::parse(h.as_str()), Err(InvalidId { kind: "user" }));
    }

    #[test]
    fn serde_round_trip_and_rejection() {
        let id = TemplateId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TemplateId>(&json).unwrap(), id);
        let err = serde_json::from_str::<TemplateId>("\"tmpl-nope\"").unwrap_err();
        assert!(err.to_string().contains("invalid template id"), "{err}");
        assert!(serde_json::from_str::<SandboxId>("\"abc\"").is_err());
        let api: ApiError = InvalidId { kind: "sandbox" }.into();
        assert_eq!(api.status(), axum::http::StatusCode::BAD_REQUEST);
    }
}
