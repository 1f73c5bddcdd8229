//! Plain HTTP routes beside the Connect services: `/health`, `/files`, `/init`, `/envs`,
//! `/metrics`. Errors use E2B's envd shape `{"code": <status>, "message": "..."}`.

mod encoding;
mod envs;
mod error;
mod files;
mod init;
mod metrics;
mod upload;

use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;

pub use error::{ApiError, io_status};
pub use upload::METADATA_XATTR_PREFIX;

use crate::state::EnvdState;

/// The plain-HTTP part of envd's router.
pub fn router(state: Arc<EnvdState>) -> axum::Router {
    let sampler = Arc::new(metrics::CpuSampler::default());
    axum::Router::new()
        .route("/health", get(health))
        .route("/files", get(files::download).post(upload::upload))
        .route("/init", post(init::init))
        .route("/envs", get(envs::envs))
        .route(
            "/metrics",
            get(move || async move { metrics::metrics(&sampler).await }),
        )
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [(http::header::CACHE_CONTROL, "no-store")],
    )
}

/// An E2B-style JSON error response.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message.into() });
    (status, Json(body)).into_response()
}
