//! Snapshot templates (`/v1/snapshots`): a running or paused sandbox frozen, memory and disk,
//! into a team's template that new sandboxes start from.
//!
//! A template lives on the host that made it (`template_hosts`): creates from it are placed
//! only there, and a delete reaches every host that holds it. The row is written before the
//! host makes the files, so two requests for one name never both succeed; a failed make
//! removes the row again.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use wrenn_proto::hostagent::v1 as pb;

use super::{
    Actor, SandboxStatus, State, TemplateList, TemplateView, agent_of, bad, db_err, db_err_for,
    host_agent,
};
use crate::agents::{Agent, AgentError};
use crate::auth::extract::TeamAuth;
use crate::db::{DbError, NewAuditEntry, SandboxPatch, Template, TemplateSpec};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::ids::SandboxId;
use crate::server::AppState;

/// Making a template pauses a running sandbox, writes its memory and flattens its disk.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Names are directory names on the hosts: 1–64 of `[a-z0-9_-]`.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(bad("name must be 1 to 64 characters of [a-z0-9_-]"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// A running sandbox (paused for the copy, then resumed) or a paused one (stays paused).
    #[schema(value_type = crate::ids::SandboxId)]
    pub sandbox_id: String,
    /// The template's name in the team: 1–64 of `[a-z0-9_-]`, not a platform template's.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: String,
}

async fn audit(
    st: &AppState,
    actor: &Actor,
    action: &str,
    t: &Template,
    details: serde_json::Value,
) {
    let entry = NewAuditEntry {
        team_id: t.team_id.as_deref(),
        actor_type: actor.kind,
        actor_id: Some(&actor.id),
        action,
        target_type: "template",
        target_id: Some(&t.id),
        details,
    };
    st.db.record_audit(entry).await;
}

/// Makes a snapshot template of a running or paused sandbox.
#[utoipa::path(
    post,
    path = "/v1/snapshots",
    tag = "snapshots",
    operation_id = "create_snapshot",
    request_body = CreateSnapshot,
    responses(
        (status = 201, description = "The template (`type` = `snapshot`)", body = TemplateView),
        (status = 400, description = "Bad name or sandbox ID", body = ErrorBody),
        (status = 404, description = "No such sandbox in the caller's team", body = ErrorBody),
        (status = 409, description = "`conflict`: the name is taken; `invalid_state`: the sandbox is neither running nor paused, or busy", body = ErrorBody),
        (status = 502, description = "The host could not make it; nothing was kept", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create(
    st: State,
    auth: TeamAuth,
    ApiJson(req): ApiJson<CreateSnapshot>,
) -> Result<(StatusCode, ApiJson<TemplateView>), ApiError> {
    check_name(&req.name)?;
    let id = SandboxId::parse(&req.sandbox_id).map_err(|e| bad(format!("sandbox_id: {e}")))?;
    let team_id = auth.team_id();
    let sb = st
        .db
        .get_sandbox(team_id, id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    if !matches!(sb.status, SandboxStatus::Running | SandboxStatus::Paused) {
        return Err(ApiError::invalid_state(format!(
            "sandbox is {}: only a running or paused sandbox can be snapshotted",
            sb.status
        )));
    }
    // Hosts look a platform template up before a team's: the name must stay unambiguous.
    match st.db.platform_template(&req.name).await {
        Ok(_) => {
            return Err(ApiError::conflict(format!(
                "{:?} is the name of a platform template",
                req.name
            )));
        }
        Err(DbError::NotFound) => {}
        Err(e) => return Err(db_err(e)),
    }
    let agent = agent_of(&st, &sb).await?;
    let source = st.db.template_for_team(team_id, &sb.template).await.ok();
    let spec = TemplateSpec {
        name: req.name.clone(),
        default_user: source
            .as_ref()
            .map_or_else(|| "user".to_owned(), |t| t.default_user.clone()),
        default_env: source
            .as_ref()
            .map_or_else(|| serde_json::json!({}), |t| t.default_env.clone()),
        vcpus: sb.vcpus,
        memory_mb: sb.memory_mb,
        disk_size_mb: sb.disk_size_mb,
        is_snapshot: true,
        size_bytes: 0,
    };
    let tpl = st
        .db
        .insert_team_template(team_id, &spec)
        .await
        .map_err(|e| match e {
            DbError::AlreadyExists(_) => {
                ApiError::conflict(format!("template {:?} already exists", req.name))
            }
            e => db_err(e),
        })?;
    let state = st.0.clone();
    let actor = Actor::from(&auth);
    // Detached like a create: a client that hangs up never leaves a row without files.
    let task = tokio::spawn(async move { make(&state, tpl, sb, &agent, &actor).await });
    match task.await {
        Ok(r) => r.map(|t| (StatusCode::CREATED, ApiJson(t.into()))),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn make(
    st: &AppState,
    tpl: Template,
    sb: crate::db::Sandbox,
    agent: &Agent,
    actor: &Actor,
) -> Result<Template, ApiError> {
    let started = std::time::Instant::now();
    let r = agent
        .rpc()
        .create_snapshot_with_options(
            pb::CreateSnapshotRequest {
                sandbox_id: sb.id.clone(),
                name: tpl.name.clone(),
                team_id: sb.team_id.clone(),
                ..Default::default()
            },
            agent.opts_timeout(SNAPSHOT_TIMEOUT),
        )
        .await
        .map(|r| r.into_owned());
    let info = match r {
        Ok(r) => r.snapshot.as_option().cloned().unwrap_or_default(),
        Err(e) => {
            if let Err(db) = st.db.delete_template(&tpl.id).await {
                tracing::error!(template = %tpl.id, error = %db, "could not remove the row of a failed snapshot");
            }
            return Err(agent.err(e).into());
        }
    };
    let host_id = agent.host_id().to_owned();
    let size = i64::try_from(info.size_bytes).unwrap_or(i64::MAX);
    let recorded = async {
        st.db.record_snapshot(&tpl.id, size, &sb.id).await?;
        st.db.add_template_host(&tpl.id, &host_id).await
    }
    .await;
    if let Err(e) = recorded {
        // The files exist but nothing points at them: remove both.
        delete_on_agent(agent, &tpl).await.ok();
        let _ = st.db.delete_template(&tpl.id).await;
        return Err(db_err(e));
    }
    // A running source was paused for the copy and resumed in a new network slot.
    if sb.status == SandboxStatus::Running {
        refresh_host_ip(st, agent, &sb.id).await;
    }
    tracing::info!(template = %tpl.id, sandbox = %sb.id, host = %host_id, ms = started.elapsed().as_millis() as u64, "snapshot template made");
    let tpl = Template {
        size_bytes: size,
        source_sandbox_id: Some(sb.id.clone()),
        ..tpl
    };
    audit(
        st,
        actor,
        "snapshot.create",
        &tpl,
        serde_json::json!({"name": tpl.name, "sandbox_id": sb.id, "host_id": host_id}),
    )
    .await;
    Ok(tpl)
}

async fn refresh_host_ip(st: &AppState, agent: &Agent, id: &str) {
    let got = agent
        .rpc()
        .get_sandbox_with_options(
            pb::GetSandboxRequest {
                sandbox_id: id.to_owned(),
                ..Default::default()
            },
            agent.opts(),
        )
        .await;
    let ip = match got {
        Ok(g) => g
            .into_owned()
            .sandbox
            .as_option()
            .map(|i| i.host_ip.clone())
            .filter(|ip| !ip.is_empty()),
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "could not read the sandbox after its snapshot");
            None
        }
    };
    if let Some(ip) = ip {
        let patch = SandboxPatch {
            host_ip: Some(&ip),
            ..Default::default()
        };
        if let Err(e) = st.db.update_sandbox(id, patch).await {
            tracing::warn!(sandbox = %id, error = %e, "could not record the sandbox's address");
        }
    }
}

/// The team's snapshot templates.
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "snapshots",
    operation_id = "list_snapshots",
    responses((status = 200, body = TemplateList)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(st: State, auth: TeamAuth) -> Result<ApiJson<TemplateList>, ApiError> {
    let templates = st
        .db
        .team_snapshots(auth.team_id())
        .await
        .map_err(db_err)?
        .into_iter()
        .map(TemplateView::from)
        .collect();
    Ok(ApiJson(TemplateList { templates }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even while sandboxes use it (they keep running: each holds its own reference
    /// to the template's disk and memory).
    pub force: Option<bool>,
}

/// `DeleteSnapshot` on one host; a host that no longer has it is done.
async fn delete_on_agent(agent: &Agent, tpl: &Template) -> Result<(), AgentError> {
    let r = agent
        .rpc()
        .delete_snapshot_with_options(
            pb::DeleteSnapshotRequest {
                name: tpl.name.clone(),
                team_id: tpl.team_id.clone().unwrap_or_default(),
                ..Default::default()
            },
            agent.opts(),
        )
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code == connectrpc::ErrorCode::NotFound => Ok(()),
        Err(e) => Err(agent.err(e)),
    }
}

/// Deletes a snapshot template from every host that holds it.
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{name}",
    tag = "snapshots",
    operation_id = "delete_snapshot",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$", description = "Template name: 1–64 of `[a-z0-9_-]`"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted everywhere"),
        (status = 400, description = "Malformed name or query", body = ErrorBody),
        (status = 404, description = "The team has no snapshot template by that name", body = ErrorBody),
        (status = 409, description = "`conflict`: sandboxes still use it; `error.sandbox_ids` lists them. `?force=true` deletes anyway", body = ErrorBody),
        (status = 502, description = "A host holding it could not be reached; the template stays (with the hosts that still hold it) and a retry finishes", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete(
    st: State,
    auth: TeamAuth,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    let team_id = auth.team_id();
    let tpl = st
        .db
        .team_snapshot(team_id, &name)
        .await
        .map_err(db_err_for("snapshot template"))?;
    let dependants = st
        .db
        .template_dependants(team_id, &name)
        .await
        .map_err(db_err)?;
    let force = q.force.unwrap_or(false);
    if !dependants.is_empty() && !force {
        return Err(ApiError::conflict(format!(
            "snapshot template {name:?} is used by {} sandbox(es); delete them or pass force=true",
            dependants.len()
        ))
        .with_field("sandbox_ids", dependants));
    }
    let mut failed = None;
    for host_id in st.db.template_hosts(&tpl.id).await.map_err(db_err)? {
        let done = match host_agent(&st, &host_id).await? {
            Some(agent) => delete_on_agent(&agent, &tpl).await,
            // The host row is gone (its template_hosts rows with it).
            None => Ok(()),
        };
        match done {
            Ok(()) => st
                .db
                .remove_template_host(&tpl.id, &host_id)
                .await
                .map_err(db_err)?,
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    st.db.delete_template(&tpl.id).await.map_err(db_err)?;
    audit(
        &st,
        &Actor::from(&auth),
        "snapshot.delete",
        &tpl,
        serde_json::json!({"name": tpl.name, "force": force, "dependants": dependants}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "snap-1", "my_env", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for no in ["", "A", "a.b", "a b", "../x", &"x".repeat(65), "é"] {
            assert!(check_name(no).is_err(), "{no}");
        }
    }
}
