//! User and host JWTs, both HS256 with the control plane's secret.
//!
//! - User token (6 h): claims exactly `sub` (user ID), `team_id`, `role`, `email`, `name`,
//!   `is_admin` (only when true), `iat`, `exp`, `iss`. `is_admin` only drives the UI: admin
//!   routes re-read it from the database.
//! - Host token (7 days): `sub` (host ID), `typ = "host"`, `aud = "wrenn-host"`, `iat`,
//!   `exp`, `iss`.
//!
//! The two kinds can't be confused: a user token has no `aud`, and jsonwebtoken refuses a
//! token carrying an `aud` when none is expected, so a host token fails user verification;
//! host verification requires the host audience and `typ`, which a user token lacks. Both
//! directions answer [`TokenError::WrongKind`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::{HostId, TeamId, UserId};

/// `iss` of every token this control plane signs.
pub const ISSUER: &str = "wrenn-cp";
/// `aud` of host tokens.
pub const HOST_AUDIENCE: &str = "wrenn-host";
/// `typ` claim of host tokens.
pub const HOST_TYPE: &str = "host";
/// Lifetime of a user token.
pub const USER_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// Lifetime of a host token.
pub const HOST_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest accepted signing secret, in bytes (HS256 wants at least its 256-bit output).
pub const MIN_SECRET_LEN: usize = 32;
/// Clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 30;

const ALG: Algorithm = Algorithm::HS256;

/// A member's role in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// The database's text form.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Owner or admin: may rename the team and manage members and BYOC hosts.
    pub const fn can_manage_team(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Claims of a verified user token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserClaims {
    pub sub: String,
    pub team_id: String,
    pub role: Role,
    pub email: String,
    pub name: String,
    #[serde(skip_serializing_if = "is_false")]
    pub is_admin: bool,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

/// Who a user token is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub user_id: UserId,
    pub team_id: TeamId,
    pub role: Role,
    pub email: String,
    pub name: String,
    pub is_admin: bool,
}

/// Claims of a verified host token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostClaims {
    pub sub: String,
    pub typ: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

/// A freshly signed token and when it expires (unix seconds), for the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub token: String,
    pub expires_at: u64,
}

/// User claims as they arrive: everything optional so a missing claim gets its own error,
/// plus the host-only claims so their presence can be refused.
#[derive(Deserialize)]
struct RawUserClaims {
    sub: Option<String>,
    team_id: Option<String>,
    role: Option<Role>,
    email: Option<String>,
    name: Option<String>,
    is_admin: Option<bool>,
    iat: Option<u64>,
    exp: Option<u64>,
    iss: Option<String>,
    typ: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawHostClaims {
    sub: Option<String>,
    typ: Option<String>,
    aud: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
    iss: Option<String>,
}

/// Why a token was refused. Every variant is a 401 at the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    #[error("token is missing the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` is invalid")]
    InvalidClaim(&'static str),
    #[error("token was not issued by this control plane")]
    WrongIssuer,
    /// A host token where a user token was expected, or the reverse.
    #[error("wrong kind of token for this route")]
    WrongKind,
    #[error("malformed token")]
    Malformed,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::unauthorized(e.to_string())
    }
}

/// Problems with the server's own key material or signing (server-side, so 500s).
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    #[error("JWT secret must be at least {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    #[error("JWT signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

impl From<JwtKeyError> for ApiError {
    fn from(e: JwtKeyError) -> Self {
        ApiError::internal(e)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongKind,
        ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "exp" => TokenError::InvalidClaim("exp"),
            "aud" => TokenError::InvalidClaim("aud"),
            "iss" => TokenError::InvalidClaim("iss"),
            "sub" => TokenError::InvalidClaim("sub"),
            _ => TokenError::Malformed,
        },
        _ => TokenError::Malformed,
    }
}

fn need<T>(v: Option<T>, name: &str) -> Result<T, TokenError> {
    v.ok_or_else(|| TokenError::MissingClaim(name.to_owned()))
}

/// Signs and verifies user and host tokens with one server secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys from the server secret (at least [`MIN_SECRET_LEN`] bytes).
    pub fn from_secret(secret: &[u8]) -> Result<Self, JwtKeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(JwtKeyError::SecretTooShort);
        }
        Ok(JwtKeys {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
        })
    }

    fn validation(&self) -> Validation {
        let mut v = Validation::new(ALG);
        v.leeway = LEEWAY_SECS;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v
    }

    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, JwtKeyError> {
        Ok(jsonwebtoken::encode(
            &Header::new(ALG),
            claims,
            &self.encoding,
        )?)
    }

    /// A user token valid for [`USER_TOKEN_TTL`] from now.
    pub fn issue_user(&self, who: &UserIdentity) -> Result<SignedToken, JwtKeyError> {
        self.issue_user_at(who, now_secs())
    }

    /// A user token issued at `iat` (unix seconds); tests forge old tokens with it.
    pub fn issue_user_at(&self, who: &UserIdentity, iat: u64) -> Result<SignedToken, JwtKeyError> {
        let claims = UserClaims {
            sub: who.user_id.to_string(),
            team_id: who.team_id.to_string(),
            role: who.role,
            email: who.email.clone(),
            name: who.name.clone(),
            is_admin: who.is_admin,
            iat,
            exp: iat + USER_TOKEN_TTL.as_secs(),
            iss: ISSUER.to_owned(),
        };
        Ok(SignedToken {
            token: self.sign(&claims)?,
            expires_at: claims.exp,
        })
    }

    /// Verifies a user token: signature, algorithm, issuer, expiry, that it is not a host
    /// token, and that every claim is present and well-formed.
    pub fn verify_user(&self, token: &str) -> Result<UserClaims, TokenError> {
        // `validation()` sets no audience, so a token with any `aud` is refused.
        let raw = jsonwebtoken::decode::<RawUserClaims>(token, &self.decoding, &self.validation())
            .map_err(|e| map_jwt_error(&e))?
            .claims;
        if raw.typ.is_some() {
            return Err(TokenError::WrongKind);
        }
        let claims = UserClaims {
            sub: need(raw.sub, "sub")?,
            team_id: need(raw.team_id, "team_id")?,
            role: need(raw.role, "role")?,
            email: need(raw.email, "email")?,
            name: need(raw.name, "name")?,
            is_admin: raw.is_admin.unwrap_or(false),
            iat: need(raw.iat, "iat")?,
            exp: need(raw.exp, "exp")?,
            iss: need(raw.iss, "iss")?,
        };
        if !UserId::is_valid(&claims.sub) {
            return Err(TokenError::InvalidClaim("sub"));
        }
        if !TeamId::is_valid(&claims.team_id) {
            return Err(TokenError::InvalidClaim("team_id"));
        }
        Ok(claims)
    }

    /// A host token valid for [`HOST_TOKEN_TTL`] from now.
    pub fn issue_host(&self, host_id: &HostId) -> Result<SignedToken, JwtKeyError> {
        self.issue_host_at(host_id, now_secs())
    }

    pub fn issue_host_at(&self, host_id: &HostId, iat: u64) -> Result<SignedToken, JwtKeyError> {
        let claims = HostClaims {
            sub: host_id.to_string(),
            typ: HOST_TYPE.to_owned(),
            aud: HOST_AUDIENCE.to_owned(),
            iat,
            exp: iat + HOST_TOKEN_TTL.as_secs(),
            iss: ISSUER.to_owned(),
        };
        Ok(SignedToken {
            token: self.sign(&claims)?,
            expires_at: claims.exp,
        })
    }

    /// Verifies a host token; a user token is [`TokenError::WrongKind`].
    pub fn verify_host(&self, token: &str) -> Result<HostClaims, TokenError> {
        let mut v = self.validation();
        v.set_audience(&[HOST_AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let raw = jsonwebtoken::decode::<RawHostClaims>(token, &self.decoding, &v)
            .map_err(|e| match map_jwt_error(&e) {
                TokenError::MissingClaim(c) if c == "aud" => TokenError::WrongKind,
                other => other,
            })?
            .claims;
        if raw.typ.as_deref() != Some(HOST_TYPE) {
            return Err(TokenError::WrongKind);
        }
        let claims = HostClaims {
            sub: need(raw.sub, "sub")?,
            typ: need(raw.typ, "typ")?,
            aud: need(raw.aud, "aud")?,
            iat: need(raw.iat, "iat")?,
            exp: need(raw.exp, "exp")?,
            iss: need(raw.iss, "iss")?,
        };
        if !HostId::is_valid(&claims.sub) {
            return Err(TokenError::InvalidClaim("sub"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    pub(crate) fn keys() -> JwtKeys {
        JwtKeys::from_secret(SECRET).unwrap()
    }

    pub(crate) fn alice(is_admin: bool) -> UserIdentity {
        UserIdentity {
            user_id: UserId::generate(),
            team_id: TeamId::generate(),
            role: Role::Admin,
            email: "alice@example.com".into(),
            name: "Alice".into(),
            is_admin,
        }
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// Signs arbitrary claims with the test secret and `alg`.
    fn forge(alg: Algorithm, claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(matches!(
            JwtKeys::from_secret(b"too short"),
            Err(JwtKeyError::SecretTooShort)
        ));
    }

    #[test]
    fn user_token_has_exactly_the_claims() {
        let who = alice(false);
        let t = keys().issue_user(&who).unwrap();
        let p = payload(&t.token);
        let mut names: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "email", "exp", "iat", "iss", "name", "role", "sub", "team_id"
            ]
        );
        assert_eq!(p["role"], "admin");
        assert_eq!(p["iss"], ISSUER);
        assert_eq!(
            p["exp"].as_u64().unwrap() - p["iat"].as_u64().unwrap(),
            6 * 3600
        );
        assert_eq!(t.expires_at, p["exp"].as_u64().unwrap());

        let admin = keys().issue_user(&alice(true)).unwrap();
        assert_eq!(payload(&admin.token)["is_admin"], true);

        let c = keys().verify_user(&t.token).unwrap();
        assert_eq!(c.sub, who.user_id.as_str());
        assert_eq!(c.team_id, who.team_id.as_str());
        assert_eq!(
            (c.role, c.email.as_str(), c.name.as_str()),
            (Role::Admin, "alice@example.com", "Alice")
        );
        assert!(!c.is_admin);
        assert!(keys().verify_user(&admin.token).unwrap().is_admin);
    }

    #[test]
    fn expired_user_token() {
        let old = keys()
            .issue_user_at(&alice(false), now_secs() - 6 * 3600 - 120)
            .unwrap();
        assert_eq!(keys().verify_user(&old.token), Err(TokenError::Expired));
        // Within the leeway it still passes.
        let edge = keys()
            .issue_user_at(&alice(false), now_secs() - 6 * 3600 - 5)
            .unwrap();
        assert!(keys().verify_user(&edge.token).is_ok());
    }

    #[test]
    fn bad_signature_and_garbage() {
        let t = keys().issue_user(&alice(false)).unwrap().token;
        let other = JwtKeys::from_secret(b"another-secret-another-secret-32b").unwrap();
        assert_eq!(other.verify_user(&t), Err(TokenError::BadSignature));
        // Flip one character of the signature.
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(keys().verify_user(&tampered), Err(TokenError::BadSignature));
        for junk in ["", "abc", "a.b.c", "wrn_0123456789abcdef0123456789abcdef"] {
            assert_eq!(
                keys().verify_user(junk),
                Err(TokenError::Malformed),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn wrong_algorithm_is_refused() {
        let who = alice(false);
        let claims = serde_json::json!({
            "sub": who.user_id.as_str(), "team_id": who.team_id.as_str(), "role": "owner",
            "email": "a@b.c", "name": "A", "iat": now_secs(), "exp": now_secs() + 60,
            "iss": ISSUER,
        });
        assert!(keys().verify_user(&forge(ALG, &claims)).is_ok(), "control");
        assert_eq!(
            keys().verify_user(&forge(Algorithm::HS512, &claims)),
            Err(TokenError::WrongAlgorithm)
        );
        // alg "none": header {"alg":"none"} with the same claims and no signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let none = format!("{header}.{body}.");
        assert!(keys().verify_user(&none).is_err());
    }

    #[test]
    fn missing_and_invalid_claims() {
        let who = alice(false);
        let full = serde_json::json!({
            "sub": who.user_id.as_str(), "team_id": who.team_id.as_str(), "role": "member",
            "email": "a@b.c", "name": "A", "iat": now_secs(), "exp": now_secs() + 60,
            "iss": ISSUER,
        });
        for claim in [
            "sub", "team_id", "role", "email", "name", "iat", "exp", "iss",
        ] {
            let mut c = full.clone();
            c.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                keys().verify_user(&forge(ALG, &c)),
                Err(TokenError::MissingClaim(claim.into())),
                "{claim}"
            );
        }
        let mut c = full.clone();
        c["iss"] = "someone-else".into();
        assert_eq!(
            keys().verify_user(&forge(ALG, &c)),
            Err(TokenError::WrongIssuer)
        );
        let mut c = full.clone();
        c["sub"] = "host-0190f5a3c2b17e3a9d4f5b6c7d8e9f00".into();
        assert_eq!(
            keys().verify_user(&forge(ALG, &c)),
            Err(TokenError::InvalidClaim("sub"))
        );
        let mut c = full.clone();
        c["team_id"] = "Platform".into();
        assert_eq!(
            keys().verify_user(&forge(ALG, &c)),
            Err(TokenError::InvalidClaim("team_id"))
        );
        let mut c = full;
        c["role"] = "superuser".into();
        assert_eq!(
            keys().verify_user(&forge(ALG, &c)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn host_token_round_trip() {
        let host = HostId::generate();
        let t = keys().issue_host(&host).unwrap();
        let p = payload(&t.token);
        assert_eq!(p["typ"], HOST_TYPE);
        assert_eq!(p["aud"], HOST_AUDIENCE);
        assert_eq!(
            p["exp"].as_u64().unwrap() - p["iat"].as_u64().unwrap(),
            7 * 24 * 3600
        );
        let c = keys().verify_host(&t.token).unwrap();
        assert_eq!(c.sub, host.as_str());

        let old = keys()
            .issue_host_at(&host, now_secs() - 8 * 24 * 3600)
            .unwrap();
        assert_eq!(keys().verify_host(&old.token), Err(TokenError::Expired));
    }

    #[test]
    fn host_and_user_tokens_do_not_cross() {
        let host_token = keys().issue_host(&HostId::generate()).unwrap().token;
        let user_token = keys().issue_user(&alice(true)).unwrap().token;
        assert_eq!(keys().verify_user(&host_token), Err(TokenError::WrongKind));
        assert_eq!(keys().verify_host(&user_token), Err(TokenError::WrongKind));

        // Forged hybrids: a host-typed token with user claims and no aud, and a token with
        // the host audience but no `typ`.
        let who = alice(false);
        let mut hybrid = serde_json::json!({
            "sub": who.user_id.as_str(), "team_id": who.team_id.as_str(), "role": "owner",
            "email": "a@b.c", "name": "A", "iat": now_secs(), "exp": now_secs() + 60,
            "iss": ISSUER, "typ": "host",
        });
        assert_eq!(
            keys().verify_user(&forge(ALG, &hybrid)),
            Err(TokenError::WrongKind)
        );
        let obj = hybrid.as_object_mut().unwrap();
        obj.remove("typ");
        obj.insert("aud".into(), HOST_AUDIENCE.into());
        assert_eq!(
            keys().verify_user(&forge(ALG, &hybrid)),
            Err(TokenError::WrongKind)
        );
        hybrid["sub"] = HostId::generate().as_str().into();
        assert_eq!(
            keys().verify_host(&forge(ALG, &hybrid)),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn token_errors_are_401() {
        let e: ApiError = TokenError::Expired.into();
        assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
        assert_eq!(Role::parse("owner"), Some(Role::Owner));
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Admin.can_manage_team() && !Role::Member.can_manage_team());
    }
}
