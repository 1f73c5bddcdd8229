//! Tokens of control-plane → agent calls, shared by both sides.
//!
//! The control plane signs short-lived EdDSA (Ed25519) JWTs whose audience is the host's ID
//! ([`CpSigner`]); the agent verifies them with the control plane's public key
//! ([`CpVerifier`]). A token may carry the host's credential generation (`gen`): revoking a
//! host's credentials bumps it, so an agent that knows its generation refuses tokens minted
//! for any other. This crate owns the token format only, not transport or HTTP middleware.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// `iss` of every control-plane token.
pub const ISSUER: &str = "wrenn-cp";
/// `sub` of every control-plane token.
pub const SUBJECT: &str = "cp";
/// Longest lifetime (`exp - iat`) a token may have; longer-lived ones are refused, so a
/// leaked token is useless within minutes.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Clock skew tolerated between control plane and host.
pub const LEEWAY_SECS: u64 = 30;

/// Claims of a control-plane token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The host ID the token is for.
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    /// The host's credential generation, when the control plane tracks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("malformed Authorization header: expected 'Bearer <token>'")]
    MalformedHeader,
    #[error("token expired")]
    Expired,
    #[error("token is for another host")]
    WrongAudience,
    #[error("token has the wrong issuer or subject")]
    WrongIssuer,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token lives longer than {}s", MAX_TTL.as_secs())]
    TooLongLived,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid key: {0}")]
    Key(String),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The control plane's signing side (used by the control plane and by tests).
pub struct CpSigner {
    key: EncodingKey,
    private_pem: String,
    public_pem: String,
}

impl std::fmt::Debug for CpSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpSigner").finish_non_exhaustive()
    }
}

impl CpSigner {
    /// A fresh random Ed25519 key.
    pub fn generate() -> Result<Self, AuthError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| AuthError::Key(format!("randomness: {e}")))?;
        Self::from_signing_key(&SigningKey::from_bytes(&seed))
    }

    /// The key whose 32-byte secret seed is `seed` (how the control plane persists it).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, AuthError> {
        Self::from_signing_key(&SigningKey::from_bytes(seed))
    }

    /// Loads a PKCS#8 PEM Ed25519 private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, AuthError> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| AuthError::Key(format!("Ed25519 PKCS#8 private key: {e}")))?;
        Self::from_signing_key(&key)
    }

    fn from_signing_key(key: &SigningKey) -> Result<Self, AuthError> {
        let private_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuthError::Key(e.to_string()))?
            .to_string();
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes())
            .map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(CpSigner {
            key,
            private_pem,
            public_pem,
        })
    }

    /// The private key as PKCS#8 PEM (for persisting it with mode 0600).
    pub fn private_key_pem(&self) -> &str {
        &self.private_pem
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), for the agent's config.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token for `host_id` valid for `ttl`, capped at [`MAX_TTL`].
    pub fn sign(&self, host_id: &str, ttl: Duration) -> String {
        self.sign_generation(host_id, ttl, None)
    }

    /// Like [`CpSigner::sign`], stamped with the host's credential generation.
    pub fn sign_generation(&self, host_id: &str, ttl: Duration, generation: Option<u64>) -> String {
        let iat = now_secs();
        let ttl = ttl.min(MAX_TTL).as_secs();
        self.sign_claims(&Claims {
            iss: ISSUER.into(),
            aud: host_id.into(),
            sub: SUBJECT.into(),
            iat,
            exp: iat + ttl,
            generation,
        })
    }

    /// Signs arbitrary claims (tests use it to forge expired or over-long tokens).
    pub fn sign_claims(&self, claims: &Claims) -> String {
        // The key was validated when the signer was built and the claims always serialize,
        // so signing cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .expect("EdDSA signing with a validated key")
    }
}

/// Verified tokens remembered, at most; the cache is emptied when it fills.
const SEEN_MAX: usize = 256;

/// The agent's verifying side.
///
/// The control plane reuses a token for many calls, so a token that verified once is
/// remembered (until it expires) and its signature is not checked again: about 40 µs less on
/// every call after the first.
#[derive(Clone)]
pub struct CpVerifier {
    key: Arc<DecodingKey>,
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Claims>>>,
}

impl std::fmt::Debug for CpVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpVerifier").finish_non_exhaustive()
    }
}

impl CpVerifier {
    /// Loads the control plane's SPKI PEM Ed25519 public key.
    pub fn from_public_pem(pem: &str) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| AuthError::Key(format!("Ed25519 public key: {e}")))?;
        Ok(CpVerifier {
            key: Arc::new(key),
            seen: Arc::default(),
        })
    }

    /// Checks signature, issuer, subject, audience (= `host_id`), expiry and lifetime.
    pub fn verify(&self, token: &str, host_id: &str) -> Result<Claims, AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = seen.get(token) {
            // Signature, issuer, subject and lifetime were checked when it was first seen;
            // audience and expiry depend on the call and the clock.
            if c.aud != host_id {
                return Err(AuthError::WrongAudience);
            }
            if c.exp + LEEWAY_SECS < now_secs() {
                seen.remove(token);
                return Err(AuthError::Expired);
            }
            return Ok(c.clone());
        }
        drop(seen);
        let claims = self.verify_signed(token, host_id)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn verify_signed(&self, token: &str, host_id: &str) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = LEEWAY_SECS;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[host_id]);
        v.sub = Some(SUBJECT.into());
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &v).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => AuthError::WrongIssuer,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.exp.saturating_sub(claims.iat) > MAX_TTL.as_secs() {
            return Err(AuthError::TooLongLived);
        }
        if claims.iat > now_secs() + LEEWAY_SECS {
            return Err(AuthError::IssuedInFuture);
        }
        Ok(claims)
    }

    /// Verifies the `Authorization: Bearer` header of a request.
    pub fn verify_header(
        &self,
        headers: &http::HeaderMap,
        host_id: &str,
    ) -> Result<Claims, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        self.verify(token.trim(), host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "host-a";

    fn pair() -> (CpSigner, CpVerifier) {
        let s = CpSigner::generate().unwrap();
        let v = CpVerifier::from_public_pem(s.public_key_pem()).unwrap();
        (s, v)
    }

    fn claims(iat: u64, exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: HOST.into(),
            sub: SUBJECT.into(),
            iat,
            exp,
            generation: None,
        }
    }

    #[test]
    fn valid_token_round_trips() {
        let (s, v) = pair();
        let c = v
            .verify(&s.sign(HOST, Duration::from_secs(60)), HOST)
            .unwrap();
        assert_eq!(c.aud, HOST);
        assert_eq!(c.iss, ISSUER);
        assert_eq!(c.sub, SUBJECT);
        assert_eq!(c.exp - c.iat, 60);
    }

    #[test]
    fn sign_caps_ttl() {
        let (s, v) = pair();
        let c = v
            .verify(&s.sign(HOST, Duration::from_secs(3600)), HOST)
            .unwrap();
        assert_eq!(c.exp - c.iat, MAX_TTL.as_secs());
    }

    #[test]
    fn pem_round_trip() {
        let (s, v) = pair();
        let s2 = CpSigner::from_pem(s.private_key_pem()).unwrap();
        assert_eq!(s2.public_key_pem(), s.public_key_pem());
        v.verify(&s2.sign(HOST, Duration::from_secs(10)), HOST)
            .unwrap();
        assert!(matches!(
            CpSigner::from_pem("not a key"),
            Err(AuthError::Key(_))
        ));
        assert!(matches!(
            CpVerifier::from_public_pem("not a key"),
            Err(AuthError::Key(_))
        ));
    }

    #[test]
    fn expired_is_refused() {
        let (s, v) = pair();
        let now = now_secs();
        let t = s.sign_claims(&claims(now - 200, now - 100));
        assert!(matches!(v.verify(&t, HOST), Err(AuthError::Expired)));
    }

    #[test]
    fn a_remembered_token_is_still_bound_to_its_host_and_its_expiry() {
        let (s, v) = pair();
        let now = now_secs();
        let t = s.sign(HOST, Duration::from_secs(60));
        v.verify(&t, HOST).unwrap();
        // Served from memory now, and the memory is shared by clones.
        assert_eq!(v.clone().verify(&t, HOST).unwrap().aud, HOST);
        assert!(matches!(
            v.verify(&t, "host-b"),
            Err(AuthError::WrongAudience)
        ));
        // A token one character off is a different token: checked in full, refused.
        let mut forged = t.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.verify(&forged, HOST).is_err());
        // A remembered token whose expiry (plus leeway) passed is refused and forgotten.
        let old = s.sign_claims(&claims(now - 100, now - 40));
        v.seen
            .lock()
            .unwrap()
            .insert(old.clone(), claims(now - 100, now - 40));
        assert!(matches!(v.verify(&old, HOST), Err(AuthError::Expired)));
        assert!(!v.seen.lock().unwrap().contains_key(&old));
    }

    #[test]
    fn within_leeway_is_accepted() {
        let (s, v) = pair();
        let now = now_secs();
        let t = s.sign_claims(&claims(now - 60, now - 10));
        v.verify(&t, HOST).unwrap();
    }

    #[test]
    fn wrong_audience_is_refused() {
        let (s, v) = pair();
        let t = s.sign("host-b", Duration::from_secs(60));
        assert!(matches!(v.verify(&t, HOST), Err(AuthError::WrongAudience)));
    }

    #[test]
    fn other_key_is_refused() {
        let (_, v) = pair();
        let (other, _) = pair();
        let t = other.sign(HOST, Duration::from_secs(60));
        assert!(matches!(v.verify(&t, HOST), Err(AuthError::BadSignature)));
    }

    #[test]
    fn too_long_lived_is_refused() {
        let (s, v) = pair();
        let now = now_secs();
        let t = s.sign_claims(&claims(now, now + 3600));
        assert!(matches!(v.verify(&t, HOST), Err(AuthError::TooLongLived)));
    }

    #[test]
    fn issued_in_future_is_refused() {
        let (s, v) = pair();
        let now = now_secs();
        let t = s.sign_claims(&claims(now + 120, now + 180));
        assert!(matches!(v.verify(&t, HOST), Err(AuthError::IssuedInFuture)));
    }

    #[test]
    fn wrong_issuer_or_subject_is_refused() {
        let (s, v) = pair();
        let now = now_secs();
        let mut c = claims(now, now + 60);
        c.iss = "someone".into();
        assert!(matches!(
            v.verify(&s.sign_claims(&c), HOST),
            Err(AuthError::WrongIssuer)
        ));
        let mut c = claims(now, now + 60);
        c.sub = "host".into();
        assert!(matches!(
            v.verify(&s.sign_claims(&c), HOST),
            Err(AuthError::WrongIssuer)
        ));
    }

    #[test]
    fn garbage_and_other_algorithms_are_refused() {
        let (_, v) = pair();
        assert!(matches!(v.verify("abc", HOST), Err(AuthError::Invalid(_))));
        // HS256 token with the public key as secret: the classic algorithm-confusion attack.
        let now = now_secs();
        let key = EncodingKey::from_secret(b"secret").unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(now, now + 60), &key)
            .unwrap();
        assert!(v.verify(&t, HOST).is_err());
    }

    #[test]
    fn header_parsing() {
        let (s, v) = pair();
        let mut h = http::HeaderMap::new();
        assert!(matches!(v.verify_header(&h, HOST), Err(AuthError::Missing)));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(matches!(
            v.verify_header(&h, HOST),
            Err(AuthError::MalformedHeader)
        ));
        h.insert(http::header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert!(matches!(
            v.verify_header(&h, HOST),
            Err(AuthError::MalformedHeader)
        ));
        let t = s.sign(HOST, Duration::from_secs(60));
        h.insert(
            http::header::AUTHORIZATION,
            format!("bearer {t}").parse().unwrap(),
        );
        v.verify_header(&h, HOST).unwrap();
    }
}
