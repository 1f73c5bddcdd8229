//! TEMPORARY (h-io): stands in for the sbx helper's module until `git merge h-sbx`.

pub mod exec;
pub mod files;
pub mod guest;
pub mod process;
pub mod pty;
pub mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::agents::Agent;
use crate::api::{db_err, db_err_for};
use crate::db::{Sandbox, SandboxStatus};
use crate::error::ApiError;
use crate::ids::SandboxId;
use crate::server::AppState;

pub(crate) async fn running(
    st: &AppState,
    team_id: &str,
    id: &SandboxId,
) -> Result<(Sandbox, Agent), ApiError> {
    let sbx = st
        .db
        .get_sandbox(team_id, id.as_str())
        .await
        .map_err(db_err_for("sandbox"))?;
    if sbx.status != SandboxStatus::Running {
        return Err(ApiError::invalid_state("sandbox is not running"));
    }
    let host_id = sbx
        .host_id
        .clone()
        .ok_or_else(|| ApiError::invalid_state("sandbox has no host"))?;
    let host = st.db.host_by_id(&host_id).await.map_err(db_err)?;
    let agent = st.agents.agent(&host)?;
    Ok((sbx, agent))
}

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(exec::exec))
        .routes(routes!(exec::exec_stream))
        .routes(routes!(process::start, process::list))
        .routes(routes!(process::signal))
        .routes(routes!(process::attach))
        .routes(routes!(pty::pty))
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::download, files::remove))
        .routes(routes!(files::list))
        .routes(routes!(files::mkdir))
}
