//! Team invitations: an owner or admin invites an email that has no account yet; its signup
//! joins the team with the invited role (and, with `--signup invite`, is allowed only then).

use serde::Serialize;
use sqlx::FromRow;

use super::pool::WriteTx;
use super::{Db, DbError, Role, User, now_ms};

/// How long an invitation stays valid.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct Invitation {
    pub id: String,
    pub team_id: String,
    pub email: String,
    /// `admin` or `member`.
    pub role: String,
    pub invited_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

const COLS: &str = "id, team_id, email, role, invited_by, created_at, expires_at";

impl Db {
    /// Invites `email` (normalised by the caller) into the team; an earlier invitation of the
    /// same email to the same team is replaced (new role, new expiry).
    pub async fn invite(
        &self,
        team_id: &str,
        email: &str,
        role: Role,
        invited_by: &str,
    ) -> Result<Invitation, DbError> {
        let now = now_ms();
        let inv = Invitation {
            id: crate::ids::InvitationId::generate().into_string(),
            team_id: team_id.to_owned(),
            email: email.to_owned(),
            role: role.as_str().to_owned(),
            invited_by: Some(invited_by.to_owned()),
            created_at: now,
            expires_at: now + INVITATION_TTL_MS,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM invitations WHERE team_id = $1 AND email = $2")
            .bind(team_id)
            .bind(email)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO invitations (id, team_id, email, role, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&inv.id)
        .bind(&inv.team_id)
        .bind(&inv.email)
        .bind(&inv.role)
        .bind(&inv.invited_by)
        .bind(inv.created_at)
        .bind(inv.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inv)
    }

    /// The team's pending (unexpired) invitations, newest first.
    pub async fn team_invitations(&self, team_id: &str) -> Result<Vec<Invitation>, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM invitations WHERE team_id = $1 AND expires_at > $2 \
             ORDER BY created_at DESC, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?)
    }

    /// Withdraws an invitation of the team; `NotFound` when there is none with that ID.
    pub async fn delete_invitation(&self, team_id: &str, id: &str) -> Result<(), DbError> {
        let r = sqlx::query("DELETE FROM invitations WHERE team_id = $1 AND id = $2")
            .bind(team_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }
}

/// Whether `email` has a pending invitation (inside a signup's transaction).
pub(super) async fn is_invited(tx: &mut WriteTx, email: &str, now: i64) -> Result<bool, DbError> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM invitations WHERE email = $1 AND expires_at > $2")
            .bind(email)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
    Ok(n > 0)
}

/// Makes the new account a member of every team that invited its email, and removes those
/// invitations (expired ones of the email too).
pub(super) async fn accept_all(tx: &mut WriteTx, user: &User, now: i64) -> Result<(), DbError> {
    let pending: Vec<(String, String)> = sqlx::query_as(
        "SELECT team_id, role FROM invitations WHERE email = $1 AND expires_at > $2",
    )
    .bind(&user.email)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for (team_id, role) in pending {
        sqlx::query(
            "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&team_id)
        .bind(&user.id)
        .bind(&role)
        // After the account's own team: the oldest membership is the default team.
        .bind(now + 1)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM invitations WHERE email = $1")
        .bind(&user.email)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
