//! Series of a labelled metric, resolved once per label and kept.
//!
//! `MetricVec::with_label_values` hashes its labels with SipHash, takes the
//! vector's lock and clones the series' `Arc` on every call, then drops it:
//! about 0.9k instructions of a `Set` over its five lookups, and four
//! atomic writes each to memory that every core shares. The hot paths
//! (a call's outcome, a provider call's time, an appended event's kind)
//! label with a few names fixed in the code, so each is looked up once
//! and kept here.
//!
//! Invariants:
//! - A label is kept in at most one slot: every lookup goes through the
//!   slots in order and claims the first empty one with `OnceLock`, so two
//!   threads resolving the same new label meet in the same slot.
//! - Labels are `&'static str`: the set is bounded by the names in the
//!   code. Past `SLOTS` distinct labels the series is looked up every time
//!   (`Series::Looked`), as before; nothing is lost, it only costs more.

use std::ops::Deref;
use std::sync::OnceLock;

/// Distinct labels kept: more than any one use names today (12 methods,
/// 8 storage operations, 4 event kinds).
const SLOTS: usize = 32;

pub struct Resolved<M> {
    slots: [OnceLock<(&'static str, M)>; SLOTS],
}

/// A series: kept, or looked up for this use only.
pub enum Series<'a, M> {
    Kept(&'a M),
    Looked(M),
}

impl<M> Deref for Series<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        match self {
            Series::Kept(m) => m,
            Series::Looked(m) => m,
        }
    }
}

impl<M> Resolved<M> {
    pub fn new() -> Self {
        Resolved { slots: [const { OnceLock::new() }; SLOTS] }
    }

    /// The series of `label`, looked up by `look_up` on its first use.
    pub fn get(&self, label: &'static str, look_up: impl FnOnce() -> M) -> Series<'_, M> {
        let mut look_up = Some(look_up);
        for slot in &self.slots {
            let (kept, series) = slot.get_or_init(|| (label, (look_up.take().expect("runs once"))()));
            // Names from the code compare by address first; the same text
            // at another address (a second copy of a constant) still matches.
            if std::ptr::eq(*kept, label) || *kept == label {
                return Series::Kept(series);
            }
        }
        Series::Looked((look_up.expect("no slot took it"))())
    }
}

impl<M> Default for Resolved<M> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_label_is_looked_up_once_and_kept_in_one_slot() {
        let looked = AtomicUsize::new(0);
        let r = Resolved::new();
        let look = |n: usize| {
            looked.fetch_add(1, Ordering::Relaxed);
            n
        };
        assert_eq!(*r.get("a", || look(1)), 1);
        assert_eq!(*r.get("b", || look(2)), 2);
        assert_eq!(*r.get("a", || look(99)), 1);
        // The same text at another address is the same label.
        let other = String::from("b").leak();
        assert_eq!(*r.get(other, || look(99)), 2);
        assert_eq!(looked.load(Ordering::Relaxed), 2);
        assert!(matches!(r.get("a", || 0), Series::Kept(_)));
    }

    #[test]
    fn past_its_slots_a_series_is_looked_up_each_time() {
        let r = Resolved::new();
        let names: Vec<&'static str> = (0..SLOTS + 2).map(|i| &*format!("l{i}").leak()).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(*r.get(name, || i), i);
        }
        for (i, name) in names.iter().enumerate() {
            let s = r.get(name, || i + 1000);
            if i < SLOTS {
                assert!(matches!(s, Series::Kept(&v) if v == i));
            } else {
                assert!(matches!(s, Series::Looked(v) if v == i + 1000));
            }
        }
    }

    #[test]
    fn threads_resolving_the_same_labels_share_their_slots() {
        let r = Resolved::new();
        let looked = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for name in ["x", "y", "z", "x", "y", "z"] {
                        let v = r.get(name, || {
                            looked.fetch_add(1, Ordering::Relaxed);
                            name.len()
                        });
                        assert_eq!(*v, 1);
                    }
                });
            }
        });
        assert_eq!(looked.load(Ordering::Relaxed), 3, "each label looked up once");
        let kept: Vec<_> = r.slots.iter().filter_map(|s| s.get().map(|(l, _)| *l)).collect();
        let mut sorted = kept.clone();
        sorted.sort();
        assert_eq!(sorted, ["x", "y", "z"], "three slots, one per label");
    }
}
