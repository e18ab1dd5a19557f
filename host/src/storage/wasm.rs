//! `wasm`: a storage provider written as a wasm component of the
//! `storage-provider` world (see `wit/`), e.g.
//! `{"name":"wasm","path":"fs_storage.wasm","grants":{"dir":"data/store"}}`.
//!
//! Long-lived instances serve the calls: one, calls one at a time (the
//! guest keeps its indexes in memory), unless the guest says its calls may
//! run side by side (`wasm::persistent`); an instance is replaced after a
//! trap and on hot reload.
//!
//! Reads at a store position: a 0.3.0 guest answers them itself
//! (`get-at`, `query-states-at`, from its index): in the past at the seq
//! asked, now at the `head` read just before (exact whatever is committed
//! meanwhile, as the answer is as of that seq); its page is re-checked
//! like a search's. A 0.2.0 or 0.1.0 guest has no such calls and gets
//! `history`'s bracketed read now and a `feed` replay in the past (whose
//! cost grows with the type's history). Which one is asked is decided by
//! the version serving calls; a call that lands on an older version
//! swapped in meanwhile falls back to the replay.
//!
//! Searches hand the guest the whole query (WIT 0.2.0 `query-states` /
//! `query-events`: the filter as the query language's JSON, the sort, the
//! offset and the limit), so it can push them down; a 0.1.0 guest gets the
//! domain and type only (`wasm::versions`). Either way the guest may return
//! a superset, in any order, and the query chooses the result here
//! (`model::query`), as for every provider: only the part of the offset the
//! guest says it skipped is not applied again.
//!
//! **Consumer groups** need no WIT call: a group's document is the values
//! of one record in a reserved domain (`GROUPS_DOMAIN`, whose name holds a
//! space, which no request may name), stored by `append` with the expected
//! version, so the guest's own version check is the compare-and-set. Its
//! events are taken out of every feed (hence streams and the catalog) and
//! `get-event` here; searches cannot name the domain. Each store is an
//! event in the guest's history, so a busy group grows it.

use super::{GroupDoc, Storage, history};
use crate::model::query::EventOrder;
use crate::model::{
    AppendRequest, Appended, Arrival, AtSeq, Change, Error, Event, EventQuery, FeedQuery, RecordRef, Result, Select, State,
    StateQuery,
};
use crate::wasm::bindings::storage::stategate::gateway::types as wt;
use crate::wasm::convert::{event_from_wit, event_with, kind_to_wit, record_to_wit, state_from_wit};
use crate::wasm::versions::storage_types as wit;
use crate::wasm::{Ctx, Guest, GuestConfig, Persistent, StorageInstance, StoragePre, WasmRuntime};
use async_trait::async_trait;
use std::sync::Arc;

pub struct WasmStorage {
    name: String,
    inner: Persistent<StoragePre>,
}

impl WasmStorage {
    /// Loads the guest and checks it answers `ping`.
    pub async fn open(config: &GuestConfig, runtime: &WasmRuntime) -> Result<WasmStorage> {
        let spec = config.spec(runtime.settings());
        let runtime = runtime.clone();
        let guest = tokio::task::spawn_blocking(move || Guest::load(&runtime, spec))
            .await
            .map_err(Error::internal)??;
        let s = WasmStorage {
            name: format!("wasm:{}", guest.name()),
            inner: Persistent::new(guest),
        };
        s.ping().await?;
        Ok(s)
    }

    pub fn guest(&self) -> &Arc<Guest<StoragePre>> {
        self.inner.guest()
    }

    /// How many calls may run side by side (see `wasm::persistent`; 0
    /// before the first call).
    pub fn instances(&self) -> usize {
        self.inner.instances()
    }

    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut wasmtime::Store<Ctx>, &StorageInstance) -> wasmtime::Result<std::result::Result<T, wt::ProviderError>>
        + Send
        + 'static,
    ) -> Result<std::result::Result<T, wt::ProviderError>> {
        let r = self.inner.call(op, f).await?;
        if r.is_err() {
            crate::wasm::metrics::guest_error(self.inner.guest().name(), op);
        }
        Ok(r)
    }

    /// Whether the guest serving calls answers reads as of an event
    /// itself (0.3.0 `get-at`, `query-states-at`).
    fn reads_at(&self) -> bool {
        self.inner.guest().current().pre.reads_at()
    }

    /// The query's page from what the guest returned (see `state-page`).
    fn state_page(&self, op: &str, query: &StateQuery, page: wit::StatePage) -> Result<Vec<State>> {
        let rest = self.rest_of_offset(op, query.offset, page.skipped)?;
        let states = page.states.into_iter().map(|s| state_from_wit(&self.name, s));
        if rest == query.offset {
            return query.try_select(Arrival::AnyOrder, states);
        }
        StateQuery { offset: rest, ..query.clone() }.try_select(Arrival::AnyOrder, states)
    }

    /// The part of the offset the guest left to the host. A guest that
    /// says it skipped more than the offset is broken.
    fn rest_of_offset(&self, op: &str, offset: usize, skipped: u32) -> Result<usize> {
        offset.checked_sub(skipped as usize).ok_or_else(|| {
            Error::Internal(format!("{}: {op} says it skipped {skipped} results of an offset of {offset}", self.name))
        })
    }

    fn error(&self, e: wt::ProviderError) -> Error {
        match e {
            wt::ProviderError::NotFound(what) => Error::NotFound(what),
            wt::ProviderError::Unavailable(why) => Error::Unavailable(format!("{}: {why}", self.name)),
            wt::ProviderError::Internal(why) => Error::Internal(format!("{}: {why}", self.name)),
            wt::ProviderError::VersionConflict(_) | wt::ProviderError::IdempotencyMismatch => {
                Error::Internal(format!("{}: returned a write error from a read", self.name))
            }
        }
    }
}

#[async_trait]
impl Storage for WasmStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        let w = wit::AppendRequest {
            id: req.id.clone(),
            record: record_to_wit(&req.record),
            values: match &req.change {
                Change::Put(v) => Some(v.to_json_string()),
                Change::Delete => None,
            },
            expect: match req.expect {
                crate::model::Expect::Any => wit::Expect::Any,
                crate::model::Expect::Absent => wit::Expect::Absent,
                crate::model::Expect::Version(v) => wit::Expect::Version(v),
            },
            kind: kind_to_wit(req.kind),
            method: req.method.clone(),
            claims: serde_json::to_string(&req.claims).map_err(Error::internal)?,
            time: req.time,
            idempotency: req.idempotency.as_ref().map(|i| wit::Idempotency {
                key: i.key.clone(),
                fingerprint: i.fingerprint.clone(),
                not_before: i.not_before,
            }),
        };
        match self.call("append", move |s, g| g.append(s, &w)).await? {
            // A new event holds the values and claims just sent: use them
            // rather than parse the guest's copy of their JSON back (as the
            // native providers do).
            Ok(a) if !a.replayed => {
                let values = match req.change {
                    Change::Put(v) => Some(v),
                    Change::Delete => None,
                };
                Ok(Appended {
                    event: event_with(a.event, values, req.claims),
                    replayed: false,
                })
            }
            Ok(a) => Ok(Appended {
                event: event_from_wit(&self.name, a.event)?,
                replayed: true,
            }),
            Err(wt::ProviderError::VersionConflict(current)) => Err(super::conflict(&req, current)),
            Err(wt::ProviderError::IdempotencyMismatch) => Err(super::idempotency_mismatch(
                req.idempotency.as_ref().map_or("", |i| i.key.as_str()),
            )),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        let r = record_to_wit(record);
        match self.call("get", move |s, g| g.get(s, &r)).await? {
            Ok(st) => st.map(|st| state_from_wit(&self.name, st)).transpose(),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn search_states(&self, query: &StateQuery) -> Result<Vec<State>> {
        let q = state_query_to_wit(query);
        let page = match self.call("query-states", move |s, g| g.query_states(s, &q)).await? {
            Ok(p) => p,
            Err(e) => return Err(self.error(e)),
        };
        self.state_page("query-states", query, page)
    }

    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        if !self.reads_at() {
            return match at {
                None => history::bracketed_get(self, record).await,
                Some(seq) => Ok(AtSeq { value: history::replay_get(self, record, seq).await?, seq }),
            };
        }
        let r = record_to_wit(record);
        let answer = self
            .call("get-at", move |s, g| {
                // Now: the head, then the read at it, in one call on one
                // instance (a `Get` takes one turn of the pool, not two).
                let seq = match at {
                    Some(seq) => seq,
                    None => match g.head(s)? {
                        Ok(seq) => seq,
                        Err(e) => return Ok(Err(e)),
                    },
                };
                Ok(match g.get_at(s, &r, seq) {
                    Some(answer) => answer?.map(|st| (seq, Some(st))),
                    None => Ok((seq, None)),
                })
            })
            .await?;
        let (seq, found) = answer.map_err(|e| self.error(e))?;
        let value = match found {
            Some(st) => st.map(|st| state_from_wit(&self.name, st)).transpose()?,
            // Swapped for an older version since `reads_at` said yes.
            None => history::replay_get(self, record, seq).await?,
        };
        Ok(AtSeq { value, seq })
    }

    async fn search_states_at(&self, query: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        if !self.reads_at() {
            return match at {
                None => history::bracketed_search(self, query).await,
                Some(seq) => Ok(AtSeq { value: history::replay_search(self, query, seq).await?, seq }),
            };
        }
        let seq = match at {
            Some(seq) => seq,
            None => self.head().await?,
        };
        let q = state_query_to_wit(query);
        let answer = self
            .call("query-states-at", move |s, g| match g.query_states_at(s, &q, seq) {
                Some(answer) => answer.map(|r| r.map(Some)),
                None => Ok(Ok(None)),
            })
            .await?;
        let value = match answer {
            Ok(Some(page)) => self.state_page("query-states-at", query, page)?,
            Ok(None) => history::replay_search(self, query, seq).await?,
            Err(e) => return Err(self.error(e)),
        };
        Ok(AtSeq { value, seq })
    }

    async fn search_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        // WIT has no version bounds: with them the guest returns the whole
        // candidate set (one record's history, as they are meant with a
        // key) and the host picks the page.
        let versioned = query.min_version.is_some() || query.max_version.is_some();
        let (offset, limit) = if versioned { (0, usize::MAX) } else { (query.offset, query.limit) };
        let q = wit::EventQuery {
            domain: query.domain.clone(),
            ty: query.ty.clone(),
            key: query.key.clone(),
            filter: query.filter.to_json().to_string(),
            claims_filter: query.claims_filter.to_json().to_string(),
            min_time: query.min_time,
            max_time: query.max_time,
            sort: query.sort.as_ref().map(|s| wit::EventSort {
                by: match &s.by {
                    EventOrder::Time => wit::EventOrder::Time,
                    EventOrder::Field(path) => wit::EventOrder::Field(path.join(".")),
                },
                descending: s.descending,
            }),
            offset: clamp_u32(offset),
            limit: clamp_u32(limit),
        };
        let page = match self.call("query-events", move |s, g| g.query_events(s, &q)).await? {
            Ok(p) => p,
            Err(e) => return Err(self.error(e)),
        };
        let rest = self.rest_of_offset("query-events", offset, page.skipped)? + (query.offset - offset);
        let events = page.events.into_iter().map(|e| event_from_wit(&self.name, e));
        if rest == query.offset {
            return query.try_select(Arrival::AnyOrder, events);
        }
        EventQuery { offset: rest, ..query.clone() }.try_select(Arrival::AnyOrder, events)
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let id = id.to_owned();
        match self.call("get-event", move |s, g| g.get_event(s, &id)).await? {
            Ok(e) => Ok(e.map(|e| event_from_wit(&self.name, e)).transpose()?.filter(|e| e.record.domain != GROUPS_DOMAIN)),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn feed(&self, query: &FeedQuery) -> Result<Vec<Event>> {
        // A page short of the limit means the end of the feed to callers,
        // so pages the group documents thinned are topped up.
        let mut out = Vec::new();
        let mut after = query.after_seq;
        loop {
            let q = wit::FeedQuery {
                domain: query.topic.domain.clone(),
                ty: query.topic.ty.clone(),
                key: query.key.clone(),
                after_seq: after,
                from_time: query.from_time,
                limit: query.limit.min(u32::MAX as usize) as u32,
            };
            let events = match self.call("feed", move |s, g| g.feed(s, &q)).await? {
                Ok(v) => v,
                Err(e) => return Err(self.error(e)),
            };
            let full = events.len() >= query.limit;
            let mut page = Vec::with_capacity(events.len());
            for e in events {
                page.push(event_from_wit(&self.name, e)?);
            }
            page.sort_by_key(|e| e.seq);
            page.truncate(query.limit);
            let Some(last) = page.last().map(|e| e.seq) else { break };
            after = last;
            let thinned = page.iter().any(|e| e.record.domain == GROUPS_DOMAIN);
            out.extend(page.into_iter().filter(|e| e.record.domain != GROUPS_DOMAIN && query.matches(e)));
            if !full || !thinned || out.len() >= query.limit {
                break;
            }
        }
        out.truncate(query.limit);
        Ok(out)
    }

    async fn group_load(&self, name: &str) -> Result<Option<GroupDoc>> {
        let Some(state) = self.get(&group_record(name)).await? else { return Ok(None) };
        let doc = state.values.get("doc").and_then(|v| v.as_str()).ok_or_else(|| {
            Error::internal(format!("{}: consumer group {name}: the stored document has no doc", self.name))
        })?;
        Ok(Some(GroupDoc { version: state.version, bytes: doc.as_bytes().to_vec() }))
    }

    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        let text = std::str::from_utf8(doc).map_err(|_| Error::internal("a consumer group's document is not UTF-8"))?;
        let mut values = crate::model::Values::new();
        values.insert("doc".into(), serde_json::Value::String(text.to_owned()));
        let req = AppendRequest {
            id: crate::model::new_event_id(),
            record: group_record(name),
            change: Change::Put(values.into()),
            expect: if expected == 0 { crate::model::Expect::Absent } else { crate::model::Expect::Version(expected) },
            kind: crate::model::EventKind::Set,
            method: "consumer-group".into(),
            claims: Default::default(),
            time: crate::model::now_nanos(),
            idempotency: None,
        };
        match self.append(req).await {
            Ok(a) => Ok(a.event.version),
            Err(Error::VersionConflict { .. }) => {
                let current = self.group_load(name).await?.map(|g| g.version);
                Err(super::group_conflict(name, expected, current))
            }
            Err(e) => Err(e),
        }
    }

    async fn head(&self) -> Result<u64> {
        match self.call("head", |s, g| g.head(s)).await? {
            Ok(h) => Ok(h),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn ping(&self) -> Result<()> {
        match self.call("ping", |s, g| g.ping(s)).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// The domain of group documents: a name with a space, which no request
/// may name (`model::validate_name`), so no client reads or writes it.
const GROUPS_DOMAIN: &str = "stategate groups";

fn group_record(name: &str) -> RecordRef {
    RecordRef { domain: GROUPS_DOMAIN.to_owned(), ty: "group".to_owned(), key: name.to_owned() }
}

/// A state search as WIT's `state-query`.
fn state_query_to_wit(query: &StateQuery) -> wit::StateQuery {
    wit::StateQuery {
        domain: query.domain.clone(),
        ty: query.ty.clone(),
        filter: query.filter.to_json().to_string(),
        sort: query.sort.as_ref().map(|s| wit::StateSort {
            field: s.path.join("."),
            descending: s.descending,
        }),
        offset: clamp_u32(query.offset),
        limit: clamp_u32(query.limit),
    }
}

/// A count as WIT's u32 (offsets and limits past it are the host's to apply).
fn clamp_u32(n: usize) -> u32 {
    n.min(u32::MAX as usize) as u32
}
