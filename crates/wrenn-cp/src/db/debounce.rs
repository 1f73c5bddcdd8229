//! Debounced activity writes (`api_keys.last_used_at`, `sandboxes.last_active_at`).
//!
//! Every authenticated request would otherwise cost a write. Two layers keep it to at most one
//! write per row per minute:
//! - in memory, per process ([`Debouncer`]): a row touched within the interval is not sent to
//!   the database at all;
//! - in SQL: the UPDATE only changes the row when the stored value is older than the interval.
//!
//! With several control-plane replicas each replica has its own memory, so each may *send* one
//! UPDATE per row per minute, but the SQL guard means the row itself still changes at most once
//! per interval (give or take a race between replicas in the same millisecond window). The
//! stored value can therefore lag the real last use by up to one interval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const ACTIVITY_INTERVAL: Duration = Duration::from_secs(60);

/// Once the map holds this many rows, entries older than the interval are dropped, so memory
/// stays bounded by the number of rows active within one interval.
const PRUNE_AT: usize = 4096;

pub struct Debouncer {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Debouncer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// True when `key` was not let through within the interval; records `now` if so.
    pub fn should_write(&self, key: &str, now: Instant) -> bool {
        // A poisoned lock only means another thread panicked mid-insert; the map is still a
        // valid cache.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = last.get(key)
            && now.saturating_duration_since(*at) < self.interval
        {
            return false;
        }
        if last.len() >= PRUNE_AT {
            let interval = self.interval;
            last.retain(|_, at| now.saturating_duration_since(*at) < interval);
        }
        last.insert(key.to_owned(), now);
        true
    }

    /// Forget `key`, so the next touch writes (e.g. after the write itself failed).
    pub fn forget(&self, key: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_per_interval_per_key() {
        let d = Debouncer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(d.should_write("a", t0));
        assert!(!d.should_write("a", t0 + Duration::from_secs(59)));
        assert!(d.should_write("b", t0 + Duration::from_secs(1)));
        assert!(d.should_write("a", t0 + Duration::from_secs(60)));
        assert!(!d.should_write("a", t0 + Duration::from_secs(61)));
        d.forget("a");
        assert!(d.should_write("a", t0 + Duration::from_secs(62)));
    }

    #[test]
    fn prunes_old_entries() {
        let d = Debouncer::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            assert!(d.should_write(&i.to_string(), t0));
        }
        assert!(d.should_write("late", t0 + Duration::from_secs(2)));
        assert_eq!(d.last.lock().unwrap().len(), 1);
    }
}
