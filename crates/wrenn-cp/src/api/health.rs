use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

/// Liveness: no auth, never cached.
pub async fn health() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})),
    )
}
