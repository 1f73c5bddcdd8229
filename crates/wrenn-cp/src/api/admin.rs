//! Platform-admin routes. [`require_admin`] re-reads `is_admin` from the database: the JWT
//! claim only drives the UI and may be stale (or forged with a leaked secret's help).

use std::sync::Arc;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageQuery, State, db_err};
use crate::auth::extract::UserAuth;
use crate::db::{Page, User};
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::server::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(list_users))
}

pub async fn require_admin(st: &AppState, user_id: &str) -> Result<(), ApiError> {
    match st.db.user_by_id(user_id).await {
        Ok(u) if u.is_admin => Ok(()),
        Ok(_) => Err(ApiError::forbidden("admin access required")),
        Err(crate::db::DbError::NotFound) => {
            Err(ApiError::unauthorized("account no longer exists"))
        }
        Err(e) => Err(db_err(e)),
    }
}

/// Every user of the platform, newest first.
#[utoipa::path(
    get,
    path = "/v1/admin/users",
    tag = "admin",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = Page<User>),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
    )
)]
pub async fn list_users(
    st: State,
    UserAuth(c): UserAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<Page<User>>, ApiError> {
    require_admin(&st, &c.sub).await?;
    let req = q.request()?;
    Ok(ApiJson(st.db.list_users(&req).await.map_err(db_err)?))
}
