//! Slot allocation: each live sandbox owns one slot, from which every network name and address
//! is derived, so two sandboxes never share a slot.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// Hands out the lowest free slot in `1..=max_slots`. Thread-safe.
#[derive(Debug)]
pub struct SlotAllocator {
    max_slots: u32,
    in_use: Mutex<BTreeSet<u32>>,
}

impl SlotAllocator {
    pub fn new(max_slots: u32) -> Self {
        Self {
            max_slots,
            in_use: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn max_slots(&self) -> u32 {
        self.max_slots
    }

    /// The lowest free slot, now marked in use; `None` when all are taken.
    pub fn alloc(&self) -> Option<u32> {
        let mut used = self.lock();
        // `used` is sorted, so the first gap in 1, 2, 3, ... is the lowest free slot.
        let mut want = 1;
        for &s in used.iter() {
            if s != want {
                break;
            }
            want += 1;
        }
        if want > self.max_slots {
            return None;
        }
        used.insert(want);
        Some(want)
    }

    /// Frees `slot`; returns whether it was in use.
    pub fn release(&self, slot: u32) -> bool {
        self.lock().remove(&slot)
    }

    /// Marks a specific slot in use (re-adopting a sandbox after a restart). Returns false if the
    /// slot is out of range or already taken.
    pub fn reserve(&self, slot: u32) -> bool {
        if slot == 0 || slot > self.max_slots {
            return false;
        }
        self.lock().insert(slot)
    }

    /// Slots in use, ascending.
    pub fn in_use(&self) -> Vec<u32> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        // The set stays consistent even if a holder panicked: every mutation is one call.
        self.in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_lowest_free_slot() {
        let a = SlotAllocator::new(5);
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.alloc(), Some(3));
        assert!(a.release(2));
        assert_eq!(a.alloc(), Some(2), "a released slot is reused first");
        assert_eq!(a.alloc(), Some(4));
        assert_eq!(a.in_use(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn release_of_unused_slot_reports_false() {
        let a = SlotAllocator::new(3);
        assert!(!a.release(1));
        assert_eq!(a.alloc(), Some(1));
        assert!(a.release(1));
        assert!(!a.release(1));
        assert!(a.in_use().is_empty());
    }

    #[test]
    fn reserve_takes_a_specific_slot() {
        let a = SlotAllocator::new(4);
        assert!(a.reserve(1));
        assert!(a.reserve(3));
        assert!(!a.reserve(3), "already taken");
        assert!(!a.reserve(0), "slot 0 does not exist");
        assert!(!a.reserve(5), "beyond max_slots");
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.alloc(), Some(4));
        assert_eq!(a.alloc(), None);
        assert_eq!(a.in_use(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn exhaustion_then_release() {
        let a = SlotAllocator::new(2);
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.alloc(), None);
        assert!(a.release(1));
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), None);
        assert_eq!(SlotAllocator::new(0).alloc(), None);
    }

    #[test]
    fn concurrent_allocs_are_unique() {
        let a = std::sync::Arc::new(SlotAllocator::new(400));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..50).filter_map(|_| a.alloc()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("alloc thread"))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<_>>());
        assert_eq!(a.alloc(), None);
    }
}
