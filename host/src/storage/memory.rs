//! `inmem` (alias `memory`): everything in process memory, lost at exit.
//! For tests and throwaway gateways; the reference the other providers are
//! checked against, so it is written for clarity over speed.

use super::{GroupDoc, Storage, conflict, group_conflict, idempotency_mismatch};
use crate::model::{
    AtSeq, Appended, AppendRequest, Arrival, CatalogEntry, Change, Error, Event, EventQuery, FeedQuery, RecordRef, Result, Select, State,
    StateQuery, state_after,
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
    /// Each record's events (indexes into `events`, ascending), so a
    /// point-in-time read finds the record's last event up to a seq by
    /// binary search.
    history: BTreeMap<RecordRef, Vec<usize>>,
    /// idempotency key → (fingerprint, index of its event).
    idempotency: HashMap<String, (String, usize)>,
    /// Consumer-group documents by name.
    groups: HashMap<String, GroupDoc>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The states of one domain and type after event `seq`, in key order.
    fn states_at<'a>(inner: &'a Inner, domain: &str, ty: &str, seq: u64) -> impl Iterator<Item = State> + 'a {
        let start = RecordRef {
            domain: domain.to_owned(),
            ty: ty.to_owned(),
            key: String::new(),
        };
        let (domain, ty) = (domain.to_owned(), ty.to_owned());
        inner
            .history
            .range(start..)
            .take_while(move |(r, _)| r.domain == domain && r.ty == ty)
            .filter_map(move |(_, idxs)| Self::at(inner, idxs, seq))
    }

    /// The state a record's events (`idxs`) left it in after event `seq`.
    fn at(inner: &Inner, idxs: &[usize], seq: u64) -> Option<State> {
        let n = idxs.partition_point(|&i| inner.events[i].seq <= seq);
        n.checked_sub(1).and_then(|last| state_after(&inner.events[idxs[last]]))
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
        if let Some(idem) = &req.idempotency
            && let Some((fingerprint, idx)) = inner.idempotency.get(&idem.key)
        {
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
                        values: values.into_values(),
                        version,
                    },
                );
            }
            None => {
                inner.states.remove(&req.record);
            }
        }
        let idx = inner.events.len();
        inner.history.entry(req.record.clone()).or_default().push(idx);
        inner.versions.insert(req.record, version);
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

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        // One lock: the head and the answer are one snapshot.
        let inner = self.lock();
        let head = inner.events.len() as u64;
        Ok(match at {
            None => AtSeq {
                value: inner.states.get(record).cloned(),
                seq: head,
            },
            Some(seq) => AtSeq {
                value: inner.history.get(record).and_then(|idxs| Self::at(&inner, idxs, seq)),
                seq,
            },
        })
    }

    async fn search_states_at(&self, q: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        // One lock, so the head and the answer are one snapshot. Read now,
        // the states at the head are the current ones: one path for both.
        let inner = self.lock();
        let seq = at.unwrap_or(inner.events.len() as u64);
        let arrival = if q.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
        let value = q.select(arrival, Self::states_at(&inner, &q.domain, &q.ty, seq));
        Ok(AtSeq { value, seq })
    }

    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        // The reference provider scans; the others use an index on time.
        let inner = self.lock();
        Ok(inner
            .events
            .iter()
            .filter(|e| e.record.domain == domain && e.record.ty == ty && e.time <= time)
            .max_by_key(|e| (e.time, e.seq))
            .map_or(0, |e| e.seq))
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

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        Ok(self.lock().groups.get(name).cloned())
    }

    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        let mut inner = self.lock();
        let current = inner.groups.get(name).map(|g| g.version);
        if current.unwrap_or(0) != expected {
            return Err(group_conflict(name, expected, current));
        }
        inner.groups.insert(name.to_owned(), GroupDoc { version: expected + 1, bytes: doc.to_vec() });
        Ok(expected + 1)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

