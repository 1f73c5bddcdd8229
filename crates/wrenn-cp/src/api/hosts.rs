//! Host registration and the host's own routes (DESIGN §7, spec §2.6, §6.1).
//!
//! Flow: an operator creates a one-time registration token (1 h), which also creates the host
//! row in `pending`; the agent presents the token once at `/v1/hosts/register` and gets a host
//! JWT (7 days) and a refresh token (60 days, rotated on every refresh). Platform hosts
//! (`team_id` null) are created by platform admins only; a team's own host by the owners/admins
//! of a BYOC team (`teams.is_byoc`, set by a platform admin and re-read here, never taken from
//! the JWT).
//!
//! Registration secrets are refused with 401 whatever the reason (unknown, used, expired,
//! malformed) so a caller learns nothing about which tokens exist.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::require_admin;
use super::{State, db_err, db_err_for, validate};
use crate::auth::extract::{HostAuth, TeamAuth, UserAuth};
use crate::auth::jwt::UserClaims;
use crate::auth::token;
use crate::db::{
    ActorType, DbError, Host, HostCapacity, NewAuditEntry, NewHost, NewRegistrationToken,
    SandboxStatus, now_ms,
};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::ids::HostId;
use crate::server::AppState;

pub const DEFAULT_HOST_NAME: &str = "host";
/// Most hosts (pending ones included) a BYOC team may have.
pub const MAX_HOSTS_PER_TEAM: usize = 32;
/// Longest accepted agent address.
pub const MAX_ADDRESS_LEN: usize = 256;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(create_token))
        .routes(routes!(register))
        .routes(routes!(refresh))
        .routes(routes!(get))
        .routes(routes!(heartbeat))
        .routes(routes!(revoke))
        .routes(routes!(delete))
        .routes(routes!(delete_preview))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Default "host". 1–100 characters, not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: Option<String>,
    /// A platform host (no team): platform admins only.
    #[serde(default)]
    platform: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    host: Host,
    /// Shown once.
    registration_token: String,
    /// Unix milliseconds.
    expires_at: i64,
    /// The SHA-256 fingerprint of this control plane's HTTPS certificate, for the agent's
    /// `--cp-fingerprint` (absent when it serves plain HTTP).
    cp_tls_fingerprint: Option<String>,
}

/// Creates the pending host row and its one-time registration token (1 h). A team host needs
/// an owner or admin of a BYOC team; a platform host (`platform: true`) a platform admin.
#[utoipa::path(
    post,
    path = "/v1/hosts/registration-tokens",
    tag = "hosts",
    operation_id = "create_host_registration_token",
    request_body = CreateToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The pending host and its registration token (shown once)", body = CreatedToken),
        (status = 400, description = "Malformed body or invalid name", body = ErrorBody),
        (status = 401, description = "Missing or invalid user token", body = ErrorBody),
        (status = 403, description = "Not allowed to add hosts here (not an owner/admin, or the team is not BYOC)", body = ErrorBody),
        (status = 409, description = "The team has MAX_HOSTS_PER_TEAM (32) hosts already", body = ErrorBody),
    )
)]
pub async fn create_token(
    st: State,
    UserAuth(c): UserAuth,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, ApiJson<CreatedToken>), ApiError> {
    let name = match &req.name {
        Some(n) => validate::name("name", n)?,
        None => DEFAULT_HOST_NAME.to_owned(),
    };
    let team_id = if req.platform {
        require_admin(&st, &c.sub).await?;
        None
    } else {
        // The role claim may be stale: re-read it.
        let role = st.db.role_of(&c.team_id, &c.sub).await.map_err(db_err)?;
        if role < crate::db::Role::Admin && !is_admin(&st, &c.sub).await? {
            return Err(ApiError::forbidden("team owner or admin required"));
        }
        let team = st.db.team_by_id(&c.team_id).await.map_err(db_err)?;
        if !team.is_byoc {
            return Err(ApiError::forbidden(
                "this team does not bring its own hosts: a platform admin must enable BYOC for it first",
            ));
        }
        let hosts = st.db.list_hosts(Some(&c.team_id)).await.map_err(db_err)?;
        if hosts.len() >= MAX_HOSTS_PER_TEAM {
            return Err(ApiError::conflict(format!(
                "the team has {} hosts, the most allowed; delete one first",
                hosts.len()
            )));
        }
        Some(c.team_id.as_str())
    };
    let generated = token::generate_registration_token().map_err(ApiError::internal)?;
    let ttl = i64::try_from(generated.ttl.as_millis()).map_err(ApiError::internal)?;
    let expires_at = now_ms() + ttl;
    // Two writes, not one transaction: a failure between them leaves a pending host without a
    // token, which is harmless (it can never come online) and visible in the host list.
    let host = st
        .db
        .create_host(NewHost {
            team_id,
            name: &name,
            address: "",
            specs: serde_json::json!({}),
            created_by: Some(&c.sub),
        })
        .await
        .map_err(db_err)?;
    st.db
        .create_registration_token(NewRegistrationToken {
            token_hash: &generated.hash,
            team_id,
            host_id: Some(&host.id),
            created_by: Some(&c.sub),
            expires_at,
        })
        .await
        .map_err(db_err)?;
    tracing::info!(host_id = %host.id, team_id = ?team_id, "host registration token created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedToken {
            host,
            registration_token: generated.plaintext,
            expires_at,
            cp_tls_fingerprint: st.tls_fingerprint.clone(),
        }),
    ))
}

async fn is_admin(st: &AppState, user_id: &str) -> Result<bool, ApiError> {
    match require_admin(st, user_id).await {
        Ok(()) => Ok(true),
        Err(e) if e.status() == StatusCode::FORBIDDEN => Ok(false),
        Err(e) => Err(e),
    }
}

/// Hardware the agent reports; every field optional, nothing else accepted.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Specs {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    arch: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The one-time registration token.
    token: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: Option<String>,
    /// The agent's RPC endpoint: `https://host:port`, or plain (`ip:port`, `http://…`) only on
    /// loopback (a team's host: an IP address that is not loopback, link-local, unspecified,
    /// multicast or broadcast). Checked once the token is known to be valid.
    #[schema(max_length = 256)]
    address: String,
    /// SHA-256 fingerprint of the certificate the agent serves (`sha256:` + 64 hex digits);
    /// required with an `https://` address, the only certificate the control plane accepts.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    tls_fingerprint: Option<String>,
    specs: Option<Specs>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HostCredentials {
    host: Host,
    host_jwt: String,
    /// Unix seconds.
    host_jwt_expires_at: u64,
    /// Shown once; rotated by `/v1/hosts/auth/refresh`.
    refresh_token: String,
    /// Unix milliseconds.
    refresh_token_expires_at: i64,
    /// The control plane's Ed25519 public key (SPKI PEM): the agent accepts only tokens it
    /// verifies.
    cp_public_key: String,
    /// The host's credential generation; the agent refuses tokens of any other.
    credential_gen: i64,
}

fn address(v: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_request("address must be ip:port or an http(s)://host:port URL");
    let v = v.trim();
    if v.is_empty() || v.len() > MAX_ADDRESS_LEN {
        return Err(bad());
    }
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(v.to_owned());
    }
    let uri: Uri = v.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok && uri.query().is_none() {
        Ok(v.to_owned())
    } else {
        Err(bad())
    }
}

/// Calls to an agent off loopback go over TLS to the certificate it named (DESIGN §11): an
/// `https://` address needs its fingerprint, a plain one must be loopback (`wrenn up`).
fn agent_tls(address: &str, fingerprint: Option<&str>) -> Result<Option<String>, ApiError> {
    let https = address.starts_with("https://");
    match (https, fingerprint) {
        (true, Some(fp)) => wrenn_tls::parse_fingerprint(fp)
            .map(Some)
            .map_err(|e| ApiError::invalid_request(format!("tls_fingerprint: {e}"))),
        (true, None) => Err(ApiError::invalid_request(
            "an https:// address needs tls_fingerprint, the agent certificate's SHA-256",
        )),
        (false, Some(_)) => Err(ApiError::invalid_request(
            "tls_fingerprint goes with an https:// address",
        )),
        (false, None) if is_loopback(address) => Ok(None),
        (false, None) => Err(ApiError::invalid_request(
            "an agent off loopback is called over TLS only: register its https:// address with tls_fingerprint",
        )),
    }
}

fn is_loopback(address: &str) -> bool {
    let host = match address.parse::<SocketAddr>() {
        Ok(sa) => return sa.ip().is_loopback(),
        Err(_) => address
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned)),
    };
    host.is_some_and(|h| wrenn_tls::is_loopback_host(&h))
}

/// A team's (BYOC) host address, on top of [`address`]: the control plane calls it, so a
/// tenant must not point it at the control plane's own machine or the cloud's metadata
/// service. An IP literal (a name could resolve to anything, and change), not loopback,
/// link-local, unspecified, multicast or broadcast; private ranges are fine (VPNs).
fn team_address(v: &str) -> Result<(), ApiError> {
    use std::net::IpAddr;
    let bad = |why: &str| ApiError::invalid_request(format!("a team host's address {why}"));
    let host = match v.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => return Err(bad("needs a port")),
        Ok(sa) => sa.ip().to_string(),
        Err(_) => {
            let uri: Uri = v.parse().map_err(|_| bad("is malformed"))?;
            if uri.port_u16() == Some(0) {
                return Err(bad("needs a port"));
            }
            uri.host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned()
        }
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| bad("must be an IP address, not a name"))?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let refused = match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || a.octets()[0] == 0
        }
        IpAddr::V6(a) => {
            a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local()
        }
    };
    if refused {
        return Err(bad(
            "may not be loopback, link-local, unspecified, multicast or broadcast",
        ));
    }
    Ok(())
}

fn token_refused() -> ApiError {
    ApiError::unauthorized("invalid, expired or already used token")
}

fn token_err(e: DbError) -> ApiError {
    match e {
        DbError::TokenRejected(why) => {
            tracing::info!(reason = ?why, "host token refused");
            token_refused()
        }
        e => db_err(e),
    }
}

/// The response: a new host JWT plus the refresh token the caller already stored.
fn credentials(
    st: &AppState,
    host: Host,
    refresh: token::OpaqueToken,
    refresh_expires_at: i64,
) -> Result<HostCredentials, ApiError> {
    let id = HostId::parse(&host.id).map_err(ApiError::internal)?;
    let jwt = st.jwt.issue_host(&id)?;
    Ok(HostCredentials {
        cp_public_key: st.agents.public_key_pem().to_owned(),
        credential_gen: host.credential_gen,
        host,
        host_jwt: jwt.token,
        host_jwt_expires_at: jwt.expires_at,
        refresh_token: refresh.plaintext,
        refresh_token_expires_at: refresh_expires_at,
    })
}

fn refresh_expiry(t: &token::OpaqueToken) -> Result<i64, ApiError> {
    Ok(now_ms() + i64::try_from(t.ttl.as_millis()).map_err(ApiError::internal)?)
}

/// The agent's first call: consumes the token exactly once and brings the host online.
/// An unknown token is a 401 whatever the body; with a valid one, a malformed body is a 400
/// and does not burn it.
#[utoipa::path(
    post,
    path = "/v1/hosts/register",
    tag = "hosts",
    operation_id = "register_host",
    request_body = Register,
    responses(
        (status = 201, description = "The host is online; its credentials", body = HostCredentials),
        (status = 400, description = "Malformed body, address or name (a team's host: an IP address that is not loopback, link-local, unspecified, multicast or broadcast)", body = ErrorBody),
        (status = 401, description = "Invalid, expired or already used token", body = ErrorBody),
    )
)]
pub async fn register(
    st: State,
    ApiJson(req): ApiJson<Register>,
) -> Result<(StatusCode, ApiJson<HostCredentials>), ApiError> {
    // The token first (looked up, not yet used): a caller without a valid one learns nothing
    // about the rest of its body. Then every field, so a malformed body never burns a token.
    let hash = token::hash_presented(&req.token).ok_or_else(token_refused)?;
    let team = match st.db.registration_token_team(&hash).await {
        Ok(team) => team,
        Err(DbError::NotFound) => return Err(token_refused()),
        Err(e) => return Err(db_err(e)),
    };
    let address = address(&req.address)?;
    let tls_fingerprint = agent_tls(&address, req.tls_fingerprint.as_deref())?;
    let name = req
        .name
        .as_deref()
        .map(|n| validate::name("name", n))
        .transpose()?;
    if let Some(a) = req.specs.as_ref().and_then(|s| s.arch.as_deref()) {
        validate::name("specs.arch", a)?;
    }
    let specs = serde_json::to_value(req.specs.unwrap_or(Specs {
        cpu_count: None,
        memory_bytes: None,
        disk_bytes: None,
        arch: None,
    }))
    .map_err(ApiError::internal)?;
    // A team's host gets the stricter address check.
    if team.is_some() {
        team_address(&address)?;
    }
    let used = st
        .db
        .consume_registration_token(&hash)
        .await
        .map_err(token_err)?;
    // Tokens of this API always name their host; one without is not ours to complete.
    let host_id = used.host_id.ok_or_else(token_refused)?;
    let host = st
        .db
        .complete_host_registration(
            &host_id,
            &address,
            &specs,
            name.as_deref(),
            tls_fingerprint.as_deref(),
        )
        .await
        .map_err(|e| match e {
            // The host was deleted (or already registered) since the token was made.
            DbError::NotFound => token_refused(),
            e => db_err(e),
        })?;
    let refresh = token::generate_refresh_token().map_err(ApiError::internal)?;
    let refresh_expires_at = refresh_expiry(&refresh)?;
    st.db
        .issue_refresh_token(&host.id, &refresh.hash, refresh_expires_at)
        .await
        .map_err(db_err)?;
    st.agents.forget_host(&host.id);
    tracing::info!(host_id = %host.id, address = %host.address, "host registered");
    let creds = credentials(&st, host, refresh, refresh_expires_at)?;
    Ok((StatusCode::CREATED, ApiJson(creds)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    host_id: HostId,
    refresh_token: String,
}

/// Rotation: a new refresh token (and host JWT) for the presented one, which stays valid for
/// a 2-minute grace in case this response is lost (its replacement's first use ends that);
/// presenting it after its grace revokes every refresh token of the host.
#[utoipa::path(
    post,
    path = "/v1/hosts/auth/refresh",
    tag = "hosts",
    operation_id = "refresh_host_credentials",
    request_body = Refresh,
    responses(
        (status = 200, description = "A new host JWT and a new refresh token (the old one stays valid for a 2-minute grace)", body = HostCredentials),
        (status = 400, description = "Malformed body or host ID", body = ErrorBody),
        (status = 401, description = "Invalid, expired or revoked refresh token", body = ErrorBody),
    )
)]
pub async fn refresh(
    st: State,
    ApiJson(req): ApiJson<Refresh>,
) -> Result<ApiJson<HostCredentials>, ApiError> {
    let hash = token::hash_presented(&req.refresh_token).ok_or_else(token_refused)?;
    let host = st
        .db
        .host_by_id(req.host_id.as_str())
        .await
        .map_err(|e| match e {
            DbError::NotFound => token_refused(),
            e => db_err(e),
        })?;
    let new = token::generate_refresh_token().map_err(ApiError::internal)?;
    let expires_at = refresh_expiry(&new)?;
    // Refused untouched when the token is another host's.
    st.db
        .rotate_refresh_token(&host.id, &hash, &new.hash, expires_at)
        .await
        .map_err(token_err)?;
    Ok(ApiJson(credentials(&st, host, new, expires_at)?))
}

/// The caller's team's hosts; a platform admin (user token) sees every host.
#[utoipa::path(
    get,
    path = "/v1/hosts",
    tag = "hosts",
    operation_id = "list_hosts",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The hosts", body = Vec<Host>),
        (status = 401, description = "Missing or invalid API key or user token", body = ErrorBody),
    )
)]
pub async fn list(st: State, auth: TeamAuth) -> Result<ApiJson<Vec<Host>>, ApiError> {
    let hosts = if sees_all(&st, &auth).await? {
        st.db.list_all_hosts().await
    } else {
        st.db.list_hosts(Some(auth.team_id())).await
    }
    .map_err(db_err)?;
    Ok(ApiJson(hosts))
}

/// Another team's host is a 404, the same answer as a host that does not exist.
#[utoipa::path(
    get,
    path = "/v1/hosts/{id}",
    tag = "hosts",
    operation_id = "get_host",
    params(("id" = crate::ids::HostId, Path, description = "Host ID")),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The host", body = Host),
        (status = 400, description = "Malformed host ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key or user token", body = ErrorBody),
        (status = 404, description = "No such host visible to the caller", body = ErrorBody),
    )
)]
pub async fn get(
    st: State,
    auth: TeamAuth,
    ApiPath(id): ApiPath<HostId>,
) -> Result<ApiJson<Host>, ApiError> {
    let host = st
        .db
        .host_by_id(id.as_str())
        .await
        .map_err(db_err_for("host"))?;
    if host.team_id.as_deref() != Some(auth.team_id()) && !sees_all(&st, &auth).await? {
        return Err(ApiError::not_found("host"));
    }
    Ok(ApiJson(host))
}

/// Platform admins act through their user token; API keys are always team-scoped.
async fn sees_all(st: &AppState, auth: &TeamAuth) -> Result<bool, ApiError> {
    match auth {
        TeamAuth::User(c) => is_admin(st, &c.sub).await,
        TeamAuth::ApiKey(_) => Ok(false),
    }
}

/// Withdraws a host's credentials (a leaked or retired machine): its refresh tokens are
/// revoked, its host JWT stops working, and its credential generation moves on, so the agent
/// refuses every control-plane call from now on until it registers again. Team owners/admins
/// for their team's hosts; platform admins for any.
#[utoipa::path(
    post,
    path = "/v1/hosts/{id}/revoke",
    tag = "hosts",
    operation_id = "revoke_host_credentials",
    params(("id" = crate::ids::HostId, Path, description = "Host ID")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Credentials withdrawn; the host is pending until it registers again", body = Host),
        (status = 400, description = "Malformed host ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user JWT", body = ErrorBody),
        (status = 403, description = "Not an owner/admin of the host's team", body = ErrorBody),
        (status = 404, description = "No such host (or another team's)", body = ErrorBody),
    )
)]
pub async fn revoke(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<HostId>,
) -> Result<ApiJson<Host>, ApiError> {
    managed_host(&st, &c, &id).await?;
    let host = st
        .db
        .revoke_host_credentials(id.as_str())
        .await
        .map_err(db_err_for("host"))?;
    st.agents.forget_host(&host.id);
    // Nothing answers for its sandboxes any more (the agent refuses our tokens): `missing`,
    // like a silent host's, instead of a 502 on every call; a delete then stops them.
    let missing = st
        .db
        .transition_host_sandboxes(&host.id, SandboxStatus::Missing)
        .await
        .map_err(db_err)?;
    tracing::info!(host_id = %host.id, credential_gen = host.credential_gen, missing = missing.len(), "host credentials revoked");
    let entry = NewAuditEntry {
        team_id: host.team_id.as_deref(),
        actor_type: ActorType::User,
        actor_id: Some(&c.sub),
        action: "host.revoke",
        target_type: "host",
        target_id: Some(&host.id),
        details: serde_json::json!({ "missing_sandboxes": missing }),
    };
    st.db.record_audit(entry).await;
    Ok(ApiJson(host))
}

/// The host `id` if the caller may manage it: a platform admin any host, a team's owners and
/// admins their team's hosts (another team's host is a 404, members get 403).
async fn managed_host(st: &AppState, c: &UserClaims, id: &HostId) -> Result<Host, ApiError> {
    let host = st
        .db
        .host_by_id(id.as_str())
        .await
        .map_err(db_err_for("host"))?;
    if !is_admin(st, &c.sub).await? {
        if host.team_id.as_deref() != Some(c.team_id.as_str()) {
            return Err(ApiError::not_found("host"));
        }
        let role = st.db.role_of(&c.team_id, &c.sub).await.map_err(db_err)?;
        if role < crate::db::Role::Admin {
            return Err(ApiError::forbidden("team owner or admin required"));
        }
    }
    Ok(host)
}

/// Every sandbox a host delete affects: all but the stopped ones.
const LIVE: [SandboxStatus; 5] = [
    SandboxStatus::Pending,
    SandboxStatus::Running,
    SandboxStatus::Paused,
    SandboxStatus::Missing,
    SandboxStatus::Error,
];

async fn live_sandboxes(st: &AppState, host_id: &str) -> Result<Vec<String>, ApiError> {
    let rows = st
        .db
        .sandboxes_on_host(host_id, &LIVE)
        .await
        .map_err(db_err)?;
    Ok(rows.into_iter().map(|s| s.id).collect())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletePreview {
    host: Host,
    /// The sandboxes a delete would destroy (every one on the host that is not stopped).
    sandbox_ids: Vec<String>,
}

/// What deleting the host would affect.
#[utoipa::path(
    get,
    path = "/v1/hosts/{id}/delete-preview",
    tag = "hosts",
    operation_id = "preview_host_delete",
    params(("id" = crate::ids::HostId, Path, description = "Host ID")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The host and the sandboxes a delete would destroy", body = DeletePreview),
        (status = 400, description = "Malformed host ID", body = ErrorBody),
        (status = 401, description = "Missing or invalid user JWT", body = ErrorBody),
        (status = 403, description = "Not an owner/admin of the host's team", body = ErrorBody),
        (status = 404, description = "No such host (or another team's)", body = ErrorBody),
    )
)]
pub async fn delete_preview(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<HostId>,
) -> Result<ApiJson<DeletePreview>, ApiError> {
    let host = managed_host(&st, &c, &id).await?;
    let sandbox_ids = live_sandboxes(&st, &host.id).await?;
    Ok(ApiJson(DeletePreview { host, sandbox_ids }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Destroy the host's sandboxes too.
    force: Option<bool>,
}

/// How long a forced delete waits for the agent to destroy one sandbox: a dead host must not
/// hold the request.
const FORCE_DESTROY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Retires a host: refused with 409 (`error.sandbox_ids`) while sandboxes are on it, unless
/// `?force=true`, which destroys them on the agent (when it answers), marks them stopped, and
/// then removes the host: its credentials stop working at once (the agent's next heartbeat
/// gets 404 and it shuts down), its pooled client is dropped, and its snapshot-template
/// placements go with it.
#[utoipa::path(
    delete,
    path = "/v1/hosts/{id}",
    tag = "hosts",
    operation_id = "delete_host",
    params(("id" = crate::ids::HostId, Path, description = "Host ID"), DeleteQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed host ID or query", body = ErrorBody),
        (status = 401, description = "Missing or invalid user JWT", body = ErrorBody),
        (status = 403, description = "Not an owner/admin of the host's team", body = ErrorBody),
        (status = 404, description = "No such host (or another team's)", body = ErrorBody),
        (status = 409, description = "`conflict`: sandboxes are on it; `error.sandbox_ids` lists them. `?force=true` destroys them", body = ErrorBody),
    )
)]
pub async fn delete(
    st: State,
    UserAuth(c): UserAuth,
    ApiPath(id): ApiPath<HostId>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let host = managed_host(&st, &c, &id).await?;
    let live = live_sandboxes(&st, &host.id).await?;
    let force = q.force.unwrap_or(false);
    if !live.is_empty() && !force {
        return Err(ApiError::conflict(format!(
            "host {} has {} sandbox(es); delete them or pass force=true",
            host.id,
            live.len()
        ))
        .with_field("sandbox_ids", live));
    }
    if !live.is_empty() {
        destroy_all(&st, &host, &live).await;
        let stopped = st
            .db
            .transition_host_sandboxes(&host.id, SandboxStatus::Stopped)
            .await
            .map_err(db_err)?;
        tracing::info!(host_id = %host.id, count = stopped.len(), "sandboxes of a deleted host stopped");
    }
    st.db
        .delete_host(&host.id)
        .await
        .map_err(db_err_for("host"))?;
    st.agents.evict_host(&host.id);
    let entry = NewAuditEntry {
        team_id: host.team_id.as_deref(),
        actor_type: ActorType::User,
        actor_id: Some(&c.sub),
        action: "host.delete",
        target_type: "host",
        target_id: Some(&host.id),
        details: serde_json::json!({"force": force, "sandbox_ids": live}),
    };
    st.db.record_audit(entry).await;
    tracing::info!(host_id = %host.id, force, "host deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Best effort, all at once, each bounded: a host that does not answer loses its VMs' rows
/// anyway (the host is being retired).
async fn destroy_all(st: &AppState, host: &Host, ids: &[String]) {
    let agent = match st.agents.agent(host) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(host_id = %host.id, error = %e, "no client for a deleted host");
            return;
        }
    };
    let calls = ids.iter().map(|id| {
        let agent = agent.clone();
        async move {
            let opts = agent.opts_timeout(FORCE_DESTROY_TIMEOUT);
            if let Err(e) = super::sandboxes::destroy_with(&agent, id, opts).await {
                tracing::warn!(sandbox = %id, error = %e, "could not destroy a deleted host's sandbox");
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// A heartbeat's optional body.
#[derive(Default, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatBody {
    /// What the host has and what its sandboxes take of it; the scheduler places by it.
    capacity: Option<HostCapacity>,
}

/// The agent's liveness signal: marks the host online and records the time, and the capacity
/// report the body carries (an empty body is a plain beat).
#[utoipa::path(
    post,
    path = "/v1/hosts/{id}/heartbeat",
    tag = "hosts",
    operation_id = "host_heartbeat",
    params(("id" = crate::ids::HostId, Path, description = "Host ID (must be the host JWT's own)")),
    request_body(content = Option<HeartbeatBody>, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "Malformed host ID or body", body = ErrorBody),
        (status = 401, description = "Missing or invalid host JWT", body = ErrorBody),
        (status = 403, description = "The JWT is another host's", body = ErrorBody),
        (status = 404, description = "No such host", body = ErrorBody),
    )
)]
pub async fn heartbeat(
    st: State,
    h: HostAuth,
    ApiPath(id): ApiPath<HostId>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    h.require_host(id.as_str())?;
    let report = super::optional_json::<HeartbeatBody>(&body)
        .map_err(|e| ApiError::invalid_request(format!("heartbeat body: {e}")))?
        .capacity;
    let back = st
        .db
        .host_heartbeat(id.as_str(), report.as_ref())
        .await
        .map_err(db_err_for("host"))?;
    if back {
        // Its sandboxes stay `missing` until the reconciler asks the agent which survived.
        tracing::info!(host_id = %id, "host is back online");
        let team = st
            .db
            .host_by_id(id.as_str())
            .await
            .ok()
            .and_then(|h| h.team_id);
        let entry = NewAuditEntry {
            team_id: team.as_deref(),
            actor_type: ActorType::System,
            actor_id: None,
            action: "host.marked_up",
            target_type: "host",
            target_id: Some(id.as_str()),
            details: serde_json::json!({}),
        };
        st.db.record_audit(entry).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::{address, team_address};

    #[test]
    fn team_addresses() {
        for ok in [
            "10.0.0.2:50051",
            "192.168.1.9:1",
            "203.0.113.7:50051",
            "http://10.0.0.2:50051",
            "https://[2001:db8::1]:443",
        ] {
            assert!(team_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:50051",
            "127.9.9.9:1",
            "[::1]:50051",
            "0.0.0.0:50051",
            "169.254.169.254:80",
            "http://169.254.169.254:80",
            "[::ffff:127.0.0.1]:1",
            "[fe80::1]:1",
            "224.0.0.1:1",
            "255.255.255.255:1",
            "10.0.0.2:0",
            "https://agent.example:443",
            "http://localhost:50051",
        ] {
            assert!(team_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:50051",
            "[::1]:50051",
            "http://10.0.0.2:50051",
            "https://agent.example:443",
        ] {
            assert_eq!(address(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "agent",
            "ftp://x:1",
            "http://",
            "10.0.0.1",
            "http://a:1/?q=1",
        ] {
            assert!(address(bad).is_err(), "{bad:?}");
        }
        assert!(address(&"1".repeat(300)).is_err());
    }
}
