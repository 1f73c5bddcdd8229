//! A short-lived, per-process cache of *running* sandboxes' rows for the sandbox I/O routes
//! (exec, processes, files, PTY), which need only the owner, the status and the host and would
//! otherwise read the row on every call.
//!
//! Entries live [`HOT_ROW_TTL`]. Every status, host or deadline write made through this
//! process's [`super::Db`] drops the entry at once, so on one replica a call never sees a
//! sandbox this replica stopped. A change made by *another* replica is seen within the TTL;
//! until then the call reaches the host agent, which owns the VM and answers `not_found` or
//! `failed_precondition` for a sandbox that is gone or paused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Sandbox;

pub const HOT_ROW_TTL: Duration = Duration::from_secs(1);
/// Past this many entries, expired ones are dropped before inserting.
const PRUNE_AT: usize = 4096;

#[derive(Default)]
pub struct HotRows {
    rows: Mutex<HashMap<String, (Instant, Sandbox)>>,
}

impl HotRows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Sandbox)>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is valid.
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached row of `id` if it is younger than the TTL and belongs to `team_id`.
    pub fn get(&self, team_id: &str, id: &str, now: Instant) -> Option<Sandbox> {
        self.lock()
            .get(id)
            .filter(|(at, sb)| {
                now.saturating_duration_since(*at) < HOT_ROW_TTL && sb.team_id == team_id
            })
            .map(|(_, sb)| sb.clone())
    }

    pub fn put(&self, sb: Sandbox, now: Instant) {
        let mut rows = self.lock();
        if rows.len() >= PRUNE_AT {
            rows.retain(|_, (at, _)| now.saturating_duration_since(*at) < HOT_ROW_TTL);
        }
        rows.insert(sb.id.clone(), (now, sb));
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{OnTimeout, SandboxStatus};

    fn row(id: &str, team: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            team_id: team.into(),
            host_id: Some("h".into()),
            template: "base".into(),
            status: SandboxStatus::Running,
            vcpus: 1,
            memory_mb: 256,
            disk_size_mb: 5120,
            timeout_sec: 0,
            end_at: None,
            on_timeout: OnTimeout::Kill,
            envd_version: None,
            host_ip: None,
            error: None,
            created_at: 0,
            started_at: None,
            last_active_at: 0,
            updated_at: 0,
            auto_resume: false,
            metadata: Default::default(),
        }
    }

    #[test]
    fn rows_expire_stay_with_their_team_and_can_be_dropped() {
        let hot = HotRows::default();
        let t0 = Instant::now();
        hot.put(row("sb1", "team-a"), t0);
        assert!(hot.get("team-a", "sb1", t0).is_some());
        assert!(hot.get("team-b", "sb1", t0).is_none(), "another team's row");
        assert!(
            hot.get("team-a", "sb1", t0 + HOT_ROW_TTL).is_none(),
            "expired"
        );
        hot.forget("sb1");
        assert!(hot.get("team-a", "sb1", t0).is_none());
        hot.put(row("sb2", "team-a"), t0);
        hot.clear();
        assert!(hot.get("team-a", "sb2", t0).is_none());
    }
}
