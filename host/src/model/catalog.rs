//! The catalog: which domains and types hold data, with how many records
//! (current states) and events each has and when the last event came. It
//! is what a new user (or a console) lists before knowing any name.
//!
//! Every provider answers it the same way: one entry per (domain, type)
//! that has at least one event, sorted by domain then type (byte order);
//! `records` counts the records whose current state exists (deleted ones
//! are not counted, their events are). `Tally` derives it from events in
//! seq order, for providers that have nothing better than their feed.

use super::{Event, RecordRef};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub domain: String,
    pub ty: String,
    /// Records of this domain and type that have a current state.
    pub records: u64,
    /// Events of this domain and type, deletions included.
    pub events: u64,
    /// Time of the latest event (by time, not seq), Unix nanoseconds.
    pub last_event_time: i64,
}

/// A listing: the entries, and the store's head seq read before them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub entries: Vec<CatalogEntry>,
    pub head: u64,
}

/// The catalog built from events read in seq order: counts per type and,
/// per record, whether its latest event left a state (memory: one entry per
/// record ever written).
#[derive(Debug, Default)]
pub struct Tally {
    types: BTreeMap<(String, String), CatalogEntry>,
    live: HashMap<RecordRef, bool>,
}

impl Tally {
    pub fn add(&mut self, e: &Event) {
        let entry = self
            .types
            .entry((e.record.domain.clone(), e.record.ty.clone()))
            .or_insert_with(|| CatalogEntry {
                domain: e.record.domain.clone(),
                ty: e.record.ty.clone(),
                records: 0,
                events: 0,
                last_event_time: i64::MIN,
            });
        entry.events += 1;
        entry.last_event_time = entry.last_event_time.max(e.time);
        self.live.insert(e.record.clone(), e.values.is_some());
    }

    pub fn finish(mut self) -> Vec<CatalogEntry> {
        for (record, live) in self.live {
            if live && let Some(entry) = self.types.get_mut(&(record.domain, record.ty)) {
                entry.records += 1;
            }
        }
        self.types.into_values().collect()
    }
}

/// Puts entries in catalog order (domain, then type, byte order), for
/// providers whose backend sorts otherwise.
pub fn sort(entries: &mut [CatalogEntry]) {
    entries.sort_by(|a, b| (&a.domain, &a.ty).cmp(&(&b.domain, &b.ty)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn event(seq: u64, d: &str, t: &str, k: &str, live: bool, time: i64) -> Event {
        Event {
            id: seq.to_string(),
            seq,
            record: RecordRef { domain: d.into(), ty: t.into(), key: k.into() },
            values: live.then(Default::default),
            claims: Default::default(),
            time,
            version: 1,
            kind: if live { EventKind::Set } else { EventKind::Del },
            method: String::new(),
        }
    }

    #[test]
    fn counts_live_records_and_every_event() {
        let mut t = Tally::default();
        for e in [
            event(1, "b", "x", "1", true, 10),
            event(2, "a", "y", "1", true, 30),
            event(3, "a", "y", "2", true, 20),
            event(4, "a", "y", "1", false, 25),
            event(5, "b", "x", "2", true, 5),
        ] {
            t.add(&e);
        }
        let got = t.finish();
        let summary: Vec<_> = got.iter().map(|e| (e.domain.as_str(), e.ty.as_str(), e.records, e.events, e.last_event_time)).collect();
        assert_eq!(summary, [("a", "y", 1, 3, 30), ("b", "x", 2, 2, 10)]);
    }
}
