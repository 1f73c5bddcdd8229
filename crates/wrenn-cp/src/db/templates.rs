use serde::Serialize;
use sqlx::FromRow;

use super::row::{Flag, JsonText};
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct Template {
    pub id: String,
    /// `None`: a platform template, visible to every team.
    pub team_id: Option<String>,
    pub name: String,
    pub default_user: String,
    /// JSON object of environment variables.
    #[sqlx(try_from = "JsonText")]
    pub default_env: serde_json::Value,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    #[sqlx(try_from = "Flag")]
    pub is_snapshot: bool,
    pub size_bytes: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The sandbox a snapshot template was made from.
    pub source_sandbox_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub name: String,
    pub default_user: String,
    pub default_env: serde_json::Value,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    pub is_snapshot: bool,
    pub size_bytes: i64,
}

const COLS: &str = "id, team_id, name, default_user, default_env, vcpus, memory_mb, \
    disk_size_mb, is_snapshot, size_bytes, created_at, updated_at, source_sandbox_id";

impl Db {
    /// Creates the template, or updates the one with the same name in the same scope
    /// (platform when `team_id` is `None`); the ID of an existing row is kept.
    pub async fn upsert_template(
        &self,
        team_id: Option<&str>,
        spec: &TemplateSpec,
    ) -> Result<Template, DbError> {
        // One partial unique index per scope (NULL team IDs never collide), so the conflict
        // target names the scope's index predicate.
        let target = if team_id.is_some() {
            "(team_id, name) WHERE team_id IS NOT NULL"
        } else {
            "(name) WHERE team_id IS NULL"
        };
        let sql = format!(
            "INSERT INTO templates (id, team_id, name, default_user, default_env, vcpus, \
             memory_mb, disk_size_mb, is_snapshot, size_bytes, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
             ON CONFLICT {target} DO UPDATE SET default_user = excluded.default_user, \
             default_env = excluded.default_env, vcpus = excluded.vcpus, \
             memory_mb = excluded.memory_mb, disk_size_mb = excluded.disk_size_mb, \
             is_snapshot = excluded.is_snapshot, size_bytes = excluded.size_bytes, \
             updated_at = excluded.updated_at \
             RETURNING {COLS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(crate::ids::TemplateId::generate().into_string())
            .bind(team_id)
            .bind(&spec.name)
            .bind(&spec.default_user)
            .bind(spec.default_env.to_string())
            .bind(spec.vcpus)
            .bind(spec.memory_mb)
            .bind(spec.disk_size_mb)
            .bind(spec.is_snapshot)
            .bind(spec.size_bytes)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates the platform template `spec.name` unless it exists (an existing row, possibly
    /// changed by an operator, is left alone). Run at every server start.
    pub async fn ensure_platform_template(&self, spec: &TemplateSpec) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO templates (id, team_id, name, default_user, default_env, vcpus, \
             memory_mb, disk_size_mb, is_snapshot, size_bytes, created_at, updated_at) \
             VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (name) WHERE team_id IS NULL DO NOTHING",
        )
        .bind(crate::ids::TemplateId::generate().into_string())
        .bind(&spec.name)
        .bind(&spec.default_user)
        .bind(spec.default_env.to_string())
        .bind(spec.vcpus)
        .bind(spec.memory_mb)
        .bind(spec.disk_size_mb)
        .bind(spec.is_snapshot)
        .bind(spec.size_bytes)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Platform templates plus the team's own, by name.
    pub async fn templates_visible_to(&self, team_id: &str) -> Result<Vec<Template>, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE team_id IS NULL OR team_id = $1 \
             ORDER BY name, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The template a team means by `name`: its own first, then the platform's.
    pub async fn template_for_team(&self, team_id: &str, name: &str) -> Result<Template, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE name = $2 AND (team_id IS NULL OR team_id = $1) \
             ORDER BY CASE WHEN team_id IS NULL THEN 1 ELSE 0 END LIMIT 1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Records that `host_id` holds the template (idempotent).
    pub async fn add_template_host(&self, template_id: &str, host_id: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO template_hosts (template_id, host_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (template_id, host_id) DO NOTHING",
        )
        .bind(template_id)
        .bind(host_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_template_host(
        &self,
        template_id: &str,
        host_id: &str,
    ) -> Result<(), DbError> {
        sqlx::query("DELETE FROM template_hosts WHERE template_id = $1 AND host_id = $2")
            .bind(template_id)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// IDs of the hosts holding the template.
    pub async fn template_hosts(&self, template_id: &str) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT host_id FROM template_hosts WHERE template_id = $1 ORDER BY host_id",
        )
        .bind(template_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates the team's template `spec.name`; `AlreadyExists` when the team has one by that
    /// name. A snapshot's row is written before the host makes it, so the name is taken once.
    pub async fn insert_team_template(
        &self,
        team_id: &str,
        spec: &TemplateSpec,
    ) -> Result<Template, DbError> {
        let sql = format!(
            "INSERT INTO templates (id, team_id, name, default_user, default_env, vcpus, \
             memory_mb, disk_size_mb, is_snapshot, size_bytes, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {COLS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(crate::ids::TemplateId::generate().into_string())
            .bind(team_id)
            .bind(&spec.name)
            .bind(&spec.default_user)
            .bind(spec.default_env.to_string())
            .bind(spec.vcpus)
            .bind(spec.memory_mb)
            .bind(spec.disk_size_mb)
            .bind(spec.is_snapshot)
            .bind(spec.size_bytes)
            .bind(now_ms())
            .fetch_one(&self.pool)
            .await?)
    }

    /// The platform template `name`, if there is one.
    pub async fn platform_template(&self, name: &str) -> Result<Template, DbError> {
        let sql = format!("SELECT {COLS} FROM templates WHERE team_id IS NULL AND name = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The team's own snapshot template `name` (never a platform template).
    pub async fn team_snapshot(&self, team_id: &str, name: &str) -> Result<Template, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE team_id = $1 AND name = $2 AND is_snapshot = $3"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(name)
            .bind(true)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The team's snapshot templates, by name.
    pub async fn team_snapshots(&self, team_id: &str) -> Result<Vec<Template>, DbError> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE team_id = $1 AND is_snapshot = $2 \
             ORDER BY name, id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(team_id)
            .bind(true)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Records what a host made: the snapshot's size and the sandbox it came from.
    pub async fn record_snapshot(
        &self,
        id: &str,
        size_bytes: i64,
        source_sandbox_id: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE templates SET size_bytes = $2, source_sandbox_id = $3, updated_at = $4 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(size_bytes)
        .bind(source_sandbox_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the template row (its `template_hosts` rows go with it).
    pub async fn delete_template(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// IDs of the team's sandboxes that still use template `name`: every status but
    /// `stopped` and `error`, oldest first.
    pub async fn template_dependants(
        &self,
        team_id: &str,
        name: &str,
    ) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE team_id = $1 AND template = $2 \
             AND status IN ('pending', 'running', 'paused', 'missing') ORDER BY created_at, id",
        )
        .bind(team_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await?)
    }
}
