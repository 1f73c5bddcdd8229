//! The host monitor: a host whose agent stopped heartbeating is marked `unreachable` and its
//! running and paused sandboxes `missing`, so nobody is told a sandbox runs when nothing
//! answers for it. Nothing is destroyed: `missing` is reversible. When the agent beats again
//! the host is `online` (heartbeat route), and the reconciler (`api::sandboxes::reconcile`)
//! settles each `missing` row from the agent's own list: alive → `running`, paused →
//! `paused`, gone → `stopped`.
//!
//! Safe with several control-plane replicas: hosts are marked in one conditional UPDATE (each
//! host by exactly one replica) and sandbox rows through the status table's conditional
//! transitions.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{ActorType, NewAuditEntry, SandboxStatus, now_ms};
use crate::server::AppState;

/// A host silent this long is unreachable (three missed 30 s heartbeats).
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// How often the monitor looks at most: a sixth of the staleness window, 1 s to 15 s.
pub fn check_every(stale_after: Duration) -> Duration {
    (stale_after / 6).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// One pass: marks the hosts silent for longer than `stale_after`; returns how many.
pub async fn check_hosts(st: &AppState, stale_after: Duration) -> usize {
    let cutoff = now_ms() - i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    let hosts = match st.db.mark_stale_hosts_unreachable(cutoff).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "host monitor: could not check hosts");
            return 0;
        }
    };
    for host in &hosts {
        st.agents.forget_host(&host.id);
        let missing = match st
            .db
            .transition_host_sandboxes(&host.id, SandboxStatus::Missing)
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(host_id = %host.id, error = %e, "host monitor: could not mark sandboxes missing");
                Vec::new()
            }
        };
        tracing::warn!(host_id = %host.id, last_heartbeat_at = ?host.last_heartbeat_at, sandboxes = missing.len(), "host unreachable: its sandboxes are missing");
        let entry = NewAuditEntry {
            team_id: host.team_id.as_deref(),
            actor_type: ActorType::System,
            actor_id: None,
            action: "host.marked_down",
            target_type: "host",
            target_id: Some(&host.id),
            details: serde_json::json!({ "missing_sandboxes": missing }),
        };
        st.db.record_audit(entry).await;
    }
    hosts.len()
}

/// Runs [`check_hosts`] every `every` until the process ends. The first check waits
/// `stale_after`: heartbeats sent while no control plane was listening failed, so a host is
/// judged silent only once this process has been listening long enough to hear it.
pub async fn run(st: Arc<AppState>, every: Duration, stale_after: Duration) {
    tokio::time::sleep(stale_after).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_hosts(&st, stale_after).await;
    }
}
