//! The E2B-compatible REST API: what the official E2B SDKs call (`POST /v2/sandboxes`,
//! `/sandboxes/{id}/connect`, `GET /v2/sandboxes`, ...; reference `e2b-compat.md` §1), served
//! beside `/v1` on the same port. Each route is a translation: E2B's JSON (camelCase, RFC 3339
//! times, seconds) in, the `/v1` logic, E2B's JSON and error body (`{"code": <status>,
//! "message"}`) out. `X-API-KEY` carries a Wrenn API key.
//!
//! Differences the SDKs cannot see: sandbox IDs are Wrenn's (20 × `[a-z0-9]`, valid DNS
//! labels), `clientID` is the host's ID, `memory: false` pauses/resumes are full ones, `order`
//! of a list is always newest first.

mod error;
mod models;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use wrenn_proto::hostagent::v1 as pb;

pub use error::E2bError;
use error::{E2bAuth, E2bJson};
use models::*;

use super::sandboxes::{self, CreateSandbox, snapshots};
use crate::db::{PageRequest, Sandbox, SandboxFilter, SandboxStatus, now_ms};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ids::SandboxId;
use crate::server::AppState;

type St = AxState<Arc<AppState>>;
type E2bResult<T> = Result<T, E2bError>;

/// Most forks one request may ask for.
const MAX_FORKS: i64 = 10;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/sandboxes", post(create_v1))
        .route("/v2/sandboxes", post(create_v2).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/snapshots", get(list_snapshots))
        .route("/templates/{id}", delete(delete_snapshot))
}

/// A sandbox ID from a path; anything malformed is as unknown as a missing sandbox.
fn sandbox_id(raw: &str) -> E2bResult<SandboxId> {
    SandboxId::parse(raw).map_err(|_| E2bError::not_found(raw))
}

async fn create_v1(
    st: St,
    auth: E2bAuth,
    headers: HeaderMap,
    E2bJson(req): E2bJson<NewSandbox>,
) -> E2bResult<(StatusCode, Response)> {
    create(st, auth, headers, req).await
}

async fn create_v2(
    st: St,
    auth: E2bAuth,
    headers: HeaderMap,
    E2bJson(req): E2bJson<NewSandbox>,
) -> E2bResult<(StatusCode, Response)> {
    create(st, auth, headers, req).await
}

/// `Idempotency-Key`: 1–255 characters of `[a-z0-9-]` (E2B's rule).
fn idempotency_key(headers: &HeaderMap) -> E2bResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v.to_str().unwrap_or("");
    let ok = !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(Some(k.to_owned()))
    } else {
        Err(E2bError::bad_request(
            "Idempotency-Key must be 1 to 255 characters of [a-z0-9-]",
        ))
    }
}

async fn create(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    headers: HeaderMap,
    req: NewSandbox,
) -> E2bResult<(StatusCode, Response)> {
    let key = idempotency_key(&headers)?;
    let retry_safe = key.is_some();
    let body = CreateSandbox {
        template: Some(req.template_id.clone()),
        timeout_sec: Some(req.timeout.unwrap_or(sandboxes::DEFAULT_TIMEOUT_SEC)),
        on_timeout: Some(
            if req.auto_pause.unwrap_or(false) {
                "pause"
            } else {
                "kill"
            }
            .into(),
        ),
        env: req.env_vars,
        metadata: req.metadata,
        allow_internet: req.allow_internet_access,
        auto_resume: req.auto_resume.map(|a| a.enabled),
        public_traffic: req.network.as_ref().and_then(|n| n.allow_public_traffic),
        allow_out: req.network.as_ref().and_then(|n| n.allow_out.clone()),
        deny_out: req.network.as_ref().and_then(|n| n.deny_out.clone()),
        ..Default::default()
    };
    let made = sandboxes::create_sandbox(&st, &auth, body, key).await;
    let (sb, token) = made.map_err(|e| {
        // The only 404 a create gives before placement: its template.
        let unknown_template = e.code() == crate::error::ErrorCode::NotFound;
        let e = if unknown_template {
            E2bError::new(
                StatusCode::NOT_FOUND,
                format!("template '{}' not found", req.template_id),
            )
        } else {
            E2bError::from(e)
        };
        // A failed create left nothing behind, but the SDK retries 502/503/504 blindly:
        // without an Idempotency-Key a retry must not make a second sandbox by accident.
        if retry_safe { e } else { e.no_retry() }
    })?;
    let traffic = traffic_token(&st, &sb.id).await;
    Ok((
        StatusCode::CREATED,
        axum::Json(SandboxOut::with_traffic(&sb, token, traffic).in_domain(st.domain.as_deref()))
            .into_response(),
    ))
}

/// A private sandbox's traffic access token (`None` when its ports are public).
async fn traffic_token(st: &AppState, id: &str) -> Option<String> {
    st.db.sandbox_traffic_token(id).await.ok().flatten()
}

/// The team's sandbox, as E2B sees it: stopped and failed ones do not exist.
async fn visible(st: &AppState, team_id: &str, id: &SandboxId) -> E2bResult<Sandbox> {
    let sb = st
        .db
        .get_sandbox(team_id, id.as_str())
        .await
        .map_err(|_| E2bError::not_found(id.as_str()))?;
    if matches!(sb.status, SandboxStatus::Stopped | SandboxStatus::Error) {
        return Err(E2bError::not_found(id.as_str()));
    }
    Ok(sb)
}

async fn detail(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
) -> E2bResult<axum::Json<SandboxDetail>> {
    let id = sandbox_id(&id)?;
    let sb = visible(&st, auth.team_id(), &id).await?;
    let token = st.db.sandbox_envd_token(&sb.id).await.ok().flatten();
    Ok(axum::Json(
        SandboxDetail::new(&sb, token).in_domain(st.domain.as_deref()),
    ))
}

async fn kill(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let id = sandbox_id(&id)?;
    visible(&st, auth.team_id(), &id).await?;
    sandboxes::destroy(AxState(st), auth, ApiPath(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{timeout}` in seconds from now; E2B's connect default is 300.
async fn keepalive(
    st: &Arc<AppState>,
    auth: &crate::auth::extract::TeamAuth,
    id: &SandboxId,
    timeout: i64,
) -> E2bResult<Sandbox> {
    let body = Bytes::from(serde_json::json!({ "timeout_sec": timeout }).to_string());
    sandboxes::keepalive(AxState(st.clone()), auth.clone(), ApiPath(id.clone()), body).await?;
    visible(st, auth.team_id(), id).await
}

async fn set_timeout(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
    E2bJson(req): E2bJson<TimeoutRequest>,
) -> E2bResult<StatusCode> {
    let id = sandbox_id(&id)?;
    visible(&st, auth.team_id(), &id).await?;
    keepalive(&st, &auth, &id, req.timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attach to a running sandbox (200) or resume a paused one (201).
async fn connect(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<(StatusCode, axum::Json<SandboxOut>)> {
    let req: ConnectRequest = crate::api::optional_json(&body)
        .map_err(|e| E2bError::bad_request(format!("invalid JSON body: {e}")))?;
    let id = sandbox_id(&id)?;
    let sb = visible(&st, auth.team_id(), &id).await?;
    let status = match sb.status {
        SandboxStatus::Running => StatusCode::OK,
        SandboxStatus::Paused => {
            sandboxes::resume(AxState(st.clone()), auth.clone(), ApiPath(id.clone())).await?;
            StatusCode::CREATED
        }
        other => {
            return Err(E2bError::new(
                StatusCode::CONFLICT,
                format!("sandbox {id} is {other}"),
            ));
        }
    };
    let timeout = req.timeout.unwrap_or(sandboxes::DEFAULT_TIMEOUT_SEC);
    let sb = keepalive(&st, &auth, &id, timeout).await?;
    let token = st
        .db
        .sandbox_envd_token(&sb.id)
        .await
        .map_err(|e| E2bError::from(crate::api::db_err(e)))?
        .unwrap_or_default();
    let traffic = traffic_token(&st, &sb.id).await;
    Ok((
        status,
        axum::Json(SandboxOut::with_traffic(&sb, token, traffic).in_domain(st.domain.as_deref())),
    ))
}

async fn pause(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let id = sandbox_id(&id)?;
    let sb = visible(&st, auth.team_id(), &id).await?;
    if sb.status == SandboxStatus::Paused {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    sandboxes::pause(AxState(st), auth, ApiPath(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
    q: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> E2bResult<axum::Json<Vec<SandboxMetric>>> {
    let Query(q) = q.map_err(|e| E2bError::bad_request(e.body_text()))?;
    // Unix seconds → the agent's milliseconds; `end` covers its whole second. 0 = unbounded.
    let start_ms = metrics_bound("start", q.start.as_deref())?.saturating_mul(1000);
    let end_ms = match metrics_bound("end", q.end.as_deref())? {
        0 => 0,
        s => s.saturating_mul(1000).saturating_add(999),
    };
    let id = sandbox_id(&id)?;
    let sb = visible(&st, auth.team_id(), &id).await?;
    let req = pb::GetMetricsRequest {
        sandbox_id: sb.id.clone(),
        start_ms,
        end_ms,
        ..Default::default()
    };
    match sb.status {
        SandboxStatus::Running => {}
        // What the agent sampled before the pause, if it still has it; else an empty series.
        SandboxStatus::Paused => return Ok(axum::Json(paused_metrics(&st, &sb, req).await)),
        // Nothing runs: E2B answers an empty series.
        _ => return Ok(axum::Json(Vec::new())),
    }
    let (_, agent) = sandboxes::running(&st, auth.team_id(), &id).await?;
    let m = agent
        .rpc()
        .get_metrics_with_options(req, agent.opts())
        .await
        .map_err(|e| E2bError::from(ApiError::from(agent.err(e))))?
        .into_owned();
    if m.samples.is_empty() && start_ms == 0 && end_ms == 0 {
        // An agent that keeps no series: its current sample.
        return Ok(axum::Json(vec![SandboxMetric::new(&m)]));
    }
    Ok(axum::Json(
        m.samples.iter().map(SandboxMetric::from_sample).collect(),
    ))
}

/// A `start`/`end` query value: absent or empty is 0 (unbounded); anything but a
/// non-negative integer is a 400.
fn metrics_bound(name: &str, v: Option<&str>) -> E2bResult<i64> {
    match v.map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| E2bError::bad_request(format!("{name} must be Unix seconds"))),
    }
}

/// The samples a paused sandbox's agent kept from before the pause; best effort: an empty
/// series when its host or agent cannot tell.
async fn paused_metrics(
    st: &AppState,
    sb: &Sandbox,
    req: pb::GetMetricsRequest,
) -> Vec<SandboxMetric> {
    let Some(host_id) = sb.host_id.as_deref() else {
        return Vec::new();
    };
    let host = match st.agents.cached_host(host_id) {
        Some(h) => h,
        None => match st.db.host_by_id(host_id).await {
            Ok(h) => {
                st.agents.remember_host(h.clone());
                h
            }
            Err(_) => return Vec::new(),
        },
    };
    if host.status != crate::db::HostStatus::Online {
        return Vec::new();
    }
    let Ok(agent) = st.agents.agent(&host) else {
        return Vec::new();
    };
    // Short: an empty series is an acceptable answer, a long wait is not.
    let opts = agent.opts_timeout(std::time::Duration::from_secs(5));
    match agent.rpc().get_metrics_with_options(req, opts).await {
        Ok(m) => m
            .into_owned()
            .samples
            .iter()
            .map(SandboxMetric::from_sample)
            .collect(),
        Err(e) => {
            tracing::debug!(sandbox = %sb.id, error = %e, "metrics of a paused sandbox");
            Vec::new()
        }
    }
}

async fn create_snapshot(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<(StatusCode, axum::Json<SnapshotOut>)> {
    let req: SnapshotRequest = crate::api::optional_json(&body)
        .map_err(|e| E2bError::bad_request(format!("invalid JSON body: {e}")))?;
    let id = sandbox_id(&id)?;
    visible(&st, auth.team_id(), &id).await?;
    let name = req.name.unwrap_or_else(|| generated_name("snap", &id));
    let (_, ApiJson(tpl)) = snapshots::create(
        AxState(st.clone()),
        auth,
        ApiJson(snapshots::CreateSnapshot {
            sandbox_id: id.as_str().to_owned(),
            name,
        }),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(SnapshotOut::named(tpl.name)),
    ))
}

/// `<prefix>-<sandbox id>-<6 random hex>`: a fresh template name.
fn generated_name(prefix: &str, id: &SandboxId) -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "{prefix}-{}-{:02x}{:02x}{:02x}",
        id.as_str(),
        b[0],
        b[1],
        b[2]
    )
}

async fn list_snapshots(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    q: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> E2bResult<axum::Json<Vec<SnapshotOut>>> {
    let Query(q) = q.map_err(|e| E2bError::bad_request(e.body_text()))?;
    let all = st
        .db
        .team_snapshots(auth.team_id())
        .await
        .map_err(|e| E2bError::from(crate::api::db_err(e)))?;
    let out = all
        .into_iter()
        .filter(|t| q.name.as_ref().is_none_or(|n| *n == t.name))
        .filter(|t| {
            q.sandbox_id
                .as_ref()
                .is_none_or(|s| t.source_sandbox_id.as_deref() == Some(s.as_str()))
        })
        .map(|t| SnapshotOut::named(t.name))
        .collect();
    Ok(axum::Json(out))
}

/// Deletes a snapshot template; sandboxes made from it keep running (E2B has no dependants
/// check: this is `?force=true` of `/v1`).
async fn delete_snapshot(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(name): Path<String>,
) -> E2bResult<StatusCode> {
    let name = name.split(':').next().unwrap_or("").to_owned();
    st.db
        .team_snapshot(auth.team_id(), &name)
        .await
        .map_err(|_| {
            E2bError::new(
                StatusCode::NOT_FOUND,
                format!("template '{name}' not found"),
            )
        })?;
    snapshots::delete(
        AxState(st),
        auth,
        ApiPath(name),
        ApiQuery(snapshots::DeleteQuery { force: Some(true) }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `count` clones of a running sandbox, memory and all: a snapshot made for the purpose,
/// `count` sandboxes from it, the snapshot removed (the clones keep what they need).
async fn fork(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<(StatusCode, axum::Json<Vec<ForkResult>>)> {
    let req: ForkRequest = crate::api::optional_json(&body)
        .map_err(|e| E2bError::bad_request(format!("invalid JSON body: {e}")))?;
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(E2bError::bad_request(format!(
            "count must be between 1 and {MAX_FORKS}"
        )));
    }
    let id = sandbox_id(&id)?;
    let src = visible(&st, auth.team_id(), &id).await?;
    if src.status != SandboxStatus::Running {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is {}, not running", src.status),
        ));
    }
    let name = generated_name("fork", &id);
    snapshots::create(
        AxState(st.clone()),
        auth.clone(),
        ApiJson(snapshots::CreateSnapshot {
            sandbox_id: id.as_str().to_owned(),
            name: name.clone(),
        }),
    )
    .await?;
    let timeout = req.timeout.unwrap_or(15);
    let creates = (0..count).map(|_| {
        let body = CreateSandbox {
            template: Some(name.clone()),
            timeout_sec: Some(timeout),
            metadata: Some(src.metadata.clone()),
            auto_resume: Some(src.auto_resume),
            ..Default::default()
        };
        let (st, auth) = (st.clone(), auth.clone());
        async move { sandboxes::create_sandbox(&st, &auth, body, None).await }
    });
    let results = futures::future::join_all(creates).await;
    if let Err(e) = snapshots::delete(
        AxState(st.clone()),
        auth,
        ApiPath(name.clone()),
        ApiQuery(snapshots::DeleteQuery { force: Some(true) }),
    )
    .await
    {
        tracing::warn!(template = %name, error = %e, "could not remove a fork's snapshot");
    }
    let out = results
        .into_iter()
        .map(|r| match r {
            Ok((sb, token)) => {
                ForkResult::sandbox(SandboxOut::new(&sb, token).in_domain(st.domain.as_deref()))
            }
            Err(e) => ForkResult::error(&e),
        })
        .collect();
    Ok((StatusCode::CREATED, axum::Json(out)))
}

/// `GET /v2/sandboxes?metadata=<urlencoded k=v&...>&state=running,paused&limit=&nextToken=`.
async fn list(
    AxState(st): St,
    E2bAuth(auth): E2bAuth,
    q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> E2bResult<Response> {
    let Query(q) = q.map_err(|e| E2bError::bad_request(e.body_text()))?;
    let mut filter = SandboxFilter::default();
    let (mut limit, mut token) = (None, None);
    for (k, v) in q {
        match k.as_str() {
            "metadata" => {
                for (mk, mv) in form_urlencoded::parse(v.as_bytes()) {
                    filter.metadata.push((mk.into_owned(), mv.into_owned()));
                }
            }
            "state" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    let wanted: &[SandboxStatus] = match s {
                        "running" => &[
                            SandboxStatus::Pending,
                            SandboxStatus::Running,
                            SandboxStatus::Missing,
                        ],
                        "paused" => &[SandboxStatus::Paused],
                        _ => return Err(E2bError::bad_request("state must be running or paused")),
                    };
                    filter.statuses.extend_from_slice(wanted);
                }
            }
            "limit" => {
                limit = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| E2bError::bad_request("limit must be between 1 and 1000"))?,
                )
            }
            "nextToken" => token = Some(v).filter(|t| !t.is_empty()),
            // Accepted, not applied: lists are newest first.
            "order" | "startedAfter" | "template" => {}
            _ => {
                return Err(E2bError::bad_request(format!(
                    "unknown query parameter {k:?}"
                )));
            }
        }
    }
    if filter.metadata.len() > sandboxes::MAX_MAP_ENTRIES {
        return Err(E2bError::bad_request("too many metadata filters"));
    }
    if filter.statuses.is_empty() {
        filter.statuses = vec![
            SandboxStatus::Pending,
            SandboxStatus::Running,
            SandboxStatus::Missing,
            SandboxStatus::Paused,
        ];
    }
    let page = PageRequest::new(limit, token.as_deref())
        .map_err(|e| E2bError::from(crate::api::db_err(e)))?;
    let page = st
        .db
        .list_sandboxes(auth.team_id(), &filter, &page)
        .await
        .map_err(|e| E2bError::from(crate::api::db_err(e)))?;
    let items: Vec<ListedSandbox> = page.items.iter().map(ListedSandbox::new).collect();
    let mut resp = axum::Json(items).into_response();
    if let Some(next) = page.next_cursor
        && let Ok(v) = HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// Metadata the SDK sends must be strings; a map of anything else is a 400 (by serde).
pub(crate) type StringMap = BTreeMap<String, String>;

/// Milliseconds since the epoch → RFC 3339 (UTC).
fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    rfc3339(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn idempotency_keys() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("idempotency-key", HeaderValue::from_str(v).unwrap());
            idempotency_key(&m)
        };
        assert_eq!(h("abc-123").unwrap().as_deref(), Some("abc-123"));
        assert!(h("ABC").is_err());
        assert!(h(&"a".repeat(256)).is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }
}
