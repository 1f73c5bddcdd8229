use serde::Serialize;
use sqlx::FromRow;

use super::page::{self, Keyed, Page, PageRequest};
use super::row::Flag;
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    /// Lower-cased on the way in, so uniqueness and lookups ignore case.
    pub email: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub name: String,
    #[sqlx(try_from = "Flag")]
    pub is_admin: bool,
    pub created_at: i64,
}

impl Keyed for User {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

const COLS: &str = "id, email, password_hash, name, is_admin, created_at";

impl Db {
    /// Creates a user. A duplicate email (any case) is [`DbError::AlreadyExists`].
    pub async fn create_user(
        &self,
        email: &str,
        password_hash: Option<&str>,
        name: &str,
        is_admin: bool,
    ) -> Result<User, DbError> {
        let user = User {
            id: crate::ids::UserId::generate().into_string(),
            email: email.trim().to_lowercase(),
            password_hash: password_hash.map(str::to_owned),
            name: name.to_owned(),
            is_admin,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, name, is_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(&user.name)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(&self.pool)
        .await?;
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<User, DbError> {
        let sql = format!("SELECT {COLS} FROM users WHERE email = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(email.trim().to_lowercase())
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<User, DbError> {
        let sql = format!("SELECT {COLS} FROM users WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn set_user_admin(&self, id: &str, is_admin: bool) -> Result<(), DbError> {
        let r = sqlx::query("UPDATE users SET is_admin = $2 WHERE id = $1")
            .bind(id)
            .bind(is_admin)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// All users, newest first (platform admin).
    pub async fn list_users(&self, req: &PageRequest) -> Result<Page<User>, DbError> {
        page::whole_table(&self.pool, COLS, "users", req).await
    }

    pub async fn count_users(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates the first user as platform admin, or a normal user when one exists already.
    /// The check and the insert share one write transaction, so two concurrent first signups
    /// cannot both become admin.
    pub async fn create_user_first_is_admin(
        &self,
        email: &str,
        password_hash: Option<&str>,
        name: &str,
    ) -> Result<User, DbError> {
        let mut tx = self.begin_write().await?;
        let user = self
            .insert_user_first_is_admin(&mut tx, email, password_hash, name, SignupGate::Open)
            .await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Signup in one transaction: the user (the first one becomes platform admin), their
    /// personal team and the owner membership. A failure leaves none of the three.
    pub async fn create_account(
        &self,
        email: &str,
        password_hash: Option<&str>,
        name: &str,
        team_name: &str,
    ) -> Result<(User, super::Team), DbError> {
        self.signup(email, password_hash, name, team_name, SignupGate::Open)
            .await
    }

    /// A new account and its own team, if `gate` lets this email in (the first account
    /// always gets in: it becomes the platform admin). The account joins every team that
    /// invited its email, in the same transaction.
    pub async fn signup(
        &self,
        email: &str,
        password_hash: Option<&str>,
        name: &str,
        team_name: &str,
        gate: SignupGate,
    ) -> Result<(User, super::Team), DbError> {
        let mut tx = self.begin_write().await?;
        let user = self
            .insert_user_first_is_admin(&mut tx, email, password_hash, name, gate)
            .await?;
        let now = user.created_at;
        let team =
            super::teams::insert_team_owned_by(&mut tx, team_name, false, &user.id, now).await?;
        super::invitations::accept_all(&mut tx, &user, now).await?;
        tx.commit().await?;
        Ok((user, team))
    }

    /// The first user of the database becomes platform admin: the count and the insert run
    /// on the caller's write transaction (PostgreSQL: under a table lock), so two concurrent
    /// first signups cannot both become admin.
    async fn insert_user_first_is_admin(
        &self,
        tx: &mut super::pool::WriteTx,
        email: &str,
        password_hash: Option<&str>,
        name: &str,
        gate: SignupGate,
    ) -> Result<User, DbError> {
        if self.backend() == super::Backend::Postgres {
            // Serialises concurrent first signups; released at commit.
            sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await?;
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut **tx)
            .await?;
        let email_norm = email.trim().to_lowercase();
        match gate {
            _ if count == 0 => {}
            SignupGate::Open => {}
            SignupGate::Closed => return Err(DbError::SignupRefused("signup is closed")),
            SignupGate::Invite => {
                if !super::invitations::is_invited(tx, &email_norm, now_ms()).await? {
                    return Err(DbError::SignupRefused(
                        "signup needs an invitation for this email",
                    ));
                }
            }
        }
        let user = User {
            id: crate::ids::UserId::generate().into_string(),
            email: email.trim().to_lowercase(),
            password_hash: password_hash.map(str::to_owned),
            name: name.to_owned(),
            is_admin: count == 0,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, name, is_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(&user.name)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(&mut **tx)
        .await?;
        Ok(user)
    }
}

/// Who may sign up (`wrenn server --signup`); the first account always may.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignupGate {
    #[default]
    Open,
    /// No one.
    Closed,
    /// Emails with a pending team invitation.
    Invite,
}

impl std::str::FromStr for SignupGate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(SignupGate::Open),
            "closed" => Ok(SignupGate::Closed),
            "invite" => Ok(SignupGate::Invite),
            other => Err(format!(
                "unknown signup mode {other:?} (open, closed or invite)"
            )),
        }
    }
}
