//! Per record, the last version passed on: how the hub and each stream drop
//! duplicates and notice gaps without remembering every record.

use crate::model::RecordRef;
use lru::LruCache;

/// The last version handled of each of the most recently seen records, at
/// most `cap` records (the least recently seen is forgotten first), and with
/// it a payload `P` of the caller's (the hub keeps the version's seq, where
/// a gap fill starts reading; a stream keeps nothing, `()`, which takes no
/// room). It allocates as it fills: an `LruCache::new(cap)` reserves room
/// for `cap` entries up front, which, multiplied by thousands of idle
/// streams, was most of their memory.
pub struct LastVersions<P = ()> {
    map: LruCache<RecordRef, (u64, P)>,
    cap: usize,
}

impl<P: Copy> LastVersions<P> {
    pub fn new(cap: usize) -> Self {
        LastVersions {
            map: LruCache::unbounded(),
            cap: cap.max(1),
        }
    }

    /// The last version of `record`, marking it recently seen.
    pub fn get(&mut self, record: &RecordRef) -> Option<u64> {
        self.get_with(record).map(|(version, _)| version)
    }

    /// The last version of `record` and its payload, marking it recently seen.
    pub fn get_with(&mut self, record: &RecordRef) -> Option<(u64, P)> {
        self.map.get(record).copied()
    }

    /// The last version of `record`, leaving the order alone.
    pub fn peek(&self, record: &RecordRef) -> Option<u64> {
        self.map.peek(record).map(|(version, _)| *version)
    }

    /// Records `version` of `record`, with `payload`, if it is newer than
    /// the last one; returns whether it was. In place when the record is
    /// known (the usual case on a busy topic): no copy of its key.
    pub fn advance_with(&mut self, record: &RecordRef, version: u64, payload: P) -> bool {
        match self.map.get_mut(record) {
            Some((last, _)) if *last >= version => false,
            Some(last) => {
                *last = (version, payload);
                true
            }
            None => {
                self.map.put(record.clone(), (version, payload));
                if self.map.len() > self.cap {
                    self.map.pop_lru();
                }
                true
            }
        }
    }
}

impl LastVersions {
    /// Records `version` of `record` if it is newer than the last one;
    /// returns whether it was.
    pub fn advance(&mut self, record: &RecordRef, version: u64) -> bool {
        self.advance_with(record, version, ())
    }
}
