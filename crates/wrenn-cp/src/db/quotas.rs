//! Per-team quotas: what one tenant may hold at once. The platform's defaults apply unless a
//! platform admin set an override for the team (`team_quotas`, one JSON row per team).

use serde::{Deserialize, Serialize};

use super::{Db, DbError, now_ms};

/// The platform's defaults.
pub const DEFAULT_QUOTA: Quota = Quota {
    max_sandboxes: 100,
    max_vcpus: 256,
    max_memory_mb: 256 * 1024,
    max_disk_mb: 4 * 1024 * 1024,
    max_timeout_sec: 86_400,
    allow_no_timeout: false,
};

/// A team's effective limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    /// Sandboxes not stopped (pending, running, paused, missing).
    pub max_sandboxes: i64,
    /// vCPUs of its pending and running sandboxes.
    pub max_vcpus: i64,
    /// Memory (MiB) of its pending and running sandboxes.
    pub max_memory_mb: i64,
    /// Disk (MiB) of its sandboxes that are not stopped.
    pub max_disk_mb: i64,
    /// Longest `timeout_sec` a sandbox may have.
    pub max_timeout_sec: i64,
    /// Whether `timeout_sec: 0` (no deadline) is allowed.
    pub allow_no_timeout: bool,
}

/// An admin's overrides for one team; absent (or null) fields take the platform's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_sandboxes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_vcpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_memory_mb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_disk_mb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_timeout_sec: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_no_timeout: Option<bool>,
}

impl QuotaOverrides {
    /// The overrides applied to `base`.
    pub fn apply(&self, base: Quota) -> Quota {
        Quota {
            max_sandboxes: self.max_sandboxes.unwrap_or(base.max_sandboxes),
            max_vcpus: self.max_vcpus.unwrap_or(base.max_vcpus),
            max_memory_mb: self.max_memory_mb.unwrap_or(base.max_memory_mb),
            max_disk_mb: self.max_disk_mb.unwrap_or(base.max_disk_mb),
            max_timeout_sec: self.max_timeout_sec.unwrap_or(base.max_timeout_sec),
            allow_no_timeout: self.allow_no_timeout.unwrap_or(base.allow_no_timeout),
        }
    }

    /// The first negative field, if any.
    pub fn negative_field(&self) -> Option<&'static str> {
        [
            ("max_sandboxes", self.max_sandboxes),
            ("max_vcpus", self.max_vcpus),
            ("max_memory_mb", self.max_memory_mb),
            ("max_disk_mb", self.max_disk_mb),
            ("max_timeout_sec", self.max_timeout_sec),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| v < 0))
        .map(|(f, _)| f)
    }
}

/// What a team holds now, counted as [`Quota`] counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub sandboxes: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_mb: i64,
}

impl Db {
    /// The team's overrides (none set: all defaults).
    pub async fn team_quota_overrides(&self, team_id: &str) -> Result<QuotaOverrides, DbError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT quota FROM team_quotas WHERE team_id = $1")
                .bind(team_id)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Ok(QuotaOverrides::default()),
            Some((json,)) => serde_json::from_str(&json)
                .map_err(|e| DbError::Corrupt(format!("quota of team {team_id}: {e}"))),
        }
    }

    /// The team's effective quota.
    pub async fn team_quota(&self, team_id: &str) -> Result<Quota, DbError> {
        Ok(self
            .team_quota_overrides(team_id)
            .await?
            .apply(DEFAULT_QUOTA))
    }

    /// Replaces the team's overrides (empty: back to the defaults). `NotFound` without the team.
    pub async fn set_team_quota(
        &self,
        team_id: &str,
        overrides: &QuotaOverrides,
    ) -> Result<(), DbError> {
        self.team_by_id(team_id).await?;
        let json = serde_json::to_string(overrides).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM team_quotas WHERE team_id = $1")
            .bind(team_id)
            .execute(&mut *tx)
            .await?;
        if *overrides != QuotaOverrides::default() {
            sqlx::query("INSERT INTO team_quotas (team_id, quota, updated_at) VALUES ($1, $2, $3)")
                .bind(team_id)
                .bind(&json)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the team holds now.
    pub async fn team_usage(&self, team_id: &str) -> Result<Usage, DbError> {
        let (sandboxes, vcpus, memory_mb, disk_mb): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN status IN ('pending', 'running') THEN vcpus ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN status IN ('pending', 'running') THEN memory_mb ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(disk_size_mb), 0) AS BIGINT) \
             FROM sandboxes WHERE team_id = $1 AND status IN ('pending', 'running', 'paused', 'missing')",
        )
        .bind(team_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Usage {
            sandboxes,
            vcpus,
            memory_mb,
            disk_mb,
        })
    }
}
