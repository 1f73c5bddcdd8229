//! HTTP routes, one module per resource. Every handler validates all of its input before it
//! touches the database, so a refused request changes nothing; every error is the JSON
//! envelope of [`crate::error`].

mod admin;
mod api_keys;
mod auth;
mod health;
mod hosts;
pub mod sandboxes;
mod teams;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use serde::Deserialize;

use crate::db::{DbError, PageRequest};
use crate::error::{ApiError, not_found_fallback};
use crate::server::AppState;

/// Largest JSON body the account routes accept (they carry a few short strings).
pub const BODY_LIMIT: usize = 64 * 1024;

pub(crate) type State = axum::extract::State<Arc<AppState>>;

pub fn router() -> Router<Arc<AppState>> {
    // The sandboxes module registers through utoipa-axum; its OpenAPI half is unused here yet.
    let (sandboxes, _doc) = sandboxes::routes().split_for_parts();
    Router::new()
        .route("/health", get(health::health))
        .route("/v1/auth/signup", post(auth::signup))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/switch-team", post(auth::switch_team))
        .route("/v1/me", get(auth::me))
        .route("/v1/teams", get(teams::list).post(teams::create))
        .route(
            "/v1/teams/{id}/members",
            get(teams::list_members).post(teams::add_member),
        )
        .route(
            "/v1/teams/{id}/members/{user_id}",
            delete(teams::remove_member).patch(teams::change_role),
        )
        .route("/v1/api-keys", get(api_keys::list).post(api_keys::create))
        .route(
            "/v1/api-keys/{id}",
            get(api_keys::get).delete(api_keys::revoke),
        )
        .route("/v1/admin/users", get(admin::list_users))
        .route("/v1/hosts", get(hosts::list))
        .route("/v1/hosts/registration-tokens", post(hosts::create_token))
        .route("/v1/hosts/register", post(hosts::register))
        .route("/v1/hosts/auth/refresh", post(hosts::refresh))
        .route("/v1/hosts/{id}", get(hosts::get))
        .route("/v1/hosts/{id}/heartbeat", post(hosts::heartbeat))
        .route("/v1/hosts/{id}/revoke", post(hosts::revoke))
        .merge(sandboxes)
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::MethodNotAllowed,
        "method not allowed",
    )
}

/// `?limit=&cursor=` of list routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn request(&self) -> Result<PageRequest, ApiError> {
        PageRequest::new(self.limit, self.cursor.as_deref()).map_err(db_err)
    }
}

/// Maps a database error; `NotFound` names `what` (never whether it exists elsewhere).
pub(crate) fn db_err_for(what: &str) -> impl Fn(DbError) -> ApiError + '_ {
    move |e| match e {
        DbError::NotFound => ApiError::not_found(what),
        e => db_err(e),
    }
}

pub(crate) fn db_err(e: DbError) -> ApiError {
    match e {
        DbError::NotFound => ApiError::not_found("object"),
        DbError::AlreadyExists(_) => ApiError::conflict("already exists"),
        DbError::LastOwner => ApiError::conflict("a team must keep at least one owner"),
        e @ (DbError::InvalidCursor | DbError::InvalidLimit(_)) => {
            ApiError::invalid_request(e.to_string())
        }
        e => ApiError::internal(e),
    }
}
