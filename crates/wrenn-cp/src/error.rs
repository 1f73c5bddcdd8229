//! The public API's error type and its JSON envelope:
//! `{"error":{"code":"<snake_case>","message":"<text>"}}`.
//!
//! Codes are a closed enum so they stay stable (clients switch on them) and the OpenAPI
//! document can list them. The `message` is always text this crate wrote for the client; the
//! cause of a server-side failure travels separately as `source`, is logged with `tracing` and
//! never serialized, so a 5xx can't leak SQL, paths or peer errors.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Boxed cause of a server-side error (kept private to the logs).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Stable, machine-readable error codes. The string forms are part of the public API: add
/// new codes, never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed JSON, a bad ID, a field out of range.
    InvalidRequest,
    /// 401: missing, malformed, expired or revoked credentials.
    Unauthorized,
    /// 403: authenticated, but not allowed (role, admin, other host).
    Forbidden,
    /// 404: no such object, or one of another team (never "forbidden": no existence leak).
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: uniqueness or concurrent-update conflict.
    Conflict,
    /// 409: the object's state does not allow this transition (e.g. pausing a stopped sandbox).
    InvalidState,
    /// 409: signup with an email that already has an account.
    EmailTaken,
    /// 413: request body over the route's limit.
    PayloadTooLarge,
    /// 415: a JSON route called without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 429: too many requests; `Retry-After` says when to come back.
    RateLimited,
    /// 429: the team is at one of its quotas (sandboxes, vCPUs, memory, disk, timeout).
    QuotaExceeded,
    /// 500: a bug or an unexpected failure (details only in the server log).
    InternalError,
    /// 502: a host agent answered with an error.
    AgentError,
    /// 502: the host chosen for the work did not answer (connection refused, timed out).
    HostUnavailable,
    /// 503: no online host can take the work.
    NoHostsAvailable,
    /// 503: a dependency (database, host) is unreachable for now; retrying may help.
    Unavailable,
    /// 504: the work did not finish in its time limit (e.g. a command's `timeout_sec`).
    Timeout,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::InvalidState,
        ErrorCode::EmailTaken,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::InternalError,
        ErrorCode::AgentError,
        ErrorCode::HostUnavailable,
        ErrorCode::NoHostsAvailable,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    /// The wire form (`"not_found"` ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::EmailTaken => "email_taken",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::AgentError => "agent_error",
            ErrorCode::HostUnavailable => "host_unavailable",
            ErrorCode::NoHostsAvailable => "no_hosts_available",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The HTTP status this code is always sent with.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict | ErrorCode::InvalidState | ErrorCode::EmailTaken => {
                StatusCode::CONFLICT
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::AgentError | ErrorCode::HostUnavailable => StatusCode::BAD_GATEWAY,
            ErrorCode::NoHostsAvailable | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error envelope as documented in the OpenAPI document (`ErrorBody`); responses are built
/// by [`ApiError::body`], which may add route-specific members beside `code` and `message`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The `error` object of [`ErrorBody`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Human-readable; never contains server internals.
    pub message: String,
}

/// Message sent for every `internal_error`, whatever the cause.
pub const INTERNAL_MESSAGE: &str = "internal server error";

/// An error a handler returns; becomes the JSON envelope with the code's status.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
    retry_after: Option<Duration>,
    /// Extra members of the `error` object (e.g. `sandbox_ids` of a refused host delete).
    extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    /// An error with a client-facing message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            code,
            message: message.into(),
            source: None,
            retry_after: None,
            extra: None,
        }
    }

    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `what` names the kind of object (`"sandbox"`), never whether it exists elsewhere.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn invalid_state(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }

    pub fn payload_too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    /// 429 with a `Retry-After` header (whole seconds, at least 1).
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, "too many requests");
        e.retry_after = Some(retry_after);
        e
    }

    /// 500. The cause is logged when the response is built and never sent.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorCode::InternalError, INTERNAL_MESSAGE).with_source(source)
    }

    /// 503 with a public message; attach the private cause with [`ApiError::with_source`].
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Replaces the client-facing message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// Attaches a private cause (logged, not sent).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a member to the `error` object beside `code` and `message`. Those two names are
    /// reserved and ignored here.
    pub fn with_field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        if name != "code" && name != "message" {
            self.extra
                .get_or_insert_with(Default::default)
                .insert(name.to_owned(), value.into());
        }
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When a 429 tells the client to come back.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Logs a server-side failure with its private cause (what `into_response` does for the
    /// `/v1` envelope; other envelopes call it themselves).
    pub fn log(&self) {
        let cause = self.source.as_deref().map(|e| chain(e));
        if self.status().is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, cause = cause.as_deref(), "request failed");
        } else if let Some(cause) = &cause {
            tracing::debug!(code = %self.code, message = %self.message, cause = %cause, "request refused");
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The message the client will see.
    pub fn public_message(&self) -> &str {
        if self.code == ErrorCode::InternalError {
            INTERNAL_MESSAGE
        } else {
            &self.message
        }
    }

    /// The JSON body the client will see.
    pub fn body(&self) -> serde_json::Value {
        let mut inner = serde_json::Map::new();
        if let Some(extra) = &self.extra {
            inner.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        inner.insert("code".into(), self.code.as_str().into());
        inner.insert("message".into(), self.public_message().into());
        serde_json::json!({ "error": inner })
    }
}

/// 503 `unavailable` with `Retry-After: 1` for a database that cannot be reached right now
/// (restarting, failing over): the client's retry is the recovery.
pub fn database_unavailable(source: impl Into<BoxError>) -> ApiError {
    let mut e =
        ApiError::unavailable("the database is unavailable; retry shortly").with_source(source);
    e.retry_after = Some(Duration::from_secs(1));
    e
}

/// The cause chain as one line, for the log.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            // Rounded up: coming back a fraction early would be refused again.
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme the client should use.
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Maps an axum rejection by the status axum chose for it: a too-large body stays 413, a
/// missing JSON content type 415, a server-side extractor misuse 500, anything else the
/// client sent wrong 400 (axum answers 422 for well-formed JSON of the wrong shape; the API
/// promises 400 for every malformed body).
fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large("request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        s if s.is_server_error() => ApiError::internal(text),
        _ => ApiError::invalid_request(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s. Also a response type.
///
/// A number with a zero fraction (`2.0`) is read as the integer it equals: JSON Schema calls
/// it an integer, so a field documented as one must take it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // Content type, size and syntax are checked as axum::Json checks them.
        let axum::Json(mut v) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        integral_floats_to_integers(&mut v);
        let bytes = serde_json::to_vec(&v).map_err(ApiError::internal)?;
        // Typed from the bytes, so errors name the field (serde_path_to_error in axum).
        let axum::Json(t) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(t))
    }
}

/// Rewrites every float with a zero fraction that fits an i64 as that integer.
pub(crate) fn integral_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                // Strictly inside i64's range: 2^63 itself rounds into it as f64.
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s (400 with the envelope).
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Router fallback: unknown routes get the envelope too.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::http::Request;
    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    async fn parts(resp: Response) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, headers, body)
    }

    fn assert_envelope(body: &serde_json::Value, code: &str) {
        let err = body
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {body}"));
        assert_eq!(err["code"], code, "{body}");
        assert!(err["message"].is_string(), "{body}");
    }

    #[test]
    fn codes_are_snake_case_and_match_serde() {
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(serde_json::to_value(code).unwrap(), s);
            let status = code.status();
            assert!(status.is_client_error() || status.is_server_error(), "{s}");
        }
    }

    #[tokio::test]
    async fn client_error_envelope_and_status() {
        let (status, headers, body) = parts(ApiError::not_found("sandbox").into_response()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            headers[header::CONTENT_TYPE],
            HeaderValue::from_static("application/json")
        );
        assert_eq!(
            body,
            serde_json::json!({"error":{"code":"not_found","message":"sandbox not found"}})
        );
    }

    #[tokio::test]
    async fn internal_error_hides_its_cause() {
        let cause = std::io::Error::other("connection to db at /var/lib/secret.db refused");
        let err = ApiError::internal(cause);
        assert!(err.source().is_some(), "cause kept for the log");
        let (status, _, body) = parts(err.into_response()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error":{"code":"internal_error","message":INTERNAL_MESSAGE}})
        );
        // Even a hand-built internal error with a leaky message sends the generic one.
        let leaky = ApiError::new(ErrorCode::InternalError, "SELECT * FROM users failed");
        let (_, _, body) = parts(leaky.into_response()).await;
        assert_eq!(body["error"]["message"], INTERNAL_MESSAGE);
    }

    #[tokio::test]
    async fn unavailable_keeps_public_message_not_source() {
        let err = ApiError::unavailable("database unavailable")
            .with_source(std::io::Error::other("pg at 10.0.0.5:5432 timed out"));
        let (status, _, body) = parts(err.into_response()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["message"], "database unavailable");
        assert!(!body.to_string().contains("10.0.0.5"));
    }

    #[tokio::test]
    async fn an_unreachable_database_is_503_with_retry_after() {
        use crate::db::DbError;
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            let err = crate::api::db_err(DbError::Sqlx(e));
            let (status, headers, body) = parts(err.into_response()).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(headers[header::RETRY_AFTER], "1");
            assert_eq!(body["error"]["code"], "unavailable");
        }
        // A bug in a query is still a 500.
        let err = crate::api::db_err(DbError::Sqlx(sqlx::Error::Protocol("bad".into())));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!DbError::NotFound.is_unavailable());
    }

    #[tokio::test]
    async fn extra_fields_retry_after_and_www_authenticate() {
        let err = ApiError::conflict("host has active sandboxes")
            .with_field("sandbox_ids", vec!["a", "b"])
            .with_field("code", "ignored");
        let (_, _, body) = parts(err.into_response()).await;
        assert_eq!(body["error"]["code"], "conflict");
        assert_eq!(body["error"]["sandbox_ids"], serde_json::json!(["a", "b"]));

        let (status, headers, body) =
            parts(ApiError::rate_limited(Duration::from_millis(200)).into_response()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_envelope(&body, "rate_limited");

        let (_, headers, _) = parts(ApiError::unauthorized("no").into_response()).await;
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Body1 {
        name: String,
        vcpus: u32,
    }

    async fn create(ApiJson(b): ApiJson<Body1>) -> ApiJson<serde_json::Value> {
        ApiJson(serde_json::json!({ "name": b.name }))
    }

    async fn by_id(ApiPath(id): ApiPath<u32>) -> String {
        id.to_string()
    }

    async fn sandbox(ApiPath(id): ApiPath<crate::ids::SandboxId>) -> String {
        id.into_string()
    }

    #[derive(Deserialize)]
    struct Page {
        limit: u32,
    }

    async fn list(ApiQuery(p): ApiQuery<Page>) -> String {
        p.limit.to_string()
    }

    fn app() -> Router {
        Router::new()
            .route("/things", post(create).get(list))
            .route("/things/{id}", get(by_id))
            .route("/sandboxes/{id}", get(sandbox))
            .layer(DefaultBodyLimit::max(64))
            .fallback(not_found_fallback)
    }

    async fn send(req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app().oneshot(req).await.unwrap();
        let (s, _, b) = parts(resp).await;
        (s, b)
    }

    fn post_json(body: impl Into<String>, content_type: Option<&str>) -> Request<Body> {
        let mut b = Request::post("/things");
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body.into())).unwrap()
    }

    #[tokio::test]
    async fn json_rejections_become_envelopes() {
        let (s, b) = send(post_json(
            r#"{"name":"a","vcpus":1}"#,
            Some("application/json"),
        ))
        .await;
        assert_eq!((s, b), (StatusCode::OK, serde_json::json!({"name":"a"})));

        let (s, b) = send(post_json(r#"{"name":"a","#, Some("application/json"))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "syntax error");
        assert_envelope(&b, "invalid_request");

        let (s, b) = send(post_json(
            r#"{"name":"a","vcpus":-1}"#,
            Some("application/json"),
        ))
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "wrong shape is 400, not 422");
        assert_envelope(&b, "invalid_request");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("vcpus"),
            "message names the field: {b}"
        );

        let (s, b) = send(post_json(r#"{"name":"a","vcpus":1}"#, None)).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_envelope(&b, "unsupported_media_type");

        let (s, b) = send(post_json(r#"{"name":"a","vcpus":1}"#, Some("text/plain"))).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_envelope(&b, "unsupported_media_type");

        let big = format!(r#"{{"name":"{}","vcpus":1}}"#, "x".repeat(100));
        let (s, b) = send(post_json(big, Some("application/json"))).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_envelope(&b, "payload_too_large");
    }

    #[tokio::test]
    async fn path_query_and_fallback_rejections_become_envelopes() {
        let (s, b) = send(Request::get("/things/abc").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_envelope(&b, "invalid_request");

        let resp = app()
            .oneshot(
                Request::get("/sandboxes/abcdefghij0123456789")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (s, b) = send(
            Request::get("/sandboxes/cl-ABC")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_envelope(&b, "invalid_request");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid sandbox id"),
            "{b}"
        );

        let (s, b) = send(Request::get("/things?limit=x").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_envelope(&b, "invalid_request");

        let (s, b) = send(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_envelope(&b, "not_found");
    }
}
