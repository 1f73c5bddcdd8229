//! Picks the host a new sandbox runs on.
//!
//! Candidates are the online hosts the team may use: its own hosts when the team brings its
//! own (`teams.is_byoc`), the platform's (`team_id IS NULL`) otherwise, narrowed to the hosts
//! holding its snapshot template when it starts from one. Among them a [`Placement`] strategy
//! chooses:
//!
//! - `least-loaded` (default): the most headroom — free vCPUs and free memory as fractions of
//!   the machine, whichever is scarcer — from the capacity its agent reported in the last
//!   heartbeat, less the sandboxes placed on it since (their rows are in the database before
//!   the next report). Among equals (to the percent), the fewest `pending` + `running`
//!   sandboxes, then the one this process picked least recently, so a burst of creates
//!   spreads instead of piling onto one host. A host that never reported ranks as full.
//! - `round-robin`: the hosts in ID order, each pick the next after the previous one.
//!
//! Either way a host is a candidate only while the sandbox fits under the limits its agent
//! reported (its admission: overcommitted vCPUs and memory, free disk kept), counting the
//! sandboxes placed since the report; the agent still has the last word, and a create it
//! refuses for room is placed again elsewhere (`api::sandboxes`), excluding that host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::db::{Candidate, Db, Host, Team};
use crate::error::{ApiError, ErrorCode};

/// How the scheduler chooses among the candidate hosts (`wrenn server --placement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    #[default]
    LeastLoaded,
    RoundRobin,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least-loaded" => Ok(Placement::LeastLoaded),
            "round-robin" => Ok(Placement::RoundRobin),
            other => Err(format!(
                "unknown placement {other:?} (least-loaded or round-robin)"
            )),
        }
    }
}

/// One placement strategy: a host among the candidates (with their loads), or none.
trait Strategy: Send + Sync + std::fmt::Debug {
    fn choose(&self, candidates: Vec<Candidate>) -> Option<Host>;
}

/// Per-process state of the strategies (a tie-breaker / cursor, not a source of truth).
#[derive(Debug)]
pub struct Scheduler {
    strategy: Box<dyn Strategy>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::with_placement(Placement::default())
    }
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_placement(placement: Placement) -> Self {
        let strategy: Box<dyn Strategy> = match placement {
            Placement::LeastLoaded => Box::new(LeastLoaded::default()),
            Placement::RoundRobin => Box::new(RoundRobin::default()),
        };
        Scheduler { strategy }
    }

    /// The host for a new sandbox of `team` and size `need`; 503 `no_hosts_available` when
    /// no online host has room for it. `only`: the hosts that hold what the sandbox starts
    /// from (a snapshot template lives on the host that made it); `None`: any host.
    /// `except`: hosts that already refused this sandbox.
    pub async fn pick(
        &self,
        db: &Db,
        team: &Team,
        need: Need,
        only: Option<&[String]>,
        except: &[String],
    ) -> Result<Host, ApiError> {
        let scope = team.is_byoc.then_some(team.id.as_str());
        let mut candidates = restrict(
            db.schedulable_hosts(scope)
                .await
                .map_err(ApiError::internal)?,
            only,
        );
        candidates.retain(|c| !except.contains(&c.host.id));
        let online = candidates.len();
        candidates.retain(|c| fits(c, need));
        self.strategy.choose(candidates).ok_or_else(|| {
            let msg = if online > 0 {
                format!(
                    "no host has room for a sandbox of {} vCPUs and {} MiB now; retry later or ask for a smaller one",
                    need.vcpus, need.memory_mib
                )
            } else if only.is_some() {
                "no host that holds the template is available to run the sandbox".to_owned()
            } else {
                "no host is available to run the sandbox".to_owned()
            };
            ApiError::new(ErrorCode::NoHostsAvailable, msg)
        })
    }
}

/// The size of the sandbox to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub vcpus: i64,
    pub memory_mib: i64,
}

/// Whether a sandbox of `need` fits under the limits `c`'s agent reported, with what was
/// placed there since. A host that reported no limits (an older agent, or no report yet) is
/// left to decide for itself.
fn fits(c: &Candidate, need: Need) -> bool {
    let Some(cap) = c.host.reported_capacity() else {
        return true;
    };
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let under = |limit: Option<u64>, allocated: u64, unreported: i64, want: i64| {
        limit.is_none_or(|l| {
            signed(allocated)
                .saturating_add(unreported)
                .saturating_add(want)
                <= signed(l)
        })
    };
    under(
        cap.vcpus_limit,
        cap.vcpus_allocated,
        c.unreported_vcpus,
        need.vcpus,
    ) && under(
        cap.memory_limit_mib,
        cap.memory_allocated_mib,
        c.unreported_memory_mib,
        need.memory_mib,
    ) && cap
        .min_free_disk_mib
        .is_none_or(|min| cap.disk_free_mib >= min)
}

/// Headroom of a candidate in percent (may be negative: overcommitted); `None` when its agent
/// never reported its capacity.
fn headroom_pct(c: &Candidate) -> Option<i64> {
    let cap = c.host.reported_capacity()?;
    if cap.vcpus == 0 || cap.memory_mib == 0 {
        return None;
    }
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let free_vcpus = i64::from(cap.vcpus) - signed(cap.vcpus_allocated) - c.unreported_vcpus;
    // Committed guest memory, bounded by what the kernel says is actually available.
    let free_mem = (signed(cap.memory_mib) - signed(cap.memory_allocated_mib))
        .min(signed(cap.memory_available_mib))
        - c.unreported_memory_mib;
    let pct = |free: i64, total: i64| free.saturating_mul(100) / total.max(1);
    Some(pct(free_vcpus, i64::from(cap.vcpus)).min(pct(free_mem, signed(cap.memory_mib))))
}

/// Most headroom, then fewest active sandboxes, then least recently picked (never picked
/// counts as oldest).
#[derive(Debug, Default)]
struct LeastLoaded {
    last_pick: Mutex<HashMap<String, Instant>>,
}

impl Strategy for LeastLoaded {
    fn choose(&self, candidates: Vec<Candidate>) -> Option<Host> {
        let mut last = self
            .last_pick
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let best = candidates.into_iter().min_by_key(|c| {
            (
                std::cmp::Reverse(headroom_pct(c).unwrap_or(i64::MIN)),
                c.active,
                last.get(&c.host.id).copied(),
            )
        })?;
        last.insert(best.host.id.clone(), Instant::now());
        // Hosts that disappeared must not keep entries forever.
        if last.len() > 10_000 {
            last.clear();
        }
        Some(best.host)
    }
}

/// The next host after the previous pick, in ID order (wrapping), whatever the loads.
#[derive(Debug, Default)]
struct RoundRobin {
    last: Mutex<Option<String>>,
}

impl Strategy for RoundRobin {
    fn choose(&self, candidates: Vec<Candidate>) -> Option<Host> {
        let mut hosts: Vec<Host> = candidates.into_iter().map(|c| c.host).collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = last
            .as_ref()
            .and_then(|prev| hosts.iter().position(|h| h.id > *prev))
            .unwrap_or(0);
        let host = (i < hosts.len()).then(|| hosts.swap_remove(i))?;
        *last = Some(host.id.clone());
        Some(host)
    }
}

/// The candidates among `only` (all of them when `None`).
fn restrict(candidates: Vec<Candidate>, only: Option<&[String]>) -> Vec<Candidate> {
    match only {
        None => candidates,
        Some(ids) => candidates
            .into_iter()
            .filter(|c| ids.contains(&c.host.id))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{HostCapacity, HostStatus};

    fn host(id: &str) -> Host {
        Host {
            id: id.into(),
            team_id: None,
            name: "h".into(),
            address: "127.0.0.1:1".into(),
            status: HostStatus::Online,
            last_heartbeat_at: None,
            specs: serde_json::json!({}),
            created_by: None,
            created_at: 0,
            credential_gen: 1,
            capacity: serde_json::json!({}),
            capacity_at: None,
            tls_fingerprint: None,
        }
    }

    /// A candidate that never reported capacity, with `active` sandboxes.
    fn cand(id: &str, active: i64) -> Candidate {
        Candidate {
            host: host(id),
            active,
            unreported_vcpus: 0,
            unreported_memory_mib: 0,
        }
    }

    /// A 4-CPU, 8 GiB host that reported `vcpus`/`mem` MiB allocated.
    fn reported(id: &str, vcpus: u64, mem: u64) -> Candidate {
        let cap = HostCapacity {
            vcpus: 4,
            vcpus_allocated: vcpus,
            memory_mib: 8192,
            memory_available_mib: 7000,
            memory_allocated_mib: mem,
            disk_free_mib: 10_000,
            sandboxes: vcpus,
            ..Default::default()
        };
        let mut c = cand(id, 0);
        c.host.capacity = serde_json::to_value(cap).unwrap();
        c
    }

    #[test]
    fn least_loaded_then_round_robin() {
        let s = LeastLoaded::default();
        assert!(s.choose(Vec::new()).is_none());
        let pick = |loads: [i64; 3]| {
            s.choose(
                ["a", "b", "c"]
                    .into_iter()
                    .zip(loads)
                    .map(|(id, n)| cand(id, n))
                    .collect(),
            )
            .unwrap()
            .id
        };
        assert_eq!(pick([3, 1, 2]), "b");
        // Equal loads: hosts never picked first, then the least recently picked.
        let mut got: Vec<String> = (0..3).map(|_| pick([0, 0, 0])).collect();
        assert_eq!(got[0], "a");
        assert_eq!(got[1], "c");
        assert_eq!(got[2], "b");
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3, "a burst spreads over all hosts");
    }

    #[test]
    fn least_loaded_places_by_reported_free_capacity() {
        let s = LeastLoaded::default();
        // b has the most free vCPUs and memory, whatever the row counts say.
        let mut a = reported("a", 3, 1024);
        a.active = 0;
        let mut b = reported("b", 1, 1024);
        b.active = 5;
        let c = reported("c", 2, 512);
        assert_eq!(
            s.choose(vec![a.clone(), b.clone(), c.clone()]).unwrap().id,
            "b"
        );
        // The scarcer resource decides: b's memory is nearly all taken.
        let b_full = reported("b", 1, 8000);
        assert_eq!(
            s.choose(vec![a.clone(), b_full, c.clone()]).unwrap().id,
            "c"
        );
        // Sandboxes placed since the report count against it.
        let mut b_busy = b.clone();
        b_busy.unreported_vcpus = 2;
        b_busy.unreported_memory_mib = 1024;
        assert_eq!(
            s.choose(vec![a.clone(), b_busy, c.clone()]).unwrap().id,
            "c"
        );
        // Real memory pressure counts too (MemAvailable below the uncommitted memory).
        let mut c_tight = c.clone();
        c_tight.host.capacity["memory_available_mib"] = 100.into();
        assert_eq!(s.choose(vec![a.clone(), c_tight]).unwrap().id, "a");
        // A host that never reported ranks after those that did.
        assert_eq!(s.choose(vec![cand("z", 0), a.clone()]).unwrap().id, "a");
        assert_eq!(headroom_pct(&cand("z", 0)), None);
        assert_eq!(headroom_pct(&reported("q", 2, 1024)), Some(50));
        assert_eq!(headroom_pct(&reported("q", 6, 1024)), Some(-50));
    }

    #[test]
    fn a_host_is_a_candidate_only_while_the_sandbox_fits_its_reported_limits() {
        let need = |vcpus, memory_mib| Need { vcpus, memory_mib };
        // Limits: 8 vCPUs, 2048 MiB, 1000 MiB kept free (10,000 free).
        let limited = |vcpus: u64, mem: u64| {
            let mut c = reported("a", vcpus, mem);
            c.host.capacity["vcpus_limit"] = 8.into();
            c.host.capacity["memory_limit_mib"] = 2048.into();
            c.host.capacity["min_free_disk_mib"] = 1000.into();
            c
        };
        assert!(
            fits(&limited(6, 1024), need(2, 1024)),
            "exactly at both limits"
        );
        assert!(!fits(&limited(7, 1024), need(2, 256)), "one vCPU over");
        assert!(!fits(&limited(2, 1800), need(1, 256)), "memory over");
        // Sandboxes placed since the report count.
        let mut busy = limited(0, 0);
        busy.unreported_vcpus = 7;
        assert!(!fits(&busy, need(2, 256)));
        busy.unreported_vcpus = 0;
        busy.unreported_memory_mib = 2000;
        assert!(!fits(&busy, need(1, 256)));
        // Below the disk floor nothing fits.
        let mut low = limited(0, 0);
        low.host.capacity["disk_free_mib"] = 999.into();
        assert!(!fits(&low, need(1, 128)));
        // No limits reported (an older agent, or no report yet): the agent decides.
        assert!(fits(&reported("b", 100, 100_000), need(8, 8192)));
        assert!(fits(&cand("c", 50), need(8, 8192)));
    }

    #[test]
    fn a_template_restricts_the_candidates() {
        let s = LeastLoaded::default();
        let all = || vec![cand("a", 0), cand("b", 5), cand("c", 9)];
        let holders = ["b".to_owned(), "c".to_owned()];
        // The least-loaded host does not hold it: the least-loaded holder wins.
        assert_eq!(s.choose(restrict(all(), Some(&holders))).unwrap().id, "b");
        assert!(s.choose(restrict(all(), Some(&[]))).is_none());
        assert!(
            s.choose(restrict(all(), Some(&["gone".to_owned()])))
                .is_none()
        );
        assert_eq!(s.choose(restrict(all(), None)).unwrap().id, "a");
    }

    #[test]
    fn round_robin_cycles_in_id_order_whatever_the_load() {
        let s = RoundRobin::default();
        assert!(s.choose(Vec::new()).is_none());
        let pick = |ids: &[&str]| {
            s.choose(ids.iter().map(|id| cand(id, 100)).collect())
                .unwrap()
                .id
        };
        let got: Vec<String> = (0..4).map(|_| pick(&["c", "a", "b"])).collect();
        assert_eq!(got, ["a", "b", "c", "a"]);
        // A host gone and one new: the cursor carries on from the last pick.
        assert_eq!(pick(&["a", "d"]), "d");
        assert_eq!(pick(&["a", "d"]), "a");
        assert_eq!("round-robin".parse(), Ok(Placement::RoundRobin));
        assert!("random".parse::<Placement>().is_err());
    }
}
