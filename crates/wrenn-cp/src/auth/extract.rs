//! axum extractors for the auth kinds. The database-dependent checks are traits the server
//! state implements, so this module stays free of SQL:
//!
//! | extractor | credential | routes |
//! |---|---|---|
//! | [`UserAuth`] | `Authorization: Bearer <user JWT>` | account, teams, keys, hosts admin |
//! | [`ApiKeyAuth`] | `X-API-Key: wrn_…`, or `Authorization: Bearer wrn_…` | key-only routes |
//! | [`TeamAuth`] | either of the above | sandboxes, templates (APIKEY_OR_JWT) |
//! | [`HostAuth`] | `Authorization: Bearer <host JWT>` | agent → control plane |
//!
//! Every refusal is a 401 with the JSON envelope, except what the store's own checks return
//! (e.g. 403 for a disabled account). A credential of the wrong kind never falls through to
//! another kind: a malformed `wrn_` key is not retried as a JWT.

use std::future::Future;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};

use super::api_key::{self, ApiKeyCache, KeyPrincipal};
use super::jwt::{HostClaims, JwtKeys, UserClaims};
use crate::error::ApiError;
use crate::ids::{HostId, TeamId};

/// The API-key header (header names are case-insensitive: `X-API-Key` matches too).
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What every auth extractor needs from the server state.
pub trait AuthBackend: Send + Sync + 'static {
    fn jwt_keys(&self) -> &JwtKeys;
}

/// Database checks behind [`UserAuth`].
pub trait UserStore: AuthBackend {
    /// Runs after the token verified: refuse a user that was deleted or disabled since the
    /// token was issued (401 or 403 as the server sees fit).
    fn check_user(&self, claims: &UserClaims) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Database lookup behind [`ApiKeyAuth`].
pub trait KeyStore: AuthBackend {
    /// The process-wide key cache (see [`api_key::new_key_cache`]).
    fn key_cache(&self) -> &ApiKeyCache;
    /// The principal of a live (not revoked) key with this SHA-256 hex, if any.
    fn principal_for_key_hash(
        &self,
        key_hash: &str,
    ) -> impl Future<Output = Result<Option<KeyPrincipal>, ApiError>> + Send;
}

/// Database checks behind [`HostAuth`].
pub trait HostStore: AuthBackend {
    /// Refuse a host that was deleted since its token was issued.
    fn check_host(&self, host_id: &HostId) -> impl Future<Output = Result<(), ApiError>> + Send;
}

// Routers usually hold `Arc<AppState>`: let it stand for the state.
impl<T: AuthBackend> AuthBackend for Arc<T> {
    fn jwt_keys(&self) -> &JwtKeys {
        (**self).jwt_keys()
    }
}

impl<T: UserStore> UserStore for Arc<T> {
    fn check_user(&self, claims: &UserClaims) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).check_user(claims)
    }
}

impl<T: KeyStore> KeyStore for Arc<T> {
    fn key_cache(&self) -> &ApiKeyCache {
        (**self).key_cache()
    }
    fn principal_for_key_hash(
        &self,
        key_hash: &str,
    ) -> impl Future<Output = Result<Option<KeyPrincipal>, ApiError>> + Send {
        (**self).principal_for_key_hash(key_hash)
    }
}

impl<T: HostStore> HostStore for Arc<T> {
    fn check_host(&self, host_id: &HostId) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).check_host(host_id)
    }
}

fn header_str<'a>(value: &'a HeaderValue, name: &str) -> Result<&'a str, ApiError> {
    value
        .to_str()
        .map(str::trim)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unauthorized(format!("malformed {name} header")))
}

/// The token of an `Authorization: Bearer <token>` header; `None` when there is no header.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = header_str(value, "Authorization")?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "malformed Authorization header: expected 'Bearer <token>'",
        )),
    }
}

fn x_api_key(parts: &Parts) -> Result<Option<&str>, ApiError> {
    parts
        .headers
        .get(&X_API_KEY)
        .map(|v| header_str(v, "X-API-Key"))
        .transpose()
}

/// Cache first, then the store; found principals are cached for the cache's TTL.
async fn authenticate_key<S: KeyStore>(state: &S, key: &str) -> Result<KeyPrincipal, ApiError> {
    let hash = api_key::hash_presented(key)?;
    if let Some(p) = state.key_cache().get(hash.as_str()) {
        return Ok(p);
    }
    match state.principal_for_key_hash(&hash).await? {
        Some(p) => {
            state.key_cache().insert(hash, p.clone());
            Ok(p)
        }
        None => Err(ApiError::unauthorized("invalid API key")),
    }
}

async fn authenticate_user<S: UserStore>(state: &S, token: &str) -> Result<UserClaims, ApiError> {
    let claims = state.jwt_keys().verify_user(token)?;
    state.check_user(&claims).await?;
    Ok(claims)
}

/// A user authenticated by a user JWT.
#[derive(Debug, Clone)]
pub struct UserAuth(pub UserClaims);

impl<S: UserStore> FromRequestParts<S> for UserAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match bearer(parts)? {
            None => Err(ApiError::unauthorized(
                "missing Authorization: Bearer token",
            )),
            Some(t) if api_key::looks_like_api_key(t) => Err(ApiError::unauthorized(
                "this route needs a user token, not an API key",
            )),
            Some(t) => Ok(UserAuth(authenticate_user(state, t).await?)),
        }
    }
}

/// A team authenticated by an API key.
#[derive(Debug, Clone)]
pub struct ApiKeyAuth(pub KeyPrincipal);

impl<S: KeyStore> FromRequestParts<S> for ApiKeyAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(key) = x_api_key(parts)? {
            return Ok(ApiKeyAuth(authenticate_key(state, key).await?));
        }
        match bearer(parts)? {
            Some(t) if api_key::looks_like_api_key(t) => {
                Ok(ApiKeyAuth(authenticate_key(state, t).await?))
            }
            Some(_) => Err(ApiError::unauthorized("this route needs an API key")),
            None => Err(ApiError::unauthorized("missing API key")),
        }
    }
}

/// APIKEY_OR_JWT: a team acting through an API key or a user's JWT. `X-API-Key` wins when
/// both are sent.
#[derive(Debug, Clone)]
pub enum TeamAuth {
    User(UserClaims),
    ApiKey(KeyPrincipal),
}

impl TeamAuth {
    /// The team every team-scoped query must filter on.
    pub fn team_id(&self) -> &str {
        match self {
            TeamAuth::User(c) => &c.team_id,
            TeamAuth::ApiKey(p) => p.team_id.as_str(),
        }
    }

    /// The team as a typed ID (user claims were validated when the token verified).
    pub fn team(&self) -> Result<TeamId, ApiError> {
        TeamId::parse(self.team_id()).map_err(ApiError::internal)
    }
}

impl<S: UserStore + KeyStore> FromRequestParts<S> for TeamAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(key) = x_api_key(parts)? {
            return Ok(TeamAuth::ApiKey(authenticate_key(state, key).await?));
        }
        match bearer(parts)? {
            Some(t) if api_key::looks_like_api_key(t) => {
                Ok(TeamAuth::ApiKey(authenticate_key(state, t).await?))
            }
            Some(t) => Ok(TeamAuth::User(authenticate_user(state, t).await?)),
            None => Err(ApiError::unauthorized(
                "missing credentials: send X-API-Key or Authorization: Bearer",
            )),
        }
    }
}

/// A host agent authenticated by its host JWT.
#[derive(Debug, Clone)]
pub struct HostAuth {
    pub host_id: HostId,
    pub claims: HostClaims,
}

impl HostAuth {
    /// Host routes carry the host ID in the path too; a host may only act as itself (403).
    pub fn require_host(&self, path_host_id: &str) -> Result<(), ApiError> {
        if self.host_id.as_str() == path_host_id {
            Ok(())
        } else {
            Err(ApiError::forbidden("token is for another host"))
        }
    }
}

impl<S: HostStore> FromRequestParts<S> for HostAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = bearer(parts)?
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let claims = state.jwt_keys().verify_host(token)?;
        // verify_host checked the shape of `sub`.
        let host_id = HostId::parse(&claims.sub).map_err(ApiError::internal)?;
        state.check_host(&host_id).await?;
        Ok(HostAuth { host_id, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::api_key::generate;
    use crate::auth::jwt::tests::{alice, keys};
    use crate::ids::{ApiKeyId, UserId};
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use http_body_util::BodyExt;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    struct Mem {
        keys: JwtKeys,
        cache: ApiKeyCache,
        api_keys: Mutex<HashMap<String, KeyPrincipal>>,
        lookups: AtomicUsize,
        disabled_users: Mutex<HashSet<String>>,
        deleted_hosts: Mutex<HashSet<String>>,
    }

    impl AuthBackend for Mem {
        fn jwt_keys(&self) -> &JwtKeys {
            &self.keys
        }
    }

    impl UserStore for Mem {
        async fn check_user(&self, claims: &UserClaims) -> Result<(), ApiError> {
            if self.disabled_users.lock().unwrap().contains(&claims.sub) {
                return Err(ApiError::forbidden("account disabled"));
            }
            Ok(())
        }
    }

    impl KeyStore for Mem {
        fn key_cache(&self) -> &ApiKeyCache {
            &self.cache
        }
        async fn principal_for_key_hash(
            &self,
            key_hash: &str,
        ) -> Result<Option<KeyPrincipal>, ApiError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(self.api_keys.lock().unwrap().get(key_hash).cloned())
        }
    }

    impl HostStore for Mem {
        async fn check_host(&self, host_id: &HostId) -> Result<(), ApiError> {
            if self
                .deleted_hosts
                .lock()
                .unwrap()
                .contains(host_id.as_str())
            {
                return Err(ApiError::not_found("host"));
            }
            Ok(())
        }
    }

    fn state(cache_ttl: Duration) -> Arc<Mem> {
        Arc::new(Mem {
            keys: keys(),
            cache: crate::auth::cache::TtlCache::new(cache_ttl, 100),
            api_keys: Mutex::default(),
            lookups: AtomicUsize::new(0),
            disabled_users: Mutex::default(),
            deleted_hosts: Mutex::default(),
        })
    }

    async fn host_by_path(
        h: HostAuth,
        crate::error::ApiPath(id): crate::error::ApiPath<String>,
    ) -> Result<String, ApiError> {
        h.require_host(&id).map(|()| id)
    }

    fn app(st: Arc<Mem>) -> Router {
        Router::new()
            .route("/user", get(|UserAuth(c): UserAuth| async move { c.sub }))
            .route(
                "/key",
                get(|ApiKeyAuth(p): ApiKeyAuth| async move { p.team_id.into_string() }),
            )
            .route(
                "/team",
                get(|t: TeamAuth| async move { t.team_id().to_owned() }),
            )
            .route(
                "/host",
                get(|h: HostAuth| async move { h.host_id.into_string() }),
            )
            .route("/hosts/{id}", get(host_by_path))
            .with_state(st)
    }

    /// Sends GET `path` with `headers`; returns status and body (text, or the envelope's code).
    async fn call(st: &Arc<Mem>, path: &str, headers: &[(&str, &[u8])]) -> (StatusCode, String) {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, HeaderValue::from_bytes(v).unwrap());
        }
        let resp = app(st.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        if status.is_success() {
            return (status, text);
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("error body is not the envelope ({e}): {text}"));
        let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(v["error"]["message"].is_string(), "{v}");
        (status, code.to_owned())
    }

    fn add_key(st: &Mem) -> (String, KeyPrincipal) {
        let k = generate().unwrap();
        let p = KeyPrincipal {
            key_id: ApiKeyId::generate(),
            team_id: TeamId::generate(),
        };
        st.api_keys
            .lock()
            .unwrap()
            .insert(k.hash.clone(), p.clone());
        (k.plaintext, p)
    }

    const UNAUTH: (StatusCode, &str) = (StatusCode::UNAUTHORIZED, "unauthorized");

    fn unauth(r: (StatusCode, String)) -> bool {
        (r.0, r.1.as_str()) == UNAUTH
    }

    #[tokio::test]
    async fn no_credentials_is_401_everywhere() {
        let st = state(Duration::from_secs(5));
        for path in ["/user", "/key", "/team", "/host"] {
            assert!(unauth(call(&st, path, &[]).await), "{path}");
        }
    }

    #[tokio::test]
    async fn malformed_headers_are_401_with_envelope() {
        let st = state(Duration::from_secs(5));
        let bad: [&[u8]; 7] = [
            b"Basic dXNlcjpwYXNz",
            b"Bearer",
            b"Bearer   ",
            b"Bearer not.a.jwt",
            b"bearer abc",
            b"Token wrn_00000000000000000000000000000000",
            b"Bearer \xff\xfe",
        ];
        for path in ["/user", "/key", "/team", "/host"] {
            for v in bad {
                let r = call(&st, path, &[("authorization", v)]).await;
                assert!(
                    unauth(r.clone()),
                    "{path} {:?}: {r:?}",
                    String::from_utf8_lossy(v)
                );
            }
        }
        for v in [
            &b""[..],
            b"wrn_short",
            b"not-a-key",
            b"WRN_00000000000000000000000000000000",
        ] {
            for path in ["/key", "/team"] {
                assert!(unauth(call(&st, path, &[("x-api-key", v)]).await), "{path}");
            }
        }
        assert_eq!(
            st.lookups.load(Ordering::SeqCst),
            0,
            "malformed keys hit the store"
        );
    }

    #[tokio::test]
    async fn user_token_works_only_on_user_routes() {
        let st = state(Duration::from_secs(5));
        let who = alice(false);
        let t = st.keys.issue_user(&who).unwrap().token;
        let auth = format!("Bearer {t}");
        let h: &[(&str, &[u8])] = &[("authorization", auth.as_bytes())];
        assert_eq!(
            call(&st, "/user", h).await,
            (StatusCode::OK, who.user_id.to_string())
        );
        assert_eq!(
            call(&st, "/team", h).await,
            (StatusCode::OK, who.team_id.to_string())
        );
        assert!(
            unauth(call(&st, "/host", h).await),
            "user token on a host route"
        );
        assert!(
            unauth(call(&st, "/key", h).await),
            "user token on a key-only route"
        );
        // Scheme is case-insensitive.
        let lower = format!("bearer {t}");
        assert_eq!(
            call(&st, "/user", &[("authorization", lower.as_bytes())])
                .await
                .0,
            StatusCode::OK
        );

        st.disabled_users
            .lock()
            .unwrap()
            .insert(who.user_id.to_string());
        assert_eq!(
            call(&st, "/user", h).await,
            (StatusCode::FORBIDDEN, "forbidden".into()),
            "store check runs after the token verifies"
        );
    }

    #[tokio::test]
    async fn host_token_works_only_on_host_routes() {
        let st = state(Duration::from_secs(5));
        let host = HostId::generate();
        let t = st.keys.issue_host(&host).unwrap().token;
        let auth = format!("Bearer {t}");
        let h: &[(&str, &[u8])] = &[("authorization", auth.as_bytes())];
        assert_eq!(
            call(&st, "/host", h).await,
            (StatusCode::OK, host.to_string())
        );
        for path in ["/user", "/team", "/key"] {
            assert!(unauth(call(&st, path, h).await), "host token on {path}");
        }
        let other = HostId::generate();
        let r = call(&st, &format!("/hosts/{other}"), h).await;
        assert_eq!(
            r,
            (StatusCode::FORBIDDEN, "forbidden".into()),
            "another host's path"
        );
        assert_eq!(
            call(&st, &format!("/hosts/{host}"), h).await,
            (StatusCode::OK, host.to_string())
        );
        st.deleted_hosts.lock().unwrap().insert(host.to_string());
        assert_eq!(
            call(&st, "/host", h).await.0,
            StatusCode::NOT_FOUND,
            "deleted host"
        );
    }

    #[tokio::test]
    async fn api_key_via_header_or_bearer() {
        let st = state(Duration::from_secs(5));
        let (key, p) = add_key(&st);
        let bearer = format!("Bearer {key}");
        let ok = (StatusCode::OK, p.team_id.to_string());
        for path in ["/key", "/team"] {
            assert_eq!(call(&st, path, &[("X-API-Key", key.as_bytes())]).await, ok);
            assert_eq!(
                call(&st, path, &[("authorization", bearer.as_bytes())]).await,
                ok
            );
        }
        assert!(unauth(
            call(&st, "/user", &[("authorization", bearer.as_bytes())]).await
        ));
        assert!(unauth(
            call(&st, "/host", &[("authorization", bearer.as_bytes())]).await
        ));
        assert_eq!(
            st.lookups.load(Ordering::SeqCst),
            1,
            "later calls served by the cache"
        );

        // X-API-Key wins over a (here invalid) bearer token.
        let r = call(
            &st,
            "/team",
            &[
                ("x-api-key", key.as_bytes()),
                ("authorization", b"Bearer junk"),
            ],
        )
        .await;
        assert_eq!(r, ok);

        // A well-formed but unknown key is looked up and refused.
        let unknown = generate().unwrap().plaintext;
        assert!(unauth(
            call(&st, "/key", &[("x-api-key", unknown.as_bytes())]).await
        ));
        assert_eq!(st.lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn revoked_key_stops_working() {
        let st = state(Duration::from_millis(300));
        let (key, p) = add_key(&st);
        let h: &[(&str, &[u8])] = &[("x-api-key", key.as_bytes())];
        assert_eq!(call(&st, "/key", h).await.0, StatusCode::OK);

        // Revoked in the database by another process: cached here until the TTL runs out.
        st.api_keys.lock().unwrap().clear();
        assert_eq!(call(&st, "/key", h).await.0, StatusCode::OK, "still cached");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(unauth(call(&st, "/key", h).await), "expired from the cache");

        // Revoked by this process: the invalidation hook makes it immediate.
        let (key2, p2) = add_key(&st);
        let h2: &[(&str, &[u8])] = &[("x-api-key", key2.as_bytes())];
        assert_eq!(call(&st, "/team", h2).await.0, StatusCode::OK);
        st.api_keys.lock().unwrap().clear();
        st.cache.invalidate_if(|v| v.key_id == p2.key_id);
        assert!(unauth(call(&st, "/team", h2).await), "invalidated at once");
        assert_ne!(p.key_id, p2.key_id);
    }

    #[test]
    fn team_auth_team_id() {
        let team = TeamId::generate();
        let t = TeamAuth::ApiKey(KeyPrincipal {
            key_id: ApiKeyId::generate(),
            team_id: team.clone(),
        });
        assert_eq!(t.team().unwrap(), team);
        let _ = UserId::generate();
    }
}

/// The TCP peer's address when the server was started with connect info (`wrenn server`);
/// `None` for in-process callers (tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::server::PeerAddr>>()
                .map(|c| c.0.0.ip()),
        ))
    }
}
