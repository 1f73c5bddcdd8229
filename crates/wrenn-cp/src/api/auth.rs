//! Signup, login, switch-team and `/v1/me`.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{State, db_err, db_err_for, validate};
use crate::auth::extract::{ClientIp, UserAuth};
use crate::auth::jwt::{self, UserIdentity};
use crate::auth::password;
use crate::db::{DbError, Membership, Role, Team, User};
use crate::error::{ApiError, ApiJson, ErrorBody, ErrorCode};
use crate::ids::{TeamId, UserId};
use crate::server::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(switch_team))
        .routes(routes!(me))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// 1–100 characters (surrounding spaces trimmed), not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchTeamRequest {
    team_id: TeamId,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuthResponse {
    /// User JWT: send as `Authorization: Bearer <token>`.
    token: String,
    /// Unix seconds.
    expires_at: u64,
    user: User,
    team: Team,
    role: Role,
}

pub(crate) fn jwt_role(r: Role) -> jwt::Role {
    match r {
        Role::Owner => jwt::Role::Owner,
        Role::Admin => jwt::Role::Admin,
        Role::Member => jwt::Role::Member,
    }
}

/// A fresh user token for `user` acting in `team` with `role`.
fn issue(st: &AppState, user: User, team: Team, role: Role) -> Result<AuthResponse, ApiError> {
    let who = UserIdentity {
        user_id: UserId::parse(&user.id).map_err(ApiError::internal)?,
        team_id: TeamId::parse(&team.id).map_err(ApiError::internal)?,
        role: jwt_role(role),
        email: user.email.clone(),
        name: user.name.clone(),
        is_admin: user.is_admin,
    };
    let signed = st.jwt.issue_user(&who).map_err(ApiError::internal)?;
    Ok(AuthResponse {
        token: signed.token,
        expires_at: signed.expires_at,
        user,
        team,
        role,
    })
}

/// Creates the account and its personal team; the first account becomes platform admin.
#[utoipa::path(
    post,
    path = "/v1/auth/signup",
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account and personal team created; a user token for it", body = AuthResponse),
        (status = 400, description = "Malformed body, invalid email, name or password", body = ErrorBody),
        (status = 403, description = "Signup is closed, or (`--signup invite`) this email has no invitation", body = ErrorBody),
        (status = 409, description = "`email_taken`", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address, or too many logins in progress; `Retry-After` says when to retry", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
    )
)]
pub async fn signup(
    st: State,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SignupRequest>,
) -> Result<(StatusCode, ApiJson<AuthResponse>), ApiError> {
    st.auth_limits.attempt_from(ip)?;
    let email = validate::email(&req.email)?;
    let name = validate::name("name", &req.name)?;
    password::validate_new_password(&req.password)?;
    let slot = st.auth_limits.hashing().await?;
    let hash = password::hash_password_async(req.password)
        .await
        .map_err(ApiError::internal)?;
    drop(slot);
    // Team names are capped at 100 characters like every name.
    let team_name: String = format!("{name}'s team")
        .chars()
        .take(validate::MAX_NAME_CHARS)
        .collect();
    let (user, team) = match st
        .db
        .signup(&email, Some(&hash), &name, &team_name, st.signup)
        .await
    {
        Err(DbError::AlreadyExists(_)) => {
            return Err(ApiError::new(
                ErrorCode::EmailTaken,
                "an account with this email exists",
            ));
        }
        Err(DbError::SignupRefused(why)) => return Err(ApiError::forbidden(why)),
        r => r.map_err(db_err)?,
    };
    tracing::info!(user_id = %user.id, is_admin = user.is_admin, "signup");
    Ok((
        StatusCode::CREATED,
        ApiJson(issue(&st, user, team, Role::Owner)?),
    ))
}

/// Unknown email and wrong password get the same 401 after the same work.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A user token for the oldest team of the account", body = AuthResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Invalid email or password", body = ErrorBody),
        (status = 403, description = "The account belongs to no team", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address or on this account, or too many logins in progress; `Retry-After` says when to retry", body = ErrorBody),
    )
)]
pub async fn login(
    st: State,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<ApiJson<AuthResponse>, ApiError> {
    st.auth_limits.attempt_from(ip)?;
    // A malformed email cannot match a row; it still goes through the dummy verify.
    let email = validate::email(&req.email);
    if let Ok(e) = &email {
        st.auth_limits.attempt_on(e)?;
    }
    let user = match email {
        Ok(email) => match st.db.user_by_email(&email).await {
            Ok(u) => Some(u),
            Err(DbError::NotFound) => None,
            Err(e) => return Err(db_err(e)),
        },
        Err(_) => None,
    };
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    // An over-long password is refused inside verify_or_dummy without being hashed.
    let slot = st.auth_limits.hashing().await?;
    let ok = password::verify_or_dummy_async(req.password, stored).await;
    drop(slot);
    let user = match user {
        Some(u) if ok => u,
        _ => return Err(ApiError::unauthorized("invalid email or password")),
    };
    // The oldest membership is the default team.
    let Some(m) = st
        .db
        .teams_for_user(&user.id)
        .await
        .map_err(db_err)?
        .into_iter()
        .next()
    else {
        return Err(ApiError::forbidden("account belongs to no team"));
    };
    Ok(ApiJson(issue(&st, user, m.team, m.role)?))
}

/// A new token for another team of the caller; not a member is 404 (no existence leak).
#[utoipa::path(
    post,
    path = "/v1/auth/switch-team",
    tag = "auth",
    request_body = SwitchTeamRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A user token for the other team", body = AuthResponse),
        (status = 400, description = "Malformed body or team ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 404, description = "No such team, or not a member", body = ErrorBody),
    )
)]
pub async fn switch_team(
    st: State,
    UserAuth(claims): UserAuth,
    ApiJson(req): ApiJson<SwitchTeamRequest>,
) -> Result<ApiJson<AuthResponse>, ApiError> {
    let role = st
        .db
        .role_of(req.team_id.as_str(), &claims.sub)
        .await
        .map_err(db_err_for("team"))?;
    let team = st
        .db
        .team_by_id(req.team_id.as_str())
        .await
        .map_err(db_err_for("team"))?;
    // Claims can be up to 6 h old: name and is_admin come from the row.
    let user = st
        .db
        .user_by_id(&claims.sub)
        .await
        .map_err(|_| ApiError::unauthorized("account no longer exists"))?;
    Ok(ApiJson(issue(&st, user, team, role)?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    user: User,
    team_id: String,
    role: Role,
    teams: Vec<Membership>,
}

/// The caller's account, the token's team and role, and every team of the account.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = MeResponse),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
    )
)]
pub async fn me(st: State, UserAuth(claims): UserAuth) -> Result<ApiJson<MeResponse>, ApiError> {
    let user = st
        .db
        .user_by_id(&claims.sub)
        .await
        .map_err(|_| ApiError::unauthorized("account no longer exists"))?;
    let teams = st.db.teams_for_user(&user.id).await.map_err(db_err)?;
    let role = teams
        .iter()
        .find(|m| m.team.id == claims.team_id)
        .map(|m| m.role)
        .ok_or_else(|| ApiError::unauthorized("no longer a member of the token's team"))?;
    Ok(ApiJson(MeResponse {
        user,
        team_id: claims.team_id,
        role,
        teams,
    }))
}
