//! `wasm`: a storage provider written as a wasm component of the
//! `storage-provider` world (see `wit/`), e.g.
//! `{"name":"wasm","path":"fs_storage.wasm","grants":{"dir":"data/store"}}`.
//!
//! One long-lived instance serves all calls, one at a time (the guest keeps
//! its indexes in memory); it is replaced after a trap and on hot reload.
//! The guest may return supersets for searches, in any order: the query
//! chooses the result here (`model::query`), as for every provider.

use super::Storage;
use crate::model::{
    AppendRequest, Appended, Arrival, Change, Error, Event, EventQuery, FeedQuery, RecordRef, Result, Select, State,
    StateQuery,
};
use crate::wasm::convert::{event_from_wit, event_with, kind_to_wit, record_to_wit, state_from_wit};
use crate::wasm::bindings::storage::StorageProviderPre;
use crate::wasm::bindings::storage::exports::stategate::gateway::storage as wit;
use crate::wasm::bindings::storage::stategate::gateway::types as wt;
use crate::wasm::{Ctx, Guest, GuestConfig, Persistent, WasmRuntime};
use async_trait::async_trait;
use std::sync::Arc;

pub struct WasmStorage {
    name: String,
    inner: Persistent<StorageProviderPre<Ctx>>,
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

    pub fn guest(&self) -> &Arc<Guest<StorageProviderPre<Ctx>>> {
        self.inner.guest()
    }

    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut wasmtime::Store<Ctx>, &wit::Guest) -> wasmtime::Result<std::result::Result<T, wt::ProviderError>>
        + Send
        + 'static,
    ) -> Result<std::result::Result<T, wt::ProviderError>> {
        let r = self
            .inner
            .call(op, move |store, inst| f(store, inst.stategate_gateway_storage()))
            .await?;
        if r.is_err() {
            crate::wasm::metrics::guest_error(self.inner.guest().name(), op);
        }
        Ok(r)
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
                Change::Put(v) => Some(serde_json::to_string(v).map_err(Error::internal)?),
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
        match self.call("append", move |s, g| g.call_append(s, &w)).await? {
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
        match self.call("get", move |s, g| g.call_get(s, &r)).await? {
            Ok(st) => st.map(|st| state_from_wit(&self.name, st)).transpose(),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn search_states(&self, query: &StateQuery) -> Result<Vec<State>> {
        let (d, t) = (query.domain.clone(), query.ty.clone());
        let all = match self.call("search-states", move |s, g| g.call_search_states(s, &d, &t)).await? {
            Ok(v) => v,
            Err(e) => return Err(self.error(e)),
        };
        let states = all.into_iter().map(|s| state_from_wit(&self.name, s));
        query.try_select(Arrival::AnyOrder, states)
    }

    async fn search_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let scan = wit::EventScan {
            domain: query.domain.clone(),
            ty: query.ty.clone(),
            key: query.key.clone(),
            min_time: query.min_time,
            max_time: query.max_time,
        };
        let all = match self.call("search-events", move |s, g| g.call_search_events(s, &scan)).await? {
            Ok(v) => v,
            Err(e) => return Err(self.error(e)),
        };
        let events = all.into_iter().map(|e| event_from_wit(&self.name, e));
        query.try_select(Arrival::AnyOrder, events)
    }

    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        let id = id.to_owned();
        match self.call("get-event", move |s, g| g.call_get_event(s, &id)).await? {
            Ok(e) => e.map(|e| event_from_wit(&self.name, e)).transpose(),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn feed(&self, query: &FeedQuery) -> Result<Vec<Event>> {
        let q = wit::FeedQuery {
            domain: query.topic.domain.clone(),
            ty: query.topic.ty.clone(),
            key: query.key.clone(),
            after_seq: query.after_seq,
            from_time: query.from_time,
            limit: query.limit.min(u32::MAX as usize) as u32,
        };
        let events = match self.call("feed", move |s, g| g.call_feed(s, &q)).await? {
            Ok(v) => v,
            Err(e) => return Err(self.error(e)),
        };
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let e = event_from_wit(&self.name, e)?;
            if query.matches(&e) {
                out.push(e);
            }
        }
        out.sort_by_key(|e| e.seq);
        out.truncate(query.limit);
        Ok(out)
    }

    async fn head(&self) -> Result<u64> {
        match self.call("head", |s, g| g.call_head(s)).await? {
            Ok(h) => Ok(h),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn ping(&self) -> Result<()> {
        match self.call("ping", |s, g| g.call_ping(s)).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}
