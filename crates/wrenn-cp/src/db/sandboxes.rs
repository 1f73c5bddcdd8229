use std::collections::{BTreeMap, HashMap};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::page::{self, Keyed, Page, PageRequest};
use super::row::{Flag, Placeholders};
use super::status::SandboxStatus;
use super::{Backend, Db, DbError, ids, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Kill,
    Pause,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Kill => "kill",
            OnTimeout::Pause => "pause",
        }
    }
}

impl TryFrom<String> for OnTimeout {
    type Error = DbError;
    fn try_from(s: String) -> Result<Self, DbError> {
        match s.as_str() {
            "kill" => Ok(OnTimeout::Kill),
            "pause" => Ok(OnTimeout::Pause),
            _ => Err(DbError::Corrupt(format!("on_timeout {s:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct Sandbox {
    pub id: String,
    pub team_id: String,
    pub host_id: Option<String>,
    pub template: String,
    #[sqlx(try_from = "String")]
    pub status: SandboxStatus,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    pub timeout_sec: i64,
    /// Absolute deadline (epoch ms); `None` for no timeout.
    pub end_at: Option<i64>,
    #[sqlx(try_from = "String")]
    pub on_timeout: OnTimeout,
    pub envd_version: Option<String>,
    pub host_ip: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub last_active_at: i64,
    pub updated_at: i64,
    /// A request to it while paused resumes it first (E2B `autoResume`).
    #[sqlx(try_from = "Flag")]
    pub auto_resume: bool,
    #[sqlx(skip)]
    pub metadata: BTreeMap<String, String>,
}

impl Keyed for Sandbox {
    fn key(&self) -> (i64, &str) {
        (self.created_at, &self.id)
    }
}

pub struct NewSandbox<'a> {
    pub team_id: &'a str,
    pub host_id: Option<&'a str>,
    pub template: &'a str,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    pub timeout_sec: i64,
    pub end_at: Option<i64>,
    pub on_timeout: OnTimeout,
    pub metadata: BTreeMap<String, String>,
    /// Plaintext; stored encrypted.
    pub envd_token: Option<&'a str>,
    pub auto_resume: bool,
    /// A create's `Idempotency-Key`: unique per team ([`DbError::AlreadyExists`] otherwise).
    pub idempotency_key: Option<&'a str>,
}

/// Filters for listing; empty means no filter. Metadata pairs must all match.
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    pub statuses: Vec<SandboxStatus>,
    pub metadata: Vec<(String, String)>,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SandboxPatch<'a> {
    pub host_id: Option<&'a str>,
    pub host_ip: Option<&'a str>,
    pub envd_version: Option<&'a str>,
    pub end_at: Option<i64>,
    pub timeout_sec: Option<i64>,
    /// Plaintext; stored encrypted.
    pub envd_token: Option<&'a str>,
    /// Makes the sandbox's ports private: the proxy wants this token. Plaintext; stored
    /// encrypted.
    pub traffic_token: Option<&'a str>,
}

const COLS: &str = "id, team_id, host_id, template, status, vcpus, memory_mb, disk_size_mb, \
    timeout_sec, end_at, on_timeout, envd_version, host_ip, error, created_at, started_at, \
    last_active_at, updated_at, auto_resume";

/// The predicate of the partial index `sandboxes_team_live` (migrations/*/0009), as
/// [`status_terms`] writes it for [`SandboxStatus::LIVE`].
const LIVE_STATUSES_SQL: &str = "status IN ('pending', 'running', 'paused', 'missing')";

/// ` AND status IN (...)` for a list's status filter (nothing when empty), with the statuses as
/// literals in [`SandboxStatus::ALL`] order. Literals, not bound values: they are the enum's
/// own names, and only a literal predicate lets the databases prove that the partial index
/// `sandboxes_team_live` applies (SQLite matches it as written, PostgreSQL cannot with a
/// parameter in a generic plan). A filter within [`SandboxStatus::LIVE`] gets the index's
/// predicate as well, so it reads the index too.
fn status_terms(statuses: &[SandboxStatus]) -> String {
    fn term(set: impl Iterator<Item = SandboxStatus>) -> String {
        let quoted: Vec<String> = set.map(|s| format!("'{}'", s.as_str())).collect();
        format!("status IN ({})", quoted.join(", "))
    }
    let wanted = || {
        SandboxStatus::ALL
            .into_iter()
            .filter(|s| statuses.contains(s))
    };
    if statuses.is_empty() {
        String::new()
    } else if wanted().eq(SandboxStatus::LIVE) {
        format!(" AND {LIVE_STATUSES_SQL}")
    } else if wanted().all(|s| SandboxStatus::LIVE.contains(&s)) {
        format!(" AND {LIVE_STATUSES_SQL} AND {}", term(wanted()))
    } else {
        format!(" AND {}", term(wanted()))
    }
}

/// The SQL of one page of [`Db::list_sandboxes`] (the rows: [`COLS`] and `metadata_json`) and
/// its values.
fn page_query(team_id: &str, filter: &SandboxFilter, req: &PageRequest) -> (String, Vec<Arg>) {
    let mut ph = Placeholders::default();
    let mut args = Vec::new();
    let mut sql = format!(
        "SELECT {COLS}, metadata_json FROM sandboxes s WHERE team_id = {}",
        ph.next()
    );
    args.push(Arg::Text(team_id.to_owned()));
    sql += &status_terms(&filter.statuses);
    for (k, v) in &filter.metadata {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM sandbox_metadata m \
             WHERE m.sandbox_id = s.id AND m.key = {} AND m.value = {})",
            ph.next(),
            ph.next()
        );
        args.push(Arg::Text(k.clone()));
        args.push(Arg::Text(v.clone()));
    }
    if let Some((at, id)) = &req.after {
        sql += &format!(" AND (created_at, id) < ({}, {})", ph.next(), ph.next());
        args.push(Arg::Int(*at));
        args.push(Arg::Text(id.clone()));
    }
    sql += &format!(" ORDER BY created_at DESC, id DESC {}", req.limit_sql());
    (sql, args)
}

/// One sandbox of a [`Db::list_sandboxes`] page as the database writes it: a JSON array of
/// the columns of [`COLS`] in that order, then the metadata object (`null` when none).
#[derive(Deserialize)]
struct ListedRow {
    id: String,
    team_id: String,
    host_id: Option<String>,
    template: String,
    status: String,
    vcpus: i64,
    memory_mb: i64,
    disk_size_mb: i64,
    timeout_sec: i64,
    end_at: Option<i64>,
    on_timeout: String,
    envd_version: Option<String>,
    host_ip: Option<String>,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    last_active_at: i64,
    updated_at: i64,
    #[serde(deserialize_with = "json_flag")]
    auto_resume: bool,
    #[serde(deserialize_with = "json_metadata")]
    metadata: BTreeMap<String, String>,
}

impl TryFrom<ListedRow> for Sandbox {
    type Error = DbError;
    fn try_from(r: ListedRow) -> Result<Sandbox, DbError> {
        Ok(Sandbox {
            id: r.id,
            team_id: r.team_id,
            host_id: r.host_id,
            template: r.template,
            status: SandboxStatus::try_from(r.status)?,
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            disk_size_mb: r.disk_size_mb,
            timeout_sec: r.timeout_sec,
            end_at: r.end_at,
            on_timeout: OnTimeout::try_from(r.on_timeout)?,
            envd_version: r.envd_version,
            host_ip: r.host_ip,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            last_active_at: r.last_active_at,
            updated_at: r.updated_at,
            auto_resume: r.auto_resume,
            metadata: r.metadata,
        })
    }
}

/// A boolean column in JSON: PostgreSQL writes `true`/`false`, SQLite the INTEGER 0/1 it
/// stores (see [`Flag`]).
fn json_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a boolean or 0/1")
        }
        fn visit_bool<E: de::Error>(self, b: bool) -> Result<bool, E> {
            Ok(b)
        }
        fn visit_i64<E: de::Error>(self, i: i64) -> Result<bool, E> {
            Ok(i != 0)
        }
        fn visit_u64<E: de::Error>(self, i: u64) -> Result<bool, E> {
            Ok(i != 0)
        }
    }
    d.deserialize_any(V)
}

/// A sandbox's metadata in JSON: an object, `null` for none (PostgreSQL's aggregate of no
/// rows), or a string holding the object (what SQLite would write, were the aggregate's JSON
/// subtype not kept through the subquery).
fn json_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of strings, or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            serde_json::from_str(s).map_err(E::custom)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A value bound into dynamically built SQL.
enum Arg {
    Text(String),
    Int(i64),
}

impl Db {
    /// Inserts a new sandbox in `pending` with a fresh ID, and its metadata.
    pub async fn insert_pending_sandbox(&self, new: NewSandbox<'_>) -> Result<Sandbox, DbError> {
        let now = now_ms();
        let id = ids::sandbox_id();
        let token = new.envd_token.map(|t| self.cipher.encrypt(&id, t));
        let sb = Sandbox {
            id,
            team_id: new.team_id.to_owned(),
            host_id: new.host_id.map(str::to_owned),
            template: new.template.to_owned(),
            status: SandboxStatus::Pending,
            vcpus: new.vcpus,
            memory_mb: new.memory_mb,
            disk_size_mb: new.disk_size_mb,
            timeout_sec: new.timeout_sec,
            end_at: new.end_at,
            on_timeout: new.on_timeout,
            envd_version: None,
            host_ip: None,
            error: None,
            created_at: now,
            started_at: None,
            last_active_at: now,
            updated_at: now,
            auto_resume: new.auto_resume,
            metadata: new.metadata,
        };
        // What lists read (see migrations/*/0010); sandbox_metadata below stays the source.
        let metadata_json = serde_json::to_string(&sb.metadata)
            .map_err(|e| DbError::Corrupt(format!("sandbox metadata: {e}")))?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, \
             disk_size_mb, timeout_sec, end_at, on_timeout, envd_token_enc, created_at, \
             last_active_at, updated_at, auto_resume, idempotency_key, metadata_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18)",
        )
        .bind(&sb.id)
        .bind(&sb.team_id)
        .bind(&sb.host_id)
        .bind(&sb.template)
        .bind(sb.status.as_str())
        .bind(sb.vcpus)
        .bind(sb.memory_mb)
        .bind(sb.disk_size_mb)
        .bind(sb.timeout_sec)
        .bind(sb.end_at)
        .bind(sb.on_timeout.as_str())
        .bind(token)
        .bind(sb.created_at)
        .bind(sb.last_active_at)
        .bind(sb.updated_at)
        .bind(sb.auto_resume)
        .bind(new.idempotency_key)
        .bind(metadata_json)
        .execute(&mut *tx)
        .await?;
        for (k, v) in &sb.metadata {
            sqlx::query(
                "INSERT INTO sandbox_metadata (sandbox_id, key, value) VALUES ($1, $2, $3)",
            )
            .bind(&sb.id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(sb)
    }

    /// The sandbox if it belongs to `team_id`; another team's sandbox is
    /// [`DbError::NotFound`], exactly like a missing one.
    pub async fn get_sandbox(&self, team_id: &str, id: &str) -> Result<Sandbox, DbError> {
        let sb = self.get_sandbox_row(team_id, id).await?;
        self.with_metadata(vec![sb])
            .await?
            .pop()
            .ok_or(DbError::NotFound)
    }

    /// The team's sandbox a create with this `Idempotency-Key` made, with its metadata.
    pub async fn sandbox_by_idempotency_key(
        &self,
        team_id: &str,
        key: &str,
    ) -> Result<Sandbox, DbError> {
        let id: String = sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE team_id = $1 AND idempotency_key = $2",
        )
        .bind(team_id)
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        self.get_sandbox(team_id, &id).await
    }

    /// The row alone, without its metadata: for the hot path of the sandbox I/O routes,
    /// which only need the status and the host.
    pub async fn get_sandbox_row(&self, team_id: &str, id: &str) -> Result<Sandbox, DbError> {
        let sql = format!("SELECT {COLS} FROM sandboxes WHERE id = $1 AND team_id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(team_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Like [`Db::get_sandbox_row`] for a sandbox expected to be running, served from a
    /// cache of at most [`super::hot::HOT_ROW_TTL`] (see [`super::hot`] for when it may be
    /// stale). Only `running` rows are cached.
    pub async fn get_running_sandbox_row(
        &self,
        team_id: &str,
        id: &str,
    ) -> Result<Sandbox, DbError> {
        let now = std::time::Instant::now();
        if let Some(sb) = self.hot.get(team_id, id, now) {
            return Ok(sb);
        }
        let sb = self.get_sandbox_row(team_id, id).await?;
        if sb.status == SandboxStatus::Running {
            self.hot.put(sb.clone(), now);
        }
        Ok(sb)
    }

    /// Unscoped read, for background workers (reaper, host monitor), never for API requests.
    pub async fn get_sandbox_any_team(&self, id: &str) -> Result<Sandbox, DbError> {
        let sql = format!("SELECT {COLS} FROM sandboxes WHERE id = $1");
        let sb: Sandbox = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        self.with_metadata(vec![sb])
            .await?
            .pop()
            .ok_or(DbError::NotFound)
    }

    /// A team's sandboxes, newest first, filtered by status and metadata, one page.
    ///
    /// One query, one value: the database writes the page as JSON, each sandbox an array of
    /// `COLS` and its metadata object (see `ListedRow`). Reading the same page as rows
    /// cost ~100 GETs: through sqlx's `Any` driver every value of every row (101 × 19, and
    /// 300 × 3 for the metadata) is copied and converted a few times, and on SQLite each row is
    /// a hand-off from the connection's thread, under SQLite's process-wide allocator and
    /// page-cache locks.
    pub async fn list_sandboxes(
        &self,
        team_id: &str,
        filter: &SandboxFilter,
        req: &PageRequest,
    ) -> Result<Page<Sandbox>, DbError> {
        let (page, args) = page_query(team_id, filter, req);
        // The metadata is the row's copy (migrations/*/0010), or else sandbox_metadata's.
        let sql = match self.backend() {
            Backend::Sqlite => format!(
                "SELECT json_group_array(json_array({COLS}, COALESCE(json(metadata_json), \
                 (SELECT json_group_object(key, value) FROM sandbox_metadata m \
                 WHERE m.sandbox_id = s.id)))) FROM ({page}) s"
            ),
            Backend::Postgres => format!(
                "SELECT json_agg(json_build_array({COLS}, COALESCE(metadata_json::json, \
                 (SELECT json_object_agg(key, value) FROM sandbox_metadata m \
                 WHERE m.sandbox_id = s.id))))::text FROM ({page}) s"
            ),
        };
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        // PostgreSQL's json_agg of no rows is NULL.
        let json: Option<String> = q.fetch_one(&self.pool).await?;
        let listed: Vec<ListedRow> = match json {
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| DbError::Corrupt(format!("sandbox list page: {e}")))?,
            None => Vec::new(),
        };
        let mut rows = listed
            .into_iter()
            .map(Sandbox::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // The aggregate reads the page in its order, but only an ORDER BY would promise it.
        rows.sort_by(|a, b| b.key().cmp(&a.key()));
        Ok(page::finish(rows, req))
    }

    /// Sandboxes on a host in the given states (all states when empty), for reconciliation.
    pub async fn sandboxes_on_host(
        &self,
        host_id: &str,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<Sandbox>, DbError> {
        let mut ph = Placeholders::default();
        let mut sql = format!("SELECT {COLS} FROM sandboxes WHERE host_id = {}", ph.next());
        if !statuses.is_empty() {
            sql += &format!(" AND status IN ({})", ph.list(statuses.len()));
        }
        sql += " ORDER BY created_at, id";
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(host_id);
        for s in statuses {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        self.with_metadata(rows).await
    }

    async fn with_metadata(&self, mut rows: Vec<Sandbox>) -> Result<Vec<Sandbox>, DbError> {
        if rows.is_empty() {
            return Ok(rows);
        }
        let sql = format!(
            "SELECT sandbox_id, key, value FROM sandbox_metadata WHERE sandbox_id IN ({})",
            Placeholders::default().list(rows.len())
        );
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for r in &rows {
            q = q.bind(r.id.clone());
        }
        let meta: Vec<(String, String, String)> = q.fetch_all(&self.pool).await?;
        let mut by_id: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for (id, k, v) in meta {
            by_id.entry(id).or_default().insert(k, v);
        }
        for r in &mut rows {
            r.metadata = by_id.remove(&r.id).unwrap_or_default();
        }
        Ok(rows)
    }

    /// Moves a sandbox to `to` if the transition table allows it from its current status.
    ///
    /// One conditional UPDATE (`WHERE id = $1 AND status IN (allowed predecessors)`) in a write
    /// transaction: of concurrent conflicting requests exactly one matches the row, the others
    /// see the new status and get [`DbError::Conflict`]. `error` is recorded when `to` is
    /// `error`. Not team-scoped: API handlers check ownership with [`Db::get_sandbox`] first.
    pub async fn transition_sandbox(
        &self,
        id: &str,
        to: SandboxStatus,
        error: Option<&str>,
    ) -> Result<Sandbox, DbError> {
        let from = to.allowed_from();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut updated: Option<Sandbox> = None;
        if !from.is_empty() {
            let mut ph = Placeholders::starting_after(5);
            let sql = format!(
                "UPDATE sandboxes SET status = $2, updated_at = $3, error = COALESCE($4, error), \
                 started_at = COALESCE(started_at, $5) \
                 WHERE id = $1 AND status IN ({}) RETURNING {COLS}",
                ph.list(from.len())
            );
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(to.as_str())
                .bind(now)
                .bind(error.filter(|_| to == SandboxStatus::Error))
                .bind((to == SandboxStatus::Running).then_some(now));
            for s in from {
                q = q.bind(s.as_str());
            }
            updated = q.fetch_optional(&mut *tx).await?;
        }
        let Some(sb) = updated else {
            let current: Option<String> =
                sqlx::query_scalar("SELECT status FROM sandboxes WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match current {
                None => Err(DbError::NotFound),
                Some(s) => Err(DbError::Conflict {
                    current: SandboxStatus::try_from(s)?,
                    requested: to,
                }),
            };
        };
        tx.commit().await?;
        // After the commit: a read racing the UPDATE may have cached the old row meanwhile.
        self.hot.forget(id);
        tracing::debug!(sandbox = %id, status = %to, "sandbox transition");
        self.with_metadata(vec![sb])
            .await?
            .pop()
            .ok_or(DbError::NotFound)
    }

    /// Moves every sandbox on a host that may become `to` (e.g. `missing` when the host stops
    /// answering); returns their IDs. Same table, same conditional UPDATE as
    /// [`Db::transition_sandbox`].
    pub async fn transition_host_sandboxes(
        &self,
        host_id: &str,
        to: SandboxStatus,
    ) -> Result<Vec<String>, DbError> {
        let from = to.allowed_from();
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let mut ph = Placeholders::starting_after(3);
        let sql = format!(
            "UPDATE sandboxes SET status = $2, updated_at = $3 \
             WHERE host_id = $1 AND status IN ({}) RETURNING id",
            ph.list(from.len())
        );
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(host_id)
            .bind(to.as_str())
            .bind(now_ms());
        for s in from {
            q = q.bind(s.as_str());
        }
        let ids: Vec<String> = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        self.hot.clear();
        Ok(ids)
    }

    /// Changes the given fields (not the status: that is [`Db::transition_sandbox`]).
    pub async fn update_sandbox(&self, id: &str, patch: SandboxPatch<'_>) -> Result<(), DbError> {
        let token = patch.envd_token.map(|t| self.cipher.encrypt(id, t));
        let traffic = patch
            .traffic_token
            .map(|t| self.cipher.encrypt(&traffic_aad(id), t));
        let r = sqlx::query(
            "UPDATE sandboxes SET host_id = COALESCE($2, host_id), host_ip = COALESCE($3, host_ip), \
             envd_version = COALESCE($4, envd_version), end_at = COALESCE($5, end_at), \
             timeout_sec = COALESCE($6, timeout_sec), \
             envd_token_enc = COALESCE($7, envd_token_enc), \
             traffic_token_enc = COALESCE($9, traffic_token_enc), updated_at = $8 WHERE id = $1",
        )
        .bind(id)
        .bind(patch.host_id)
        .bind(patch.host_ip)
        .bind(patch.envd_version)
        .bind(patch.end_at)
        .bind(patch.timeout_sec)
        .bind(token)
        .bind(now_ms())
        .bind(traffic)
        .execute(&self.pool)
        .await?;
        self.hot.forget(id);
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Sets the timeout and the absolute deadline (`None`: no deadline), which
    /// [`Db::update_sandbox`] cannot clear.
    pub async fn set_sandbox_deadline(
        &self,
        id: &str,
        timeout_sec: i64,
        end_at: Option<i64>,
    ) -> Result<(), DbError> {
        let r = sqlx::query(
            "UPDATE sandboxes SET timeout_sec = $2, end_at = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(timeout_sec)
        .bind(end_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.hot.forget(id);
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// The sandbox's envd access token, decrypted; `None` when none was set.
    pub async fn sandbox_envd_token(&self, id: &str) -> Result<Option<String>, DbError> {
        let enc: Option<String> =
            sqlx::query_scalar("SELECT envd_token_enc FROM sandboxes WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        enc.map(|e| self.cipher.decrypt(id, &e)).transpose()
    }

    /// The sandbox's traffic access token, decrypted; `None` when its ports are public.
    pub async fn sandbox_traffic_token(&self, id: &str) -> Result<Option<String>, DbError> {
        let enc: Option<String> =
            sqlx::query_scalar("SELECT traffic_token_enc FROM sandboxes WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        enc.map(|e| self.cipher.decrypt(&traffic_aad(id), &e))
            .transpose()
    }

    /// Records activity on the sandbox, debounced (see [`super::debounce`]). Returns whether an
    /// UPDATE was sent.
    pub async fn touch_sandbox(&self, id: &str) -> Result<bool, DbError> {
        self.touch("sandboxes", "last_active_at", id).await
    }
}

/// The associated data of a traffic token's ciphertext: bound to the sandbox and the purpose,
/// so an envd token's ciphertext can never be read as a traffic token.
fn traffic_aad(id: &str) -> String {
    format!("{id}/traffic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxStatus::*;

    #[test]
    fn status_terms_are_canonical_literals() {
        let live = format!(" AND {LIVE_STATUSES_SQL}");
        assert_eq!(status_terms(&[]), "");
        assert_eq!(status_terms(&SandboxStatus::LIVE), live);
        // E2B's order, and repeats: the same term.
        assert_eq!(
            status_terms(&[Missing, Paused, Running, Pending, Running]),
            live
        );
        assert_eq!(
            status_terms(&[Running, Pending]),
            format!("{live} AND status IN ('pending', 'running')")
        );
        assert_eq!(
            status_terms(&[Stopped, Running]),
            " AND status IN ('running', 'stopped')"
        );
        assert_eq!(
            status_terms(&SandboxStatus::ALL),
            " AND status IN ('pending', 'running', 'paused', 'stopped', 'error', 'missing')"
        );
    }

    #[test]
    fn migrations_have_the_live_predicate() {
        for sql in [
            include_str!("../../../../migrations/sqlite/0009_sandboxes_team_live.sql"),
            include_str!("../../../../migrations/postgres/0009_sandboxes_team_live.sql"),
        ] {
            assert!(sql.contains(LIVE_STATUSES_SQL), "{sql}");
        }
    }

    /// The plan of a page, on a fresh database (PostgreSQL has no statistics yet: the case
    /// where it used to sort all of a team's sandboxes for every page).
    async fn plan(db: &Db, filter: &SandboxFilter, req: &PageRequest) -> String {
        let (sql, args) = page_query("t", filter, req);
        let explain = match db.backend() {
            Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
            Backend::Postgres => format!("EXPLAIN {sql}"),
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(explain));
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&db.pool).await.unwrap();
        let col = match db.backend() {
            Backend::Sqlite => 3,
            Backend::Postgres => 0,
        };
        rows.iter()
            .map(|r| sqlx::Row::get::<String, _>(r, col))
            .collect::<Vec<_>>()
            .join("\n")
    }

    crate::db_test! {
        async fn live_pages_read_the_live_index(db) {
            let first = PageRequest::first(100).unwrap();
            let later = PageRequest { after: Some((1, "x".repeat(20))), ..first.clone() };
            for statuses in [SandboxStatus::LIVE.to_vec(), vec![Running], vec![Missing, Paused]] {
                for req in [&first, &later] {
                    let filter = SandboxFilter { statuses: statuses.clone(), metadata: vec![] };
                    let plan = plan(&db, &filter, req).await;
                    assert!(plan.contains("sandboxes_team_live"), "{statuses:?}: {plan}");
                    assert!(!plan.contains("Sort") && !plan.contains("TEMP B-TREE"), "{statuses:?}: {plan}");
                }
            }
        }
    }
}
