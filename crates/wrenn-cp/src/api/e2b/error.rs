//! E2B's error body and the extractors whose rejections use it.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::auth::extract::TeamAuth;
use crate::error::ApiError;
use crate::server::AppState;

/// `{"code": <HTTP status>, "message": "..."}` (what the SDKs put into their exceptions), with
/// `Retry-After` on a 429 and `Should-Retry: false` where a blind retry could do harm.
#[derive(Debug)]
pub struct E2bError {
    status: StatusCode,
    message: String,
    retry_after: Option<std::time::Duration>,
    no_retry: bool,
    /// The `/v1` error this came from, logged when the response is built.
    origin: Option<ApiError>,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        E2bError {
            status,
            message: message.into(),
            retry_after: None,
            no_retry: false,
            origin: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The message the SDKs expect for an unknown sandbox.
    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
        )
    }

    /// Tells the SDK not to repeat the request (it retries 502/503/504 otherwise).
    pub fn no_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        E2bError {
            status: e.status(),
            message: e.public_message().to_owned(),
            retry_after: e.retry_after(),
            no_retry: false,
            origin: Some(e),
        }
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        if let Some(origin) = &self.origin {
            origin.log();
        }
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if self.no_retry {
            resp.headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

/// A team authenticated by `X-API-KEY` (or a bearer key/JWT, as on `/v1`).
pub struct E2bAuth(pub TeamAuth);

impl FromRequestParts<Arc<AppState>> for E2bAuth {
    type Rejection = E2bError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, E2bError> {
        TeamAuth::from_request_parts(parts, state)
            .await
            .map(E2bAuth)
            .map_err(E2bError::from)
    }
}

/// A JSON body; unknown fields are ignored (the SDKs send fields Wrenn does not use), a
/// malformed body is a 400 in E2B's shape.
pub struct E2bJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for E2bJson<T> {
    type Rejection = E2bError;

    async fn from_request(req: Request, state: &S) -> Result<Self, E2bError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| E2bError::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(E2bJson)
            .map_err(|e| E2bError::bad_request(format!("invalid request body: {e}")))
    }
}
