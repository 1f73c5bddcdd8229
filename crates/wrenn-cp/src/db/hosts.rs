use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::error::TokenRejection;
use super::row::JsonText;
use super::{Db, DbError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Pending,
    Online,
    Unreachable,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::Online => "online",
            HostStatus::Unreachable => "unreachable",
        }
    }
}

impl TryFrom<String> for HostStatus {
    type Error = DbError;
    fn try_from(s: String) -> Result<Self, DbError> {
        [
            HostStatus::Pending,
            HostStatus::Online,
            HostStatus::Unreachable,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
        .ok_or_else(|| DbError::Corrupt(format!("host status {s:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, FromRow, utoipa::ToSchema)]
pub struct Host {
    pub id: String,
    /// `None`: a platform host; `Some`: a BYOC team's own host.
    pub team_id: Option<String>,
    pub name: String,
    /// `ip:port` of the agent's RPC listener.
    pub address: String,
    #[sqlx(try_from = "String")]
    pub status: HostStatus,
    pub last_heartbeat_at: Option<i64>,
    /// Free-form JSON (cores, memory, disk, arch ...) reported at registration.
    #[sqlx(try_from = "JsonText")]
    #[schema(value_type = Object)]
    pub specs: serde_json::Value,
    pub created_by: Option<String>,
    pub created_at: i64,
    /// Bumped when the host's credentials are revoked; control-plane → agent tokens carry it.
    pub credential_gen: i64,
    /// What the agent reported in its last heartbeat ([`HostCapacity`]); `{}` before any.
    #[sqlx(try_from = "JsonText")]
    #[schema(value_type = Object)]
    pub capacity: serde_json::Value,
    /// When that report was heard (Unix ms).
    pub capacity_at: Option<i64>,
    /// The fingerprint of the agent's TLS certificate (`sha256:…`), pinned by every call to it;
    /// `None` for an agent on loopback over plain HTTP.
    pub tls_fingerprint: Option<String>,
}

impl Host {
    /// The last capacity report, when there is a readable one.
    pub fn reported_capacity(&self) -> Option<HostCapacity> {
        serde_json::from_value(self.capacity.clone()).ok()
    }
}

/// What an agent reports with each heartbeat: its machine and what its sandboxes take of it.
/// Unknown fields are ignored (a newer agent's heartbeat must not fail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostCapacity {
    /// CPUs of the machine.
    pub vcpus: u32,
    /// vCPUs of its sandboxes with a VM (may exceed `vcpus`: overcommit).
    pub vcpus_allocated: u64,
    pub memory_mib: u64,
    /// The kernel's MemAvailable.
    pub memory_available_mib: u64,
    /// Guest memory of its sandboxes with a VM.
    pub memory_allocated_mib: u64,
    /// Free space on the agent's files root.
    pub disk_free_mib: u64,
    /// Sandboxes with a VM.
    pub sandboxes: u64,
    /// What the agent admits in total (vCPUs and guest memory after its overcommit, the free
    /// space it keeps on its files root); absent from agents that predate admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_disk_mib: Option<u64>,
}

/// A host the scheduler may place on, with what the database knows of its load.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub host: Host,
    /// Its `pending` + `running` sandboxes.
    pub active: i64,
    /// vCPUs and memory (MiB) of its sandboxes its last capacity report cannot include yet
    /// (`pending` ones, and those created since shortly before the report).
    pub unreported_vcpus: i64,
    pub unreported_memory_mib: i64,
}

pub struct NewHost<'a> {
    pub team_id: Option<&'a str>,
    pub name: &'a str,
    pub address: &'a str,
    pub specs: serde_json::Value,
    pub created_by: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct RegistrationToken {
    pub id: String,
    pub team_id: Option<String>,
    /// Set when the token was made for an existing host row.
    pub host_id: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub struct NewRegistrationToken<'a> {
    /// SHA-256 hex of the plaintext token.
    pub token_hash: &'a str,
    pub team_id: Option<&'a str>,
    pub host_id: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct RefreshToken {
    pub id: String,
    pub host_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

const HOST_COLS: &str = "id, team_id, name, address, status, last_heartbeat_at, specs, created_by, created_at, \
     credential_gen, capacity, capacity_at, tls_fingerprint";
/// id, host_id, expires_at, revoked_at, replaces_id of a refresh token.
type RefreshRow = (String, String, i64, Option<i64>, Option<String>);
/// How long a rotated refresh token stays valid (see [`Db::rotate_refresh_token`]).
pub const REFRESH_GRACE_MS: i64 = 120_000;
/// See [`Db::schedulable_hosts`].
const UNREPORTED_SLACK_MS: i64 = 5_000;
const REG_COLS: &str = "id, team_id, host_id, created_by, created_at, expires_at, used_at";
const REFRESH_COLS: &str = "id, host_id, created_at, expires_at, revoked_at";

impl Db {
    pub async fn create_host(&self, new: NewHost<'_>) -> Result<Host, DbError> {
        let host = Host {
            id: crate::ids::HostId::generate().into_string(),
            team_id: new.team_id.map(str::to_owned),
            name: new.name.to_owned(),
            address: new.address.to_owned(),
            status: HostStatus::Pending,
            last_heartbeat_at: None,
            specs: new.specs,
            created_by: new.created_by.map(str::to_owned),
            created_at: now_ms(),
            credential_gen: 1,
            capacity: serde_json::json!({}),
            capacity_at: None,
            tls_fingerprint: None,
        };
        sqlx::query(
            "INSERT INTO hosts (id, team_id, name, address, status, specs, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&host.id)
        .bind(&host.team_id)
        .bind(&host.name)
        .bind(&host.address)
        .bind(host.status.as_str())
        .bind(host.specs.to_string())
        .bind(&host.created_by)
        .bind(host.created_at)
        .execute(&self.pool)
        .await?;
        Ok(host)
    }

    pub async fn host_by_id(&self, id: &str) -> Result<Host, DbError> {
        let sql = format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Hosts owned by a BYOC team (`Some`) or the platform's hosts (`None`), oldest first.
    pub async fn list_hosts(&self, team_id: Option<&str>) -> Result<Vec<Host>, DbError> {
        let filter = if team_id.is_some() {
            "team_id = $1"
        } else {
            "team_id IS NULL"
        };
        let sql = format!("SELECT {HOST_COLS} FROM hosts WHERE {filter} ORDER BY created_at, id");
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        if let Some(t) = team_id {
            q = q.bind(t);
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Online hosts of a BYOC team (`Some`) or of the platform (`None`), each with its load,
    /// for the scheduler.
    pub async fn schedulable_hosts(
        &self,
        team_id: Option<&str>,
    ) -> Result<Vec<Candidate>, DbError> {
        let hosts: Vec<Host> = self
            .list_hosts(team_id)
            .await?
            .into_iter()
            .filter(|h| h.status == HostStatus::Online)
            .collect();
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        // A create is in the agent's report once its VM exists; rows created up to
        // UNREPORTED_SLACK_MS before the report was heard may have missed it (the agent
        // measured a moment before sending).
        let unreported = format!(
            "s.status = 'pending' OR h.capacity_at IS NULL OR s.created_at >= h.capacity_at - {UNREPORTED_SLACK_MS}"
        );
        let sql = format!(
            "SELECT s.host_id, COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN {unreported} THEN s.vcpus ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN {unreported} THEN s.memory_mb ELSE 0 END), 0) AS BIGINT) \
             FROM sandboxes s JOIN hosts h ON h.id = s.host_id \
             WHERE s.status IN ('pending', 'running') AND s.host_id IN ({}) GROUP BY s.host_id",
            super::row::Placeholders::default().list(hosts.len())
        );
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for h in &hosts {
            q = q.bind(h.id.clone());
        }
        let loads: Vec<(String, i64, i64, i64)> = q.fetch_all(&self.pool).await?;
        Ok(hosts
            .into_iter()
            .map(|host| {
                let (active, unreported_vcpus, unreported_memory_mib) = loads
                    .iter()
                    .find(|(id, ..)| *id == host.id)
                    .map_or((0, 0, 0), |(_, n, v, m)| (*n, *v, *m));
                Candidate {
                    host,
                    active,
                    unreported_vcpus,
                    unreported_memory_mib,
                }
            })
            .collect())
    }

    /// Every host, platform and team-owned, oldest first (platform-admin view).
    pub async fn list_all_hosts(&self) -> Result<Vec<Host>, DbError> {
        let sql = format!("SELECT {HOST_COLS} FROM hosts ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Completes a registration: a `pending` host becomes `online` with the agent's address,
    /// specs and (if given) name. A host that is not pending (or gone) is [`DbError::NotFound`],
    /// so a registration never overwrites a live host.
    pub async fn complete_host_registration(
        &self,
        id: &str,
        address: &str,
        specs: &serde_json::Value,
        name: Option<&str>,
        tls_fingerprint: Option<&str>,
    ) -> Result<Host, DbError> {
        let sql = format!(
            "UPDATE hosts SET status = $2, address = $3, specs = $4, \
             name = COALESCE($5, name), last_heartbeat_at = $6, tls_fingerprint = $8 \
             WHERE id = $1 AND status = $7 RETURNING {HOST_COLS}"
        );
        let h: Option<Host> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(HostStatus::Online.as_str())
            .bind(address)
            .bind(specs.to_string())
            .bind(name)
            .bind(now_ms())
            .bind(HostStatus::Pending.as_str())
            .bind(tls_fingerprint)
            .fetch_optional(&self.pool)
            .await?;
        h.ok_or(DbError::NotFound)
    }

    /// Marks every `online` host last seen before `cutoff_ms` (or never) `unreachable`, in one
    /// conditional UPDATE, so of several control-plane replicas exactly one marks each host;
    /// returns the hosts it marked.
    pub async fn mark_stale_hosts_unreachable(&self, cutoff_ms: i64) -> Result<Vec<Host>, DbError> {
        let sql = format!(
            "UPDATE hosts SET status = $1 WHERE status = $2 \
             AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $3) RETURNING {HOST_COLS}"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(HostStatus::Unreachable.as_str())
            .bind(HostStatus::Online.as_str())
            .bind(cutoff_ms)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Records a heartbeat: the host is online, seen now, with its capacity report when the
    /// beat carried one. `true` when this call brought it back from `unreachable` (one
    /// conditional UPDATE: of two replicas hearing it, one wins).
    pub async fn host_heartbeat(
        &self,
        id: &str,
        capacity: Option<&HostCapacity>,
    ) -> Result<bool, DbError> {
        let now = now_ms();
        let report = capacity
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| DbError::Corrupt(e.to_string()))?;
        let report_at = report.as_ref().map(|_| now);
        let sql = "UPDATE hosts SET status = $2, last_heartbeat_at = $3, \
                   capacity = COALESCE($4, capacity), capacity_at = COALESCE($5, capacity_at) \
                   WHERE id = $1";
        let back = sqlx::query(sqlx::AssertSqlSafe(format!("{sql} AND status = $6")))
            .bind(id)
            .bind(HostStatus::Online.as_str())
            .bind(now)
            .bind(&report)
            .bind(report_at)
            .bind(HostStatus::Unreachable.as_str())
            .execute(&self.pool)
            .await?;
        if back.rows_affected() == 1 {
            return Ok(true);
        }
        let r = sqlx::query(sql)
            .bind(id)
            .bind(HostStatus::Online.as_str())
            .bind(now)
            .bind(&report)
            .bind(report_at)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(false)
    }

    /// Claims the next reconcile pass of host `id` for `lease_ms`: `true` for the one caller
    /// (of any replica) that gets it, `false` while another's claim runs.
    pub async fn claim_host_reconcile(&self, id: &str, lease_ms: i64) -> Result<bool, DbError> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE hosts SET reconcile_lease_until = $2 WHERE id = $1 \
             AND (reconcile_lease_until IS NULL OR reconcile_lease_until <= $3)",
        )
        .bind(id)
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a heartbeat or registration: status, address and the time seen.
    pub async fn set_host_status(
        &self,
        id: &str,
        status: HostStatus,
        address: Option<&str>,
    ) -> Result<(), DbError> {
        let seen = (status == HostStatus::Online).then(now_ms);
        let r = sqlx::query(
            "UPDATE hosts SET status = $2, address = COALESCE($3, address), \
             last_heartbeat_at = COALESCE($4, last_heartbeat_at) WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(address)
        .bind(seen)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    pub async fn create_registration_token(
        &self,
        new: NewRegistrationToken<'_>,
    ) -> Result<RegistrationToken, DbError> {
        let tok = RegistrationToken {
            id: crate::ids::TokenId::generate().into_string(),
            team_id: new.team_id.map(str::to_owned),
            host_id: new.host_id.map(str::to_owned),
            created_by: new.created_by.map(str::to_owned),
            created_at: now_ms(),
            expires_at: new.expires_at,
            used_at: None,
        };
        sqlx::query(
            "INSERT INTO host_registration_tokens \
             (id, token_hash, team_id, host_id, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&tok.id)
        .bind(new.token_hash)
        .bind(&tok.team_id)
        .bind(&tok.host_id)
        .bind(&tok.created_by)
        .bind(tok.created_at)
        .bind(tok.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(tok)
    }

    /// The team a registration token registers for (`Ok(None)`: a platform host), without
    /// using it; `NotFound` when it is unknown, used or expired.
    pub async fn registration_token_team(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, DbError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT team_id FROM host_registration_tokens \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(t,)| t).ok_or(DbError::NotFound)
    }

    /// Uses a registration token exactly once. The check and the mark are one conditional
    /// UPDATE, so of two concurrent registrations with one token only one succeeds.
    pub async fn consume_registration_token(
        &self,
        token_hash: &str,
    ) -> Result<RegistrationToken, DbError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE host_registration_tokens SET used_at = $2 \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING {REG_COLS}"
        );
        let used: Option<RegistrationToken> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(t) = used {
            return Ok(t);
        }
        // Only to say why; the outcome is the same refusal.
        let sql = format!("SELECT {REG_COLS} FROM host_registration_tokens WHERE token_hash = $1");
        let row: Option<RegistrationToken> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Err(DbError::TokenRejected(match row {
            None => TokenRejection::Unknown,
            Some(t) if t.used_at.is_some() => TokenRejection::AlreadyUsed,
            Some(_) => TokenRejection::Expired,
        }))
    }

    pub async fn issue_refresh_token(
        &self,
        host_id: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<RefreshToken, DbError> {
        let tok = RefreshToken {
            id: crate::ids::TokenId::generate().into_string(),
            host_id: host_id.to_owned(),
            created_at: now_ms(),
            expires_at,
            revoked_at: None,
        };
        insert_refresh(&mut *self.pool.acquire().await?, &tok, token_hash, None).await?;
        Ok(tok)
    }

    /// The valid (not revoked, not expired) refresh token with this hash.
    pub async fn valid_refresh_token(&self, token_hash: &str) -> Result<RefreshToken, DbError> {
        let sql = format!(
            "SELECT {REFRESH_COLS} FROM host_refresh_tokens \
             WHERE token_hash = $1 AND (revoked_at IS NULL OR revoked_at > $2) AND expires_at > $2"
        );
        let t: Option<RefreshToken> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        t.ok_or(DbError::TokenRejected(TokenRejection::Unknown))
    }

    /// Rotation of the refresh token `old_hash` of host `host_id`, in one transaction:
    /// - the old token stays valid for [`REFRESH_GRACE_MS`] more (an agent that lost the
    ///   response retries with it), unless its own replacement is used first;
    /// - tokens issued earlier from the old one (lost responses) and the token the old one
    ///   replaced are revoked now, so one chain stays live;
    /// - a token presented after it was revoked (replayed after its grace, or revoked) is a
    ///   stolen or cloned credential: every refresh token of its host is revoked.
    ///
    /// A token of another host is refused untouched.
    pub async fn rotate_refresh_token(
        &self,
        host_id: &str,
        old_hash: &str,
        new_hash: &str,
        new_expires_at: i64,
    ) -> Result<RefreshToken, DbError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT id, host_id, expires_at, revoked_at, replaces_id FROM host_refresh_tokens \
             WHERE token_hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old_id, owner, expires_at, revoked_at, replaces)) = row else {
            return Err(DbError::TokenRejected(TokenRejection::Unknown));
        };
        if owner != host_id {
            return Err(DbError::TokenRejected(TokenRejection::Unknown));
        }
        if expires_at <= now {
            return Err(DbError::TokenRejected(TokenRejection::Expired));
        }
        if revoked_at.is_some_and(|r| r <= now) {
            let r = sqlx::query(
                "UPDATE host_refresh_tokens SET revoked_at = $2 \
                 WHERE host_id = $1 AND (revoked_at IS NULL OR revoked_at > $2)",
            )
            .bind(&owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if r.rows_affected() > 0 {
                tracing::warn!(host_id = %owner, revoked = r.rows_affected(), "a revoked refresh token was presented again: every refresh token of the host is revoked");
            }
            return Err(DbError::TokenRejected(TokenRejection::Revoked));
        }
        // Claim the old token (a row lock on PostgreSQL: concurrent rotations queue here);
        // its grace never grows.
        let grace_end = now.saturating_add(REFRESH_GRACE_MS);
        let claimed = sqlx::query(
            "UPDATE host_refresh_tokens SET revoked_at = CASE \
             WHEN revoked_at IS NULL OR revoked_at > $2 THEN $2 ELSE revoked_at END \
             WHERE id = $1 AND (revoked_at IS NULL OR revoked_at > $3)",
        )
        .bind(&old_id)
        .bind(grace_end)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Err(DbError::TokenRejected(TokenRejection::Revoked));
        }
        // Earlier siblings, and the parent whose grace this use ends.
        sqlx::query(
            "UPDATE host_refresh_tokens SET revoked_at = $3 \
             WHERE (replaces_id = $1 OR id = $2) AND (revoked_at IS NULL OR revoked_at > $3)",
        )
        .bind(&old_id)
        .bind(replaces.as_deref().unwrap_or(""))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let tok = RefreshToken {
            id: crate::ids::TokenId::generate().into_string(),
            host_id: owner,
            created_at: now,
            expires_at: new_expires_at,
            revoked_at: None,
        };
        insert_refresh(&mut tx, &tok, new_hash, Some(&old_id)).await?;
        tx.commit().await?;
        Ok(tok)
    }

    /// Revokes one refresh token; unknown or already revoked is [`DbError::NotFound`].
    pub async fn revoke_refresh_token(&self, token_hash: &str) -> Result<(), DbError> {
        let r = sqlx::query(
            "UPDATE host_refresh_tokens SET revoked_at = $2 \
             WHERE token_hash = $1 AND (revoked_at IS NULL OR revoked_at > $2)",
        )
        .bind(token_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Withdraws a host's credentials in one transaction: its credential generation moves on
    /// (so the agent refuses tokens the control plane signs from now on), every refresh token
    /// is revoked, and the host goes back to `pending` (its host JWT stops working and it
    /// takes no new sandboxes) until it registers again.
    pub async fn revoke_host_credentials(&self, host_id: &str) -> Result<Host, DbError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE hosts SET credential_gen = credential_gen + 1, status = $2 \
             WHERE id = $1 RETURNING {HOST_COLS}"
        );
        let h: Option<Host> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(host_id)
            .bind(HostStatus::Pending.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let h = h.ok_or(DbError::NotFound)?;
        sqlx::query(
            "UPDATE host_refresh_tokens SET revoked_at = $2 \
             WHERE host_id = $1 AND (revoked_at IS NULL OR revoked_at > $2)",
        )
        .bind(host_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(h)
    }

    /// Removes a host row: its tokens and `template_hosts` rows go with it (cascade), its
    /// sandboxes keep their rows with no host (`ON DELETE SET NULL`).
    pub async fn delete_host(&self, host_id: &str) -> Result<(), DbError> {
        let r = sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Revokes every refresh token of a host (host deleted or credential withdrawn); returns
    /// how many were not revoked yet.
    pub async fn revoke_host_refresh_tokens(&self, host_id: &str) -> Result<u64, DbError> {
        let r = sqlx::query(
            "UPDATE host_refresh_tokens SET revoked_at = $2 \
             WHERE host_id = $1 AND (revoked_at IS NULL OR revoked_at > $2)",
        )
        .bind(host_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

async fn insert_refresh(
    conn: &mut sqlx::AnyConnection,
    tok: &RefreshToken,
    token_hash: &str,
    replaces: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO host_refresh_tokens (id, host_id, token_hash, created_at, expires_at, replaces_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&tok.id)
    .bind(&tok.host_id)
    .bind(token_hash)
    .bind(tok.created_at)
    .bind(tok.expires_at)
    .bind(replaces)
    .execute(conn)
    .await?;
    Ok(())
}
