//! The public sandboxes API (`/v1/sandboxes`, `/v1/templates`): team-scoped, API key or user
//! JWT; another team's sandbox is a 404 like a missing one.
//!
//! A create's path: validate every field (400 before anything is read or written) → template
//! → scheduler picks a host → `pending` row → agent `CreateSandbox` (boots the VM, waits for
//! envd) → `running` with the host IP and the encrypted envd token → 201. The work after
//! validation runs in its own task that the handler awaits, so a client that hangs up mid-boot
//! can neither leave a `pending` row behind nor an orphan VM.
//!
//! Sandbox I/O routes (exec, processes, PTY, files) live in sibling modules and reach a
//! sandbox's agent through [`running`].

pub mod exec;
pub mod files;
pub mod guest;
pub mod process;
pub mod pty;
mod reconcile;
pub mod snapshots;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::Schema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use wrenn_proto::hostagent::v1 as pb;

use super::{State, db_err, db_err_for};
use crate::agents::{Agent, AgentError};
use crate::auth::extract::TeamAuth;
use crate::db::{
    ActorType, Db, DbError, Host, NewAuditEntry, NewSandbox, OnTimeout, PageRequest, Quota,
    Sandbox, SandboxFilter, SandboxPatch, SandboxStatus, Template, TemplateSpec, now_ms,
};
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ids::SandboxId;
use crate::scheduler::Need;
use crate::server::AppState;

pub use reconcile::{LostCreates, RECONCILE_INTERVAL, reconcile_host, run_reconciler};

/// The platform template every installation has.
pub const BASE_TEMPLATE: &str = "base";
pub const MAX_VCPUS: i64 = 8;
pub const MIN_MEMORY_MB: i64 = 128;
pub const MAX_MEMORY_MB: i64 = 16_384;
pub const MAX_DISK_MB: i64 = 65_536;
/// One day; 0 means no deadline.
pub const MAX_TIMEOUT_SEC: i64 = 86_400;
pub const DEFAULT_TIMEOUT_SEC: i64 = 300;
pub const MAX_MAP_ENTRIES: usize = 64;
pub const MAX_ENV_KEY_LEN: usize = 128;
pub const MAX_ENV_VALUE_LEN: usize = 4096;
pub const MAX_METADATA_KEY_LEN: usize = 64;
pub const MAX_METADATA_VALUE_LEN: usize = 512;
/// A create boots a VM and waits for envd: seconds with KVM, up to a minute under TCG on a
/// busy host.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// The `base` template's row: what `wrenn image build` makes (1 vCPU, 512 MiB, 5 GiB disk).
pub fn base_template_spec() -> TemplateSpec {
    TemplateSpec {
        name: BASE_TEMPLATE.into(),
        default_user: "user".into(),
        default_env: serde_json::json!({}),
        vcpus: 1,
        memory_mb: 512,
        disk_size_mb: 5120,
        is_snapshot: false,
        size_bytes: 0,
    }
}

/// Makes sure the platform templates exist (idempotent; run at server start).
pub async fn ensure_platform_templates(db: &Db) -> Result<(), DbError> {
    db.ensure_platform_template(&base_template_spec()).await
}

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, destroy))
        .routes(routes!(keepalive))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(list_templates))
        .routes(routes!(snapshots::create, snapshots::list))
        .routes(routes!(snapshots::delete))
        .routes(routes!(exec::exec))
        .routes(routes!(exec::exec_stream))
        .routes(routes!(process::start, process::list))
        .routes(routes!(process::signal))
        .routes(routes!(process::attach))
        .routes(routes!(pty::pty))
        // The one route without a body limit: uploads stream straight to the agent.
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::download, files::remove))
        .routes(routes!(files::list))
        .routes(routes!(files::mkdir))
}

/// A sandbox as the API shows it (never its envd token).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxView {
    /// 20 characters of `[a-z0-9]`.
    pub id: String,
    /// `pending`, `running`, `paused`, `stopped`, `error` or `missing`.
    pub status: String,
    pub template: String,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    /// 0: no deadline.
    pub timeout_sec: i64,
    /// Absolute deadline, Unix ms; null when none.
    pub end_at: Option<i64>,
    /// `kill` or `pause`.
    pub on_timeout: String,
    pub host_id: Option<String>,
    /// Where the host reaches the sandbox's envd.
    pub host_ip: Option<String>,
    pub envd_version: Option<String>,
    /// Why the sandbox is in `error`.
    pub error: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// A request through the sandbox proxy resumes it when paused.
    pub auto_resume: bool,
    /// Only in the create response of a sandbox made with `public_traffic: false`: the token
    /// its ports want through the proxy (`E2b-Traffic-Access-Token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub last_active_at: i64,
}

impl From<Sandbox> for SandboxView {
    fn from(s: Sandbox) -> Self {
        SandboxView {
            id: s.id,
            status: s.status.as_str().to_owned(),
            template: s.template,
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            disk_size_mb: s.disk_size_mb,
            timeout_sec: s.timeout_sec,
            end_at: s.end_at,
            on_timeout: s.on_timeout.as_str().to_owned(),
            host_id: s.host_id,
            host_ip: s.host_ip,
            envd_version: s.envd_version,
            error: s.error,
            metadata: s.metadata,
            auto_resume: s.auto_resume,
            traffic_access_token: None,
            created_at: s.created_at,
            started_at: s.started_at,
            last_active_at: s.last_active_at,
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Default `base`. A template that does not exist is a 404.
    #[schema(pattern = "^[a-z0-9._-]{1,64}$")]
    pub template: Option<String>,
    /// 1–8; default: the template's (a snapshot template's is fixed: another value is a 409).
    #[schema(minimum = 1, maximum = 8)]
    pub vcpus: Option<i64>,
    /// 128–16384; default: the template's (fixed for a snapshot template).
    #[schema(minimum = 128, maximum = 16384)]
    pub memory_mb: Option<i64>,
    /// Up to 65536; default: the template's. Less than the template's disk is a 409.
    #[schema(minimum = 1, maximum = 65536)]
    pub disk_size_mb: Option<i64>,
    /// 0–86400; 0 = no deadline. Default 300. Past the team's quota (`max_timeout_sec`, or 0
    /// without `allow_no_timeout`) it is a 403.
    #[schema(minimum = 0, maximum = 86400)]
    pub timeout_sec: Option<i64>,
    /// `kill` (default) or `pause`.
    #[schema(pattern = "^(kill|pause)$")]
    pub on_timeout: Option<String>,
    /// Environment of every process in the sandbox.
    #[schema(schema_with = env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    #[schema(schema_with = metadata_schema)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Default false: the sandbox reaches nothing outside its host. True: public addresses,
    /// never private, carrier-grade NAT, link-local (the cloud metadata service), loopback,
    /// multicast or reserved ones unless `allow_out` opens them.
    pub allow_internet: Option<bool>,
    /// Networks the sandbox may reach anyway (`a.b.c.d` or `a.b.c.d/n`, at most 64): also
    /// without `allow_internet` (then only these), and over `deny_out`. Private, carrier-grade
    /// NAT and link-local networks may be opened only by a BYOC team (its sandboxes run on
    /// its own hosts); "this network", loopback, multicast and reserved never. Either is a 403.
    #[schema(schema_with = allow_out_schema)]
    pub allow_out: Option<Vec<String>>,
    /// Networks the sandbox may not reach with `allow_internet` (same forms, at most 64).
    #[schema(schema_with = deny_out_schema)]
    pub deny_out: Option<Vec<String>>,
    /// Default false. True: a request that reaches it while paused (through the sandbox
    /// proxy or an E2B `connect`) resumes it first.
    pub auto_resume: Option<bool>,
    /// Default true. False: requests to its ports through the sandbox proxy (all but envd's)
    /// need its traffic access token (`E2b-Traffic-Access-Token` header).
    pub public_traffic: Option<bool>,
}

/// A create request after validation.
#[derive(Debug, Clone)]
struct CreateSpec {
    team_id: String,
    template: String,
    vcpus: i64,
    memory_mb: i64,
    disk_size_mb: i64,
    timeout_sec: i64,
    on_timeout: OnTimeout,
    env: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    egress: wrenn_egress::Egress,
    /// The snapshot template's ID when the sandbox starts from one (placed on its hosts).
    snapshot: Option<String>,
    auto_resume: bool,
    /// The E2B `Idempotency-Key` of the request, if any.
    idempotency_key: Option<String>,
    public_traffic: bool,
}

/// A string map (or null) as [`check_env`] / [`check_metadata`] accept it.
fn string_map_schema(key: &str, value: &str, max_value: usize, description: &str) -> Schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(value))
        .max_length(Some(max_value));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(description))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(key)),
        ))
        .additional_properties(Some(value))
        .max_properties(Some(MAX_MAP_ENTRIES))
        .into()
}

/// `env`: keys `[A-Za-z_][A-Za-z0-9_]*` (≤ 128), values without NUL (≤ 4096), ≤ 64 entries.
pub(crate) fn env_schema() -> Schema {
    string_map_schema(
        "^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        "^[^\\x00]*$",
        MAX_ENV_VALUE_LEN,
        "Environment variables: keys `[A-Za-z_][A-Za-z0-9_]*`, values without NUL",
    )
}

/// Metadata keys: 1–64 of `[A-Za-z0-9_.:/-]`.
pub const METADATA_KEY_PATTERN: &str = "^[A-Za-z0-9_.:/-]{1,64}$";
/// Metadata values: no control characters (`char::is_control`: C0, DEL and C1).
pub const METADATA_VALUE_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";

/// `metadata`: keys 1–64 of `[A-Za-z0-9_.:/-]`, values without control characters (≤ 512),
/// ≤ 64 entries.
pub(crate) fn metadata_schema() -> Schema {
    string_map_schema(
        METADATA_KEY_PATTERN,
        METADATA_VALUE_PATTERN,
        MAX_METADATA_VALUE_LEN,
        "Labels: keys 1–64 of `[A-Za-z0-9_.:/-]`, values without control characters",
    )
}

/// An IPv4 address or network, `a.b.c.d` or `a.b.c.d/n`.
const NET_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}\
    (25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?$";

/// A list (or null) of [`NET_PATTERN`]s, at most [`wrenn_egress::MAX_RULES`].
fn net_list_schema(description: &str) -> Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NET_PATTERN)),
        )
        .max_items(Some(wrenn_egress::MAX_RULES))
        .description(Some(description))
        .into()
}

fn allow_out_schema() -> Schema {
    net_list_schema(
        "Networks the sandbox may reach anyway (`a.b.c.d` or `a.b.c.d/n`): also without \
         `allow_internet` (then only these), and over `deny_out`. Private, carrier-grade NAT \
         and link-local networks may be opened only by a BYOC team; \"this network\", \
         loopback, multicast and reserved never (either is a 403).",
    )
}

fn deny_out_schema() -> Schema {
    net_list_schema("Networks the sandbox may not reach with `allow_internet`.")
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_request(msg.into())
}

fn in_range(field: &str, v: i64, min: i64, max: i64) -> Result<i64, ApiError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(bad(format!("{field} must be between {min} and {max}")))
    }
}

fn is_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_metadata_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_METADATA_KEY_LEN
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/' | b':'))
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_MAP_ENTRIES {
        return Err(bad(format!(
            "env may have at most {MAX_MAP_ENTRIES} entries"
        )));
    }
    for (k, v) in env {
        if k.len() > MAX_ENV_KEY_LEN || !is_env_key(k) {
            return Err(bad(format!(
                "env keys must match [A-Za-z_][A-Za-z0-9_]* and be at most {MAX_ENV_KEY_LEN} bytes"
            )));
        }
        // Characters, as the document's maxLength counts them.
        if v.chars().count() > MAX_ENV_VALUE_LEN || v.contains('\0') {
            return Err(bad(format!(
                "env.{k} must be at most {MAX_ENV_VALUE_LEN} characters without NUL"
            )));
        }
    }
    Ok(())
}

fn check_metadata(meta: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if meta.len() > MAX_MAP_ENTRIES {
        return Err(bad(format!(
            "metadata may have at most {MAX_MAP_ENTRIES} entries"
        )));
    }
    for (k, v) in meta {
        if !is_metadata_key(k) {
            return Err(bad(format!(
                "metadata keys must be 1 to {MAX_METADATA_KEY_LEN} characters of [A-Za-z0-9_.:/-]"
            )));
        }
        if v.chars().count() > MAX_METADATA_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(bad(format!(
                "metadata.{k} must be at most {MAX_METADATA_VALUE_LEN} characters without control characters"
            )));
        }
    }
    Ok(())
}

fn check_template_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(bad("template must be 1 to 64 characters of [a-z0-9._-]"))
    }
}

fn check_timeout(v: i64) -> Result<i64, ApiError> {
    in_range("timeout_sec", v, 0, MAX_TIMEOUT_SEC)
}

/// A timeout the team's quota allows: at most its `max_timeout_sec`, and 0 (no deadline)
/// only with `allow_no_timeout`. A well-formed value the team's policy refuses is a 403, not
/// a 400: the same request is fine for another team.
fn check_timeout_quota(q: &Quota, timeout_sec: i64) -> Result<(), ApiError> {
    if timeout_sec == 0 && !q.allow_no_timeout {
        return Err(ApiError::forbidden(
            "timeout_sec 0 (no deadline) is not allowed for this team; give a timeout",
        ));
    }
    if timeout_sec > q.max_timeout_sec {
        return Err(ApiError::forbidden(format!(
            "timeout_sec is over this team's maximum of {} s",
            q.max_timeout_sec
        )));
    }
    Ok(())
}

/// 429 `quota_exceeded` unless the team can take `vcpus`/`memory_mb` more running, and (for a
/// new sandbox, `new_disk_mb`) one more sandbox and that much disk. Counted from the rows, so
/// concurrent creates may pass the last slot together: a bound, not an exact ledger.
pub(crate) async fn check_quota(
    st: &AppState,
    q: &Quota,
    team_id: &str,
    vcpus: i64,
    memory_mb: i64,
    new_disk_mb: Option<i64>,
) -> Result<(), ApiError> {
    let u = st.db.team_usage(team_id).await.map_err(db_err)?;
    let over = |what: &str, used: i64, more: i64, max: i64| {
        (used.saturating_add(more) > max).then(|| {
            ApiError::new(
                crate::error::ErrorCode::QuotaExceeded,
                format!("the team's quota of {max} {what} would be exceeded ({used} in use)"),
            )
        })
    };
    let checks = [
        over("vCPUs", u.vcpus, vcpus, q.max_vcpus),
        over("MiB of memory", u.memory_mb, memory_mb, q.max_memory_mb),
        new_disk_mb.and_then(|_| over("sandboxes", u.sandboxes, 1, q.max_sandboxes)),
        new_disk_mb.and_then(|d| over("MiB of disk", u.disk_mb, d, q.max_disk_mb)),
    ];
    match checks.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Everything a create needs checked, the template included; reads nothing else.
async fn validate_create(
    db: &Db,
    team_id: &str,
    req: CreateSandbox,
) -> Result<CreateSpec, ApiError> {
    let template = req.template.unwrap_or_else(|| BASE_TEMPLATE.into());
    check_template_name(&template)?;
    // Fields that need no template first, so a bad request never costs a query.
    if let Some(v) = req.vcpus {
        in_range("vcpus", v, 1, MAX_VCPUS)?;
    }
    if let Some(v) = req.memory_mb {
        in_range("memory_mb", v, MIN_MEMORY_MB, MAX_MEMORY_MB)?;
    }
    if let Some(v) = req.disk_size_mb {
        in_range("disk_size_mb", v, 1, MAX_DISK_MB)?;
    }
    let timeout_sec = check_timeout(req.timeout_sec.unwrap_or(DEFAULT_TIMEOUT_SEC))?;
    let on_timeout = match req.on_timeout.as_deref() {
        None | Some("kill") => OnTimeout::Kill,
        Some("pause") => OnTimeout::Pause,
        Some(_) => return Err(bad("on_timeout must be kill or pause")),
    };
    let env = req.env.unwrap_or_default();
    check_env(&env)?;
    let metadata = req.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let egress = check_egress(
        req.allow_internet.unwrap_or(false),
        req.allow_out.as_deref().unwrap_or_default(),
        req.deny_out.as_deref().unwrap_or_default(),
    )?;
    let tpl: Template = db
        .template_for_team(team_id, &template)
        .await
        .map_err(|e| match e {
            // The name is well formed; whether it exists is state, not shape: 404.
            DbError::NotFound => ApiError::not_found(&format!("template {template:?}")),
            e => db_err(e),
        })?;
    if tpl.is_snapshot {
        // A snapshot's memory and devices are of one machine: clones are exactly that machine.
        let fixed = [
            ("vcpus", req.vcpus, tpl.vcpus),
            ("memory_mb", req.memory_mb, tpl.memory_mb),
            ("disk_size_mb", req.disk_size_mb, tpl.disk_size_mb),
        ];
        if let Some((field, _, want)) = fixed
            .iter()
            .find(|(_, got, want)| got.is_some_and(|g| g != *want))
        {
            // In range, but in conflict with the template as it is: 409, like the disk below.
            return Err(ApiError::conflict(format!(
                "{field} of snapshot template {template:?} is fixed at {want} \
                 ({} vCPUs, {} MiB memory, {} MiB disk)",
                tpl.vcpus, tpl.memory_mb, tpl.disk_size_mb
            )));
        }
    }
    let disk_size_mb = req.disk_size_mb.unwrap_or(tpl.disk_size_mb);
    if disk_size_mb < tpl.disk_size_mb {
        return Err(ApiError::conflict(format!(
            "disk_size_mb must be at least the template's {} MiB",
            tpl.disk_size_mb
        )));
    }
    let closed = egress.opens_closed();
    if !closed.is_empty() {
        let team = db.team_by_id(team_id).await.map_err(db_err)?;
        if !team.is_byoc {
            return Err(ApiError::forbidden(format!(
                "allow_out: {} is behind the host (private, carrier-grade NAT or link-local); \
                 only a team running sandboxes on its own hosts (BYOC) may open such networks",
                closed[0]
            )));
        }
    }
    Ok(CreateSpec {
        team_id: team_id.to_owned(),
        template,
        vcpus: req.vcpus.unwrap_or(tpl.vcpus),
        memory_mb: req.memory_mb.unwrap_or(tpl.memory_mb),
        disk_size_mb,
        timeout_sec,
        on_timeout,
        env,
        metadata,
        egress,
        snapshot: tpl.is_snapshot.then_some(tpl.id),
        auto_resume: req.auto_resume.unwrap_or(false),
        idempotency_key: None,
        public_traffic: req.public_traffic.unwrap_or(true),
    })
}

/// A create's egress lists, parsed: malformed is a 400, a network no sandbox may open a 403.
fn check_egress(
    internet: bool,
    allow: &[String],
    deny: &[String],
) -> Result<wrenn_egress::Egress, ApiError> {
    use wrenn_egress::EgressError;
    wrenn_egress::Egress::parse(internet, allow, deny).map_err(|e| match e {
        EgressError::NeverOpen(_) => ApiError::forbidden(format!("allow_out: {e}")),
        e => ApiError::invalid_request(format!("allow_out/deny_out: {e}")),
    })
}

/// Who did it, for the audit log.
#[derive(Debug, Clone)]
struct Actor {
    kind: ActorType,
    id: String,
}

impl From<&TeamAuth> for Actor {
    fn from(a: &TeamAuth) -> Self {
        match a {
            TeamAuth::User(c) => Actor {
                kind: ActorType::User,
                id: c.sub.clone(),
            },
            TeamAuth::ApiKey(p) => Actor {
                kind: ActorType::ApiKey,
                id: p.key_id.to_string(),
            },
        }
    }
}

async fn audit(st: &AppState, actor: &Actor, action: &str, sb: &Sandbox) {
    let entry = NewAuditEntry {
        team_id: Some(&sb.team_id),
        actor_type: actor.kind,
        actor_id: Some(&actor.id),
        action,
        target_type: "sandbox",
        target_id: Some(&sb.id),
        details: serde_json::json!({
            "template": sb.template,
            "host_id": sb.host_id,
            "status": sb.status.as_str(),
        }),
    };
    // The action already happened; a lost audit row must not turn it into an error.
    st.db.record_audit(entry).await;
}

fn conflict(e: DbError) -> ApiError {
    match e {
        DbError::Conflict { current, .. } => {
            ApiError::invalid_state(format!("sandbox is {current}"))
        }
        e => db_err_for("sandbox")(e),
    }
}

/// Creates a sandbox and answers once its envd answered.
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    operation_id = "create_sandbox",
    request_body = CreateSandbox,
    responses(
        (status = 201, description = "Running sandbox", body = SandboxView),
        (status = 400, description = "A field is invalid (named in the message); nothing was created", body = ErrorBody),
        (status = 403, description = "`timeout_sec` past the team's quota (`max_timeout_sec`, or 0 without `allow_no_timeout`)", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "The request conflicts with the template: a disk smaller than its own, or another shape than a snapshot template's", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the team's sandboxes, vCPUs, memory or disk would pass its quota", body = ErrorBody),
        (status = 502, description = "The host failed (`agent_error`, `host_unavailable`); the sandbox is in `error`", body = ErrorBody),
        (status = 503, description = "`no_hosts_available`", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create(
    st: State,
    auth: TeamAuth,
    ApiJson(req): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, ApiJson<SandboxView>), ApiError> {
    let (sb, _) = create_sandbox(&st, &auth, req, None).await?;
    let traffic = st.db.sandbox_traffic_token(&sb.id).await.map_err(db_err)?;
    let mut view = SandboxView::from(sb);
    view.traffic_access_token = traffic;
    Ok((StatusCode::CREATED, ApiJson(view)))
}

/// The whole create: validation, placement, the host's boot; the running row and its envd
/// access token (for the E2B routes, which hand it to the SDK).
/// With an `idempotency_key`, a create retried with the same key answers with the sandbox the
/// first attempt made (waiting while it boots) instead of making a second one.
pub(crate) async fn create_sandbox(
    st: &Arc<AppState>,
    auth: &TeamAuth,
    req: CreateSandbox,
    idempotency_key: Option<String>,
) -> Result<(Sandbox, String), ApiError> {
    let mut spec = validate_create(&st.db, auth.team_id(), req).await?;
    // One read of the team's quota for both checks.
    let quota = st.db.team_quota(&spec.team_id).await.map_err(db_err)?;
    check_timeout_quota(&quota, spec.timeout_sec)?;
    if let Some(key) = &idempotency_key
        && let Some(found) = idempotent(st, &spec.team_id, key).await?
    {
        return Ok(found);
    }
    spec.idempotency_key = idempotency_key.clone();
    check_quota(
        st,
        &quota,
        &spec.team_id,
        spec.vcpus,
        spec.memory_mb,
        Some(spec.disk_size_mb),
    )
    .await?;
    let made = create_placed(st, auth, spec).await;
    match (made, &idempotency_key) {
        // A concurrent request with the same key inserted its row first.
        (Err(e), Some(key)) if e.code() == crate::error::ErrorCode::Conflict => {
            idempotent(st, auth.team_id(), key).await?.ok_or(e)
        }
        (made, _) => made,
    }
}

/// The sandbox an earlier create with `key` made, once it left `pending`, with its token.
async fn idempotent(
    st: &AppState,
    team_id: &str,
    key: &str,
) -> Result<Option<(Sandbox, String)>, ApiError> {
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    loop {
        let sb = match st.db.sandbox_by_idempotency_key(team_id, key).await {
            Ok(sb) => sb,
            Err(DbError::NotFound) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        if sb.status != SandboxStatus::Pending || tokio::time::Instant::now() > deadline {
            let token = st
                .db
                .sandbox_envd_token(&sb.id)
                .await
                .map_err(db_err)?
                .unwrap_or_default();
            return Ok(Some((sb, token)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_placed(
    st: &Arc<AppState>,
    auth: &TeamAuth,
    spec: CreateSpec,
) -> Result<(Sandbox, String), ApiError> {
    let team = st
        .db
        .team_by_id(&spec.team_id)
        .await
        .map_err(db_err_for("team"))?;
    let holders = match &spec.snapshot {
        Some(t) => Some(st.db.template_hosts(t).await.map_err(db_err)?),
        None => None,
    };
    let placing = Placing {
        team,
        holders,
        need: Need {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mb,
        },
    };
    let (host, agent) = placing.pick(st, &[]).await?;
    let state = st.clone();
    let actor = Actor::from(auth);
    // Detached from the request: runs to the end (row settled, VM kept or removed) even if
    // the client disconnects and this handler's future is dropped.
    let task =
        tokio::spawn(
            async move { create_on_host(&state, spec, host, agent, &actor, &placing).await },
        );
    match task.await {
        Ok(r) => r,
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// What placing a new sandbox needs, kept to place it again when a host refuses it.
struct Placing {
    team: crate::db::Team,
    holders: Option<Vec<String>>,
    need: Need,
}

impl Placing {
    /// A host with room (none of `except`) and its client.
    async fn pick(&self, st: &AppState, except: &[String]) -> Result<(Host, Agent), ApiError> {
        let host = st
            .scheduler
            .pick(
                &st.db,
                &self.team,
                self.need,
                self.holders.as_deref(),
                except,
            )
            .await?;
        let agent = st.agents.agent(&host).map_err(ApiError::from)?;
        Ok((host, agent))
    }
}

/// Hosts one create tries before it answers that none has room: an agent refuses only when
/// its room went since its last report, so a second or third host is nearly always enough.
const PLACEMENT_ATTEMPTS: usize = 3;

async fn create_on_host(
    st: &AppState,
    spec: CreateSpec,
    mut host: Host,
    mut agent: Agent,
    actor: &Actor,
    placing: &Placing,
) -> Result<(Sandbox, String), ApiError> {
    // Made before anything exists, so a failure here leaves nothing to undo.
    let traffic = if spec.public_traffic {
        None
    } else {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(ApiError::internal)?;
        Some(hex::encode(b))
    };
    let end_at = (spec.timeout_sec > 0).then(|| now_ms() + spec.timeout_sec * 1000);
    let sb = st
        .db
        .insert_pending_sandbox(NewSandbox {
            team_id: &spec.team_id,
            host_id: Some(&host.id),
            template: &spec.template,
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            disk_size_mb: spec.disk_size_mb,
            timeout_sec: spec.timeout_sec,
            end_at,
            on_timeout: spec.on_timeout,
            metadata: spec.metadata.clone(),
            envd_token: None,
            auto_resume: spec.auto_resume,
            idempotency_key: spec.idempotency_key.as_deref(),
        })
        .await
        .map_err(db_err)?;
    let req = pb::CreateSandboxRequest {
        sandbox_id: sb.id.clone(),
        template: spec.template.clone(),
        // Validated ranges fit u32.
        vcpus: u32::try_from(spec.vcpus).unwrap_or(1),
        memory_mb: u32::try_from(spec.memory_mb).unwrap_or(0),
        disk_size_mb: u32::try_from(spec.disk_size_mb).unwrap_or(0),
        end_at_ms: end_at.unwrap_or(0),
        on_timeout: match spec.on_timeout {
            OnTimeout::Kill => pb::OnTimeout::ON_TIMEOUT_KILL,
            OnTimeout::Pause => pb::OnTimeout::ON_TIMEOUT_PAUSE,
        }
        .into(),
        team_id: spec.team_id.clone(),
        default_env: spec.env.into_iter().collect(),
        metadata: spec.metadata.into_iter().collect(),
        allow_internet: spec.egress.internet,
        allow_out: spec.egress.allow.iter().map(ToString::to_string).collect(),
        deny_out: spec.egress.deny.iter().map(ToString::to_string).collect(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut refused = Vec::new();
    let resp = loop {
        let created = agent
            .rpc()
            .create_sandbox_with_options(req.clone(), agent.opts_timeout(CREATE_TIMEOUT))
            .await
            .map(|r| r.into_owned());
        let e = match created {
            Ok(r) => break r,
            Err(e) => agent.err(e),
        };
        if is_full(&e) && refused.len() + 1 < PLACEMENT_ATTEMPTS {
            // The host's admission refused it before making anything: place it elsewhere.
            refused.push(host.id.clone());
            tracing::info!(sandbox = %sb.id, host = %host.id, "host has no room; placing the sandbox again");
            if let Ok((next, next_agent)) = placing.pick(st, &refused).await {
                let moved = SandboxPatch {
                    host_id: Some(&next.id),
                    ..Default::default()
                };
                if st.db.update_sandbox(&sb.id, moved).await.is_ok() {
                    (host, agent) = (next, next_agent);
                    continue;
                }
            }
        }
        // A timeout or a dropped connection may hide a VM the agent finished anyway.
        destroy_best_effort(&agent, &sb.id).await;
        return Err(fail(st, &sb, e).await);
    };
    let Some(info) = resp.sandbox.as_option().cloned() else {
        destroy_best_effort(&agent, &sb.id).await;
        mark_create_failed(st, &sb.id, "host agent returned no sandbox").await;
        return Err(ApiError::new(
            crate::error::ErrorCode::AgentError,
            "host agent returned no sandbox",
        ));
    };
    let patch = SandboxPatch {
        host_ip: Some(&info.host_ip),
        envd_version: Some(info.envd_version.as_str()).filter(|v| !v.is_empty()),
        envd_token: Some(&resp.envd_access_token),
        traffic_token: traffic.as_deref(),
        end_at: (info.end_at_ms > 0).then_some(info.end_at_ms),
        ..Default::default()
    };
    let settled = match st.db.update_sandbox(&sb.id, patch).await {
        Ok(()) => {
            st.db
                .transition_sandbox(&sb.id, SandboxStatus::Running, None)
                .await
        }
        Err(e) => Err(e),
    };
    match settled {
        Ok(sb) => {
            tracing::info!(sandbox = %sb.id, host = %host.id, ms = started.elapsed().as_millis() as u64, "sandbox created");
            audit(st, actor, "sandbox.create", &sb).await;
            Ok((sb, resp.envd_access_token))
        }
        Err(DbError::Conflict { current, .. }) => {
            // Deleted while booting: the delete only flipped the row; the VM is ours to remove.
            tracing::info!(sandbox = %sb.id, status = %current, "sandbox deleted during create; destroying its VM");
            destroy_best_effort(&agent, &sb.id).await;
            Err(ApiError::invalid_state(format!(
                "sandbox was {current} while it was being created"
            )))
        }
        Err(e) => {
            destroy_best_effort(&agent, &sb.id).await;
            mark_create_failed(st, &sb.id, "control plane could not record the sandbox").await;
            Err(db_err(e))
        }
    }
}

/// Marks a failed create's row `error`. When the database cannot take it now (restarting,
/// say), a task keeps trying for a while: the row must not stay `pending` until the
/// reconciler's stale-create limit.
async fn mark_create_failed(st: &AppState, id: &str, msg: &str) {
    let attempt = |db: Db, id: String, msg: String| async move {
        match db
            .transition_sandbox(&id, SandboxStatus::Error, Some(&msg))
            .await
        {
            // Settled by someone else (a delete) counts as done.
            Ok(_) | Err(DbError::Conflict { .. } | DbError::NotFound) => true,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "could not mark failed create");
                false
            }
        }
    };
    if attempt(st.db.clone(), id.to_owned(), msg.to_owned()).await {
        return;
    }
    let (db, id, msg) = (st.db.clone(), id.to_owned(), msg.to_owned());
    tokio::spawn(async move {
        for _ in 0..FAILED_CREATE_RETRIES {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if attempt(db.clone(), id.clone(), msg.clone()).await {
                return;
            }
        }
    });
}

/// How often (every 2 s) [`mark_create_failed`] retries.
const FAILED_CREATE_RETRIES: usize = 60;

/// Whether the agent refused for room (its admission: CPU/memory overcommit, free disk).
fn is_full(e: &AgentError) -> bool {
    e.code() == Some(connectrpc::ErrorCode::ResourceExhausted)
}

/// Records a failed create on the row and returns the caller's error.
async fn fail(st: &AppState, sb: &Sandbox, e: AgentError) -> ApiError {
    let full = is_full(&e);
    let api = if full {
        // The host's admission (CPU/memory overcommit, free disk) refused it: no host fits.
        tracing::warn!(sandbox = %sb.id, error = %e, "host has no room");
        ApiError::new(
            crate::error::ErrorCode::NoHostsAvailable,
            "no host has room for this sandbox now (vCPUs, memory or disk); retry later or ask for a smaller one",
        )
    } else {
        ApiError::from(e)
    };
    // The row says what the caller is told: a host's own words (paths, command output) stay
    // in its log.
    let api = if !full && api.status().is_client_error() {
        // The agent's own 4xx codes describe our request to it, not the caller's: after our
        // validation they mean the host could not run it.
        ApiError::new(
            crate::error::ErrorCode::AgentError,
            format!("host agent refused the sandbox: {}", api.message()),
        )
    } else {
        api
    };
    mark_create_failed(st, &sb.id, api.message()).await;
    api
}

async fn destroy_best_effort(agent: &Agent, id: &str) {
    if let Err(e) = destroy_on_agent(agent, id).await {
        tracing::warn!(sandbox = %id, error = %e, "could not destroy sandbox VM");
    }
}

/// `DestroySandbox`; an unknown sandbox is already destroyed.
async fn destroy_on_agent(agent: &Agent, id: &str) -> Result<(), AgentError> {
    destroy_with(agent, id, agent.opts()).await
}

/// [`destroy_on_agent`] with the caller's call options (e.g. a shorter deadline).
pub(crate) async fn destroy_with(
    agent: &Agent,
    id: &str,
    opts: connectrpc::client::CallOptions,
) -> Result<(), AgentError> {
    let r = agent
        .rpc()
        .destroy_sandbox_with_options(
            pb::DestroySandboxRequest {
                sandbox_id: id.to_owned(),
                ..Default::default()
            },
            opts,
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code == connectrpc::ErrorCode::NotFound => Ok(()),
        Err(e) => Err(agent.err(e)),
    }
}

/// The agent of a sandbox's host; `None` when the host row is gone. Host rows are cached
/// for a moment (see [`crate::agents::HOST_CACHE_TTL`]): the I/O routes read one per call.
async fn host_agent(st: &AppState, host_id: &str) -> Result<Option<Agent>, ApiError> {
    if let Some(h) = st.agents.cached_host(host_id) {
        return Ok(Some(st.agents.agent(&h)?));
    }
    match st.db.host_by_id(host_id).await {
        Ok(h) => {
            let agent = st.agents.agent(&h)?;
            st.agents.remember_host(h);
            Ok(Some(agent))
        }
        Err(DbError::NotFound) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// The agent of the host `sb` is on (409 when it has none).
async fn agent_of(st: &AppState, sb: &Sandbox) -> Result<Agent, ApiError> {
    match sb.host_id.as_deref() {
        Some(h) => host_agent(st, h).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::invalid_state("sandbox has no host"))
}

/// For the sandbox I/O routes: the team's sandbox if it is `running`, and its host's agent.
/// 404 for an unknown sandbox or another team's, 409 `invalid_state` in any other status.
/// Records activity (debounced).
pub(crate) async fn running(
    st: &AppState,
    team_id: &str,
    id: &SandboxId,
) -> Result<(Sandbox, Agent), ApiError> {
    // Metadata is not needed here, and a running row is reused for a second (`db::hot`):
    // no read on most exec, file and process calls.
    let sb = st
        .db
        .get_running_sandbox_row(team_id, id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    if sb.status != SandboxStatus::Running {
        return Err(ApiError::invalid_state(format!(
            "sandbox is {}, not running",
            sb.status
        )));
    }
    let agent = agent_of(st, &sb).await?;
    if let Err(e) = st.db.touch_sandbox(&sb.id).await {
        tracing::warn!(sandbox = %sb.id, error = %e, "could not record sandbox activity");
    }
    Ok((sb, agent))
}

/// A sandbox in any status (stopped ones included).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    operation_id = "get_sandbox",
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    responses(
        (status = 200, body = SandboxView),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
) -> Result<ApiJson<SandboxView>, ApiError> {
    let sb = st
        .db
        .get_sandbox(auth.team_id(), id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    let sb = reconcile::expired(&st, sb).await;
    Ok(ApiJson(sb.into()))
}

/// Destroys the sandbox's VM and marks it `stopped`. Idempotent: deleting a stopped sandbox
/// is a 204 too (a retried delete must not fail).
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    operation_id = "delete_sandbox",
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    responses(
        (status = 204, description = "Stopped (or already was)"),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
        (status = 502, description = "The host refused or did not answer; nothing changed", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn destroy(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
) -> Result<StatusCode, ApiError> {
    let sb = st
        .db
        .get_sandbox(auth.team_id(), id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    if sb.status == SandboxStatus::Stopped {
        return Ok(StatusCode::NO_CONTENT);
    }
    // A pending sandbox's create is still running: it sees the row stopped and removes the VM.
    if sb.status != SandboxStatus::Pending
        && let Some(host_id) = sb.host_id.as_deref()
        && let Some(agent) = host_agent(&st, host_id).await?
        && let Err(e) = destroy_on_agent(&agent, &sb.id).await
    {
        match sb.status {
            // The host is gone or the sandbox broken: the row goes anyway, the reconciler
            // removes a VM that turns up later.
            SandboxStatus::Missing | SandboxStatus::Error => {
                tracing::warn!(sandbox = %sb.id, error = %e, "destroy failed; marking stopped anyway");
            }
            _ => return Err(e.into()),
        }
    }
    match st
        .db
        .transition_sandbox(&sb.id, SandboxStatus::Stopped, None)
        .await
    {
        Ok(stopped) => audit(&st, &Actor::from(&auth), "sandbox.delete", &stopped).await,
        // A concurrent delete won.
        Err(DbError::Conflict {
            current: SandboxStatus::Stopped,
            ..
        }) => {}
        Err(e) => return Err(conflict(e)),
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// New deadline = now + this (0–86400); default: the sandbox's `timeout_sec`. 0 = no
    /// deadline. Past the team's quota (`max_timeout_sec`, or 0 without `allow_no_timeout`)
    /// it is a 403.
    #[schema(minimum = 0, maximum = 86400)]
    pub timeout_sec: Option<i64>,
}

/// Moves a running sandbox's deadline.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/keepalive",
    tag = "sandboxes",
    operation_id = "keepalive_sandbox",
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    request_body(content = Option<Keepalive>, description = "Optional"),
    responses(
        (status = 403, description = "`timeout_sec` past the team's quota", body = ErrorBody),
        (status = 200, body = SandboxView),
        (status = 400, description = "Malformed ID or body", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody),
        (status = 502, description = "The host refused or did not answer", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn keepalive(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
    body: Bytes,
) -> Result<ApiJson<SandboxView>, ApiError> {
    // The body is optional, so it is parsed here rather than by the JSON extractor.
    let req: Keepalive =
        crate::api::optional_json(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    if let Some(t) = req.timeout_sec {
        check_timeout(t)?;
        let quota = st.db.team_quota(auth.team_id()).await.map_err(db_err)?;
        check_timeout_quota(&quota, t)?;
    }
    let (sb, agent) = running(&st, auth.team_id(), &id).await?;
    let timeout = req.timeout_sec.unwrap_or(sb.timeout_sec);
    let end_at = (timeout > 0).then(|| now_ms() + timeout * 1000);
    let r = agent
        .rpc()
        .set_timeout_with_options(
            pb::SetTimeoutRequest {
                sandbox_id: sb.id.clone(),
                end_at_ms: end_at.unwrap_or(0),
                ..Default::default()
            },
            agent.opts(),
        )
        .await;
    if let Err(e) = r {
        if e.code == connectrpc::ErrorCode::NotFound {
            // The agent no longer has it (reaped at its deadline): settle the row.
            let _ = st
                .db
                .transition_sandbox(&sb.id, SandboxStatus::Stopped, None)
                .await;
            return Err(ApiError::invalid_state("sandbox is stopped"));
        }
        return Err(agent.err(e).into());
    }
    st.db
        .set_sandbox_deadline(&sb.id, sb.timeout_sec, end_at)
        .await
        .map_err(db_err_for("sandbox"))?;
    let sb = st
        .db
        .get_sandbox(auth.team_id(), &sb.id)
        .await
        .map_err(db_err_for("sandbox"))?;
    Ok(ApiJson(sb.into()))
}

/// Moves the row after the agent did; the reconciler may have been first, which is fine.
async fn settled(st: &AppState, sb: &Sandbox, to: SandboxStatus) -> Result<Sandbox, ApiError> {
    match st.db.transition_sandbox(&sb.id, to, None).await {
        Ok(s) => Ok(s),
        Err(DbError::Conflict { current, .. }) if current == to => st
            .db
            .get_sandbox(&sb.team_id, &sb.id)
            .await
            .map_err(db_err_for("sandbox")),
        Err(e) => Err(conflict(e)),
    }
}

/// How long a pause or resume may take on the agent (memory to or from disk).
const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The team's sandbox, which must be in `status`, and its host's agent (409 otherwise).
async fn in_status(
    st: &AppState,
    team_id: &str,
    id: &SandboxId,
    status: SandboxStatus,
) -> Result<(Sandbox, Agent), ApiError> {
    let sb = st
        .db
        .get_sandbox(team_id, id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    if sb.status != status {
        return Err(ApiError::invalid_state(format!(
            "sandbox is {}, not {status}",
            sb.status
        )));
    }
    let agent = agent_of(st, &sb).await?;
    Ok((sb, agent))
}

/// Pauses a running sandbox to disk on its host: its VM stops, memory and device state are
/// saved beside its disk, and its network slot and RAM are released. Its deadline stops.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/pause",
    tag = "sandboxes",
    operation_id = "pause_sandbox",
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    responses(
        (status = 200, description = "Paused", body = SandboxView),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
        (status = 409, description = "Not running (e.g. already paused)", body = ErrorBody),
        (status = 502, description = "The host could not pause it; it keeps running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn pause(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
) -> Result<ApiJson<SandboxView>, ApiError> {
    let (sb, agent) = in_status(&st, auth.team_id(), &id, SandboxStatus::Running).await?;
    agent
        .rpc()
        .pause_sandbox_with_options(
            pb::PauseSandboxRequest {
                sandbox_id: sb.id.clone(),
                ..Default::default()
            },
            agent.opts_timeout(PAUSE_TIMEOUT),
        )
        .await
        .map_err(|e| ApiError::from(agent.err(e)))?;
    // A paused sandbox has no deadline; resume starts its timeout afresh.
    st.db
        .set_sandbox_deadline(&sb.id, sb.timeout_sec, None)
        .await
        .map_err(db_err_for("sandbox"))?;
    let paused = settled(&st, &sb, SandboxStatus::Paused).await?;
    audit(&st, &Actor::from(&auth), "sandbox.pause", &paused).await;
    Ok(ApiJson(paused.into()))
}

/// Resumes a paused sandbox on its host where it stopped: processes, open files and memory
/// as they were; the guest's clock is set to now. Its timeout starts again from now.
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/resume",
    tag = "sandboxes",
    operation_id = "resume_sandbox",
    params(("id" = crate::ids::SandboxId, Path, description = "Sandbox ID")),
    responses(
        (status = 200, description = "Running again", body = SandboxView),
        (status = 400, description = "Malformed ID", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
        (status = 409, description = "Not paused (e.g. running)", body = ErrorBody),
        (status = 502, description = "The host could not resume it", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn resume(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<SandboxId>,
) -> Result<ApiJson<SandboxView>, ApiError> {
    let (sb, agent) = in_status(&st, auth.team_id(), &id, SandboxStatus::Paused).await?;
    let quota = st.db.team_quota(auth.team_id()).await.map_err(db_err)?;
    check_quota(&st, &quota, auth.team_id(), sb.vcpus, sb.memory_mb, None).await?;
    let resumed = resume_on(&st, sb, &agent, &Actor::from(&auth)).await?;
    Ok(ApiJson(resumed.into()))
}

/// Resumes a paused sandbox that wants it (`auto_resume`) for a request that reached it
/// through the sandbox proxy; the audit log names the system as the actor.
pub(crate) async fn auto_resume(st: &AppState, sb: Sandbox) -> Result<Sandbox, ApiError> {
    let agent = agent_of(st, &sb).await?;
    let actor = Actor {
        kind: ActorType::System,
        id: "auto-resume".into(),
    };
    resume_on(st, sb, &agent, &actor).await
}

async fn resume_on(
    st: &AppState,
    sb: Sandbox,
    agent: &Agent,
    actor: &Actor,
) -> Result<Sandbox, ApiError> {
    let r = agent
        .rpc()
        .resume_sandbox_with_options(
            pb::ResumeSandboxRequest {
                sandbox_id: sb.id.clone(),
                ..Default::default()
            },
            agent.opts_timeout(PAUSE_TIMEOUT),
        )
        .await
        .map(|r| r.into_owned());
    let info = match r {
        Ok(r) => r.sandbox.as_option().cloned().unwrap_or_default(),
        Err(e) => {
            let e = agent.err(e);
            // A state that cannot come back leaves the sandbox in `error` on the agent.
            if let Ok(g) = agent
                .rpc()
                .get_sandbox_with_options(
                    pb::GetSandboxRequest {
                        sandbox_id: sb.id.clone(),
                        ..Default::default()
                    },
                    agent.opts(),
                )
                .await
                && let Some(i) = g.into_owned().sandbox.as_option()
                && i.status.as_known() == Some(pb::SandboxStatus::SANDBOX_STATUS_ERROR)
            {
                let _ = st
                    .db
                    .transition_sandbox(&sb.id, SandboxStatus::Error, Some(&i.error))
                    .await;
            }
            return Err(e.into());
        }
    };
    let end_at = (sb.timeout_sec > 0).then(|| now_ms() + sb.timeout_sec * 1000);
    if let Err(e) = agent
        .rpc()
        .set_timeout_with_options(
            pb::SetTimeoutRequest {
                sandbox_id: sb.id.clone(),
                end_at_ms: end_at.unwrap_or(0),
                ..Default::default()
            },
            agent.opts(),
        )
        .await
    {
        tracing::warn!(sandbox = %sb.id, error = %e, "could not set the resumed sandbox's deadline");
    }
    st.db
        .update_sandbox(
            &sb.id,
            SandboxPatch {
                host_ip: Some(&info.host_ip),
                ..Default::default()
            },
        )
        .await
        .map_err(db_err_for("sandbox"))?;
    st.db
        .set_sandbox_deadline(&sb.id, sb.timeout_sec, end_at)
        .await
        .map_err(db_err_for("sandbox"))?;
    let resumed = settled(st, &sb, SandboxStatus::Running).await?;
    audit(st, actor, "sandbox.resume", &resumed).await;
    Ok(resumed)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxView>,
    pub next_cursor: Option<String>,
}

/// The statuses a list shows unless `?status=` says otherwise.
const LISTED_BY_DEFAULT: [SandboxStatus; 4] = [
    SandboxStatus::Pending,
    SandboxStatus::Running,
    SandboxStatus::Paused,
    SandboxStatus::Missing,
];

/// The metadata filter of a list, `metadata[<key>]=<value>` (OpenAPI's `deepObject`); the
/// older `metadata.<key>=<value>` is the same filter.
pub struct MetadataFilter;

impl utoipa::PartialSchema for MetadataFilter {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        // Values are compared, not stored: any string.
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(METADATA_KEY_PATTERN)),
            ))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .max_properties(Some(MAX_MAP_ENTRIES))
            .into()
    }
}

impl ToSchema for MetadataFilter {}

/// `?limit=&cursor=&status=a,b&metadata[<key>]=<value>` (or `metadata.<key>=`); anything else
/// is a 400.
fn list_query(q: Vec<(String, String)>) -> Result<(PageRequest, SandboxFilter), ApiError> {
    let mut limit = None;
    let mut cursor = None;
    let mut filter = SandboxFilter::default();
    for (k, v) in q {
        match k.as_str() {
            "limit" => {
                limit = Some(
                    v.parse::<u32>()
                        .map_err(|_| bad("limit must be a positive integer"))?,
                )
            }
            "cursor" => cursor = Some(v),
            "status" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    let st = SandboxStatus::parse(s).ok_or_else(|| {
                        bad("status must be pending, running, paused, stopped, error or missing")
                    })?;
                    if !filter.statuses.contains(&st) {
                        filter.statuses.push(st);
                    }
                }
            }
            _ => {
                let key = k.strip_prefix("metadata.").or_else(|| {
                    k.strip_prefix("metadata[")
                        .and_then(|rest| rest.strip_suffix(']'))
                });
                match key {
                    Some(key) if is_metadata_key(key) => filter.metadata.push((key.to_owned(), v)),
                    _ => return Err(bad(format!("unknown query parameter {k:?}"))),
                }
            }
        }
    }
    if filter.metadata.len() > MAX_MAP_ENTRIES {
        return Err(bad("too many metadata filters"));
    }
    if filter.statuses.is_empty() {
        filter.statuses = LISTED_BY_DEFAULT.to_vec();
    }
    let page = PageRequest::new(limit, cursor.as_deref()).map_err(db_err)?;
    Ok((page, filter))
}

/// The team's sandboxes, newest first. Stopped and failed ones only when `?status=` asks.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    operation_id = "list_sandboxes",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 100"),
        ("cursor" = Option<String>, Query, pattern = "^([0-9]{1,18}\\.[a-z0-9-]{1,64})?$", description = "next_cursor of the previous page"),
        ("status" = Option<String>, Query, pattern = "^(pending|running|paused|stopped|error|missing)?(,(pending|running|paused|stopped|error|missing)?)*$", description = "Comma-separated statuses; default pending, running, paused, missing"),
        ("metadata" = Option<MetadataFilter>, Query, style = DeepObject, explode, description = "`metadata[<key>]=<value>`: only sandboxes whose metadata has these values (also accepted as `metadata.<key>=<value>`)"),
    ),
    responses(
        (status = 200, body = SandboxList),
        (status = 400, description = "Bad parameter", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    st: State,
    auth: TeamAuth,
    ApiQuery(q): ApiQuery<Vec<(String, String)>>,
) -> Result<ApiJson<SandboxList>, ApiError> {
    let (page, filter) = list_query(q)?;
    let page = st
        .db
        .list_sandboxes(auth.team_id(), &filter, &page)
        .await
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(page.items.len());
    for sb in page.items {
        out.push(reconcile::expired(&st, sb).await.into());
    }
    Ok(ApiJson(SandboxList {
        sandboxes: out,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub name: String,
    /// `base` or `snapshot`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A platform template, visible to every team.
    pub platform: bool,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub disk_size_mb: i64,
    /// Bytes a snapshot occupies on its host (memory, device state, disk); 0 for images.
    pub size_bytes: i64,
    /// Unix ms.
    pub created_at: i64,
}

impl From<Template> for TemplateView {
    fn from(t: Template) -> Self {
        TemplateView {
            platform: t.team_id.is_none(),
            kind: if t.is_snapshot { "snapshot" } else { "base" }.to_owned(),
            name: t.name,
            vcpus: t.vcpus,
            memory_mb: t.memory_mb,
            disk_size_mb: t.disk_size_mb,
            size_bytes: t.size_bytes,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

/// Templates the team can create sandboxes from: the platform's and its own.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "sandboxes",
    operation_id = "list_templates",
    responses((status = 200, body = TemplateList)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_templates(st: State, auth: TeamAuth) -> Result<ApiJson<TemplateList>, ApiError> {
    let templates = st
        .db
        .templates_visible_to(auth.team_id())
        .await
        .map_err(db_err)?
        .into_iter()
        .map(TemplateView::from)
        .collect();
    Ok(ApiJson(TemplateList { templates }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["A", "_x", "PATH", "a_1"] {
            assert!(is_env_key(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "é"] {
            assert!(!is_env_key(bad), "{bad}");
        }
        assert!(is_metadata_key("team.owner/x:y-1"));
        assert!(!is_metadata_key(""));
        assert!(!is_metadata_key("a b"));
        assert!(!is_metadata_key(&"k".repeat(65)));
    }

    #[test]
    fn list_queries() {
        let q = |pairs: &[(&str, &str)]| {
            list_query(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let (_, f) = q(&[]).unwrap();
        assert_eq!(f.statuses, LISTED_BY_DEFAULT.to_vec());
        let (_, f) = q(&[("status", "stopped,error"), ("metadata.env", "ci")]).unwrap();
        assert_eq!(
            f.statuses,
            vec![SandboxStatus::Stopped, SandboxStatus::Error]
        );
        assert_eq!(f.metadata, vec![("env".into(), "ci".into())]);
        assert!(q(&[("status", "nope")]).is_err());
        assert!(q(&[("limit", "x")]).is_err());
        assert!(q(&[("limit", "0")]).is_err());
        assert!(q(&[("bogus", "1")]).is_err());
        assert!(q(&[("metadata.", "1")]).is_err());
    }
}
