//! Platform-admin routes. [`require_admin`] re-reads `is_admin` from the database: the JWT
//! claim only drives the UI and may be stale (or forged with a leaked secret's help).

use std::sync::Arc;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use serde::{Deserialize, Serialize};

use super::{PageQuery, State, db_err, db_err_for};
use crate::auth::extract::UserAuth;
use crate::db::{
    ActorType, AuditEntry, Host, NewAuditEntry, Page, Quota, QuotaOverrides, Team, Usage, User,
};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::ids::TeamId;
use crate::server::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(list_teams))
        .routes(routes!(set_byoc))
        .routes(routes!(get_quota, set_quota))
        .routes(routes!(list_hosts))
        .routes(routes!(list_audit))
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

/// Every team, newest first, with its BYOC flag.
#[utoipa::path(
    get,
    path = "/v1/admin/teams",
    tag = "admin",
    operation_id = "admin_list_teams",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of teams", body = Page<Team>),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
    )
)]
pub async fn list_teams(
    st: State,
    UserAuth(c): UserAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<Page<Team>>, ApiError> {
    require_admin(&st, &c.sub).await?;
    let req = q.request()?;
    Ok(ApiJson(st.db.list_teams(&req).await.map_err(db_err)?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetByoc {
    /// BYOC teams run their sandboxes only on hosts they register themselves.
    enabled: bool,
}

/// Makes a team BYOC (its sandboxes then land only on its own hosts, and its owners and
/// admins may register hosts) or a platform team again. Takes effect on the next request:
/// the flag is read from the database, never from a token.
#[utoipa::path(
    put,
    path = "/v1/admin/teams/{id}/byoc",
    tag = "admin",
    operation_id = "admin_set_team_byoc",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    request_body = SetByoc,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The team", body = Team),
        (status = 400, description = "Malformed team ID or body", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
        (status = 404, description = "No such team", body = ErrorBody),
    )
)]
pub async fn set_byoc(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<TeamId>,
    ApiJson(body): ApiJson<SetByoc>,
) -> Result<ApiJson<Team>, ApiError> {
    require_admin(&st, &c.sub).await?;
    let team = st
        .db
        .set_team_byoc(id.as_str(), body.enabled)
        .await
        .map_err(db_err_for("team"))?;
    let entry = NewAuditEntry {
        team_id: Some(&team.id),
        actor_type: ActorType::User,
        actor_id: Some(&c.sub),
        action: "team.byoc",
        target_type: "team",
        target_id: Some(&team.id),
        details: serde_json::json!({ "enabled": body.enabled }),
    };
    st.db.record_audit(entry).await;
    Ok(ApiJson(team))
}

/// A team's quota: the admin's overrides, the limits in effect and what the team holds.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TeamQuota {
    team_id: String,
    overrides: QuotaOverrides,
    effective: Quota,
    usage: Usage,
}

async fn team_quota(st: &AppState, team_id: &str) -> Result<TeamQuota, ApiError> {
    let overrides = st.db.team_quota_overrides(team_id).await.map_err(db_err)?;
    Ok(TeamQuota {
        team_id: team_id.to_owned(),
        effective: overrides.apply(crate::db::quotas::DEFAULT_QUOTA),
        overrides,
        usage: st.db.team_usage(team_id).await.map_err(db_err)?,
    })
}

/// A team's quota and usage.
#[utoipa::path(
    get,
    path = "/v1/admin/teams/{id}/quota",
    tag = "admin",
    operation_id = "admin_get_team_quota",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Overrides, effective limits and usage", body = TeamQuota),
        (status = 400, description = "Malformed team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
        (status = 404, description = "No such team", body = ErrorBody),
    )
)]
pub async fn get_quota(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<TeamId>,
) -> Result<ApiJson<TeamQuota>, ApiError> {
    require_admin(&st, &c.sub).await?;
    st.db
        .team_by_id(id.as_str())
        .await
        .map_err(db_err_for("team"))?;
    Ok(ApiJson(team_quota(&st, id.as_str()).await?))
}

/// Replaces a team's quota overrides; fields left out take the platform's defaults (`{}`
/// resets the team to them). Applies to the next create or resume.
#[utoipa::path(
    put,
    path = "/v1/admin/teams/{id}/quota",
    tag = "admin",
    operation_id = "admin_set_team_quota",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    request_body = QuotaOverrides,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Overrides, effective limits and usage", body = TeamQuota),
        (status = 400, description = "Malformed team ID or body, or a negative limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
        (status = 404, description = "No such team", body = ErrorBody),
    )
)]
pub async fn set_quota(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<TeamId>,
    ApiJson(body): ApiJson<QuotaOverrides>,
) -> Result<ApiJson<TeamQuota>, ApiError> {
    require_admin(&st, &c.sub).await?;
    if let Some(f) = body.negative_field() {
        return Err(ApiError::invalid_request(format!("{f} must be at least 0")));
    }
    st.db
        .set_team_quota(id.as_str(), &body)
        .await
        .map_err(db_err_for("team"))?;
    let entry = NewAuditEntry {
        team_id: Some(id.as_str()),
        actor_type: ActorType::User,
        actor_id: Some(&c.sub),
        action: "team.quota",
        target_type: "team",
        target_id: Some(id.as_str()),
        details: serde_json::to_value(&body).unwrap_or_default(),
    };
    st.db.record_audit(entry).await;
    Ok(ApiJson(team_quota(&st, id.as_str()).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AdminHost {
    #[serde(flatten)]
    host: Host,
    /// The owning team's name for a BYOC host; null for a platform host.
    team_name: Option<String>,
}

/// Every host, platform and BYOC, with the owning team's name.
#[utoipa::path(
    get,
    path = "/v1/admin/hosts",
    tag = "admin",
    operation_id = "admin_list_hosts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every host", body = Vec<AdminHost>),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
    )
)]
pub async fn list_hosts(
    st: State,
    UserAuth(c): UserAuth,
) -> Result<ApiJson<Vec<AdminHost>>, ApiError> {
    require_admin(&st, &c.sub).await?;
    let hosts = st.db.list_all_hosts().await.map_err(db_err)?;
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let team_name = match &host.team_id {
            Some(t) => {
                if !names.contains_key(t) {
                    let name = st.db.team_by_id(t).await.ok().map(|t| t.name);
                    names.insert(t.clone(), name);
                }
                names.get(t).cloned().flatten()
            }
            None => None,
        };
        out.push(AdminHost { host, team_name });
    }
    Ok(ApiJson(out))
}

/// The whole audit log, newest first.
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    operation_id = "admin_list_audit",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditEntry>),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not a platform admin", body = ErrorBody),
    )
)]
pub async fn list_audit(
    st: State,
    UserAuth(c): UserAuth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<Page<AuditEntry>>, ApiError> {
    require_admin(&st, &c.sub).await?;
    let req = q.request()?;
    Ok(ApiJson(st.db.list_audit_all(&req).await.map_err(db_err)?))
}
