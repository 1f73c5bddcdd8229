//! `GET /envs`: the default environment variables set through `/init`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::state::EnvdState;

pub async fn envs(State(state): State<Arc<EnvdState>>) -> Json<BTreeMap<String, String>> {
    Json(state.defaults().env)
}
