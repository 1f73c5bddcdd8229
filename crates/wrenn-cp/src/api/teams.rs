//! Teams and member management. Roles are read from the database on every call (the JWT's
//! role claim may be hours old). A team the caller does not belong to is a 404; a member
//! who may not manage it gets 403.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageQuery, State, db_err, db_err_for, validate};
use crate::auth::extract::UserAuth;
use crate::db::{AuditEntry, DbError, Invitation, Member, Membership, Page, Role};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::ids::{InvitationId, TeamId, UserId};
use crate::server::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(list_members, add_member))
        .routes(routes!(remove_member, change_role))
        .routes(routes!(list_invitations, invite))
        .routes(routes!(delete_invitation))
        .routes(routes!(team_audit))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// 1–100 characters (surrounding spaces trimmed), not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
}

/// Roles that can be granted through the API: ownership is not transferable here.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantableRole {
    Admin,
    Member,
}

impl From<GrantableRole> for Role {
    fn from(r: GrantableRole) -> Role {
        match r {
            GrantableRole::Admin => Role::Admin,
            GrantableRole::Member => Role::Member,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// An existing account's email.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// Default `member`.
    role: Option<GrantableRole>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: GrantableRole,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Teams {
    teams: Vec<Membership>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Members {
    members: Vec<Member>,
}

/// The caller's teams with the caller's role in each.
#[utoipa::path(
    get,
    path = "/v1/teams",
    tag = "teams",
    operation_id = "list_teams",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's teams", body = Teams),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
    )
)]
pub async fn list(st: State, UserAuth(c): UserAuth) -> Result<ApiJson<Teams>, ApiError> {
    let teams = st.db.teams_for_user(&c.sub).await.map_err(db_err)?;
    Ok(ApiJson(Teams { teams }))
}

/// Creates a team owned by the caller.
#[utoipa::path(
    post,
    path = "/v1/teams",
    tag = "teams",
    operation_id = "create_team",
    request_body = CreateTeam,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new team; the caller is its owner", body = Membership),
        (status = 400, description = "Malformed body or invalid name", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
    )
)]
pub async fn create(
    st: State,
    UserAuth(c): UserAuth,
    ApiJson(req): ApiJson<CreateTeam>,
) -> Result<(StatusCode, ApiJson<Membership>), ApiError> {
    let name = validate::name("name", &req.name)?;
    let team = st
        .db
        .create_team(&name, false, Some(&c.sub))
        .await
        .map_err(db_err)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(Membership {
            team,
            role: Role::Owner,
        }),
    ))
}

/// The caller's role in `team`; not a member is 404.
async fn caller_role(st: &AppState, team: &TeamId, user_id: &str) -> Result<Role, ApiError> {
    st.db
        .role_of(team.as_str(), user_id)
        .await
        .map_err(db_err_for("team"))
}

async fn require_manager(st: &AppState, team: &TeamId, user_id: &str) -> Result<(), ApiError> {
    if caller_role(st, team, user_id).await? >= Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("team owner or admin required"))
    }
}

/// The team's members; any member may list them.
#[utoipa::path(
    get,
    path = "/v1/teams/{id}/members",
    tag = "teams",
    operation_id = "list_team_members",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The team's members", body = Members),
        (status = 400, description = "Malformed team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 404, description = "No such team, or not a member", body = ErrorBody),
    )
)]
pub async fn list_members(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(team): ApiPath<TeamId>,
) -> Result<ApiJson<Members>, ApiError> {
    caller_role(&st, &team, &c.sub).await?;
    let members = st.db.list_members(team.as_str()).await.map_err(db_err)?;
    Ok(ApiJson(Members { members }))
}

/// Adds an existing account to the team (owners and admins only).
#[utoipa::path(
    post,
    path = "/v1/teams/{id}/members",
    tag = "teams",
    operation_id = "add_team_member",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    request_body = AddMember,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new member", body = Member),
        (status = 400, description = "Malformed body, email or team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin of the team", body = ErrorBody),
        (status = 404, description = "No such team (or not a member), or no account with this email", body = ErrorBody),
        (status = 409, description = "Already a member", body = ErrorBody),
    )
)]
pub async fn add_member(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(team): ApiPath<TeamId>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<(StatusCode, ApiJson<Member>), ApiError> {
    let email = validate::email(&req.email)?;
    let role: Role = req.role.unwrap_or(GrantableRole::Member).into();
    require_manager(&st, &team, &c.sub).await?;
    let user = st
        .db
        .user_by_email(&email)
        .await
        .map_err(db_err_for("user"))?;
    match st.db.add_member(team.as_str(), &user.id, role).await {
        Err(DbError::AlreadyExists(_)) => {
            return Err(ApiError::conflict("already a member of this team"));
        }
        r => r.map_err(db_err)?,
    }
    let member = st
        .db
        .list_members(team.as_str())
        .await
        .map_err(db_err)?
        .into_iter()
        .find(|m| m.user_id == user.id)
        .ok_or_else(|| ApiError::internal("member vanished after insert"))?;
    Ok((StatusCode::CREATED, ApiJson(member)))
}

/// The target's current role; not a member of this team is 404.
async fn target_role(st: &AppState, team: &TeamId, user: &UserId) -> Result<Role, ApiError> {
    st.db
        .role_of(team.as_str(), user.as_str())
        .await
        .map_err(db_err_for("member"))
}

/// Changes a member's role (owners and admins only; the owner's role is fixed).
#[utoipa::path(
    patch,
    path = "/v1/teams/{id}/members/{user_id}",
    tag = "teams",
    operation_id = "change_member_role",
    params(
        ("id" = crate::ids::TeamId, Path, description = "Team ID"),
        ("user_id" = crate::ids::UserId, Path, description = "The member's user ID"),
    ),
    request_body = ChangeRole,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Role changed"),
        (status = 400, description = "Malformed body or ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin, or the target is the owner", body = ErrorBody),
        (status = 404, description = "No such team or member", body = ErrorBody),
    )
)]
pub async fn change_role(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath((team, user)): ApiPath<(TeamId, UserId)>,
    ApiJson(req): ApiJson<ChangeRole>,
) -> Result<StatusCode, ApiError> {
    require_manager(&st, &team, &c.sub).await?;
    if target_role(&st, &team, &user).await? == Role::Owner {
        return Err(ApiError::forbidden("the owner's role cannot be changed"));
    }
    st.db
        .change_role(team.as_str(), user.as_str(), req.role.into())
        .await
        .map_err(db_err_for("member"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a member (owners and admins only; the owner cannot be removed).
#[utoipa::path(
    delete,
    path = "/v1/teams/{id}/members/{user_id}",
    tag = "teams",
    operation_id = "remove_team_member",
    params(
        ("id" = crate::ids::TeamId, Path, description = "Team ID"),
        ("user_id" = crate::ids::UserId, Path, description = "The member's user ID"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Member removed"),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin, or the target is the owner", body = ErrorBody),
        (status = 404, description = "No such team or member", body = ErrorBody),
    )
)]
pub async fn remove_member(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath((team, user)): ApiPath<(TeamId, UserId)>,
) -> Result<StatusCode, ApiError> {
    require_manager(&st, &team, &c.sub).await?;
    if target_role(&st, &team, &user).await? == Role::Owner {
        return Err(ApiError::forbidden("the owner cannot be removed"));
    }
    st.db
        .remove_member(team.as_str(), user.as_str())
        .await
        .map_err(db_err_for("member"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The team's audit log, newest first: its owners only.
#[utoipa::path(
    get,
    path = "/v1/teams/{id}/audit",
    tag = "teams",
    operation_id = "team_audit",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID"), PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the team's audit entries", body = Page<AuditEntry>),
        (status = 400, description = "Malformed team ID, `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner of the team", body = ErrorBody),
        (status = 404, description = "No such team, or not a member", body = ErrorBody),
    )
)]
pub async fn team_audit(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(team): ApiPath<TeamId>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<ApiJson<Page<AuditEntry>>, ApiError> {
    if caller_role(&st, &team, &c.sub).await? < Role::Owner {
        return Err(ApiError::forbidden("team owner required"));
    }
    let req = q.request()?;
    Ok(ApiJson(
        st.db
            .list_audit(team.as_str(), &req)
            .await
            .map_err(db_err)?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// An email without an account yet.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// Default `member`.
    role: Option<GrantableRole>,
}

/// Invites an email that has no account yet: its signup joins the team with the role (and,
/// when signup is by invitation, is allowed only then). Valid 7 days; inviting the same email
/// again replaces the invitation. Owners and admins only.
#[utoipa::path(
    post,
    path = "/v1/teams/{id}/invitations",
    tag = "teams",
    operation_id = "invite_to_team",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    request_body = Invite,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The invitation", body = Invitation),
        (status = 400, description = "Malformed body, email or team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin of the team", body = ErrorBody),
        (status = 404, description = "No such team (or not a member)", body = ErrorBody),
        (status = 409, description = "The email has an account: add it as a member", body = ErrorBody),
    )
)]
pub async fn invite(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(team): ApiPath<TeamId>,
    ApiJson(req): ApiJson<Invite>,
) -> Result<(StatusCode, ApiJson<Invitation>), ApiError> {
    let email = validate::email(&req.email)?;
    let role: Role = req.role.unwrap_or(GrantableRole::Member).into();
    require_manager(&st, &team, &c.sub).await?;
    match st.db.user_by_email(&email).await {
        Ok(_) => {
            return Err(ApiError::conflict(
                "this email has an account: add it with POST /v1/teams/{id}/members",
            ));
        }
        Err(DbError::NotFound) => {}
        Err(e) => return Err(db_err(e)),
    }
    let inv = st
        .db
        .invite(team.as_str(), &email, role, &c.sub)
        .await
        .map_err(db_err)?;
    Ok((StatusCode::CREATED, ApiJson(inv)))
}

/// The team's pending invitations (owners and admins).
#[utoipa::path(
    get,
    path = "/v1/teams/{id}/invitations",
    tag = "teams",
    operation_id = "list_team_invitations",
    params(("id" = crate::ids::TeamId, Path, description = "Team ID")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Pending invitations, newest first", body = Vec<Invitation>),
        (status = 400, description = "Malformed team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin of the team", body = ErrorBody),
        (status = 404, description = "No such team (or not a member)", body = ErrorBody),
    )
)]
pub async fn list_invitations(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(team): ApiPath<TeamId>,
) -> Result<ApiJson<Vec<Invitation>>, ApiError> {
    require_manager(&st, &team, &c.sub).await?;
    Ok(ApiJson(
        st.db
            .team_invitations(team.as_str())
            .await
            .map_err(db_err)?,
    ))
}

/// Withdraws an invitation (owners and admins).
#[utoipa::path(
    delete,
    path = "/v1/teams/{id}/invitations/{invitation_id}",
    tag = "teams",
    operation_id = "delete_team_invitation",
    params(
        ("id" = crate::ids::TeamId, Path, description = "Team ID"),
        ("invitation_id" = crate::ids::InvitationId, Path, description = "Invitation ID"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not an owner or admin of the team", body = ErrorBody),
        (status = 404, description = "No such team or invitation", body = ErrorBody),
    )
)]
pub async fn delete_invitation(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath((team, id)): ApiPath<(TeamId, InvitationId)>,
) -> Result<StatusCode, ApiError> {
    require_manager(&st, &team, &c.sub).await?;
    st.db
        .delete_invitation(team.as_str(), id.as_str())
        .await
        .map_err(db_err_for("invitation"))?;
    Ok(StatusCode::NO_CONTENT)
}
