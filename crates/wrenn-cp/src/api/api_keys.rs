//! API keys of the caller's team. The plaintext key is in the create response only; the
//! database keeps its SHA-256. Revoking drops the key from this process's cache at once;
//! other processes stop accepting it when their cache entry expires (5 s).

use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageQuery, State, db_err, db_err_for, validate};
use crate::auth::api_key;
use crate::auth::extract::{TeamAuth, UserAuth};
use crate::db::{ApiKey, NewApiKey, Page};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::ids::ApiKeyId;
use crate::server::AppState;

pub const DEFAULT_KEY_NAME: &str = "Unnamed API Key";

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get, revoke))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Default "Unnamed API Key". 1–100 characters, not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: ApiKey,
    /// Shown once.
    #[serde(rename = "key")]
    plaintext: String,
}

/// Keys are managed with a user token: a leaked key cannot mint more keys.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    operation_id = "create_api_key",
    request_body = CreateKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The key, with its plaintext `key` (shown once)", body = CreatedKey),
        (status = 400, description = "Malformed body or invalid name", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
    )
)]
pub async fn create(
    st: State,
    UserAuth(c): UserAuth,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<(StatusCode, ApiJson<CreatedKey>), ApiError> {
    let name = match &req.name {
        Some(n) => validate::name("name", n)?,
        None => DEFAULT_KEY_NAME.to_owned(),
    };
    let generated = api_key::generate()?;
    let key = st
        .db
        .create_api_key(NewApiKey {
            team_id: &c.team_id,
            created_by: Some(&c.sub),
            name: &name,
            prefix: &generated.display_prefix,
            key_hash: &generated.hash,
        })
        .await
        .map_err(db_err)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedKey {
            key,
            plaintext: generated.plaintext,
        }),
    ))
}

/// The team's active keys (user token or API key).
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    operation_id = "list_api_keys",
    params(PageQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of keys (never their plaintext)", body = Page<ApiKey>),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key or user token", body = ErrorBody),
    )
)]
pub async fn list(
    st: State,
    auth: TeamAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<Page<ApiKey>>, ApiError> {
    let req = q.request()?;
    let page = st
        .db
        .list_api_keys(auth.team_id(), &req)
        .await
        .map_err(db_err)?;
    Ok(ApiJson(page))
}

/// One active key of the caller's team.
#[utoipa::path(
    get,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    operation_id = "get_api_key",
    params(("id" = crate::ids::ApiKeyId, Path, description = "API key ID")),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The key (never its plaintext)", body = ApiKey),
        (status = 400, description = "Malformed key ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key or user token", body = ErrorBody),
        (status = 404, description = "No such key in the caller's team", body = ErrorBody),
    )
)]
pub async fn get(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<ApiKeyId>,
) -> Result<ApiJson<ApiKey>, ApiError> {
    let key = st
        .db
        .api_key_by_id(auth.team_id(), id.as_str())
        .await
        .map_err(db_err_for("api key"))?;
    Ok(ApiJson(key))
}

/// Revokes a key of the caller's team (user token only).
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    operation_id = "revoke_api_key",
    params(("id" = crate::ids::ApiKeyId, Path, description = "API key ID")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Malformed key ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 404, description = "No such active key in the caller's team", body = ErrorBody),
    )
)]
pub async fn revoke(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    st.db
        .revoke_api_key(&c.team_id, id.as_str())
        .await
        .map_err(db_err_for("api key"))?;
    st.key_cache.invalidate_if(|p| p.key_id == id);
    tracing::info!(key_id = %id, team_id = %c.team_id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
