//! Keeping sandbox rows true to what the agents have.
//!
//! Agents act on their own: they destroy (or pause) a sandbox at its deadline and mark it
//! `error` when its VM dies. Two paths bring that into the database:
//! - on read ([`expired`]): a `running` row past its deadline is checked with its agent before
//!   it is shown, so a GET right after the deadline already says `stopped`. Rows within their
//!   deadline cost no agent call (GET stays one indexed query);
//! - in the background ([`run_reconciler`], every [`RECONCILE_INTERVAL`]): each online host's
//!   `ListSandboxes` — reaped and paused IDs, sandboxes in `error`, `running` rows the agent no
//!   longer has, `pending` rows whose create died with a previous process — and VMs whose row
//!   is already `stopped`/`error` (an orphan of a create that failed or was deleted while
//!   booting) are destroyed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wrenn_proto::hostagent::v1 as pb;

use super::{destroy_best_effort, host_agent};
use crate::agents::Agent;
use crate::db::{DbError, Host, HostStatus, Sandbox, SandboxStatus, now_ms};
use crate::server::AppState;

pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// Agent call deadline on the read path: a slow host must not stall a GET for long.
const READ_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A `running` row the agent does not list is only stopped if it was running this long before
/// the list was taken (clock skew between replicas, a create settling).
const MISSING_GRACE_MS: i64 = 30_000;
/// Bounds on one host's `ListSandboxes` answer.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;
const MAX_LIST_ENTRIES: usize = 10_000;
/// How old a VM no row knows must be before it is destroyed.
pub const ORPHAN_GRACE_MS: i64 = 60_000;
/// A `pending` row older than a create can take has lost its create task.
const STALE_PENDING_MS: i64 = super::CREATE_TIMEOUT.as_millis() as i64 + 60_000;
/// A `pending` row whose sandbox its agent has listed as made since an earlier pass has
/// lost its create task too: a live task records the agent's answer within moments. (Two
/// passes, so a create finishing between one pass's read of the rows and its list of the
/// agent is never taken for lost.)
const LOST_CREATE_MS: i64 = RECONCILE_INTERVAL.as_millis() as i64 / 2;

/// `pending` rows whose sandbox an agent listed as made, with when that was first seen
/// (this process's passes only; another replica's passes start their own count).
#[derive(Default)]
pub struct LostCreates(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl LostCreates {
    /// When `id` was first seen made while its row was `pending` (now, if this is the first).
    fn first_seen(&self, id: &str, now: i64) -> i64 {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Rows settle within a pass or two; anything older is a row that went away.
        m.retain(|_, t| *t > now - 10 * LOST_CREATE_MS);
        *m.entry(id.to_owned()).or_insert(now)
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// What the agent says about one sandbox, as a row status.
fn agent_status(info: &pb::SandboxInfo) -> Option<SandboxStatus> {
    match info.status.as_known()? {
        pb::SandboxStatus::SANDBOX_STATUS_RUNNING => Some(SandboxStatus::Running),
        pb::SandboxStatus::SANDBOX_STATUS_PAUSED => Some(SandboxStatus::Paused),
        pb::SandboxStatus::SANDBOX_STATUS_STOPPED => Some(SandboxStatus::Stopped),
        pb::SandboxStatus::SANDBOX_STATUS_ERROR => Some(SandboxStatus::Error),
        _ => None,
    }
}

/// Moves the row; on a lost race returns the row as it is now.
async fn settle(st: &AppState, sb: Sandbox, to: SandboxStatus, error: Option<&str>) -> Sandbox {
    match st.db.transition_sandbox(&sb.id, to, error).await {
        Ok(n) => {
            tracing::info!(sandbox = %sb.id, from = %sb.status, to = %to, "sandbox reconciled with its agent");
            // Paused at its deadline by the agent: a paused sandbox's deadline stops.
            if to == SandboxStatus::Paused
                && n.end_at.is_some()
                && st
                    .db
                    .set_sandbox_deadline(&n.id, n.timeout_sec, None)
                    .await
                    .is_ok()
            {
                return Sandbox { end_at: None, ..n };
            }
            n
        }
        Err(DbError::Conflict { .. }) => st.db.get_sandbox(&sb.team_id, &sb.id).await.unwrap_or(sb),
        Err(e) => {
            tracing::warn!(sandbox = %sb.id, error = %e, "could not reconcile sandbox");
            sb
        }
    }
}

/// A `running` row past its deadline, checked with its agent; any other row as it is.
pub(super) async fn expired(st: &AppState, sb: Sandbox) -> Sandbox {
    if sb.status != SandboxStatus::Running || sb.end_at.is_none_or(|e| e > now_ms()) {
        return sb;
    }
    let Some(host_id) = sb.host_id.clone() else {
        return sb;
    };
    let agent = match host_agent(st, &host_id).await {
        Ok(Some(a)) => a,
        _ => return sb,
    };
    let r = agent
        .rpc()
        .get_sandbox_with_options(
            pb::GetSandboxRequest {
                sandbox_id: sb.id.clone(),
                ..Default::default()
            },
            agent.opts_timeout(READ_CHECK_TIMEOUT),
        )
        .await;
    match r {
        Err(e) if e.code == connectrpc::ErrorCode::NotFound => {
            settle(st, sb, SandboxStatus::Stopped, None).await
        }
        // Unreachable host: show the row as stored; the host monitor handles hosts.
        Err(_) => sb,
        Ok(r) => {
            let r = r.into_owned();
            let Some(info) = r.sandbox.as_option() else {
                return sb;
            };
            match agent_status(info) {
                Some(SandboxStatus::Running) => {
                    // Still alive: the agent's deadline is the truth (its reaper may lag).
                    let end_at = (info.end_at_ms > 0).then_some(info.end_at_ms);
                    if end_at != sb.end_at
                        && st
                            .db
                            .set_sandbox_deadline(&sb.id, sb.timeout_sec, end_at)
                            .await
                            .is_ok()
                    {
                        return Sandbox { end_at, ..sb };
                    }
                    sb
                }
                Some(SandboxStatus::Error) => {
                    let msg = info.error.clone();
                    settle(st, sb, SandboxStatus::Error, Some(&msg)).await
                }
                Some(to) => settle(st, sb, to, None).await,
                None => sb,
            }
        }
    }
}

/// Reconciles every online host every `every`, until the process ends. Hosts are visited
/// concurrently, each bounded by `every` (a dead or slow host cannot stall the others), and
/// each pass over a host is claimed in the database first, so with several control-plane
/// replicas one of them reconciles a host per interval (no orphan destroyed twice).
pub async fn run_reconciler(st: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A little shorter than the interval: this replica's next tick must find its claim over.
    let lease_ms = i64::try_from(every.as_millis() * 9 / 10).unwrap_or(i64::MAX);
    loop {
        tick.tick().await;
        let hosts = match st.db.list_all_hosts().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: could not list hosts");
                continue;
            }
        };
        let passes = hosts
            .iter()
            .filter(|h| h.status == HostStatus::Online)
            .map(|host| {
                let st = &st;
                async move {
                    match st.db.claim_host_reconcile(&host.id, lease_ms).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(host = %host.id, error = %e, "reconciler: could not claim host");
                            return;
                        }
                    }
                    match tokio::time::timeout(every, reconcile_host(st, host)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(host = %host.id, error = %e, "reconciler: host not reconciled")
                        }
                        Err(_) => {
                            tracing::warn!(host = %host.id, "reconciler: host pass timed out")
                        }
                    }
                }
            });
        futures::future::join_all(passes).await;
    }
}

/// One pass over one host. Errors mean the host could not be asked; nothing was changed then.
pub async fn reconcile_host(st: &AppState, host: &Host) -> Result<(), crate::agents::AgentError> {
    let agent: Agent = st.agents.agent(host)?;
    // Rows first: a row running before the list was taken must be in the list.
    let taken_at = now_ms();
    let rows = match st
        .db
        .sandboxes_on_host(
            &host.id,
            &[
                SandboxStatus::Running,
                SandboxStatus::Pending,
                SandboxStatus::Missing,
            ],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(host = %host.id, error = %e, "reconciler: could not read sandboxes");
            return Ok(());
        }
    };
    // A host (a BYOC tenant's, say) may answer anything: the answer is bounded in bytes and
    // in entries.
    let mut listed = agent
        .rpc()
        .list_sandboxes_with_options(
            pb::ListSandboxesRequest::default(),
            agent.opts().with_max_message_size(MAX_LIST_BYTES),
        )
        .await
        .map_err(|e| agent.err(e))?
        .into_owned();
    let mut complete = true;
    for (what, n) in [
        ("sandboxes", listed.sandboxes.len()),
        ("reaped", listed.reaped_ids.len()),
        ("paused", listed.paused_ids.len()),
    ] {
        if n > MAX_LIST_ENTRIES {
            complete = false;
            tracing::warn!(host = %host.id, what, n, "reconciler: host listed too many; the rest is ignored this pass");
        }
    }
    listed.sandboxes.truncate(MAX_LIST_ENTRIES);
    listed.reaped_ids.truncate(MAX_LIST_ENTRIES);
    listed.paused_ids.truncate(MAX_LIST_ENTRIES);
    let on_agent: HashSet<&str> = listed
        .sandboxes
        .iter()
        .map(|s| s.sandbox_id.as_str())
        .collect();
    let find = |id: &str| rows.iter().find(|r| r.id == id).cloned();

    for id in &listed.reaped_ids {
        if let Some(sb) = find(id) {
            settle(st, sb, SandboxStatus::Stopped, None).await;
        }
    }
    for id in &listed.paused_ids {
        if let Some(sb) = find(id) {
            settle(st, sb, SandboxStatus::Paused, None).await;
        }
    }
    for info in &listed.sandboxes {
        match (agent_status(info), find(&info.sandbox_id)) {
            (Some(SandboxStatus::Error), Some(sb)) => {
                let msg = info.error.clone();
                settle(st, sb, SandboxStatus::Error, Some(&msg)).await;
            }
            // Its host was unreachable and is back: the sandbox survived.
            (Some(SandboxStatus::Running), Some(sb)) if sb.status == SandboxStatus::Missing => {
                tracing::info!(sandbox = %sb.id, host = %host.id, "reconciler: missing sandbox is running again");
                settle(st, sb, SandboxStatus::Running, None).await;
            }
            (Some(SandboxStatus::Paused), Some(sb)) if sb.status == SandboxStatus::Missing => {
                tracing::info!(sandbox = %sb.id, host = %host.id, "reconciler: missing sandbox is paused");
                settle(st, sb, SandboxStatus::Paused, None).await;
            }
            (Some(SandboxStatus::Running | SandboxStatus::Paused), None) => {
                // Not live in our rows: an orphan if its row is finished, or if no row knows
                // it at all once it is older than the grace (a VM from a lost create, or one
                // a hostile host reports).
                match st.db.get_sandbox_any_team(&info.sandbox_id).await {
                    Ok(sb)
                        if sb.host_id.as_deref() == Some(host.id.as_str())
                            && matches!(
                                sb.status,
                                SandboxStatus::Stopped | SandboxStatus::Error
                            ) =>
                    {
                        tracing::info!(sandbox = %sb.id, status = %sb.status, "reconciler: destroying orphan VM");
                        destroy_best_effort(&agent, &sb.id).await;
                    }
                    Err(DbError::NotFound) if info.created_at_ms < taken_at - ORPHAN_GRACE_MS => {
                        tracing::warn!(sandbox = %info.sandbox_id, host = %host.id, "reconciler: destroying a VM no row knows");
                        destroy_best_effort(&agent, &info.sandbox_id).await;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for sb in rows {
        if sb.status == SandboxStatus::Pending {
            // Its create task died with a previous process (a crashed control plane, or a
            // database that failed it): the agent made the sandbox but nobody recorded it,
            // or a create settles within CREATE_TIMEOUT otherwise.
            let made = on_agent.contains(sb.id.as_str());
            let lost =
                made && st.lost_creates.first_seen(&sb.id, taken_at) <= taken_at - LOST_CREATE_MS;
            if lost || sb.created_at < taken_at - STALE_PENDING_MS {
                // The row first: a create task still alive then loses its own pending →
                // running and removes the VM itself; one that already won leaves this a no-op.
                match st
                    .db
                    .transition_sandbox(&sb.id, SandboxStatus::Error, Some("create did not finish"))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(sandbox = %sb.id, host = %host.id, "reconciler: failing a create that lost its task");
                        st.lost_creates.forget(&sb.id);
                        destroy_best_effort(&agent, &sb.id).await;
                    }
                    Err(DbError::Conflict { .. }) => st.lost_creates.forget(&sb.id),
                    Err(e) => {
                        tracing::warn!(sandbox = %sb.id, error = %e, "could not fail a lost create")
                    }
                }
            }
            continue;
        }
        // A `missing` row the agent does not know is gone for good; a running one only after
        // the grace (a create that just finished may not be listed yet).
        // A cut list says nothing about what it left out.
        let gone = complete
            && !on_agent.contains(sb.id.as_str())
            && !listed.reaped_ids.contains(&sb.id)
            && !listed.paused_ids.contains(&sb.id)
            && (sb.status == SandboxStatus::Missing
                || sb
                    .started_at
                    .is_some_and(|t| t < taken_at - MISSING_GRACE_MS));
        if gone {
            settle(st, sb, SandboxStatus::Stopped, None).await;
        }
    }
    Ok(())
}
