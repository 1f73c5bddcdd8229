use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::page::{self, Keyed, Page, PageRequest};
use super::row::JsonText;
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    ApiKey,
    Host,
    System,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::ApiKey => "api_key",
            ActorType::Host => "host",
            ActorType::System => "system",
        }
    }
}

impl TryFrom<String> for ActorType {
    type Error = DbError;
    fn try_from(s: String) -> Result<Self, DbError> {
        [
            ActorType::User,
            ActorType::ApiKey,
            ActorType::Host,
            ActorType::System,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| DbError::Corrupt(format!("actor type {s:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub team_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub actor_type: ActorType,
    pub actor_id: Option<String>,
    /// e.g. `sandbox.create`, `api_key.revoke`.
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    #[sqlx(try_from = "JsonText")]
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub created_at: i64,
}

impl Keyed for AuditEntry {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

pub struct NewAuditEntry<'a> {
    pub team_id: Option<&'a str>,
    pub actor_type: ActorType,
    pub actor_id: Option<&'a str>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<&'a str>,
    pub details: serde_json::Value,
}

const COLS: &str =
    "id, team_id, actor_type, actor_id, action, target_type, target_id, details, created_at";

impl Db {
    /// [`Db::append_audit`] where the action has happened whatever the log says: a failed
    /// write is logged (with the entry's action and target), not returned.
    pub async fn record_audit(&self, new: NewAuditEntry<'_>) {
        let (action, target_type) = (new.action.to_owned(), new.target_type.to_owned());
        let target_id = new.target_id.map(str::to_owned);
        if let Err(e) = self.append_audit(new).await {
            tracing::error!(error = %e, action, target_type, target_id = ?target_id, "could not write audit entry");
        }
    }

    pub async fn append_audit(&self, new: NewAuditEntry<'_>) -> Result<AuditEntry, DbError> {
        let e = AuditEntry {
            id: crate::ids::AuditLogId::generate().into_string(),
            team_id: new.team_id.map(str::to_owned),
            actor_type: new.actor_type,
            actor_id: new.actor_id.map(str::to_owned),
            action: new.action.to_owned(),
            target_type: new.target_type.to_owned(),
            target_id: new.target_id.map(str::to_owned),
            details: new.details,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO audit_log (id, team_id, actor_type, actor_id, action, target_type, \
             target_id, details, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.id)
        .bind(&e.team_id)
        .bind(e.actor_type.as_str())
        .bind(&e.actor_id)
        .bind(&e.action)
        .bind(&e.target_type)
        .bind(&e.target_id)
        .bind(e.details.to_string())
        .bind(e.created_at)
        .execute(&self.pool)
        .await?;
        Ok(e)
    }

    /// Every team's audit entries (and the platform's, `team_id` null), newest first.
    pub async fn list_audit_all(&self, req: &PageRequest) -> Result<Page<AuditEntry>, DbError> {
        page::whole_table(&self.pool, COLS, "audit_log", req).await
    }

    /// The team's audit entries, newest first.
    pub async fn list_audit(
        &self,
        team_id: &str,
        req: &PageRequest,
    ) -> Result<Page<AuditEntry>, DbError> {
        let (cursor_sql, after) = match &req.after {
            Some((at, id)) => ("AND (created_at, id) < ($3, $4)", Some((*at, id.as_str()))),
            None => ("", None),
        };
        let sql = format!(
            "SELECT {COLS} FROM audit_log WHERE team_id = $1 {cursor_sql} \
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
}
