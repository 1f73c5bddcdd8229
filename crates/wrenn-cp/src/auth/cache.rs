//! A small process-wide TTL cache (API-key hash → principal, and the like).
//!
//! Entries expire `ttl` after insertion, never later: that bounds how long a revoked key
//! keeps working in *other* processes. In this process revocation calls
//! [`TtlCache::invalidate`] / [`TtlCache::invalidate_if`] and takes effect at once.
//! The cache holds at most `capacity` entries so a flood of distinct keys can't grow it
//! without bound.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Time source, so tests can move time by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Entry<V> {
    value: V,
    expires: Instant,
}

/// A thread-safe map whose entries expire after a fixed TTL.
pub struct TtlCache<K, V, C: Clock = SystemClock> {
    map: Mutex<HashMap<K, Entry<V>>>,
    ttl: Duration,
    capacity: usize,
    clock: C,
}

impl<K, V, C: Clock> std::fmt::Debug for TtlCache<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &self.lock().len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V, SystemClock> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self::with_clock(ttl, capacity, SystemClock)
    }
}

impl<K, V, C: Clock> TtlCache<K, V, C> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        // A panic while holding the lock can't leave the map inconsistent (every operation
        // is a single HashMap call), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Eq + Hash + Clone, V: Clone, C: Clock> TtlCache<K, V, C> {
    pub fn with_clock(ttl: Duration, capacity: usize, clock: C) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
            clock,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cached value, if present and not expired.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.clock.now();
        let mut map = self.lock();
        match map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value` for one TTL from now.
    pub fn insert(&self, key: K, value: V) {
        let now = self.clock.now();
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary one. Rare (only under a
                // flood of distinct keys), and a cache miss only costs a database read.
                if let Some(victim) = map.keys().next().cloned() {
                    map.remove(&victim);
                }
            }
        }
        map.insert(
            key,
            Entry {
                value,
                expires: now + self.ttl,
            },
        );
    }

    /// Forgets one key (e.g. the hash of a revoked API key).
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(key);
    }

    /// Forgets every entry whose value matches (e.g. all keys of a deleted team, or the
    /// key with a given row ID when its hash is not at hand).
    pub fn invalidate_if(&self, mut pred: impl FnMut(&V) -> bool) {
        self.lock().retain(|_, e| !pred(&e.value));
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Entries held, expired ones included until they are next touched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(clock: &ManualClock) -> TtlCache<String, u32, ManualClock> {
        TtlCache::with_clock(Duration::from_secs(5), 100, clock.clone())
    }

    #[test]
    fn entries_expire_after_ttl() {
        let clock = ManualClock::default();
        let c = cache(&clock);
        c.insert("a".into(), 1);
        assert_eq!(c.get("a"), Some(1));
        clock.advance(Duration::from_millis(4999));
        assert_eq!(c.get("a"), Some(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(c.get("a"), None, "gone exactly at the TTL");
        assert!(c.is_empty(), "expired entry removed on read");
    }

    #[test]
    fn reinsert_restarts_the_ttl_and_get_does_not() {
        let clock = ManualClock::default();
        let c = cache(&clock);
        c.insert("a".into(), 1);
        clock.advance(Duration::from_secs(4));
        assert_eq!(c.get("a"), Some(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.get("a"), None, "reads do not extend the lifetime");
        c.insert("a".into(), 2);
        clock.advance(Duration::from_secs(4));
        assert_eq!(c.get("a"), Some(2));
    }

    #[test]
    fn invalidation() {
        let clock = ManualClock::default();
        let c = cache(&clock);
        for (k, v) in [("a", 1), ("b", 2), ("c", 2)] {
            c.insert(k.into(), v);
        }
        c.invalidate("a");
        assert_eq!(c.get("a"), None);
        c.invalidate_if(|v| *v == 2);
        assert!(c.is_empty());
        c.insert("d".into(), 4);
        c.clear();
        assert_eq!(c.get("d"), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let clock = ManualClock::default();
        let c: TtlCache<u32, u32, ManualClock> =
            TtlCache::with_clock(Duration::from_secs(5), 10, clock.clone());
        for i in 0..10 {
            c.insert(i, i);
        }
        clock.advance(Duration::from_secs(6));
        c.insert(100, 100);
        assert_eq!(c.len(), 1, "expired entries swept when full");
        for i in 0..1000 {
            c.insert(i, i);
        }
        assert_eq!(c.len(), 10);
        assert_eq!(c.get(&999), Some(999), "the newest entry is kept");
    }

    #[test]
    fn real_clock_short_ttl() {
        let c: TtlCache<&str, u8> = TtlCache::new(Duration::from_millis(50), 10);
        c.insert("k", 1);
        assert_eq!(c.get("k"), Some(1));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.get("k"), None);
    }
}
