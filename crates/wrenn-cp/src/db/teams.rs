use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::page::{self, Keyed, Page, PageRequest};
use super::row::Flag;
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub slug: String,
    #[sqlx(try_from = "Flag")]
    pub is_byoc: bool,
    pub created_at: i64,
}

/// The columns of a [`Team`] row.
const TEAM_COLS: &str = "id, name, slug, is_byoc, created_at";

impl Keyed for Team {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    // Ordered by power, so `role >= Role::Admin` reads naturally.
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Role::Owner, Role::Admin, Role::Member]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl TryFrom<String> for Role {
    type Error = DbError;
    fn try_from(s: String) -> Result<Self, DbError> {
        Role::parse(&s).ok_or_else(|| DbError::Corrupt(format!("role {s:?}")))
    }
}

/// A team as seen by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct Membership {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub team: Team,
    #[sqlx(try_from = "String")]
    pub role: Role,
}

/// A member as seen from the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub joined_at: i64,
}

/// Team slug: 6 hex + `-` + 6 hex (wrenn-spec §1.1).
fn new_slug() -> String {
    let mut b = [0u8; 6];
    super::crypto::fill_random(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}", &hex[..6], &hex[6..])
}

impl Db {
    /// Serialises membership changes of one team. Without it, two concurrent demotions of two
    /// different owners could each still see the other owner under PostgreSQL's READ
    /// COMMITTED and leave the team ownerless. SQLite needs nothing: `BEGIN IMMEDIATE`
    /// already serialises all writers.
    async fn lock_team(&self, tx: &mut super::pool::WriteTx, team_id: &str) -> Result<(), DbError> {
        if self.backend() == super::Backend::Postgres {
            sqlx::query("SELECT id FROM teams WHERE id = $1 FOR UPDATE")
                .bind(team_id)
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Creates a team, and with `owner` its first membership, in one transaction.
    pub async fn create_team(
        &self,
        name: &str,
        is_byoc: bool,
        owner: Option<&str>,
    ) -> Result<Team, DbError> {
        let mut tx = self.begin_write().await?;
        let team = match owner {
            Some(o) => insert_team_owned_by(&mut tx, name, is_byoc, o, now_ms()).await?,
            None => insert_team(&mut tx, name, is_byoc, now_ms()).await?,
        };
        tx.commit().await?;
        Ok(team)
    }

    /// Every team, newest first.
    pub async fn list_teams(&self, req: &PageRequest) -> Result<Page<Team>, DbError> {
        page::whole_table(&self.pool, TEAM_COLS, "teams", req).await
    }

    /// Turns a team's BYOC flag on or off; returns the team.
    pub async fn set_team_byoc(&self, id: &str, enabled: bool) -> Result<Team, DbError> {
        let sql = format!("UPDATE teams SET is_byoc = $2 WHERE id = $1 RETURNING {TEAM_COLS}");
        let t: Option<Team> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(enabled)
            .fetch_optional(&self.pool)
            .await?;
        t.ok_or(DbError::NotFound)
    }

    pub async fn team_by_id(&self, id: &str) -> Result<Team, DbError> {
        Ok(
            sqlx::query_as("SELECT id, name, slug, is_byoc, created_at FROM teams WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The user's teams with their role in each, oldest membership first (the default team).
    pub async fn teams_for_user(&self, user_id: &str) -> Result<Vec<Membership>, DbError> {
        Ok(sqlx::query_as(
            "SELECT t.id, t.name, t.slug, t.is_byoc, t.created_at, m.role \
             FROM memberships m JOIN teams t ON t.id = m.team_id \
             WHERE m.user_id = $1 ORDER BY m.created_at, t.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a member; already a member is [`DbError::AlreadyExists`].
    pub async fn add_member(
        &self,
        team_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The user's role in the team; not a member is [`DbError::NotFound`].
    pub async fn role_of(&self, team_id: &str, user_id: &str) -> Result<Role, DbError> {
        let role: String =
            sqlx::query_scalar("SELECT role FROM memberships WHERE team_id = $1 AND user_id = $2")
                .bind(team_id)
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        Role::try_from(role)
    }

    pub async fn list_members(&self, team_id: &str) -> Result<Vec<Member>, DbError> {
        Ok(sqlx::query_as(
            "SELECT u.id AS user_id, u.email, u.name, m.role, m.created_at AS joined_at \
             FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 ORDER BY m.created_at, u.id",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes a member's role. Demoting the last owner is [`DbError::LastOwner`].
    pub async fn change_role(
        &self,
        team_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), DbError> {
        let mut tx = self.begin_write().await?;
        self.lock_team(&mut tx, team_id).await?;
        let r = sqlx::query("UPDATE memberships SET role = $3 WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        ensure_owner_left(&mut tx, team_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a member. Removing the last owner is [`DbError::LastOwner`].
    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> Result<(), DbError> {
        let mut tx = self.begin_write().await?;
        self.lock_team(&mut tx, team_id).await?;
        let r = sqlx::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        ensure_owner_left(&mut tx, team_id).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Called after the change inside the same transaction; an error drops (rolls back) it.
async fn ensure_owner_left(tx: &mut super::pool::WriteTx, team_id: &str) -> Result<(), DbError> {
    let owners: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE team_id = $1 AND role = 'owner'",
    )
    .bind(team_id)
    .fetch_one(&mut **tx)
    .await?;
    if owners == 0 {
        return Err(DbError::LastOwner);
    }
    Ok(())
}

async fn insert_team(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    is_byoc: bool,
    now: i64,
) -> Result<Team, DbError> {
    let team = Team {
        id: crate::ids::TeamId::generate().into_string(),
        name: name.to_owned(),
        slug: new_slug(),
        is_byoc,
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO teams (id, name, slug, is_byoc, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&team.id)
    .bind(&team.name)
    .bind(&team.slug)
    .bind(team.is_byoc)
    .bind(team.created_at)
    .execute(conn)
    .await?;
    Ok(team)
}

/// Inserts a team and its owner's membership on `conn` (inside the caller's transaction).
pub(super) async fn insert_team_owned_by(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    is_byoc: bool,
    owner: &str,
    now: i64,
) -> Result<Team, DbError> {
    let team = insert_team(&mut *conn, name, is_byoc, now).await?;
    sqlx::query(
        "INSERT INTO memberships (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&team.id)
    .bind(owner)
    .bind(Role::Owner.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(team)
}
