//! `inmem` (alias `memory`): everything in process memory, lost at exit.
//! For tests and throwaway gateways; the reference the other providers are
//! checked against, so it is written for clarity over speed.

use super::{Storage, conflict, idempotency_mismatch};
use crate::model::{
    Appended, AppendRequest, Arrival, CatalogEntry, Change, Error, Event, EventQuery, FeedQuery, RecordRef, Result, Select, State,
    StateQuery,
};
use crate::model::catalog::Tally;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// `{"name":"inmem"}` takes no options.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Keyed by (domain, type, key) so one domain/type is a contiguous range.
    states: BTreeMap<RecordRef, State>,
    /// Every version a record ever had (kept after deletion, so a recreated
    /// record continues its numbering).
    versions: HashMap<RecordRef, u64>,
    /// Events in seq order: `events[i].seq == i + 1`.
    events: Vec<Event>,
    by_id: HashMap<String, usize>,
    /// idempotency key → (fingerprint, index of its event).
    idempotency: HashMap<String, (String, usize)>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append
        // (each append mutates only after every check passed), so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "inmem"
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        let mut inner = self.lock();
        if let Some(idem) = &req.idempotency {
            if let Some((fingerprint, idx)) = inner.idempotency.get(&idem.key) {
                let first = &inner.events[*idx];
                if first.time >= idem.not_before {
                    if *fingerprint != idem.fingerprint {
                        return Err(idempotency_mismatch(&idem.key));
                    }
                    return Ok(Appended {
                        event: first.clone(),
                        replayed: true,
                    });
                }
            }
        }
        let current = inner.states.get(&req.record).map(|s| s.version);
        if !req.expect.admits(current) {
            return Err(conflict(&req, current));
        }
        if req.change == Change::Delete && current.is_none() {
            return Err(Error::NotFound(format!("state {}", req.record)));
        }
        let version = inner.versions.get(&req.record).copied().unwrap_or(0) + 1;
        let seq = inner.events.len() as u64 + 1;
        let values = match req.change {
            Change::Put(v) => Some(v),
            Change::Delete => None,
        };
        let event = Event {
            id: req.id,
            seq,
            record: req.record.clone(),
            values: values.clone(),
            claims: req.claims,
            time: req.time,
            version,
            kind: req.kind,
            method: req.method,
        };
        match values {
            Some(values) => {
                inner.states.insert(
                    req.record.clone(),
                    State {
                        record: req.record.clone(),
                        values,
                        version,
                    },
                );
            }
            None => {
                inner.states.remove(&req.record);
            }
        }
        inner.versions.insert(req.record, version);
        let idx = inner.events.len();
        inner.by_id.insert(event.id.clone(), idx);
        if let Some(idem) = req.idempotency {
            inner.idempotency.insert(idem.key, (idem.fingerprint, idx));
        }
        inner.events.push(event.clone());
        Ok(Appended {
            event,
            replayed: false,
        })
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        Ok(self.lock().states.get(record).cloned())
    }

    async fn search_states(&self, q: &StateQuery) -> Result<Vec<State>> {
        let inner = self.lock();
        let start = RecordRef {
            domain: q.domain.clone(),
            ty: q.ty.clone(),
            key: String::new(),
        };
        // One domain and type is a contiguous range, in key order.
        let candidates = inner
            .states
            .range(start..)
            .take_while(|(r, _)| r.domain == q.domain && r.ty == q.ty)
            .map(|(_, s)| s);
        let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
        Ok(q.select(arrival, candidates).into_iter().cloned().collect())
    }

    async fn search_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let inner = self.lock();
        Ok(q.select(q.seq_arrival(), &inner.events).into_iter().cloned().collect())
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let inner = self.lock();
        Ok(inner.by_id.get(id).map(|&i| inner.events[i].clone()))
    }

    async fn feed(&self, q: &FeedQuery) -> Result<Vec<Event>> {
        let inner = self.lock();
        let start = (q.after_seq as usize).min(inner.events.len());
        Ok(inner.events[start..].iter().filter(|e| q.matches(e)).take(q.limit).cloned().collect())
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.lock().events.len() as u64)
    }

    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        let inner = self.lock();
        let mut tally = Tally::default();
        inner
            .events
            .iter()
            .filter(|e| domain.is_none_or(|d| d == e.record.domain))
            .for_each(|e| tally.add(e));
        Ok(tally.finish())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

