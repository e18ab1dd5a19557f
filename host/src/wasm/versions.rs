//! The versions of the guest contract the host runs, and one call surface
//! per world over them.
//!
//! `wit/` is `stategate:gateway@0.2.0`; `wit/v0.1.0/` is the 0.1.0 package
//! as it was released, kept so that components built against it keep
//! loading. 0.2.0 only adds: the storage interface's `query-states`,
//! `query-events` (the whole query, for a guest to push down) and
//! `max-instances` (whether calls may run side by side), the channel
//! interface's `max-instances`. A component is linked as 0.2.0 when it
//! exports the 0.2.0 interface of its world, else as 0.1.0, and a 0.1.0
//! guest gets what 0.1.0 offered: its searches go through `search-states` /
//! `search-events` (the host applies the whole query to what they return)
//! and its calls run one at a time unless its guest object says
//! `instances`.
//!
//! Invariants:
//! - Callers see only 0.2.0's Rust types: a 0.1.0 call's arguments and
//!   results are converted here, field by field (the shared `types` are
//!   the same Rust types already, see `bindings::v0_1_0`).
//! - A component that implements neither version is refused when it is
//!   loaded, naming what each version found missing.

use super::bindings::{self, v0_1_0};
use super::store::Ctx;
use super::worlds::{AsyncWorld, Kind, SyncWorld, World, link_async, link_sync};
use bindings::storage::stategate::gateway::types::{Event, ProviderError, RecordRef, State};
use wasmtime::Store;
use wasmtime::component::Component;

/// The 0.2.0 storage interface's types (what callers use).
pub use bindings::storage::exports::stategate::gateway::storage as storage_types;
/// The 0.2.0 channel interface's types.
pub use bindings::channel::exports::stategate::gateway::channel as channel_types;
/// The 0.2.0 policy interface's types.
pub use bindings::policy::exports::stategate::gateway::policy as policy_types;

use channel_types as c2;
use policy_types as p2;
use storage_types as s2;
use v0_1_0::channel::exports::stategate::gateway::channel as c1;
use v0_1_0::policy::exports::stategate::gateway::policy as p1;
use v0_1_0::storage::exports::stategate::gateway::storage as s1;

/// What a provider call returns: a trap, or the guest's answer.
type Answer<T> = wasmtime::Result<Result<T, ProviderError>>;

/// The first version that accepts the linked component, or an error naming
/// what each found missing.
fn either<T>(kind: Kind, v0_2: wasmtime::Result<T>, v0_1: impl FnOnce() -> wasmtime::Result<T>) -> wasmtime::Result<T> {
    match v0_2 {
        Ok(p) => Ok(p),
        Err(e2) => v0_1().map_err(|e1| {
            wasmtime::Error::msg(format!(
                "it implements neither stategate:gateway@0.2.0 ({e2:#}) nor stategate:gateway@0.1.0 ({e1:#}) of world {}",
                kind.world()
            ))
        }),
    }
}

const V0_2: &str = "0.2.0";
const V0_1: &str = "0.1.0";

// ---- storage ----

/// A storage component, linked as the version it implements.
pub enum StoragePre {
    V0_2(bindings::storage::StorageProviderPre<Ctx>),
    V0_1(v0_1_0::storage::StorageProviderPre<Ctx>),
}

/// An instance of a storage component.
pub enum StorageInstance {
    V0_2(bindings::storage::StorageProvider),
    V0_1(v0_1_0::storage::StorageProvider),
}

impl World for StoragePre {
    const KIND: Kind = Kind::Storage;
    type Instance = StorageInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_sync(component)?;
        either(Self::KIND, bindings::storage::StorageProviderPre::new(pre.clone()).map(Self::V0_2), || {
            v0_1_0::storage::StorageProviderPre::new(pre).map(Self::V0_1)
        })
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl SyncWorld for StoragePre {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<StorageInstance> {
        Ok(match self {
            Self::V0_2(p) => StorageInstance::V0_2(p.instantiate(store)?),
            Self::V0_1(p) => StorageInstance::V0_1(p.instantiate(store)?),
        })
    }

    fn max_instances(instance: &StorageInstance, store: &mut Store<Ctx>) -> wasmtime::Result<u32> {
        match instance {
            StorageInstance::V0_2(i) => i.stategate_gateway_storage().call_max_instances(store),
            StorageInstance::V0_1(_) => Ok(1),
        }
    }
}

impl StorageInstance {
    pub fn append(&self, store: &mut Store<Ctx>, req: &s2::AppendRequest) -> Answer<s2::Appended> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_append(store, req),
            Self::V0_1(i) => {
                let req = s1::AppendRequest {
                    id: req.id.clone(),
                    record: req.record.clone(),
                    values: req.values.clone(),
                    expect: match req.expect {
                        s2::Expect::Any => s1::Expect::Any,
                        s2::Expect::Absent => s1::Expect::Absent,
                        s2::Expect::Version(v) => s1::Expect::Version(v),
                    },
                    kind: req.kind,
                    method: req.method.clone(),
                    claims: req.claims.clone(),
                    time: req.time,
                    idempotency: req.idempotency.as_ref().map(|i| s1::Idempotency {
                        key: i.key.clone(),
                        fingerprint: i.fingerprint.clone(),
                        not_before: i.not_before,
                    }),
                };
                let r = i.stategate_gateway_storage().call_append(store, &req)?;
                Ok(r.map(|a| s2::Appended { event: a.event, replayed: a.replayed }))
            }
        }
    }

    pub fn get(&self, store: &mut Store<Ctx>, record: &RecordRef) -> Answer<Option<State>> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_get(store, record),
            Self::V0_1(i) => i.stategate_gateway_storage().call_get(store, record),
        }
    }

    /// A state search; a 0.1.0 guest returns every state of the type.
    pub fn query_states(&self, store: &mut Store<Ctx>, q: &s2::StateQuery) -> Answer<s2::StatePage> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_query_states(store, q),
            Self::V0_1(i) => {
                let r = i.stategate_gateway_storage().call_search_states(store, &q.domain, &q.ty)?;
                Ok(r.map(|states| s2::StatePage { states, skipped: 0 }))
            }
        }
    }

    /// An event search; a 0.1.0 guest applies the record and time bounds
    /// only.
    pub fn query_events(&self, store: &mut Store<Ctx>, q: &s2::EventQuery) -> Answer<s2::EventPage> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_query_events(store, q),
            Self::V0_1(i) => {
                let scan = s1::EventScan {
                    domain: q.domain.clone(),
                    ty: q.ty.clone(),
                    key: q.key.clone(),
                    min_time: q.min_time,
                    max_time: q.max_time,
                };
                let r = i.stategate_gateway_storage().call_search_events(store, &scan)?;
                Ok(r.map(|events| s2::EventPage { events, skipped: 0 }))
            }
        }
    }

    pub fn get_event(&self, store: &mut Store<Ctx>, id: &str) -> Answer<Option<Event>> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_get_event(store, id),
            Self::V0_1(i) => i.stategate_gateway_storage().call_get_event(store, id),
        }
    }

    pub fn feed(&self, store: &mut Store<Ctx>, q: &s2::FeedQuery) -> Answer<Vec<Event>> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_feed(store, q),
            Self::V0_1(i) => {
                let q = s1::FeedQuery {
                    domain: q.domain.clone(),
                    ty: q.ty.clone(),
                    key: q.key.clone(),
                    after_seq: q.after_seq,
                    from_time: q.from_time,
                    limit: q.limit,
                };
                i.stategate_gateway_storage().call_feed(store, &q)
            }
        }
    }

    pub fn head(&self, store: &mut Store<Ctx>) -> Answer<u64> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_head(store),
            Self::V0_1(i) => i.stategate_gateway_storage().call_head(store),
        }
    }

    pub fn ping(&self, store: &mut Store<Ctx>) -> Answer<()> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_storage().call_ping(store),
            Self::V0_1(i) => i.stategate_gateway_storage().call_ping(store),
        }
    }
}

// ---- channel ----

/// A channel component, linked as the version it implements.
pub enum ChannelPre {
    V0_2(bindings::channel::ChannelProviderPre<Ctx>),
    V0_1(v0_1_0::channel::ChannelProviderPre<Ctx>),
}

/// An instance of a channel component.
pub enum ChannelInstance {
    V0_2(bindings::channel::ChannelProvider),
    V0_1(v0_1_0::channel::ChannelProvider),
}

impl World for ChannelPre {
    const KIND: Kind = Kind::Channel;
    type Instance = ChannelInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_sync(component)?;
        either(Self::KIND, bindings::channel::ChannelProviderPre::new(pre.clone()).map(Self::V0_2), || {
            v0_1_0::channel::ChannelProviderPre::new(pre).map(Self::V0_1)
        })
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl SyncWorld for ChannelPre {
    fn instantiate(&self, store: &mut Store<Ctx>) -> wasmtime::Result<ChannelInstance> {
        Ok(match self {
            Self::V0_2(p) => ChannelInstance::V0_2(p.instantiate(store)?),
            Self::V0_1(p) => ChannelInstance::V0_1(p.instantiate(store)?),
        })
    }

    fn max_instances(instance: &ChannelInstance, store: &mut Store<Ctx>) -> wasmtime::Result<u32> {
        match instance {
            ChannelInstance::V0_2(i) => i.stategate_gateway_channel().call_max_instances(store),
            ChannelInstance::V0_1(_) => Ok(1),
        }
    }
}

impl ChannelInstance {
    pub fn publish(&self, store: &mut Store<Ctx>, event: &Event) -> Answer<()> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_channel().call_publish(store, event),
            Self::V0_1(i) => i.stategate_gateway_channel().call_publish(store, event),
        }
    }

    pub fn tail(&self, store: &mut Store<Ctx>) -> Answer<String> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_channel().call_tail(store),
            Self::V0_1(i) => i.stategate_gateway_channel().call_tail(store),
        }
    }

    pub fn poll(&self, store: &mut Store<Ctx>, cursor: &str, max: u32) -> Answer<c2::Batch> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_channel().call_poll(store, cursor, max),
            Self::V0_1(i) => {
                let r = i.stategate_gateway_channel().call_poll(store, cursor, max)?;
                Ok(r.map(|c1::Batch { events, cursor }| c2::Batch { events, cursor }))
            }
        }
    }

    pub fn ping(&self, store: &mut Store<Ctx>) -> Answer<()> {
        match self {
            Self::V0_2(i) => i.stategate_gateway_channel().call_ping(store),
            Self::V0_1(i) => i.stategate_gateway_channel().call_ping(store),
        }
    }
}

// ---- policy ----

/// A policy-hook component, linked as the version it implements.
pub enum PolicyPre {
    V0_2(bindings::policy::PolicyHookPre<Ctx>),
    V0_1(v0_1_0::policy::PolicyHookPre<Ctx>),
}

/// An instance of a policy-hook component.
pub enum PolicyInstance {
    V0_2(bindings::policy::PolicyHook),
    V0_1(v0_1_0::policy::PolicyHook),
}

impl World for PolicyPre {
    const KIND: Kind = Kind::Policy;
    type Instance = PolicyInstance;

    fn link(component: &Component) -> wasmtime::Result<Self> {
        let pre = link_async(component)?;
        either(Self::KIND, bindings::policy::PolicyHookPre::new(pre.clone()).map(Self::V0_2), || {
            v0_1_0::policy::PolicyHookPre::new(pre).map(Self::V0_1)
        })
    }

    fn version(&self) -> &'static str {
        match self {
            Self::V0_2(_) => V0_2,
            Self::V0_1(_) => V0_1,
        }
    }
}

impl AsyncWorld for PolicyPre {
    fn instantiate_async(&self, store: &mut Store<Ctx>) -> impl Future<Output = wasmtime::Result<PolicyInstance>> + Send {
        async move {
            Ok(match self {
                Self::V0_2(p) => PolicyInstance::V0_2(p.instantiate_async(store).await?),
                Self::V0_1(p) => PolicyInstance::V0_1(p.instantiate_async(store).await?),
            })
        }
    }
}

impl PolicyInstance {
    pub async fn authorize_request(&self, store: &mut Store<Ctx>, input: &str) -> wasmtime::Result<p2::Decision> {
        Ok(match self {
            Self::V0_2(i) => i.stategate_gateway_policy().call_authorize_request(store, input).await?,
            Self::V0_1(i) => match i.stategate_gateway_policy().call_authorize_request(store, input).await? {
                p1::Decision::Allow => p2::Decision::Allow,
                p1::Decision::Deny(why) => p2::Decision::Deny(why),
            },
        })
    }

    pub async fn authorize_response(&self, store: &mut Store<Ctx>, input: &str) -> wasmtime::Result<p2::ResponseDecision> {
        Ok(match self {
            Self::V0_2(i) => i.stategate_gateway_policy().call_authorize_response(store, input).await?,
            Self::V0_1(i) => match i.stategate_gateway_policy().call_authorize_response(store, input).await? {
                p1::ResponseDecision::Allow => p2::ResponseDecision::Allow,
                p1::ResponseDecision::Deny(why) => p2::ResponseDecision::Deny(why),
                p1::ResponseDecision::Redact(paths) => p2::ResponseDecision::Redact(paths),
            },
        })
    }
}
