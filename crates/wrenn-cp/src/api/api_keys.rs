//! API keys of the caller's team. The plaintext key is in the create response only; the
//! database keeps its SHA-256. Revoking drops the key from this process's cache at once;
//! other processes stop accepting it when their cache entry expires (5 s).

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{PageQuery, State, db_err, db_err_for, validate};
use crate::auth::api_key;
use crate::auth::extract::{TeamAuth, UserAuth};
use crate::db::{ApiKey, NewApiKey, Page};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ids::ApiKeyId;

pub const DEFAULT_KEY_NAME: &str = "Unnamed API Key";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: Option<String>,
}

#[derive(Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: ApiKey,
    /// Shown once.
    #[serde(rename = "key")]
    plaintext: String,
}

/// Keys are managed with a user token: a leaked key cannot mint more keys.
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
