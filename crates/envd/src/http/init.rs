//! `POST /init`: the orchestrator hands envd its sandbox's access token, environment,
//! default user and working directory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use base64::Engine;
use http::StatusCode;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use crate::auth::AuthError;
use crate::paths;
use crate::state::EnvdState;
use crate::users::{User, UserError};

/// The `/init` body. Every field is optional and unknown fields are ignored; the upstream
/// fields envd has no use for (`volumeMounts`, `hyperloopIP`, `lifecycleID`, `caBundle`)
/// are accepted only so that orchestrators sending them are not refused.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub access_token: Option<String>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub default_user: Option<String>,
    pub default_workdir: Option<String>,
    pub timestamp: Option<String>,
    /// Wrenn's addition: base64 random bytes a restored guest reseeds its CRNG with.
    pub entropy: Option<String>,
}

pub async fn init(
    State(state): State<Arc<EnvdState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid /init body: {e}")))?
    };
    let timestamp = req
        .timestamp
        .as_deref()
        .map(|t| time::OffsetDateTime::parse(t, &Rfc3339))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid timestamp: {e}")))?;

    let entropy = req
        .entropy
        .as_deref()
        .map(|e| base64::engine::general_purpose::STANDARD.decode(e))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid entropy: {e}")))?;
    if entropy
        .as_ref()
        .is_some_and(|e| e.is_empty() || e.len() > crate::guest::MAX_ENTROPY_BYTES)
    {
        return Err(ApiError::bad_request(format!(
            "entropy must be 1 to {} bytes",
            crate::guest::MAX_ENTROPY_BYTES
        )));
    }

    // Validate everything before applying anything, so a refused init changes nothing.
    let user = match req.default_user.as_deref().filter(|u| !u.is_empty()) {
        Some(name) => Some(User::lookup(name).map_err(|e| match e {
            UserError::Lookup(_) => ApiError::from(AuthError::User(e)),
            _ => ApiError::bad_request(format!("defaultUser: {e}")),
        })?),
        None => None,
    };
    let workdir = match req.default_workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => {
            let home_of = match &user {
                Some(u) => u.clone(),
                None => state.named_user(None)?,
            };
            Some(paths::resolve(w, &home_of, None)?)
        }
        None => None,
    };

    if !state.accept_init_timestamp(timestamp) {
        tracing::info!(?timestamp, "ignoring /init older than the last one applied");
        return Ok(StatusCode::NO_CONTENT);
    }
    if state.guest {
        // A restored VM: its clock stood still while it was paused, and its random generator
        // is the snapshot's. Failures are logged, not fatal: the sandbox still works.
        if let Some(t) = timestamp {
            match crate::guest::set_clock(t, time::Duration::milliseconds(100)) {
                Ok(true) => tracing::info!(%t, "wall clock set from /init"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot set the wall clock"),
            }
        }
        if let Some(seed) = &entropy
            && let Err(e) = crate::guest::reseed(seed)
        {
            tracing::warn!(error = %e, "cannot reseed the random generator");
        }
    }
    state.update_defaults(|d| {
        if let Some(u) = &user {
            d.user = u.name.clone();
        }
        if let Some(w) = workdir {
            d.workdir = Some(w);
        }
        if let Some(env) = req.env_vars {
            d.env.extend(env);
        }
    });
    // An empty token is ignored rather than taken as "disable auth": clearing protection
    // by accident must not be possible.
    if let Some(token) = req.access_token.filter(|t| !t.is_empty()) {
        state.set_access_token(Some(token));
    }
    tracing::info!(user = ?user.map(|u| u.name), "applied /init");
    Ok(StatusCode::NO_CONTENT)
}
