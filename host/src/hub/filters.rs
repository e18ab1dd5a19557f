//! Stream filters, interned: every stream whose filter has the same
//! canonical form (`EventFilter::canonical`) holds the same `SharedFilter`,
//! so a filter is evaluated once per event however many streams use it.
//!
//! - Live events: the feed hands an event to the ring of each watched
//!   (topic, filter) pair only if the filter admits it (`feed::Rings::push`),
//!   so a stream is woken only for events it sends, and 1,000 streams on one
//!   filter cost one evaluation per event.
//! - Replayed history: each stream reads its own pages from storage, and
//!   asks the same `SharedFilter`; the verdicts of the most recent events
//!   are kept (`VERDICTS`, by seq, which names one event in a store), so
//!   streams replaying the same history (a reconnect after a restart) also
//!   share evaluations.
//!
//! `stream_filter_evaluations_total` counts the matcher's runs.

use crate::model::{Event, EventFilter};
use lru::LruCache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Verdicts a filter remembers, for the most recently evaluated events.
const VERDICTS: usize = 1024;

pub struct SharedFilter {
    filter: EventFilter,
    /// seq → verdict, for the most recent events. Held while evaluating,
    /// so two streams asking at once evaluate once.
    verdicts: Mutex<LruCache<u64, bool>>,
    evaluations: prometheus::IntCounter,
    /// `hub_filters`, which counts live shared filters.
    gauge: prometheus::IntGauge,
}

impl Drop for SharedFilter {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl SharedFilter {
    /// Whether the filter admits the event: remembered, or evaluated once.
    pub fn admits(&self, event: &Event) -> bool {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = verdicts.get(&event.seq) {
            return *v;
        }
        self.evaluations.inc();
        let verdict = self.filter.matches(event);
        verdicts.put(event.seq, verdict);
        if verdicts.len() > VERDICTS {
            verdicts.pop_lru();
        }
        verdict
    }

    pub fn canonical(&self) -> &str {
        self.filter.canonical()
    }
}

impl std::fmt::Debug for SharedFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.canonical())
    }
}

/// The live filters, by canonical form; a filter goes with its last
/// stream (its entry here with the next one made).
pub(super) struct Filters {
    live: Mutex<HashMap<String, Weak<SharedFilter>>>,
    evaluations: prometheus::IntCounter,
    /// `hub_filters`: distinct filters of live streams.
    gauge: prometheus::IntGauge,
}

impl Filters {
    pub(super) fn new(evaluations: prometheus::IntCounter, gauge: prometheus::IntGauge) -> Self {
        Filters {
            live: Mutex::new(HashMap::new()),
            evaluations,
            gauge,
        }
    }

    /// The shared filter of this canonical form, made if no stream holds it.
    pub(super) fn intern(&self, filter: EventFilter) -> Arc<SharedFilter> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = live.get(filter.canonical()).and_then(Weak::upgrade) {
            return shared;
        }
        // Entries of filters nobody holds go when the map would grow.
        if live.len() == live.capacity() {
            live.retain(|_, f| f.strong_count() > 0);
        }
        let key = filter.canonical().to_owned();
        self.gauge.inc();
        let shared = Arc::new(SharedFilter {
            filter,
            // Grows as it fills (`new(VERDICTS)` would reserve it all).
            verdicts: Mutex::new(LruCache::unbounded()),
            evaluations: self.evaluations.clone(),
            gauge: self.gauge.clone(),
        });
        live.insert(key, Arc::downgrade(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, RecordRef};

    fn filters() -> Filters {
        Filters::new(
            prometheus::IntCounter::new("e", "e").unwrap(),
            prometheus::IntGauge::new("g", "g").unwrap(),
        )
    }

    fn event(seq: u64, n: i64) -> Event {
        Event {
            id: seq.to_string(),
            seq,
            record: RecordRef::parse("d", "t", "k").unwrap(),
            values: Some(serde_json::json!({"n": n}).as_object().unwrap().clone().into()),
            claims: Default::default(),
            time: 0,
            version: seq,
            kind: EventKind::Set,
            method: String::new(),
        }
    }

    #[test]
    fn one_filter_written_two_ways_is_one_shared_filter_evaluated_once_per_event() {
        let f = filters();
        let a = f.intern(EventFilter::parse(r#"{"n": {"$gt": 1, "$lt": 9}}"#, "", &[]).unwrap().unwrap());
        let b = f.intern(EventFilter::parse(r#"{"n": {"$lt": 9, "$gt": 1}}"#, "", &[]).unwrap().unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        for _ in 0..100 {
            assert!(a.admits(&event(1, 5)));
            assert!(!b.admits(&event(2, 0)));
        }
        assert_eq!(f.evaluations.get(), 2);
        assert_eq!(f.gauge.get(), 1);
        drop((a, b));
        assert_eq!(f.gauge.get(), 0);
    }

    #[test]
    fn verdicts_kept_are_bounded() {
        let f = filters();
        let a = f.intern(EventFilter::parse(r#"{"n": 1}"#, "", &[]).unwrap().unwrap());
        for seq in 0..(VERDICTS as u64 * 3) {
            a.admits(&event(seq, 1));
        }
        assert_eq!(a.verdicts.lock().unwrap().len(), VERDICTS);
    }
}
