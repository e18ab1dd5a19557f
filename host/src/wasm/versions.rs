//! The versions of the guest contract the host runs, and one call surface
//! per world over them.
//!
//! `wit/` is `stategate:gateway@0.3.0`; `wit/v0.2.0/` and `wit/v0.1.0/`
//! are the earlier packages as they were released, kept so that components
//! built against them keep loading. Each version only adds to the one
//! before: 0.2.0 the storage interface's `query-states`, `query-events`
//! (the whole query, for a guest to push down) and `max-instances`
//! (whether calls may run side by side), the channel interface's
//! `max-instances`; 0.3.0 the storage interface's `get-at` and
//! `query-states-at` (reads as of an event, from the guest's index). A
//! component is linked as the newest version whose interface of its world
//! it exports, and gets what that version offered: a 0.2.0 or 0.1.0
//! storage guest has no `get-at` / `query-states-at` (the calls here say
//! so, [`StorageInstance::get_at`] answering `None`, and `storage::wasm`
//! replays `feed` instead); a 0.1.0 guest's searches go through
//! `search-states` / `search-events` (the host applies the whole query to
//! what they return) and its calls run one at a time unless its guest
//! object says `instances`.
//!
//! Invariants:
//! - Callers see only 0.3.0's Rust types: an older version's arguments
//!   and results are converted here, field by field (the shared `types`
//!   are the same Rust types already, see `bindings::v0_2_0`).
//! - A component that implements none of the versions is refused when it
//!   is loaded, naming what each version found missing.

use super::bindings::{self, v0_1_0, v0_2_0};
use super::store::Ctx;
use super::worlds::{AsyncWorld, Kind, SyncWorld, World, link_async, link_sync};
use bindings::storage::stategate::gateway::types::{Event, ProviderError, RecordRef, State};
use wasmtime::Store;
use wasmtime::component::Component;

/// The 0.3.0 storage interface's types (what callers use).
pub use bindings::storage::exports::stategate::gateway::storage as storage_types;
/// The 0.3.0 channel interface's types.
pub use bindings::channel::exports::stategate::gateway::channel as channel_types;
/// The 0.3.0 policy interface's types.
pub use bindings::policy::exports::stategate::gateway::policy as policy_types;

use channel_types as c3;
use policy_types as p3;
use storage_types as s3;
use v0_1_0::channel::exports::stategate::gateway::channel as c1;
use v0_1_0::policy::exports::stategate::gateway::policy as p1;
use v0_1_0::storage::exports::stategate::gateway::storage as s1;
use v0_2_0::channel::exports::stategate::gateway::channel as c2;
use v0_2_0::policy::exports::stategate::gateway::policy as p2;
use v0_2_0::storage::exports::stategate::gateway::storage as s2;

/// What a provider call returns: a trap, or the guest's answer.
type Answer<T> = wasmtime::Result<Result<T, ProviderError>>;

/// The newest version that accepts the linked component, or an error
/// naming what each found missing.
fn newest<T>(
    kind: Kind,
    v0_3: wasmtime::Result<T>,
    v0_2: impl FnOnce() -> wasmtime::Result<T>,
    v0_1: impl FnOnce() -> wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    let e3 = match v0_3 {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let e2 = match v0_2() {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    v0_1().map_err(|e1| {
        wasmtime::Error::msg(format!(
            "it implements none of stategate:gateway@0.3.0 ({e3:#}), stategate:gateway@0.2.0 ({e2:#}) \
             and stategate:gateway@0.1.0 ({e1:#}) of world {}",
            kind.world()
        ))
    })
}

const V0_3: &str = "0.3.0";
const V0_2: &str = "0.2.0";
const V0_1: &str = "0.1.0";

/// An append request in an older version's types (the records are the
/// same field by field in every version).
macro_rules! append_request {
    ($v:ident, $req:expr) => {{
        let req: &s3::AppendRequest = $req;
        $v::AppendRequest {
            id: req.id.clone(),
            record: req.record.clone(),
            values: req.values.clone(),
            expect: match req.expect {
                s3::Expect::Any => $v::Expect::Any,
                s3::Expect::Absent => $v::Expect::Absent,
                s3::Expect::Version(v) => $v::Expect::Version(v),
            },
            kind: req.kind,
            method: req.method.clone(),
            claims: req.claims.clone(),
            time: req.time,
            idempotency: req.idempotency.as_ref().map(|i| $v::Idempotency {
                key: i.key.clone(),
                fingerprint: i.fingerprint.clone(),
                not_before: i.not_before,
            }),
        }
    }};
}

/// A feed query in an older version's types.
macro_rules! feed_query {
    ($v:ident, $q:expr) => {{
        let q: &s3::FeedQuery = $q;
        $v::FeedQuery {
            domain: q.domain.clone(),
            ty: q.ty.clone(),
            key: q.key.clone(),
            after_seq: q.after_seq,
            from_time: q.from_time,
            limit: q.limit,
        }
    }};
}

// ---- storage ----

/// A storage component, linked as the version it implements.
pub enum StoragePre {
    V0_3(bindings::storage::StorageProviderPre<Ctx>),
    V0_2(v0_2_0::storage::StorageProviderPre<Ctx>),
    V0_1(v0_1_0::storage::StorageProviderPre<Ctx>),
}

impl StoragePre {
    /// Whether the guest answers reads as of an event itself (`get-at`,
    /// `query-states-at`, 0.3.0); older guests' are replayed from `feed`.
    pub fn reads_at(&self) -> bool {
        matches!(self, Self::V0_3(_))
    }
}

/// An instance of a storage component.
pub enum StorageInstance {
    V0_3(bindings::storage::StorageProvider),
    V0_2(v0_2_0::storage::StorageProvider),
    V0_1(v0_1_0::storage::StorageProvider),
}

impl World for StoragePre {
    const KIND: Kind = Kind::Storage;
    type Instance = StorageInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_sync(component)?;
        newest(
            Self::KIND,
            bindings::storage::StorageProviderPre::new(pre.clone()).map(Self::V0_3),
            || v0_2_0::storage::StorageProviderPre::new(pre.clone()).map(Self::V0_2),
            || v0_1_0::storage::StorageProviderPre::new(pre.clone()).map(Self::V0_1),
        )
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_3(_) => V0_3,
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl SyncWorld for StoragePre {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<StorageInstance> {
        Ok(match self {
            Self::V0_3(p) => StorageInstance::V0_3(p.instantiate(store)?),
            Self::V0_2(p) => StorageInstance::V0_2(p.instantiate(store)?),
            Self::V0_1(p) => StorageInstance::V0_1(p.instantiate(store)?),
        })
    }

    fn max_instances(instance: &StorageInstance, store: &mut Store<Ctx>) -> wasmtime::Result<u32> {
        match instance {
            StorageInstance::V0_3(i) => i.stategate_gateway_storage().call_max_instances(store),
            StorageInstance::V0_2(i) => i.stategate_gateway_storage().call_max_instances(store),
            StorageInstance::V0_1(_) => Ok(1),
        }
    }
}

/// A state query in 0.2.0's types.
fn state_query_v0_2(q: &s3::StateQuery) -> s2::StateQuery {
    s2::StateQuery {
        domain: q.domain.clone(),
        ty: q.ty.clone(),
        filter: q.filter.clone(),
        sort: q.sort.as_ref().map(|s| s2::StateSort { field: s.field.clone(), descending: s.descending }),
        offset: q.offset,
        limit: q.limit,
    }
}

/// An event query in 0.2.0's types.
fn event_query_v0_2(q: &s3::EventQuery) -> s2::EventQuery {
    s2::EventQuery {
        domain: q.domain.clone(),
        ty: q.ty.clone(),
        key: q.key.clone(),
        filter: q.filter.clone(),
        claims_filter: q.claims_filter.clone(),
        min_time: q.min_time,
        max_time: q.max_time,
        sort: q.sort.as_ref().map(|s| s2::EventSort {
            by: match &s.by {
                s3::EventOrder::Time => s2::EventOrder::Time,
                s3::EventOrder::Field(f) => s2::EventOrder::Field(f.clone()),
            },
            descending: s.descending,
        }),
        offset: q.offset,
        limit: q.limit,
    }
}

impl StorageInstance {
    pub fn append(&self, store: &mut Store<Ctx>, req: &s3::AppendRequest) -> Answer<s3::Appended> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_append(store, req),
            Self::V0_2(i) => {
                let r = i.stategate_gateway_storage().call_append(store, &append_request!(s2, req))?;
                Ok(r.map(|a| s3::Appended { event: a.event, replayed: a.replayed }))
            }
            Self::V0_1(i) => {
                let r = i.stategate_gateway_storage().call_append(store, &append_request!(s1, req))?;
                Ok(r.map(|a| s3::Appended { event: a.event, replayed: a.replayed }))
            }
        }
    }

    pub fn get(&self, store: &mut Store<Ctx>, record: &RecordRef) -> Answer<Option<State>> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_get(store, record),
            Self::V0_2(i) => i.stategate_gateway_storage().call_get(store, record),
            Self::V0_1(i) => i.stategate_gateway_storage().call_get(store, record),
        }
    }

    /// The record as it was after event `seq` (`get-at`); `None` from a
    /// guest older than 0.3.0, which has no such call (nothing is called).
    pub fn get_at(&self, store: &mut Store<Ctx>, record: &RecordRef, seq: u64) -> Option<Answer<Option<State>>> {
        match self {
            Self::V0_3(i) => Some(i.stategate_gateway_storage().call_get_at(store, record, seq)),
            Self::V0_2(_) | Self::V0_1(_) => None,
        }
    }

    /// A state search; a 0.1.0 guest returns every state of the type.
    pub fn query_states(&self, store: &mut Store<Ctx>, q: &s3::StateQuery) -> Answer<s3::StatePage> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_query_states(store, q),
            Self::V0_2(i) => {
                let r = i.stategate_gateway_storage().call_query_states(store, &state_query_v0_2(q))?;
                Ok(r.map(|p| s3::StatePage { states: p.states, skipped: p.skipped }))
            }
            Self::V0_1(i) => {
                let r = i.stategate_gateway_storage().call_search_states(store, &q.domain, &q.ty)?;
                Ok(r.map(|states| s3::StatePage { states, skipped: 0 }))
            }
        }
    }

    /// A state search over the states as they were after event `seq`
    /// (`query-states-at`); `None` from a guest older than 0.3.0.
    pub fn query_states_at(&self, store: &mut Store<Ctx>, q: &s3::StateQuery, seq: u64) -> Option<Answer<s3::StatePage>> {
        match self {
            Self::V0_3(i) => Some(i.stategate_gateway_storage().call_query_states_at(store, q, seq)),
            Self::V0_2(_) | Self::V0_1(_) => None,
        }
    }

    /// An event search; a 0.1.0 guest applies the record and time bounds
    /// only.
    pub fn query_events(&self, store: &mut Store<Ctx>, q: &s3::EventQuery) -> Answer<s3::EventPage> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_query_events(store, q),
            Self::V0_2(i) => {
                let r = i.stategate_gateway_storage().call_query_events(store, &event_query_v0_2(q))?;
                Ok(r.map(|p| s3::EventPage { events: p.events, skipped: p.skipped }))
            }
            Self::V0_1(i) => {
                let scan = s1::EventScan {
                    domain: q.domain.clone(),
                    ty: q.ty.clone(),
                    key: q.key.clone(),
                    min_time: q.min_time,
                    max_time: q.max_time,
                };
                let r = i.stategate_gateway_storage().call_search_events(store, &scan)?;
                Ok(r.map(|events| s3::EventPage { events, skipped: 0 }))
            }
        }
    }

    pub fn get_event(&self, store: &mut Store<Ctx>, id: &str) -> Answer<Option<Event>> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_get_event(store, id),
            Self::V0_2(i) => i.stategate_gateway_storage().call_get_event(store, id),
            Self::V0_1(i) => i.stategate_gateway_storage().call_get_event(store, id),
        }
    }

    pub fn feed(&self, store: &mut Store<Ctx>, q: &s3::FeedQuery) -> Answer<Vec<Event>> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_feed(store, q),
            Self::V0_2(i) => i.stategate_gateway_storage().call_feed(store, &feed_query!(s2, q)),
            Self::V0_1(i) => i.stategate_gateway_storage().call_feed(store, &feed_query!(s1, q)),
        }
    }

    pub fn head(&self, store: &mut Store<Ctx>) -> Answer<u64> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_head(store),
            Self::V0_2(i) => i.stategate_gateway_storage().call_head(store),
            Self::V0_1(i) => i.stategate_gateway_storage().call_head(store),
        }
    }

    pub fn ping(&self, store: &mut Store<Ctx>) -> Answer<()> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_storage().call_ping(store),
            Self::V0_2(i) => i.stategate_gateway_storage().call_ping(store),
            Self::V0_1(i) => i.stategate_gateway_storage().call_ping(store),
        }
    }
}

// ---- channel ----

/// A channel component, linked as the version it implements (0.3.0's
/// channel interface is 0.2.0's under the new package version).
pub enum ChannelPre {
    V0_3(bindings::channel::ChannelProviderPre<Ctx>),
    V0_2(v0_2_0::channel::ChannelProviderPre<Ctx>),
    V0_1(v0_1_0::channel::ChannelProviderPre<Ctx>),
}

/// An instance of a channel component.
pub enum ChannelInstance {
    V0_3(bindings::channel::ChannelProvider),
    V0_2(v0_2_0::channel::ChannelProvider),
    V0_1(v0_1_0::channel::ChannelProvider),
}

impl World for ChannelPre {
    const KIND: Kind = Kind::Channel;
    type Instance = ChannelInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_sync(component)?;
        newest(
            Self::KIND,
            bindings::channel::ChannelProviderPre::new(pre.clone()).map(Self::V0_3),
            || v0_2_0::channel::ChannelProviderPre::new(pre.clone()).map(Self::V0_2),
            || v0_1_0::channel::ChannelProviderPre::new(pre.clone()).map(Self::V0_1),
        )
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_3(_) => V0_3,
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl SyncWorld for ChannelPre {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<ChannelInstance> {
        Ok(match self {
            Self::V0_3(p) => ChannelInstance::V0_3(p.instantiate(store)?),
            Self::V0_2(p) => ChannelInstance::V0_2(p.instantiate(store)?),
            Self::V0_1(p) => ChannelInstance::V0_1(p.instantiate(store)?),
        })
    }

    fn max_instances(instance: &ChannelInstance, store: &mut Store<Ctx>) -> wasmtime::Result<u32> {
        match instance {
            ChannelInstance::V0_3(i) => i.stategate_gateway_channel().call_max_instances(store),
            ChannelInstance::V0_2(i) => i.stategate_gateway_channel().call_max_instances(store),
            ChannelInstance::V0_1(_) => Ok(1),
        }
    }
}

impl ChannelInstance {
    pub fn publish(&self, store: &mut Store<Ctx>, event: &Event) -> Answer<()> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_channel().call_publish(store, event),
            Self::V0_2(i) => i.stategate_gateway_channel().call_publish(store, event),
            Self::V0_1(i) => i.stategate_gateway_channel().call_publish(store, event),
        }
    }

    pub fn tail(&self, store: &mut Store<Ctx>) -> Answer<String> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_channel().call_tail(store),
            Self::V0_2(i) => i.stategate_gateway_channel().call_tail(store),
            Self::V0_1(i) => i.stategate_gateway_channel().call_tail(store),
        }
    }

    pub fn poll(&self, store: &mut Store<Ctx>, cursor: &str, max: u32) -> Answer<c3::Batch> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_channel().call_poll(store, cursor, max),
            Self::V0_2(i) => {
                let r = i.stategate_gateway_channel().call_poll(store, cursor, max)?;
                Ok(r.map(|c2::Batch { events, cursor }| c3::Batch { events, cursor }))
            }
            Self::V0_1(i) => {
                let r = i.stategate_gateway_channel().call_poll(store, cursor, max)?;
                Ok(r.map(|c1::Batch { events, cursor }| c3::Batch { events, cursor }))
            }
        }
    }

    pub fn ping(&self, store: &mut Store<Ctx>) -> Answer<()> {
        match self {
            Self::V0_3(i) => i.stategate_gateway_channel().call_ping(store),
            Self::V0_2(i) => i.stategate_gateway_channel().call_ping(store),
            Self::V0_1(i) => i.stategate_gateway_channel().call_ping(store),
        }
    }
}

// ---- policy ----

/// A policy-hook component, linked as the version it implements (the
/// policy interface is the same in every version).
pub enum PolicyPre {
    V0_3(bindings::policy::PolicyHookPre<Ctx>),
    V0_2(v0_2_0::policy::PolicyHookPre<Ctx>),
    V0_1(v0_1_0::policy::PolicyHookPre<Ctx>),
}

/// An instance of a policy-hook component.
pub enum PolicyInstance {
    V0_3(bindings::policy::PolicyHook),
    V0_2(v0_2_0::policy::PolicyHook),
    V0_1(v0_1_0::policy::PolicyHook),
}

impl World for PolicyPre {
    const KIND: Kind = Kind::Policy;
    type Instance = PolicyInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_async(component)?;
        newest(
            Self::KIND,
            bindings::policy::PolicyHookPre::new(pre.clone()).map(Self::V0_3),
            || v0_2_0::policy::PolicyHookPre::new(pre.clone()).map(Self::V0_2),
            || v0_1_0::policy::PolicyHookPre::new(pre.clone()).map(Self::V0_1),
        )
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_3(_) => V0_3,
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl AsyncWorld for PolicyPre {
    async fn instantiate_async(&self, store: &mut Store<Ctx>) -> wasmtime::Result<PolicyInstance> {
        Ok(match self {
            Self::V0_3(p) => PolicyInstance::V0_3(p.instantiate_async(store).await?),
            Self::V0_2(p) => PolicyInstance::V0_2(p.instantiate_async(store).await?),
            Self::V0_1(p) => PolicyInstance::V0_1(p.instantiate_async(store).await?),
        })
    }
}

/// A request decision in 0.3.0's types (the variant is the same in every
/// version).
macro_rules! decision {
    ($v:ident, $d:expr) => {
        match $d {
            $v::Decision::Allow => p3::Decision::Allow,
            $v::Decision::Deny(why) => p3::Decision::Deny(why),
        }
    };
}

/// A response decision in 0.3.0's types.
macro_rules! response_decision {
    ($v:ident, $d:expr) => {
        match $d {
            $v::ResponseDecision::Allow => p3::ResponseDecision::Allow,
            $v::ResponseDecision::Deny(why) => p3::ResponseDecision::Deny(why),
            $v::ResponseDecision::Redact(paths) => p3::ResponseDecision::Redact(paths),
        }
    };
}

impl PolicyInstance {
    pub async fn authorize_request(&self, store: &mut Store<Ctx>, input: &str) -> wasmtime::Result<p3::Decision> {
        Ok(match self {
            Self::V0_3(i) => i.stategate_gateway_policy().call_authorize_request(store, input).await?,
            Self::V0_2(i) => decision!(p2, i.stategate_gateway_policy().call_authorize_request(store, input).await?),
            Self::V0_1(i) => decision!(p1, i.stategate_gateway_policy().call_authorize_request(store, input).await?),
        })
    }

    pub async fn authorize_response(&self, store: &mut Store<Ctx>, input: &str) -> wasmtime::Result<p3::ResponseDecision> {
        Ok(match self {
            Self::V0_3(i) => i.stategate_gateway_policy().call_authorize_response(store, input).await?,
            Self::V0_2(i) => response_decision!(p2, i.stategate_gateway_policy().call_authorize_response(store, input).await?),
            Self::V0_1(i) => response_decision!(p1, i.stategate_gateway_policy().call_authorize_response(store, input).await?),
        })
    }
}
