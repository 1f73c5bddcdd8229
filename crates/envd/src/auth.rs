//! Access control: the per-sandbox access token set by `/init`, signed `/files` URLs, and
//! the user a request acts as.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::json_error;
use crate::state::EnvdState;
use crate::users::UserError;

pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid Authorization header: expected Basic base64(user:)")]
    BadAuthorization,
    #[error(transparent)]
    User(UserError),
}

impl From<AuthError> for connectrpc::ConnectError {
    fn from(e: AuthError) -> Self {
        match &e {
            AuthError::User(UserError::Lookup(_)) => {
                connectrpc::ConnectError::internal(e.to_string())
            }
            _ => connectrpc::ConnectError::unauthenticated(e.to_string()),
        }
    }
}

/// The user named by `Authorization: Basic base64(user:)`, if the header is present.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::BadAuthorization)?;
    let (scheme, b64) = value.split_once(' ').ok_or(AuthError::BadAuthorization)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::BadAuthorization);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| AuthError::BadAuthorization)?;
    let raw = String::from_utf8(raw).map_err(|_| AuthError::BadAuthorization)?;
    let user = raw.split_once(':').map_or(raw.as_str(), |(u, _)| u);
    Ok(Some(user.to_string()))
}

/// The E2B SDK's signature for a `/files` URL: `v1_` + unpadded standard base64 of
/// sha256(`path:op:user:token[:expiration]`).
pub fn file_signature(
    path: &str,
    op: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{op}:{user}:{token}:{exp}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks a signed `/files` request; `Err` carries the reason.
fn check_signature(req: &Request, token: &str) -> Result<(), &'static str> {
    let query = req.uri().query().unwrap_or("");
    let mut path = None;
    let mut user = String::new();
    let mut signature = None;
    let mut expiration = None;
    for (k, v) in form_urlencoded_pairs(query) {
        match k.as_str() {
            "path" => path = Some(v),
            "username" => user = v,
            "signature" => signature = Some(v),
            "signature_expiration" => expiration = Some(v),
            _ => {}
        }
    }
    let signature = signature.ok_or("missing signature")?;
    let path = path.ok_or("signed URL needs a path")?;
    let expiration = match expiration {
        None => None,
        Some(e) => {
            let exp: i64 = e.parse().map_err(|_| "invalid signature_expiration")?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if exp < now {
                return Err("signature expired");
            }
            Some(exp)
        }
    };
    let op = match *req.method() {
        Method::GET | Method::HEAD => "read",
        Method::POST => "write",
        _ => return Err("signed URLs allow only GET and POST"),
    };
    let expected = file_signature(&path, op, &user, token, expiration);
    if ct_eq(&expected, &signature) {
        Ok(())
    } else {
        Err("invalid signature")
    }
}

/// Decodes a query string's `application/x-www-form-urlencoded` pairs.
pub fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn is_connect_path(path: &str) -> bool {
    path.starts_with("/process.") || path.starts_with("/filesystem.")
}

/// Middleware: once an access token is set, every route but `/health` requires it in
/// `X-Access-Token` (or, on `/files`, a valid signature).
pub async fn access_token_layer(
    State(state): State<Arc<EnvdState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if path == "/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let Some(token) = state.access_token() else {
        return next.run(req).await;
    };
    let header_ok = req
        .headers()
        .get(ACCESS_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| ct_eq(v, &token));
    if header_ok {
        return next.run(req).await;
    }
    let has_header = req.headers().contains_key(ACCESS_TOKEN_HEADER);
    let reason = if path == "/files" && !has_header {
        match check_signature(&req, &token) {
            Ok(()) => return next.run(req).await,
            Err("missing signature") => "missing or invalid access token",
            Err(r) => r,
        }
    } else {
        "missing or invalid access token"
    };
    if is_connect_path(path) {
        connectrpc::ConnectError::unauthenticated(reason)
            .into_http_response(req.headers())
            .into_response()
    } else {
        json_error(StatusCode::UNAUTHORIZED, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_sdk_formula() {
        // Computed with the SDK's get_signature("/home/user/a.txt", "read", None, "tok").
        let s = file_signature("/home/user/a.txt", "read", "", "tok", None);
        assert!(s.starts_with("v1_"));
        assert!(!s.ends_with('='));
        assert_ne!(
            s,
            file_signature("/home/user/a.txt", "write", "", "tok", None)
        );
        assert_ne!(
            s,
            file_signature("/home/user/a.txt", "read", "", "tok", Some(1))
        );
    }

    #[test]
    fn basic_user_parses() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Basic cm9vdDo=".parse().unwrap(),
        );
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("root"));
        h.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic_user(&h).is_err());
    }

    #[test]
    fn percent_decoding() {
        let p = form_urlencoded_pairs("path=%2Fhome%2Fuser%2Fa+b.txt&username=user");
        assert_eq!(p[0].1, "/home/user/a b.txt");
        assert_eq!(p[1].1, "user");
    }
}
