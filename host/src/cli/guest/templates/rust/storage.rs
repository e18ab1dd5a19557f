//! A stategate storage provider (world `storage-provider`,
//! wit/storage.wit): where events and current states live.
//!
//! This one keeps everything in the instance's memory (lost when the
//! gateway stops): a starting point that shows the contract. A real one
//! writes to `/data` (`grants.dir`) or talks to a database through
//! `grants.net` / `grants.http`. Searches return supersets (every state or
//! event of the type): the host applies the filter, sort, offset and limit
//! itself, so pushing them down is an optimisation. Reads as of an event
//! (`get-at`, `query-states-at`) bisect each record's events.
//! Check it with `stategate guest check <file.wasm>`.

wit_bindgen::generate!({ path: "wit", world: "storage-provider" });

use exports::stategate::gateway::storage::{
    AppendRequest, Appended, EventPage, EventQuery, EventScan, Expect, FeedQuery, Guest, StatePage, StateQuery,
};
use stategate::gateway::types::{Event, ProviderError, RecordRef, State};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

type Key = (String, String, String);

#[derive(Default)]
struct Store {
    /// Every event, in `seq` order (`seq` = index + 1).
    events: Vec<Event>,
    /// Current states.
    states: BTreeMap<Key, State>,
    /// The last version of every record that ever had one (deleted too).
    versions: HashMap<Key, u64>,
    /// Each record's events (indexes into `events`), in seq order.
    history: HashMap<Key, Vec<usize>>,
    /// Idempotency key → (fingerprint, index of its event).
    idempotency: HashMap<String, (String, usize)>,
}

static STORE: Mutex<Option<Store>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Store) -> T) -> T {
    let mut guard = STORE.lock().unwrap();
    f(guard.get_or_insert_with(Store::default))
}

fn key(r: &RecordRef) -> Key {
    (r.domain.clone(), r.ty.clone(), r.key.clone())
}

fn of_type(e: &Event, domain: &str, ty: &str) -> bool {
    e.record.domain == domain && e.record.ty == ty
}

/// The state a record's last event with seq <= `seq` left (none if it
/// had none, or that one deleted it), by bisection of its events.
fn state_at(s: &Store, k: &Key, seq: u64) -> Option<State> {
    let lines = s.history.get(k)?;
    let n = lines.partition_point(|i| s.events[*i].seq <= seq);
    let e = &s.events[lines[n.checked_sub(1)?]];
    let values = e.values.clone()?;
    Some(State { record: e.record.clone(), values, version: e.version })
}

struct Storage;

impl Guest for Storage {
    fn append(req: AppendRequest) -> Result<Appended, ProviderError> {
        with(|s| {
            if let Some(idem) = &req.idempotency {
                if let Some((fingerprint, at)) = s.idempotency.get(&idem.key) {
                    let earlier = &s.events[*at];
                    if earlier.time >= idem.not_before {
                        if *fingerprint != idem.fingerprint {
                            return Err(ProviderError::IdempotencyMismatch);
                        }
                        return Ok(Appended { event: earlier.clone(), replayed: true });
                    }
                }
            }
            let k = key(&req.record);
            let current = s.states.get(&k).map(|st| st.version);
            let holds = match req.expect {
                Expect::Any => true,
                Expect::Absent => current.is_none(),
                Expect::Version(v) => current == Some(v),
            };
            if !holds {
                return Err(ProviderError::VersionConflict(current));
            }
            if req.values.is_none() && current.is_none() {
                return Err(ProviderError::NotFound(format!("{}/{}/{} has no state", k.0, k.1, k.2)));
            }
            let version = s.versions.get(&k).copied().unwrap_or(0) + 1;
            let event = Event {
                id: req.id,
                seq: s.events.len() as u64 + 1,
                record: req.record,
                values: req.values,
                claims: req.claims,
                time: req.time,
                version,
                kind: req.kind,
                method: req.method,
            };
            s.versions.insert(k.clone(), version);
            s.history.entry(k.clone()).or_default().push(s.events.len());
            match &event.values {
                Some(values) => {
                    let state = State { record: event.record.clone(), values: values.clone(), version };
                    s.states.insert(k, state);
                }
                None => {
                    s.states.remove(&k);
                }
            }
            if let Some(idem) = req.idempotency {
                s.idempotency.insert(idem.key, (idem.fingerprint, s.events.len()));
            }
            s.events.push(event.clone());
            Ok(Appended { event, replayed: false })
        })
    }

    fn get(record: RecordRef) -> Result<Option<State>, ProviderError> {
        Ok(with(|s| s.states.get(&key(&record)).cloned()))
    }

    fn search_states(domain: String, ty: String) -> Result<Vec<State>, ProviderError> {
        Ok(with(|s| {
            s.states.values().filter(|st| st.record.domain == domain && st.record.ty == ty).cloned().collect()
        }))
    }

    fn search_events(scan: EventScan) -> Result<Vec<Event>, ProviderError> {
        Ok(with(|s| {
            s.events
                .iter()
                .filter(|e| of_type(e, &scan.domain, &scan.ty))
                .filter(|e| scan.key.as_ref().is_none_or(|k| e.record.key == *k))
                .filter(|e| scan.min_time.is_none_or(|t| e.time >= t) && scan.max_time.is_none_or(|t| e.time <= t))
                .cloned()
                .collect()
        }))
    }

    fn get_event(id: String) -> Result<Option<Event>, ProviderError> {
        Ok(with(|s| s.events.iter().find(|e| e.id == id).cloned()))
    }

    fn feed(q: FeedQuery) -> Result<Vec<Event>, ProviderError> {
        Ok(with(|s| {
            s.events
                .iter()
                .skip(q.after_seq as usize)
                .filter(|e| q.domain.as_ref().is_none_or(|d| e.record.domain == *d))
                .filter(|e| q.ty.as_ref().is_none_or(|t| e.record.ty == *t))
                .filter(|e| q.key.as_ref().is_none_or(|k| e.record.key == *k))
                .filter(|e| q.from_time.is_none_or(|t| e.time >= t))
                .take(q.limit as usize)
                .cloned()
                .collect()
        }))
    }

    fn head() -> Result<u64, ProviderError> {
        Ok(with(|s| s.events.len() as u64))
    }

    fn ping() -> Result<(), ProviderError> {
        Ok(())
    }

    /// A superset: every state of the type (the host filters, sorts and pages).
    fn query_states(q: StateQuery) -> Result<StatePage, ProviderError> {
        Ok(StatePage { states: Self::search_states(q.domain, q.ty)?, skipped: 0 })
    }

    /// A superset: every event of the type (and key), in the time range.
    fn query_events(q: EventQuery) -> Result<EventPage, ProviderError> {
        let scan = EventScan { domain: q.domain, ty: q.ty, key: q.key, min_time: q.min_time, max_time: q.max_time };
        Ok(EventPage { events: Self::search_events(scan)?, skipped: 0 })
    }

    fn get_at(record: RecordRef, seq: u64) -> Result<Option<State>, ProviderError> {
        Ok(with(|s| state_at(s, &key(&record), seq)))
    }

    /// A superset: every state the type had after event `seq`.
    fn query_states_at(q: StateQuery, seq: u64) -> Result<StatePage, ProviderError> {
        Ok(with(|s| {
            let of_type = s.history.keys().filter(|k| k.0 == q.domain && k.1 == q.ty);
            let states = of_type.filter_map(|k| state_at(s, k, seq)).collect();
            StatePage { states, skipped: 0 }
        }))
    }

    /// One instance: the data lives in its memory.
    fn max_instances() -> u32 {
        1
    }
}

export!(Storage);
