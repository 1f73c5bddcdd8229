use std::time::Instant;

use serde::Serialize;
use sqlx::FromRow;

use super::page::{self, Keyed, Page, PageRequest};
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub team_id: String,
    pub created_by: Option<String>,
    pub name: String,
    /// The first characters of the key, shown so users can tell keys apart.
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Keyed for ApiKey {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

/// What the API layer hands over: the plaintext key never reaches the database.
pub struct NewApiKey<'a> {
    pub team_id: &'a str,
    pub created_by: Option<&'a str>,
    pub name: &'a str,
    pub prefix: &'a str,
    /// SHA-256 hex of the plaintext key.
    pub key_hash: &'a str,
}

const COLS: &str = "id, team_id, created_by, name, prefix, created_at, last_used_at, revoked_at";

impl Db {
    pub async fn create_api_key(&self, new: NewApiKey<'_>) -> Result<ApiKey, DbError> {
        let key = ApiKey {
            id: crate::ids::ApiKeyId::generate().into_string(),
            team_id: new.team_id.to_owned(),
            created_by: new.created_by.map(str::to_owned),
            name: new.name.to_owned(),
            prefix: new.prefix.to_owned(),
            created_at: now_ms(),
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, team_id, created_by, name, prefix, key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.team_id)
        .bind(&key.created_by)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(new.key_hash)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(key)
    }

    /// The active (not revoked) key with this hash; otherwise [`DbError::NotFound`].
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<ApiKey, DbError> {
        let sql = format!("SELECT {COLS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key_hash)
            .fetch_one(&self.pool)
            .await?)
    }

    /// An active key of this team; another team's, revoked or unknown is [`DbError::NotFound`].
    pub async fn api_key_by_id(&self, team_id: &str, id: &str) -> Result<ApiKey, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM api_keys WHERE id = $1 AND team_id = $2 AND revoked_at IS NULL"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(team_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The team's active keys, newest first.
    pub async fn list_api_keys(
        &self,
        team_id: &str,
        req: &PageRequest,
    ) -> Result<Page<ApiKey>, DbError> {
        let (cursor_sql, after) = match &req.after {
            Some((at, id)) => ("AND (created_at, id) < ($3, $4)", Some((*at, id.as_str()))),
            None => ("", None),
        };
        let sql = format!(
            "SELECT {COLS} FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL {cursor_sql} \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(req.fetch_limit());
        if let Some((at, id)) = after {
            q = q.bind(at).bind(id);
        }
        Ok(page::finish(q.fetch_all(&self.pool).await?, req))
    }

    /// Revokes a key of this team; unknown, another team's, or already revoked is
    /// [`DbError::NotFound`].
    pub async fn revoke_api_key(&self, team_id: &str, id: &str) -> Result<(), DbError> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $3 \
             WHERE id = $1 AND team_id = $2 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(team_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Records a use of the key, debounced (see [`super::debounce`]). Returns whether an
    /// UPDATE was sent.
    pub async fn touch_api_key(&self, id: &str) -> Result<bool, DbError> {
        self.touch("api_keys", "last_used_at", id).await
    }

    /// The debounced activity write shared by keys and sandboxes. `table` and `column` are
    /// constants from this module, never input.
    pub(super) async fn touch(
        &self,
        table: &'static str,
        column: &'static str,
        id: &str,
    ) -> Result<bool, DbError> {
        let key = format!("{table}/{id}");
        if !self.activity.should_write(&key, Instant::now()) {
            return Ok(false);
        }
        let now = now_ms();
        let interval_ms = i64::try_from(self.activity.interval().as_millis()).unwrap_or(i64::MAX);
        let sql = format!(
            "UPDATE {table} SET {column} = $2 \
             WHERE id = $1 AND ({column} IS NULL OR {column} <= $3)"
        );
        let res = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(now)
            .bind(now.saturating_sub(interval_ms))
            .execute(&self.pool)
            .await;
        if let Err(e) = res {
            // Let the next request retry instead of losing activity for a whole interval.
            self.activity.forget(&key);
            return Err(e.into());
        }
        Ok(true)
    }
}
