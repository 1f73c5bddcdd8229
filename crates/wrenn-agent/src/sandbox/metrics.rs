//! Per-sandbox metrics over time: every [`SAMPLE_EVERY`] the sampler asks each running
//! sandbox's envd for one sample and keeps the newest [`RING_LEN`] per sandbox, in memory (a
//! restarted agent starts afresh). A paused sandbox takes no samples but keeps its ring; a
//! destroyed one loses it ([`Manager::destroy_sandbox`]).
//!
//! Guests control their envd, so nothing here waits on one for long: sandboxes are sampled
//! concurrently, each call bounded by [`SAMPLE_TIMEOUT`]; one that does not answer in time
//! gets no sample this round. Timestamps are the host's clock, not the guest's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;
use wrenn_proto::hostagent::v1 as pb;

use super::record::State;
use super::{Live, Manager, now_ms};
use crate::envd_client::EnvdMetrics;
use crate::storage;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// One hour at [`SAMPLE_EVERY`]; ~64 bytes a sample.
pub const RING_LEN: usize = 720;
/// Longest one envd's `/metrics` may take before its sample is skipped; below
/// [`SAMPLE_EVERY`], so a round always ends before the next one is due.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Host clock, Unix milliseconds.
    pub timestamp_ms: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub disk_used: u64,
    pub disk_total: u64,
    /// Host view: allocated bytes of the sandbox's overlay.
    pub disk_allocated: u64,
}

impl Sample {
    pub fn new(m: &EnvdMetrics, disk_allocated: u64, timestamp_ms: i64) -> Self {
        Sample {
            timestamp_ms,
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            mem_total: m.mem_total,
            mem_used: m.mem_used,
            disk_used: m.disk_used,
            disk_total: m.disk_total,
            disk_allocated,
        }
    }

    pub fn to_pb(&self) -> pb::MetricSample {
        pb::MetricSample {
            timestamp_ms: self.timestamp_ms,
            cpu_count: self.cpu_count,
            cpu_used_pct: self.cpu_used_pct,
            mem_total_bytes: self.mem_total,
            mem_used_bytes: self.mem_used,
            disk_used_bytes: self.disk_used,
            disk_total_bytes: self.disk_total,
            disk_allocated_bytes: self.disk_allocated,
            ..Default::default()
        }
    }
}

/// Whether `ts` is within `[start_ms, end_ms]`; 0 leaves that side unbounded.
pub fn in_range(ts: i64, start_ms: i64, end_ms: i64) -> bool {
    (start_ms <= 0 || ts >= start_ms) && (end_ms <= 0 || ts <= end_ms)
}

/// The newest `cap` samples of one sandbox, oldest first.
#[derive(Debug)]
pub struct Ring {
    samples: VecDeque<Sample>,
    cap: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            samples: VecDeque::with_capacity(cap.min(RING_LEN)),
            cap: cap.max(1),
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, s: Sample) {
        while self.samples.len() >= self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples within `[start_ms, end_ms]` (0 = unbounded), oldest first.
    pub fn range(&self, start_ms: i64, end_ms: i64) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| in_range(s.timestamp_ms, start_ms, end_ms))
    }
}

/// The rings of this host's sandboxes, by ID.
#[derive(Debug, Default)]
pub(super) struct History {
    rings: Mutex<HashMap<String, Ring>>,
}

impl History {
    fn record(&self, id: &str, s: Sample) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        match rings.get_mut(id) {
            Some(r) => r.push(s),
            None => {
                let mut r = Ring::new(RING_LEN);
                r.push(s);
                rings.insert(id.to_string(), r);
            }
        }
    }

    pub(super) fn range(&self, id: &str, start_ms: i64, end_ms: i64) -> Vec<pb::MetricSample> {
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|r| r.range(start_ms, end_ms).map(Sample::to_pb).collect())
            .unwrap_or_default()
    }

    pub(super) fn remove(&self, id: &str) {
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Starts the sampler; it ends when `stop` is cancelled or the manager is gone.
pub(super) fn spawn_sampler(mgr: Weak<Manager>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(m) = mgr.upgrade() else { return };
            m.sample_round().await;
        }
    });
}

/// One sample of `live`, or `None` when its envd fails or is slower than [`SAMPLE_TIMEOUT`].
async fn sample_one(live: &Live) -> Option<Sample> {
    let id = &live.vm.sandbox_id;
    let m = match tokio::time::timeout(SAMPLE_TIMEOUT, live.envd.metrics()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            debug!(sandbox_id = %id, error = %e, "metrics sample");
            return None;
        }
        Err(_) => {
            debug!(sandbox_id = %id, "metrics sample timed out");
            return None;
        }
    };
    let allocated = storage::allocated_bytes(&live.dir.join("rootfs.qcow2")).unwrap_or(0);
    Some(Sample::new(&m, allocated, now_ms()))
}

impl Manager {
    /// Samples every running sandbox once, concurrently.
    async fn sample_round(&self) {
        let running: Vec<Arc<Live>> = self
            .live
            .read()
            .await
            .values()
            .filter(|l| l.record().state == State::Running)
            .cloned()
            .collect();
        if running.is_empty() {
            return;
        }
        for l in &running {
            match crate::vmm::cap_serial_log(&l.vm.run_dir) {
                Ok(true) => {
                    debug!(sandbox_id = %l.vm.sandbox_id, "console log over its limit: emptied")
                }
                Ok(false) => {}
                Err(e) => debug!(sandbox_id = %l.vm.sandbox_id, error = %e, "console log cap"),
            }
        }
        let taken = futures::future::join_all(running.into_iter().map(|l| async move {
            let s = sample_one(&l).await;
            (l, s)
        }))
        .await;
        // Under the live map's lock, so a destroy (which removes the ring after taking the
        // sandbox out of the map) cannot interleave: a sample of a sandbox destroyed, paused
        // or replaced meanwhile is dropped rather than leaving a ring behind.
        let live = self.live.read().await;
        for (l, s) in taken {
            let Some(s) = s else { continue };
            let id = &l.vm.sandbox_id;
            if live.get(id).is_some_and(|cur| Arc::ptr_eq(cur, &l)) {
                self.metrics.record(id, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts: i64) -> Sample {
        Sample {
            timestamp_ms: ts,
            mem_total: 1,
            ..Default::default()
        }
    }

    fn stamps<'a>(it: impl Iterator<Item = &'a Sample>) -> Vec<i64> {
        it.map(|s| s.timestamp_ms).collect()
    }

    #[test]
    fn ring_keeps_the_newest_cap_samples_in_order() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        for ts in 1..=5 {
            r.push(at(ts * 1000));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(stamps(r.range(0, 0)), [3000, 4000, 5000]);
        let mut full = Ring::new(RING_LEN);
        for ts in 0..(RING_LEN as i64 + 100) {
            full.push(at(ts));
        }
        assert_eq!(full.len(), RING_LEN);
        assert_eq!(full.range(0, 0).next().map(|s| s.timestamp_ms), Some(100));
    }

    #[test]
    fn range_is_inclusive_and_zero_is_unbounded() {
        let mut r = Ring::new(10);
        for ts in [1000, 2000, 3000, 4000] {
            r.push(at(ts));
        }
        assert_eq!(stamps(r.range(2000, 3000)), [2000, 3000]);
        assert_eq!(stamps(r.range(2001, 0)), [3000, 4000]);
        assert_eq!(stamps(r.range(0, 1999)), [1000]);
        assert_eq!(stamps(r.range(5000, 0)), Vec::<i64>::new());
        assert_eq!(stamps(r.range(3000, 2000)), Vec::<i64>::new());
        assert!(in_range(1, 0, 0) && !in_range(1, 2, 0) && !in_range(3, 0, 2));
    }

    #[test]
    fn history_ranges_and_forgets_per_sandbox() {
        let h = History::default();
        for ts in [1000, 2000] {
            h.record("a", at(ts));
        }
        h.record("b", at(1500));
        let a: Vec<i64> = h
            .range("a", 1500, 0)
            .iter()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(a, [2000]);
        assert_eq!(h.range("b", 0, 0).len(), 1);
        assert!(h.range("nope", 0, 0).is_empty());
        h.remove("a");
        assert!(h.range("a", 0, 0).is_empty());
        assert_eq!(h.range("b", 0, 0)[0].mem_total_bytes, 1);
    }
}
